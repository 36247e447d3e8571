"""Kubernetes quantity strings: exact parsing, the apiserver's canonical form, numeric equality."""

from __future__ import annotations

import re
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra.model.quantity import (
    QuantityFormat,
    canonical_quantity,
    parse_quantity,
    quantities_equal,
    stored_value,
)

DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
BINARY = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
#: The serialisation grammar from k8s.io/apimachinery's Quantity documentation.
GRAMMAR = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]+)?")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1", 1),
        ("+5", 5),
        ("-5", -5),
        ("500m", Fraction(1, 2)),
        ("1n", Fraction(1, 10**9)),
        ("1u", Fraction(1, 10**6)),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),
        ("1Ki", 1024),
        ("1Mi", 2**20),
        ("1Gi", 2**30),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("1.5Gi", 1610612736),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1e+3", 1000),
        ("1e-3", Fraction(1, 1000)),
        ("2.5e2", 250),
        (".5", Fraction(1, 2)),
        ("5.", 5),
        ("007", 7),
        ("85520809984", 85520809984),
    ],
)
def test_parse_known_values(text: str, value: Fraction | int) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize(
    "text",
    ["", " 1", "1 ", "1\n", "1K", "1ki", "1KI", "abc", "1.2.3", "e3", "1e", "1e3.5", "--1", "+-1", "1Gi1",
     "Ki", ".", "0x10", "1_000", "\u0661", "1e1001", "1 Gi", "Gi1", "1m1", "NaN", "inf"],
)
def test_parse_rejects_junk(text: str) -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        parse_quantity(text)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError):
        parse_quantity(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("1048576000", "1048576k"),  # what the apiserver returns for gpudra's memory capacities
        ("1.5Gi", "1536Mi"),
        ("1.5", "1500m"),
        ("0.1m", "100u"),
        ("0.5n", "1n"),  # rounded up to the next nano
        ("-0.5n", "-1n"),  # away from zero
        ("1Gi", "1Gi"),
        ("1024Ki", "1Mi"),
        ("1024Pi", "1Ei"),
        ("4096Ti", "4Pi"),
        ("0.5Ki", "512"),  # binary below 1024 is written in decimal
        ("1073741824", "1073741824"),
        ("1000", "1k"),
        ("512", "512"),
        ("1e3", "1e3"),
        ("1.5e3", "1500"),
        ("100e-3", "100e-3"),
        ("0", "0"),
        ("-0", "0"),
        ("0.000Gi", "0"),
        ("+1k", "1k"),
        ("-1.5Gi", "-1536Mi"),
        ("85520809984", "85520809984"),
        ("132", "132"),
    ],
)
def test_canonical_form(text: str, canonical: str) -> None:
    assert canonical_quantity(text) == canonical


def test_binary_values_beyond_int64_are_capped_like_the_apiserver() -> None:
    assert stored_value("16Ei") == (Fraction(2**63 - 1), QuantityFormat.BINARY_SI)


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("1Gi", "1073741824", True),
        ("1048576000", "1048576k", True),
        ("1024Mi", "1Gi", True),
        ("1", "1000m", True),
        ("0.4n", "1n", True),
        ("1", "1001m", False),
        ("1Gi", "1G", False),
        ("-1", "1", False),
    ],
)
def test_quantities_equal(a: str, b: str, equal: bool) -> None:
    assert quantities_equal(a, b) is equal
    assert quantities_equal(b, a) is equal


def test_quantities_equal_raises_on_junk() -> None:
    with pytest.raises(ValueError, match="invalid quantity"):
        quantities_equal("1Gi", "one gig")


# ---- properties ----------------------------------------------------------------------------------------

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


@st.composite
def quantity_texts(draw: st.DrawFn) -> str:
    sign = draw(st.sampled_from(["", "+", "-"]))
    whole = draw(st.text(alphabet="0123456789", min_size=0, max_size=12))
    frac = draw(st.text(alphabet="0123456789", min_size=0, max_size=12))
    number = f"{whole}.{frac}" if draw(st.booleans()) else whole
    if not any(c.isdigit() for c in number):
        number = "0"
    suffix = draw(
        st.one_of(
            st.sampled_from(sorted(DECIMAL)),
            st.sampled_from(sorted(BINARY)),
            st.builds(lambda e, x: f"{e}{x}", st.sampled_from(["e", "E", "e+", "e-"]), st.integers(0, 30)),
        )
    )
    return f"{sign}{number}{suffix}"


@given(INT64, st.sampled_from(sorted(DECIMAL)))
def test_decimal_suffixes_scale_by_powers_of_ten(n: int, suffix: str) -> None:
    assert parse_quantity(f"{n}{suffix}") == n * Fraction(10) ** DECIMAL[suffix]


@given(st.integers(min_value=0, max_value=2**40), st.sampled_from(sorted(BINARY)))
def test_binary_suffixes_scale_by_powers_of_two(n: int, suffix: str) -> None:
    assert parse_quantity(f"{n}{suffix}") == n * 2 ** BINARY[suffix]


@given(INT64, st.integers(min_value=-40, max_value=40))
def test_exponent_form(n: int, exp: int) -> None:
    assert parse_quantity(f"{n}e{exp}") == n * Fraction(10) ** exp


@settings(max_examples=300)
@given(quantity_texts())
def test_canonical_form_round_trips(text: str) -> None:
    value, _ = stored_value(text)
    canonical = canonical_quantity(text)
    assert GRAMMAR.fullmatch(canonical), canonical
    assert parse_quantity(canonical) == value
    assert canonical_quantity(canonical) == canonical
    assert quantities_equal(text, canonical)


@given(INT64)
def test_integers_survive_canonicalisation(n: int) -> None:
    canonical = canonical_quantity(str(n))
    assert "." not in canonical
    assert parse_quantity(canonical) == n


@settings(max_examples=300)
@given(st.text(max_size=20))
def test_arbitrary_text_parses_or_raises_value_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except ValueError:
        return
    assert isinstance(value, Fraction)
    assert GRAMMAR.fullmatch(text), text
