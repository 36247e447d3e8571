"""Selectors evaluated on one device for ``gpudra explain``: each outcome, and for an error the advice.

The scheduler evaluates the DeviceClass's selectors, then the request's, and stops at the first that is
false or fails; the later ones are :attr:`Outcome.SKIPPED` here. An evaluation error is not a non-match: it
aborts the allocation of the whole claim. For a missing key the advice is the guarded form of the selector
(``'x' in device.attributes['gpudra.io'] && ...``), and a hint when the key lives in another domain of the
device (a selector copied from another driver); for a type error, how to compare the value's type.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, MutableMapping
from typing import Final, cast

from gpudra.devtools.allocator_pools import DeviceKey, PoolDevice
from gpudra.devtools.allocator_requests import Alternative
from gpudra.devtools.cel import CelCompileError, CelError, compile_selector
from gpudra.devtools.explain_model import Outcome, SelectorResult
from gpudra.model import k8stypes

__all__ = ["ABORTS", "Evaluations", "guarded_form", "selector_results", "shown"]

#: (expression, device) -> (outcome, error message)
Evaluations = MutableMapping[tuple[str, DeviceKey], tuple[Outcome, str | None]]

ABORTS: Final = "in Kubernetes an evaluation error aborts the allocation of the whole claim"

#: ``device.attributes['domain'].key`` or ``device.capacity["domain"]['key']``
_ACCESS: Final = re.compile(
    r"device\.(?P<map>attributes|capacity)\[\s*(?P<q>['\"])(?P<domain>[^'\"]*)(?P=q)\s*\]"
    r"(?:\.(?P<ident>[A-Za-z_][A-Za-z0-9_]*)|\[\s*(?P<q2>['\"])(?P<key>[^'\"]*)(?P=q2)\s*\])"
)
_MISSING: Final = re.compile(r"no such key: (?P<key>.+)")


def shown(expression: str) -> str:
    """An expression on one line (YAML folding leaves newlines and runs of spaces)."""
    return " ".join(expression.split())


def _evaluate(expression: str, device: PoolDevice, cache: Evaluations) -> tuple[Outcome, str | None]:
    key = (expression, device.key)
    if key not in cache:
        try:
            published = cast(k8stypes.Device, device.device)
            matched = compile_selector(expression).matches(published, device.key[0])
            cache[key] = (Outcome.MATCH if matched else Outcome.NO_MATCH, None)
        except CelCompileError as err:
            cache[key] = (Outcome.ERROR, f"CEL compile error: {err}")
        except CelError as err:
            cache[key] = (Outcome.ERROR, f"CEL runtime error: {err}")
    return cache[key]


def selector_results(alt: Alternative, device: PoolDevice, cache: Evaluations) -> tuple[SelectorResult, ...]:
    """The class's selectors, then the request's, in the scheduler's order."""
    out: list[SelectorResult] = []
    stopped = False
    for source, expressions in (("class", alt.class_selectors), ("request", alt.selectors)):
        for index, expression in enumerate(expressions):
            if stopped:
                out.append(SelectorResult(source, index, Outcome.SKIPPED))
                continue
            outcome, message = _evaluate(expression, device, cache)
            stopped = outcome is not Outcome.MATCH
            if outcome is Outcome.ERROR and message is not None:
                out.append(_error(source, index, expression, device, message))
            else:
                out.append(SelectorResult(source, index, outcome))
    return tuple(out)


# ---- advice for an error -------------------------------------------------------------------------------


def _published(device: PoolDevice, field: str) -> dict[str, dict[str, str]]:
    """domain -> key -> value type (``string``, ``int``, ``quantity``, ...) of the device's attributes or
    capacities; an unqualified published name is in the driver's domain."""
    out: dict[str, dict[str, str]] = {}
    for name, value in (device.device.get(field) or {}).items():
        domain, _, ident = name.rpartition("/")
        kind = "quantity" if field == "capacity" else next(iter(value), "?")
        out.setdefault(domain or device.key[0], {})[ident] = kind
    return out


def _accesses(expression: str) -> Iterator[tuple[str, str, str]]:
    """(attributes|capacity, domain, key) read in ``expression``."""
    for m in _ACCESS.finditer(expression):
        yield m["map"], m["domain"], m["ident"] or m["key"]


def _guarded_already(expression: str, field: str, domain: str, key: str) -> bool:
    table = rf"device\.{field}\[\s*['\"]{re.escape(domain)}['\"]\s*\]"
    return bool(
        re.search(rf"['\"]{re.escape(key)}['\"]\s+in\s+{table}", expression)
        or re.search(rf"has\(\s*{table}\.{re.escape(key)}\s*\)", expression)
    )


def guarded_form(expression: str, device: PoolDevice, missing: str) -> str | None:
    """``expression`` with a guard in front for each read of ``missing`` the device does not publish (None
    when the expression reads it some other way)."""
    guards: list[str] = []
    for field, domain, key in _accesses(expression):
        if key != missing or key in _published(device, field).get(domain, {}):
            continue
        guard = f"'{key}' in device.{field}['{domain}']"
        if guard not in guards and not _guarded_already(expression, field, domain, key):
            guards.append(guard)
    if not guards:
        return None
    body = shown(expression)
    if "||" in body or "?" in body:
        body = f"({body})"
    return " && ".join([*guards, body])


def _missing_hint(expression: str, device: PoolDevice, missing: str) -> str:
    for field, domain, key in _accesses(expression):
        if key != missing:
            continue
        published = _published(device, field)
        elsewhere = sorted(d for d, keys in published.items() if key in keys and d != domain)
        if domain not in published and elsewhere:
            return (
                f"this device publishes no {field} in domain {domain!r}; it has {key!r} in domain "
                f"{elsewhere[0]!r}: device.{field}['{elsewhere[0]}'].{key}"
            )
    return f"a missing key is an error, not a non-match: {ABORTS}; guard optional names"


def _type_hint(expression: str, device: PoolDevice) -> str:
    types: dict[str, str] = {}
    for field, domain, key in _accesses(expression):
        kind = _published(device, field).get(domain, {}).get(key)
        if kind is not None:
            types[key] = kind
    if "quantity" in types.values():
        return (
            "capacities are quantities: compare them with .compareTo(quantity('40Gi')) >= 0 (or "
            ".isGreaterThan / .isLessThan), not with <, >, == and a number"
        )
    if "version" in types.values():
        return "versions are semver values: compare them with .compareTo(semver('1.2.3')) >= 0"
    listed = ", ".join(f"{k} is {v}" for k, v in sorted(types.items()))
    return f"a type error: the operand types do not fit the operator or function ({listed or 'check types'})"


def _error(source: str, index: int, expression: str, device: PoolDevice, message: str) -> SelectorResult:
    missing = _MISSING.search(message)
    if missing is not None:
        key = missing["key"]
        guarded = guarded_form(expression, device, key)
        hint = _missing_hint(expression, device, key)
        return SelectorResult(source, index, Outcome.ERROR, message, guarded, hint)
    if "no such overload" in message:
        return SelectorResult(source, index, Outcome.ERROR, message, hint=_type_hint(expression, device))
    if "could not be converted to bool" in message:
        hint = "a selector must be a bool expression"
        return SelectorResult(source, index, Outcome.ERROR, message, hint=hint)
    return SelectorResult(source, index, Outcome.ERROR, message)
