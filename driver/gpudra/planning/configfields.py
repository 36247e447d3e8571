"""Strict reading of opaque config parameters: each field's JSON type, range and format, by path (pure).

The parameters of an opaque config are JSON the user wrote; the apiserver only checks that they are a JSON
object. Every reader here takes a value and the path it sits at (``sharing.mpsConfig.defaultActive...``)
and either returns it typed or raises :class:`ConfigFieldError` naming that path. ``null`` is a value like
any other: where an object or a string is expected, it is refused (the apiserver never writes ``null`` for an
absent field, so an explicit one is a mistake, as in :mod:`gpudra.planning.claimjson`).

The problem texts are the ones ``deviceclasses/sharing-policy.yaml`` (the ValidatingAdmissionPolicy) builds
in CEL, so ``kubectl apply`` and a failed prepare name a bad field the same way; CEL cannot name the JSON
type it got, so the ``, got <type>`` tail is only here.

Quantities are read as the apiserver reads a ``resource.Quantity`` string (:func:`stored_value`: binary
values capped at 2^63-1, sub-nano digits rounded up), so both agree on every edge; a JSON integer is a
number of bytes. Values stay exact (``int``/:class:`~fractions.Fraction`), never ``float``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from enum import StrEnum
from fractions import Fraction
from typing import Final, TypeVar

from gpudra.model.quantity import stored_value

JsonObject = Mapping[str, object]
_E = TypeVar("_E", bound=StrEnum)

#: The largest byte count a quantity can hold (the apiserver's int64).
MAX_BYTES: Final = 2**63 - 1


class ConfigError(ValueError):
    """A config for our driver that cannot be used. The message is shown to the user in the pod events."""


class ConfigFieldError(ConfigError):
    """One field of a config's parameters is wrong; ``path`` names it (empty: the parameters themselves)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def join(path: str, key: str) -> str:
    """The path of field ``key`` of the object at ``path``."""
    return f"{path}.{key}" if path else key


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    for kind, name in ((str, "string"), (list, "list"), (dict, "object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def shown(value: str | int) -> str:
    """A scalar as a message shows it: strings quoted, integers bare."""
    return json.dumps(value) if isinstance(value, str) else str(value)


def obj(value: object, path: str) -> JsonObject:
    if isinstance(value, dict):  # parsed JSON: its keys are strings
        return value
    raise ConfigFieldError(path, f"expected an object, got {json_type(value)}")


def only_fields(fields: JsonObject, path: str, known: Collection[str]) -> None:
    """Refuse the first field (in document order) that is not in ``known``."""
    for key in fields:
        if key not in known:
            raise ConfigFieldError(join(path, key), f"unknown field (known fields: {', '.join(known)})")


def required(fields: JsonObject, key: str, path: str) -> object:
    if key not in fields:
        raise ConfigFieldError(join(path, key), "required value is missing")
    return fields[key]


def string(value: object, path: str) -> str:
    if isinstance(value, str):
        return value
    raise ConfigFieldError(path, f"expected a string, got {json_type(value)}")


def one_of(value: object, path: str, choices: type[_E]) -> _E:
    """A string that is one of the enum's values, compared exactly (case matters)."""
    text = string(value, path)
    for choice in choices:
        if text == choice.value:
            return choice
    allowed = ", ".join(c.value for c in choices)
    raise ConfigFieldError(path, f"unsupported value {shown(text)}: must be one of {allowed}")


def integer(value: object, path: str, low: int, high: int) -> int:
    """A JSON integer (not a bool, not a number with a fraction part) in ``low..high``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigFieldError(path, f"expected an integer, got {json_type(value)}")
    if not low <= value <= high:
        raise ConfigFieldError(path, f"{value} is out of range {low}-{high}")
    return value


def byte_quantity(value: object, path: str, minimum: int, minimum_text: str, multiple_text: str) -> int:
    """A byte count: a quantity string (``"10Gi"``) or a JSON integer, a whole multiple of ``minimum``.

    The range is ``minimum``..:data:`MAX_BYTES`; ``minimum_text`` is how messages write ``minimum``
    (``"1Mi"``), ``multiple_text`` the reason a multiple is needed.
    """
    if isinstance(value, str):
        try:
            amount, _ = stored_value(value)
        except ValueError:
            raise ConfigFieldError(path, f"{shown(value)} is not a quantity") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        amount = Fraction(value)
    else:
        raise ConfigFieldError(path, f"expected a quantity string or an integer, got {json_type(value)}")
    if not minimum <= amount <= MAX_BYTES:
        raise ConfigFieldError(path, f"{shown(value)} is out of range {minimum_text}-8Ei")
    if amount.denominator != 1:
        raise ConfigFieldError(path, f"{shown(value)} is not a whole number of bytes")
    if int(amount) % minimum:
        raise ConfigFieldError(path, f"{shown(value)} is not a multiple of {minimum_text} ({multiple_text})")
    return int(amount)
