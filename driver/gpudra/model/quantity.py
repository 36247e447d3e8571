"""Kubernetes ``resource.Quantity`` strings: exact parsing, numeric comparison and the canonical form.

The apiserver stores a quantity as a number and serialises it back in *canonical form*: what gpudra writes
as ``"1048576000"`` is read back as ``"1048576k"``, ``"1.5Gi"`` as ``"1536Mi"``. The publisher therefore
compares capacities numerically (:func:`quantities_equal`), never as text.

Grammar (as in ``k8s.io/apimachinery/pkg/api/resource``)::

    quantity ::= [+-] number suffix
    number   ::= digits | digits "." [digits] | "." digits
    suffix   ::= "" | n | u | m | k | M | G | T | P | E          (decimal SI)
               | Ki | Mi | Gi | Ti | Pi | Ei                     (binary SI)
               | ("e" | "E") [+-] digits                         (decimal exponent)

What the apiserver does on top of the grammar, and :func:`stored_value` reproduces: a non-zero value finer
than 1n is rounded up (away from zero) to the next nano, and a binary-SI value is capped at 2^63-1.

:func:`canonical_quantity` is the canonical form by the documented rules. The Go parser sometimes keeps
the text as written instead (its int64 fast path, e.g. ``"+6"`` or ``"927.67e+11"`` come back unchanged);
for the unsigned integers gpudra writes both agree. Only ever compare quantities numerically.
"""

from __future__ import annotations

import re
from enum import StrEnum
from fractions import Fraction
from typing import Final


class QuantityFormat(StrEnum):
    """The serialisation family a quantity remembers from the text it was parsed from."""

    DECIMAL_SI = "DecimalSI"
    BINARY_SI = "BinarySI"
    DECIMAL_EXPONENT = "DecimalExponent"


_DECIMAL_SUFFIXES: Final = {
    "n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18,
}
_DECIMAL_BY_EXPONENT: Final = {exp: suffix for suffix, exp in _DECIMAL_SUFFIXES.items()}
_BINARY_SUFFIXES: Final = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_BINARY_BY_POWER: Final = {power // 10: suffix for suffix, power in _BINARY_SUFFIXES.items()}

_SYNTAX: Final = re.compile(r"([+-]?)([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(.*)", re.ASCII | re.DOTALL)
_EXPONENT: Final = re.compile(r"[eE]([+-]?[0-9]+)", re.ASCII)

#: Largest |exponent| accepted in the ``1e3`` form. Kubernetes takes any int32, but ``1e999999999`` would
#: make an integer of a billion digits here; nothing real comes close to this bound.
MAX_EXPONENT: Final = 1000
_NANO: Final = Fraction(1, 10**9)
_INT64_MAX: Final = 2**63 - 1


def _split(text: str) -> tuple[Fraction, Fraction, QuantityFormat]:
    """Parse ``text`` into (number, multiplier, format); ValueError with the reason when it is not one."""
    if not isinstance(text, str):
        raise TypeError(f"quantity must be a string, not {type(text).__name__}")
    match = _SYNTAX.fullmatch(text)
    if match is None:
        raise ValueError(f"invalid quantity {text!r}: expected [+-]<number><suffix>, e.g. 1Gi, 500m, 1e3")
    sign, number, suffix = match.groups()
    value = Fraction(number) * (-1 if sign == "-" else 1)
    if suffix in _DECIMAL_SUFFIXES:
        return value, Fraction(10) ** _DECIMAL_SUFFIXES[suffix], QuantityFormat.DECIMAL_SI
    if suffix in _BINARY_SUFFIXES:
        return value, Fraction(2) ** _BINARY_SUFFIXES[suffix], QuantityFormat.BINARY_SI
    exp_match = _EXPONENT.fullmatch(suffix)
    if exp_match is None:
        raise ValueError(f"invalid quantity {text!r}: unknown suffix {suffix!r}")
    exponent = int(exp_match.group(1))
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"invalid quantity {text!r}: exponent {exponent} out of range ±{MAX_EXPONENT}")
    return value, Fraction(10) ** exponent, QuantityFormat.DECIMAL_EXPONENT


def parse_quantity(text: str) -> Fraction:
    """The exact value of a quantity string (no rounding). Raises ValueError on anything not a quantity."""
    value, multiplier, _ = _split(text)
    return value * multiplier


def _round_up_to_nano(value: Fraction) -> Fraction:
    scaled = value / _NANO
    if scaled.denominator == 1:
        return value
    magnitude = -(-abs(scaled.numerator) // scaled.denominator)  # ceil of |scaled|
    return Fraction(magnitude if value > 0 else -magnitude) * _NANO


def stored_value(text: str) -> tuple[Fraction, QuantityFormat]:
    """The value and format the apiserver keeps for ``text`` (nano round-up, binary cap applied)."""
    value, multiplier, fmt = _split(text)
    amount = _round_up_to_nano(value * multiplier)
    if fmt is QuantityFormat.BINARY_SI and abs(amount) > _INT64_MAX:
        amount = Fraction(_INT64_MAX if amount > 0 else -_INT64_MAX)
    return amount, fmt


def quantities_equal(a: str, b: str) -> bool:
    """True when two quantity strings denote the same stored number ("1Gi" == "1073741824" == "1048576Ki")."""
    return stored_value(a)[0] == stored_value(b)[0]


def _decimal_mantissa(value: Fraction) -> tuple[int, int]:
    """Non-zero ``value`` (a multiple of 1n) as ``mantissa * 10**exp``, ``exp`` a maximal multiple of 3."""
    mantissa, exponent = int(value / _NANO), -9
    while mantissa and mantissa % 1000 == 0:
        mantissa //= 1000
        exponent += 3
    return mantissa, exponent


def _format_decimal(value: Fraction, fmt: QuantityFormat) -> str:
    mantissa, exponent = _decimal_mantissa(value)
    if fmt is QuantityFormat.DECIMAL_SI and exponent in _DECIMAL_BY_EXPONENT:
        return f"{mantissa}{_DECIMAL_BY_EXPONENT[exponent]}"
    return f"{mantissa}e{exponent}" if exponent else str(mantissa)


def _format_binary(value: int) -> str:
    power = 0
    while value % 1024 == 0 and power < max(_BINARY_BY_POWER):
        value //= 1024
        power += 1
    return f"{value}{_BINARY_BY_POWER.get(power, '')}"


def canonical_quantity(text: str) -> str:
    """The canonical form of ``text``, e.g. ``"1048576000"`` -> ``"1048576k"`` (see the module notes)."""
    value, fmt = stored_value(text)
    if value == 0:
        return "0"
    if fmt is QuantityFormat.BINARY_SI:
        if -1024 < value < 1024 or value.denominator != 1:
            fmt = QuantityFormat.DECIMAL_SI  # the apiserver avoids rounding this way
        else:
            return _format_binary(int(value))
    return _format_decimal(value, fmt)
