"""The Kubernetes additions to CEL that DRA selectors use, implemented on top of celpy (cel-python).

Kubernetes' scheduler runs cel-go with its own libraries; celpy has neither the ``Quantity`` and ``Semver``
types nor cel-go's string extension functions or its heterogeneous equality. This module supplies them as
celpy functions (:data:`FUNCTIONS`), written from the documented behaviour of
``k8s.io/apiserver/pkg/cel/library`` (quantity.go, semverlib.go) and cel-go ``ext.Strings``:

* ``quantity(s)``, ``isQuantity(s)``; ``q.compareTo(q)``, ``q.isGreaterThan(q)``, ``q.isLessThan(q)``,
  ``q.asInteger()``, ``q.isInteger()``, ``q.asApproximateFloat()``, ``q.sign()``, ``q.add(q|int)``,
  ``q.sub(q|int)``; ``==`` compares quantities by value (``quantity('1Gi') == quantity('1024Mi')``).
* ``semver(s[, normalize])``, ``isSemver(s[, normalize])``; ``v.major()``, ``v.minor()``, ``v.patch()``,
  ``v.compareTo(v)``, ``v.isGreaterThan(v)``, ``v.isLessThan(v)`` (semver 2.0 precedence).
* ``lowerAscii``, ``upperAscii``, ``trim``, ``indexOf``, ``replace``, ``split`` (celpy has ``contains``,
  ``startsWith``, ``endsWith``, ``matches`` with RE2, ``size``).
* ``==``/``!=`` across types is ``false``/``true`` (not an error), ``in`` uses that equality, and ``<``
  etc. compare int/uint/double with each other, as in cel-go.

No ``<``/``>`` on quantities or versions (Kubernetes has none either: use ``compareTo``). Errors are
returned as celpy error values so CEL's ``&&``/``||`` can absorb them exactly as cel-go does.
"""

from __future__ import annotations

import operator
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Final

from celpy import celtypes
from celpy.evaluation import CELEvalError

from gpudra.model.quantity import stored_value

_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_UINT64_MAX: Final = 2**64 - 1
_TO_LOWER: Final = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_TO_UPPER: Final = str.maketrans(string.ascii_lowercase, string.ascii_uppercase)
_PRE_ID: Final = r"(?:0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
_SEMVER_RE: Final = re.compile(
    rf"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(?:-({_PRE_ID}(?:\.{_PRE_ID})*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?",
    re.ASCII,
)


def _err(message: str) -> CELEvalError:
    return CELEvalError(message)


def _no_overload(function: str) -> CELEvalError:
    return _err(f"no such overload: {function}")


# ---- values --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Quantity:
    """A Kubernetes ``resource.Quantity`` as CEL sees it: its exact stored value."""

    value: Fraction

    @classmethod
    def parse(cls, text: str) -> Quantity:
        """ValueError when ``text`` is not a quantity (same grammar and nano round-up as the apiserver)."""
        return cls(stored_value(str(text))[0])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and self.value == other.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True, eq=False)
class Semver:
    """A semver 2.0 version (``blang/semver`` rules: strict parse, precedence ignores build metadata)."""

    major: int
    minor: int
    patch: int
    pre: tuple[int | str, ...] = ()
    build: str = ""

    @classmethod
    def parse(cls, text: str) -> Semver:
        """Strict parse; ValueError with the reason otherwise."""
        text = str(text)
        match = _SEMVER_RE.fullmatch(text)
        if match is None:
            raise ValueError(f"invalid semantic version {text!r} (semver.org 2.0.0)")
        numbers = [int(match.group(i)) for i in (1, 2, 3)]
        if any(n > _UINT64_MAX for n in numbers):
            raise ValueError(f"{text!r}: version number out of range")
        pre = tuple(int(p) if p.isdigit() else p for p in (match.group(4) or "").split(".") if p)
        return cls(numbers[0], numbers[1], numbers[2], pre, match.group(5) or "")

    @classmethod
    def parse_normalized(cls, text: str) -> Semver:
        """Kubernetes' tolerant form: drop a leading ``v`` and leading zeros, fill in ``.0`` parts."""
        parts = text.removeprefix("v").split(".", 2)
        parts = [_strip_zeros(p) if len(p) > 1 else p for p in parts]
        if len(parts) < 3:
            if any(c in parts[-1] for c in "+-"):
                raise ValueError("short version cannot contain PreRelease/Build meta data")
            parts += ["0"] * (3 - len(parts))
        return cls.parse(".".join(parts))

    def _key(self) -> tuple[int, int, int]:
        return (self.major, self.minor, self.patch)

    def compare(self, other: Semver) -> int:
        """-1, 0 or 1 by semver precedence."""
        if self._key() != other._key():
            return -1 if self._key() < other._key() else 1
        if self.pre == other.pre:
            return 0
        if not self.pre or not other.pre:
            return 1 if not self.pre else -1  # a release outranks its pre-releases
        for mine, theirs in zip(self.pre, other.pre, strict=False):
            if mine != theirs:
                return _compare_identifier(mine, theirs)
        return -1 if len(self.pre) < len(other.pre) else 1

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Semver) and self.compare(other) == 0

    def __hash__(self) -> int:
        return hash((self._key(), self.pre))

    def __str__(self) -> str:
        text = f"{self.major}.{self.minor}.{self.patch}"
        text += "-" + ".".join(str(p) for p in self.pre) if self.pre else ""
        return f"{text}+{self.build}" if self.build else text


def _strip_zeros(part: str) -> str:
    stripped = part.lstrip("0")
    return stripped if stripped[:1].isdigit() else "0" + stripped


def _compare_identifier(mine: int | str, theirs: int | str) -> int:
    if isinstance(mine, int) and isinstance(theirs, int):
        return -1 if mine < theirs else 1
    if isinstance(mine, int) or isinstance(theirs, int):
        return -1 if isinstance(mine, int) else 1  # numeric identifiers rank below alphanumeric ones
    return -1 if mine < theirs else 1


def _sign(number: Fraction | int) -> celtypes.IntType:
    return celtypes.IntType((number > 0) - (number < 0))


# ---- quantity and semver functions ---------------------------------------------------------------------


def _quantity(text: object) -> object:
    if not isinstance(text, str):
        return _no_overload("quantity")
    try:
        return Quantity.parse(text)
    except ValueError as err:
        return _err(str(err))


def _is_quantity(text: object) -> object:
    if not isinstance(text, str):
        return _no_overload("isQuantity")
    try:
        Quantity.parse(text)
    except ValueError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _semver(text: object, normalize: object = False) -> object:
    if not isinstance(text, str) or not isinstance(normalize, bool | celtypes.BoolType):
        return _no_overload("semver")
    try:
        return Semver.parse_normalized(text) if normalize else Semver.parse(text)
    except ValueError as err:
        return _err(str(err))


def _is_semver(text: object, normalize: object = False) -> object:
    if not isinstance(text, str) or not isinstance(normalize, bool | celtypes.BoolType):
        return _no_overload("isSemver")
    return celtypes.BoolType(isinstance(_semver(text, normalize), Semver))


def _compare_values(name: str, mine: object, theirs: object) -> int | CELEvalError:
    if isinstance(mine, Quantity) and isinstance(theirs, Quantity):
        return int(_sign(mine.value - theirs.value))
    if isinstance(mine, Semver) and isinstance(theirs, Semver):
        return mine.compare(theirs)
    return _no_overload(name)


def _comparison(name: str, convert: Callable[[int], object]) -> Callable[[object, object], object]:
    def function(mine: object, theirs: object) -> object:
        result = _compare_values(name, mine, theirs)
        return result if isinstance(result, CELEvalError) else convert(result)

    return function


def _as_int64(q: Quantity) -> int | None:
    if q.value.denominator != 1 or not _INT64_MIN <= q.value <= _INT64_MAX:
        return None
    return int(q.value)


def _as_integer(q: Quantity) -> object:
    value = _as_int64(q)
    return _err("cannot convert value to integer") if value is None else celtypes.IntType(value)


def _on_quantity(name: str, apply: Callable[[Quantity], object]) -> Callable[[object], object]:
    def function(q: object) -> object:
        return apply(q) if isinstance(q, Quantity) else _no_overload(name)

    return function


def _arithmetic(name: str, factor: int) -> Callable[[object, object], object]:
    """``q.add(x)`` / ``q.sub(x)`` with ``x`` a quantity or an int."""

    def function(q: object, other: object) -> object:
        if isinstance(other, Quantity):
            amount = other.value
        elif isinstance(other, celtypes.IntType):
            amount = Fraction(int(other))
        else:
            return _no_overload(name)
        return Quantity(q.value + factor * amount) if isinstance(q, Quantity) else _no_overload(name)

    return function


def _semver_part(name: str, index: int) -> Callable[[object], object]:
    def part(version: object) -> object:
        if not isinstance(version, Semver):
            return _no_overload(name)
        return celtypes.IntType(version._key()[index])

    return part


# ---- strings -------------------------------------------------------------------------------------------


def _string_function(name: str, apply: Callable[..., object]) -> Callable[..., object]:
    def function(text: object, *args: object) -> object:
        if not isinstance(text, str) or not all(isinstance(a, str) for a in args):
            return _no_overload(name)
        return apply(str(text), *args)

    return function


def _split(text: str, separator: str) -> celtypes.ListType:
    return celtypes.ListType([celtypes.StringType(part) for part in text.split(separator)])


# ---- equality, ordering, membership (cel-go semantics) ------------------------------------------------


_CEL_TYPE_NAMES: Final = (
    (celtypes.BoolType, "bool"), (celtypes.IntType, "int"), (celtypes.UintType, "uint"),
    (celtypes.DoubleType, "double"), (celtypes.StringType, "string"), (celtypes.BytesType, "bytes"),
    (celtypes.ListType, "list"), (celtypes.MapType, "map"), (Quantity, "kubernetes.Quantity"),
    (Semver, "kubernetes.Semver"),
)


def cel_type_name(value: object) -> str:
    """The CEL name of a value's type, for messages (``string``, ``kubernetes.Quantity``)."""
    return next((name for cls, name in _CEL_TYPE_NAMES if isinstance(value, cls)), type(value).__name__)


def _family(value: object) -> str:
    if isinstance(value, celtypes.BoolType):
        return "bool"
    if isinstance(value, celtypes.IntType | celtypes.UintType | celtypes.DoubleType):
        return "number"
    return type(value).__name__


def _numeric(value: object) -> int | float:
    return float(value) if isinstance(value, float) else int(value)  # type: ignore[call-overload]


def _equals(left: object, right: object) -> object:
    for value in (left, right):
        if isinstance(value, CELEvalError):
            return value
    if _family(left) != _family(right):
        return celtypes.BoolType(False)
    if _family(left) == "number":
        return celtypes.BoolType(_numeric(left) == _numeric(right))
    try:
        return celtypes.BoolType(bool(left == right))
    except TypeError:  # celpy's lists/maps refuse mixed element types; cel-go calls them unequal
        return celtypes.BoolType(False)


def _not_equals(left: object, right: object) -> object:
    result = _equals(left, right)
    return result if isinstance(result, CELEvalError) else celtypes.BoolType(not result)


def _ordering(symbol: str, compare: Callable[[Any, Any], bool]) -> Callable[[object, object], object]:
    def function(left: object, right: object) -> object:
        for value in (left, right):
            if isinstance(value, CELEvalError):
                return value
        family = _family(left)
        if family != _family(right) or family not in ("number", "StringType", "bool", "BytesType"):
            return _no_overload(symbol)
        if family == "number":
            return celtypes.BoolType(compare(_numeric(left), _numeric(right)))
        return celtypes.BoolType(compare(left, right))

    return function


def _in(item: object, container: object) -> object:
    for value in (item, container):
        if isinstance(value, CELEvalError):
            return value
    if not isinstance(container, celtypes.ListType | celtypes.MapType):
        return _no_overload("in")
    return celtypes.BoolType(any(bool(_equals(element, item)) for element in container))


#: celpy function table: Kubernetes' libraries plus cel-go's semantics for the operators.
FUNCTIONS: Final[dict[str, Callable[..., object]]] = {
    "quantity": _quantity,
    "isQuantity": _is_quantity,
    "semver": _semver,
    "isSemver": _is_semver,
    "compareTo": _comparison("compareTo", celtypes.IntType),
    "isGreaterThan": _comparison("isGreaterThan", lambda result: celtypes.BoolType(result == 1)),
    "isLessThan": _comparison("isLessThan", lambda result: celtypes.BoolType(result == -1)),
    "asInteger": _on_quantity("asInteger", _as_integer),
    "isInteger": _on_quantity("isInteger", lambda q: celtypes.BoolType(_as_int64(q) is not None)),
    "asApproximateFloat": _on_quantity("asApproximateFloat", lambda q: celtypes.DoubleType(float(q.value))),
    "sign": _on_quantity("sign", lambda q: _sign(q.value)),
    "add": _arithmetic("add", 1),
    "sub": _arithmetic("sub", -1),
    "major": _semver_part("major", 0),
    "minor": _semver_part("minor", 1),
    "patch": _semver_part("patch", 2),
    "lowerAscii": _string_function("lowerAscii", lambda s: celtypes.StringType(s.translate(_TO_LOWER))),
    "upperAscii": _string_function("upperAscii", lambda s: celtypes.StringType(s.translate(_TO_UPPER))),
    "trim": _string_function("trim", lambda s: celtypes.StringType(s.strip())),
    "indexOf": _string_function("indexOf", lambda s, sub: celtypes.IntType(s.find(sub))),
    "replace": _string_function("replace", lambda s, old, new: celtypes.StringType(s.replace(old, new))),
    "split": _string_function("split", _split),
    "dyn": lambda value: value,
    "_==_": _equals,
    "_!=_": _not_equals,
    "_<_": _ordering("_<_", operator.lt),
    "_<=_": _ordering("_<=_", operator.le),
    "_>_": _ordering("_>_", operator.gt),
    "_>=_": _ordering("_>=_", operator.ge),
    "_in_": _in,
}

#: Functions called as ``name(args)``; everything else in :data:`MEMBER_FUNCTIONS` needs a receiver.
GLOBAL_FUNCTIONS: Final = frozenset({
    "has", "size", "int", "uint", "double", "string", "bool", "bytes", "type", "dyn", "duration",
    "timestamp", "matches", "quantity", "isQuantity", "semver", "isSemver", "sign",
})
MACROS: Final = frozenset({"all", "exists", "exists_one", "map", "filter"})
MEMBER_FUNCTIONS: Final = frozenset({
    "size", "contains", "startsWith", "endsWith", "matches", "lowerAscii", "upperAscii", "trim", "indexOf",
    "replace", "split", "compareTo", "isGreaterThan", "isLessThan", "asInteger", "isInteger",
    "asApproximateFloat", "sign", "add", "sub", "major", "minor", "patch",
}) | MACROS
#: Type names usable as values (``type(x) == string``).
TYPE_NAMES: Final = frozenset({"int", "uint", "double", "string", "bool", "bytes", "list", "map", "null_type",
                               "type"})
