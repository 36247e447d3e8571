"""Quantity parsing and the canonical form the apiserver stores (k8s.io/apimachinery resource.Quantity)."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.devtools.fakeapi.quantity import QuantityError, canonical, parse, parse_quantity


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("1048576000", "1048576k"),  # a multiple of 1000 moves into the suffix
        ("1Gi", "1Gi"),
        ("1073741824", "1073741824"),  # not a multiple of 1000: stays decimal
        ("85520809984", "85520809984"),
        ("80Gi", "80Gi"),
        ("1024Ki", "1Mi"),
        ("2048Ki", "2Mi"),
        ("1023Ki", "1023Ki"),
        ("1.5Gi", "1536Mi"),
        ("0.5Ki", "512"),  # binary below 1024 is shown as decimal
        ("1.5", "1500m"),
        ("0.5", "500m"),
        (".5", "500m"),
        ("100m", "100m"),
        ("0.1m", "100u"),
        ("1000", "1k"),
        ("1500", "1500"),
        ("1000000", "1M"),
        ("1e3", "1e3"),  # already canonical: the text is kept
        ("1000e3", "1e6"),
        ("1e2", "100"),
        ("1.5e3", "1500"),
        ("0.0000000001", "1n"),  # finer than nano rounds away from zero
        ("1e-10", "1e-9"),
        ("8Ei", "9223372036854775807"),  # binary quantities are capped at 2^63-1
        ("1000E", "1e21"),  # beyond the largest SI suffix: exponent notation
        ("0", "0"),
        ("00", "0"),
        ("-0", "0"),
        ("0Gi", "0"),
        ("-1Ki", "-1Ki"),
        ("  7 ", "7"),
    ],
)
def test_canonical_form_matches_the_apiserver(text: str, stored: str) -> None:
    assert canonical(text) == stored


@pytest.mark.parametrize(
    ("text", "value"),
    [("1Ki", 1024), ("1.5", Fraction(3, 2)), ("1n", Fraction(1, 10**9)), ("-2M", -2_000_000), ("1e3", 1000)],
)
def test_parse_quantity_value(text: str, value: int | Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "quantities must match the regular expression"),
        ("abc", "quantities must match the regular expression"),
        ("1Kb", "quantities must match the regular expression"),
        ("1K", "unable to parse quantity's suffix"),
        ("1e", "unable to parse quantity's suffix"),
        ("1Gi3", "unable to parse quantity's suffix"),
    ],
)
def test_invalid_quantities_raise_the_apiserver_message(text: str, message: str) -> None:
    with pytest.raises(QuantityError, match=message):
        parse(text)


_SUFFIXES = [
    "",
    "n",
    "u",
    "m",
    "k",
    "M",
    "G",
    "T",
    "P",
    "E",
    "Ki",
    "Mi",
    "Gi",
    "Ti",
    "Pi",
    "Ei",
    "e3",
    "e-3",
    "E6",
]


@st.composite
def quantity_text(draw: st.DrawFn) -> str:
    sign = draw(st.sampled_from(["", "+", "-"]))
    whole = draw(st.from_regex(r"[0-9]{0,20}", fullmatch=True))
    frac = draw(st.one_of(st.just(None), st.from_regex(r"[0-9]{0,12}", fullmatch=True)))
    if not whole and not frac:
        whole = "0"
    number = whole if frac is None else f"{whole}.{frac}"
    return sign + number + draw(st.sampled_from(_SUFFIXES))


@given(quantity_text())
def test_canonical_keeps_the_value(text: str) -> None:
    assert parse_quantity(canonical(text)) == parse_quantity(text)


@given(quantity_text())
def test_canonical_is_stable(text: str) -> None:
    once = canonical(text)
    assert canonical(once) == once


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_integers_round_trip_without_fraction_digits(number: int) -> None:
    stored = canonical(str(number))
    assert parse_quantity(stored) == number
    assert "." not in stored


@given(st.integers(min_value=1, max_value=2**30), st.sampled_from(["Ki", "Mi", "Gi"]))
def test_binary_quantities_stay_binary(mantissa: int, suffix: str) -> None:
    stored = canonical(f"{mantissa}{suffix}")
    assert stored.endswith("i")
    assert parse_quantity(stored) == parse_quantity(f"{mantissa}{suffix}")
