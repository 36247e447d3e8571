"""Strict JSON reading for hardware profiles: typed getters whose errors name the key that is wrong.

Shared by :mod:`~gpudra.vendors.mock.profile` and its section parsers; every error is an :class:`Invalid`
whose
message starts with the dotted path of the offending key (``devices[0].mig_devices[1].uuid: ...``).
"""

from __future__ import annotations

from typing import Any, TypeVar

import pynvml  # importing pynvml never loads libnvidia-ml; only nvmlInit does

_T = TypeVar("_T")


class Invalid(Exception):
    """A profile value that does not follow the schema; the message starts with where it is."""


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def obj(value: object, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    """``value`` as a JSON object whose keys are all in ``allowed`` (or are ``_comments``)."""
    label = where or "the top level"
    if not isinstance(value, dict):
        raise Invalid(f"{label}: expected a JSON object, got {type(value).__name__}")
    unknown = sorted(k for k in value if k not in allowed and not str(k).startswith("_"))
    if unknown:
        names, known = ", ".join(map(repr, unknown)), ", ".join(sorted(allowed))
        raise Invalid(f"{label}: unknown key(s) {names} (allowed: {known})")
    return value


def opt(raw: dict[str, Any], key: str, kind: type[_T], where: str) -> _T | None:
    value = raw.get(key)
    if value is None:
        return None
    if not (is_int(value) if kind is int else isinstance(value, kind)):
        label = f"{where}.{key}" if where else key
        raise Invalid(f"{label}: expected {kind.__name__} or null, got {value!r}")
    return value  # type: ignore[no-any-return]


def req(raw: dict[str, Any], key: str, kind: type[_T], where: str) -> _T:
    value = opt(raw, key, kind, where)
    if value is None:
        raise Invalid(f"{where}.{key}: required")
    return value


def non_negative(raw: dict[str, Any], key: str, where: str, default: int | None = None) -> int | None:
    value = opt(raw, key, int, where)
    if value is not None and value < 0:
        raise Invalid(f"{where}.{key}: must not be negative, got {value}")
    return default if value is None else value


def int_list(value: object, where: str, length: int | None = None) -> tuple[int, ...] | None:
    """A list of integers (``null`` -> None), of exactly ``length`` items when given."""
    if value is None:
        return None
    if not (isinstance(value, list) and all(is_int(v) for v in value)):
        raise Invalid(f"{where}: expected a list of integers, got {value!r}")
    if length is not None and len(value) != length:
        raise Invalid(f"{where}: expected {length} integers, got {len(value)}")
    return tuple(value)


def strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise Invalid(f"{where}: expected a string or a list of strings")


def error_code(name: object, where: str) -> int:
    """``"NVML_ERROR_GPU_IS_LOST"`` -> pynvml's code; anything else is invalid."""
    code = getattr(pynvml, name, None) if isinstance(name, str) else None
    if not (isinstance(name, str) and name.startswith("NVML_ERROR_") and is_int(code)):
        raise Invalid(f"{where}: {name!r} is not an NVML_ERROR_* name known to pynvml")
    return int(code)  # type: ignore[arg-type]


def errors(value: object, where: str, allowed: frozenset[str]) -> dict[str, int]:
    """Fault injection: pynvml function name (in ``allowed``) -> NVML error code."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise Invalid(f"{where}: expected an object mapping pynvml function names to NVML_ERROR_* names")
    out: dict[str, int] = {}
    for call, code_name in value.items():
        if call not in allowed:
            known = ", ".join(sorted(allowed))
            raise Invalid(f"{where}: {call!r} is not a call the fake serves (one of {known})")
        out[call] = error_code(code_name, f"{where}.{call}")
    return out
