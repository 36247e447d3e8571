"""Kubernetes ``resource.Quantity`` parsing and the form the apiserver stores and returns.

Written from the documented behaviour of ``k8s.io/apimachinery/pkg/api/resource``:

* a quantity is ``<signed number><suffix>``; suffixes are binary (``Ki`` .. ``Ei``), decimal SI
  (``n u m "" k M G T P E``) or a decimal exponent (``e3``, ``E-2``);
* values finer than 1n are rounded away from zero to 1n; binary quantities are capped at 2^63-1;
* the parser keeps the original string when it is already canonical ("fast path"), otherwise the value is
  re-emitted in canonical form: no fractional digits, the largest exponent/suffix that loses no precision,
  decimal exponents a multiple of 3 (``1048576000`` -> ``1048576k``, ``1.5`` -> ``1500m``,
  ``1.5Gi`` -> ``1536Mi``).

The value is kept as ``unscaled * 10**exp10`` so that huge exponents never materialise huge integers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, Literal

__all__ = ["Quantity", "QuantityError", "canonical", "parse", "parse_quantity"]

Format = Literal["DecimalExponent", "BinarySI", "DecimalSI"]

FORMAT_WRONG: Final = (
    "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
)
NUMERIC: Final = "unable to parse numeric part of quantity"
SUFFIX: Final = "unable to parse quantity's suffix"

_SUFFIX_CHARS: Final = frozenset("eEinumkKMGTP")
_DIGITS: Final = frozenset("0123456789")
_DEC_SUFFIXES: Final = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DEC_BY_EXP: Final = {exp: suffix for suffix, exp in _DEC_SUFFIXES.items()}
_BIN_SUFFIXES: Final = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_BIN_BY_EXP: Final = {exp // 10: suffix for suffix, exp in _BIN_SUFFIXES.items()}
_MAX_INT64: Final = 2**63 - 1
_INT64_DIGITS: Final = 18  # digits that always fit an int64 (the parser's fast-path budget)
_NANO: Final = -9
_EXPONENT_RE: Final = re.compile(r"[+-]?[0-9]+")


class QuantityError(ValueError):
    """The text is not a quantity; the message is the apiserver's."""


@dataclass(frozen=True)
class Quantity:
    """A parsed quantity: ``unscaled * 10**exp10`` in ``fmt``; ``cached`` is the original text if kept."""

    unscaled: int
    exp10: int
    fmt: Format
    cached: str | None = None

    @property
    def value(self) -> int | Fraction:
        """The exact value (an ``int`` when integral)."""
        if self.exp10 >= 0:
            return self.unscaled * int(10**self.exp10)
        frac = Fraction(self.unscaled, 10**-self.exp10)
        return frac.numerator if frac.denominator == 1 else frac

    def normalized(self) -> tuple[int, int]:
        """``(mantissa, exponent)`` with no factor of 10 left in the mantissa: equal iff values are equal."""
        if self.unscaled == 0:
            return 0, 0
        mantissa, times = _strip_factor(self.unscaled, 10)
        return mantissa, self.exp10 + times

    def __str__(self) -> str:
        return self.cached if self.cached is not None else _canonical_text(self)


@dataclass(frozen=True)
class _Scanned:
    positive: bool
    value: str  # sign, digits and dot as written (what the slow path parses)
    num: str  # integer digits without leading zeros ("0" when none)
    denom: str  # fractional digits
    suffix: str


def parse_quantity(text: str) -> int | Fraction:
    """The value of a quantity string as stored by the apiserver (after nano rounding / binary cap)."""
    return parse(text).value


def canonical(text: str) -> str:
    """The string the apiserver returns for ``text`` (stored form of a ``resource.Quantity``)."""
    return str(parse(text))


def parse(text: str) -> Quantity:
    """Parse ``text`` (surrounding whitespace ignored, as the JSON decoder does)."""
    text = text.strip()
    if not text:
        raise QuantityError(FORMAT_WRONG)
    if text == "0":
        return Quantity(0, 0, "DecimalSI", "0")
    scanned = _scan(text)
    base, exponent, fmt = _interpret(scanned.suffix)
    fast = _fast_path(text, scanned, base, exponent, fmt)
    return fast if fast is not None else _slow_path(scanned, base, exponent, fmt)


def _scan(text: str) -> _Scanned:
    """Split sign, number and suffix like the apiserver's scanner (permissive; checked later)."""
    end = len(text)
    pos = 1 if text[0] in "+-" else 0
    positive = text[0] != "-"
    while pos < end and text[pos] == "0":
        pos += 1
    if pos >= end:
        return _Scanned(positive, "0", "0", "", "")
    start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    num = text[start:pos] or "0"
    denom = ""
    if pos < end and text[pos] == ".":
        pos += 1
        start = pos
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        denom = text[start:pos]
    value = text[:pos]
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos < end:
        raise QuantityError(FORMAT_WRONG)
    return _Scanned(positive, value, num, denom, text[suffix_start:])


def _interpret(suffix: str) -> tuple[int, int, Format]:
    if suffix in _DEC_SUFFIXES:
        return 10, _DEC_SUFFIXES[suffix], "DecimalSI"
    if suffix in _BIN_SUFFIXES:
        return 2, _BIN_SUFFIXES[suffix], "BinarySI"
    if len(suffix) > 1 and suffix[0] in "eE" and _EXPONENT_RE.fullmatch(suffix[1:]):
        parsed = int(suffix[1:])
        if -(2**63) <= parsed <= _MAX_INT64:
            # The exponent is kept in an int32: larger values wrap around.
            return 10, (parsed + 2**31) % 2**32 - 2**31, "DecimalExponent"
    raise QuantityError(SUFFIX)


def _fast_path(text: str, s: _Scanned, base: int, exponent: int, fmt: Format) -> Quantity | None:
    """The int64 path of the parser: also decides whether the original text is kept."""
    if base == 10:
        precision = _INT64_DIGITS - (len(s.num) + len(s.denom))
        mantissa_bits = 0
    elif not s.denom:
        precision = 15 - len(s.num) - (exponent * 3) // 10 - 1
        mantissa_bits = exponent
    else:
        return None
    scale = (exponent if base == 10 else 0) - len(s.denom)
    if precision < 0 or scale < _NANO:
        return None
    shifted = s.num + s.denom
    digits = int(shifted)
    result = digits << mantissa_bits
    if result > _MAX_INT64:
        return None
    signed = result if s.positive else -result
    if base == 2:
        keep = digits & 0x07 != 0
        return Quantity(signed, 0, fmt, text if keep else None)
    keep = scale % 3 == 0 and not shifted.endswith("000") and shifted[0] != "0"
    return Quantity(signed, scale, fmt, text if keep else None)


def _slow_path(s: _Scanned, base: int, exponent: int, fmt: Format) -> Quantity:
    unscaled, exp10 = _decimal(s.value)
    if base == 10:
        exp10 += exponent
    else:
        unscaled <<= exponent
    magnitude = abs(unscaled)
    if magnitude and exp10 < _NANO:
        divisor = 10 ** (_NANO - exp10)
        magnitude, exp10 = -(-magnitude // divisor), _NANO  # round away from zero
    if fmt == "BinarySI":
        if _compare(magnitude, exp10, _MAX_INT64) > 0:
            magnitude, exp10 = _MAX_INT64, 0
        if magnitude and _compare(magnitude, exp10, 1) < 0:
            fmt = "DecimalSI"
    sign = -1 if unscaled < 0 else 1
    return Quantity(sign * magnitude, exp10, fmt)


def _decimal(value: str) -> tuple[int, int]:
    """Parse ``[+-]digits[.digits]`` into ``(unscaled, exp10)``; at least one digit is required."""
    match = re.fullmatch(r"([+-]?)([0-9]*)(?:\.([0-9]*))?", value)
    if match is None or not (match.group(2) or match.group(3)):
        raise QuantityError(NUMERIC)
    whole, frac = match.group(2), match.group(3) or ""
    unscaled = int((whole + frac) or "0")
    return (-unscaled if match.group(1) == "-" else unscaled), -len(frac)


def _compare(unscaled: int, exp10: int, other: int) -> int:
    """Compare ``unscaled * 10**exp10`` with the integer ``other`` (both non-negative here)."""
    left = Fraction(unscaled) * Fraction(10) ** exp10 if exp10 < 0 else unscaled * 10**exp10
    return (left > other) - (left < other)


def _canonical_text(q: Quantity) -> str:
    if q.unscaled == 0:
        return "0"
    fmt = q.fmt
    if fmt == "BinarySI":
        value = q.value
        if -1024 < value < 1024 or not isinstance(value, int):
            fmt = "DecimalSI"
        else:
            return _binary_text(value)
    mantissa, exp10 = _strip_factor(q.unscaled, 10)
    exp10 += q.exp10
    remainder = exp10 % 3
    mantissa, exp10 = mantissa * 10**remainder, exp10 - remainder
    if fmt == "DecimalSI" and exp10 in _DEC_BY_EXP:
        return f"{mantissa}{_DEC_BY_EXP[exp10]}"
    return f"{mantissa}" if exp10 == 0 else f"{mantissa}e{exp10}"


def _binary_text(value: int) -> str:
    mantissa, power = _strip_factor(value, 1024)
    return f"{mantissa}{_BIN_BY_EXP.get(power, '')}"


def _strip_factor(value: int, factor: int) -> tuple[int, int]:
    """Divide ``value`` by ``factor`` while it divides evenly; returns the rest and the count."""
    sign, rest, times = (-1 if value < 0 else 1), abs(value), 0
    while rest >= factor and rest % factor == 0:
        rest //= factor
        times += 1
    return sign * rest, times
