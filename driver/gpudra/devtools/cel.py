"""Evaluate Kubernetes DRA CEL selectors against ResourceSlice devices, for tests, docs and tools.

THIS IS AN EMULATION, NOT THE SCHEDULER. Kubernetes evaluates selectors with cel-go and its own libraries;
this module runs them on celpy (the ``cel-python`` package) with the Kubernetes additions from
:mod:`gpudra.devtools.cel_k8s`, and reproduces what the scheduler hands a selector
(``k8s.io/dynamic-resource-allocation/cel``):

* ``device.driver``; ``device.allowMultipleAllocations`` (KEP-5075, as with ``DRAConsumableCapacity`` on:
  false unless the device sets it); ``device.attributes['<domain>'].<id>`` and
  ``device.capacity['<domain>'].<id>``, where an unqualified published name belongs to the driver's domain
  (``memory`` -> ``gpudra.io``) and a qualified one to its own (``resource.kubernetes.io/pciBusID``);
* attribute values as CEL string/int/bool, ``version`` attributes as semver values, capacities as
  quantities;
* a missing key inside a domain is a RUNTIME ERROR (``no such key: memory``), which aborts the claim's
  allocation in the scheduler; guard optional names: ``'memory' in device.capacity['gpudra.io'] && ...``.
  As in Kubernetes, an unknown DOMAIN reads as an empty map, so the error names the key, not the domain.

What differs from the scheduler: there is no type checker, so a type mismatch between literals
(``1 == 'a'`` is false here, a compile error there) or a non-bool result shows up only at run time;
undeclared variables/functions and unknown ``device`` fields are still compile errors. No cost limits;
``cel.bind`` is not supported. The product never imports this module at run time (celpy is for tests and
tools only).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import celpy
import lark
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError, CELFunction, CELSyntaxError, CELUnsupportedError

from gpudra.devtools.cel_k8s import (
    FUNCTIONS,
    GLOBAL_FUNCTIONS,
    MACROS,
    MEMBER_FUNCTIONS,
    TYPE_NAMES,
    Quantity,
    Semver,
    cel_type_name,
)
from gpudra.model import k8stypes, names

__all__ = [
    "CelCompileError",
    "CelError",
    "CelRuntimeError",
    "Selector",
    "compile_selector",
    "device_matches",
    "device_value",
    "evaluate_selector",
    "runtime_message",
]

DEVICE_VARIABLE: Final = "device"
DEVICE_FIELDS: Final = frozenset({"driver", "allowMultipleAllocations", "attributes", "capacity"})


class CelError(Exception):
    """A selector that cannot be compiled or evaluated; the message reads like the Kubernetes one."""


class CelCompileError(CelError):
    """The expression does not compile (syntax, undeclared reference, unsupported construct)."""


class CelRuntimeError(CelError):
    """Evaluation failed, e.g. ``no such key: memory``; the scheduler aborts the claim's allocation."""


# ---- the device as CEL sees it -------------------------------------------------------------------------


class _DomainMap(celtypes.MapType):
    """``device.attributes`` / ``device.capacity``: an unknown domain reads as an empty map."""

    def __getitem__(self, key: Any) -> celtypes.Value:
        if isinstance(key, str) and not dict.__contains__(self, key):
            return celtypes.MapType()
        return cast(celtypes.Value, super().__getitem__(key))


def _attribute_value(name: str, attr: k8stypes.DeviceAttribute) -> object:
    if "string" in attr:
        return celtypes.StringType(attr["string"])
    if "bool" in attr:
        return celtypes.BoolType(attr["bool"])
    if "int" in attr:
        return celtypes.IntType(attr["int"])
    if "version" in attr:
        try:
            return Semver.parse(attr["version"])
        except ValueError as err:
            raise CelRuntimeError(f"attribute {name}: parse semantic version: {err}") from err
    raise CelRuntimeError(f"attribute {name}: unsupported attribute value")


def _capacity_value(name: str, capacity: k8stypes.DeviceCapacity) -> object:
    try:
        return Quantity.parse(capacity["value"])
    except (KeyError, ValueError) as err:
        raise CelRuntimeError(f"capacity {name}: {err}") from err


def _by_domain(values: Mapping[str, object], driver: str) -> _DomainMap:
    domains: dict[celtypes.StringType, dict[celtypes.StringType, object]] = {}
    for name, value in values.items():
        domain, _, ident = name.rpartition("/")
        domains.setdefault(celtypes.StringType(domain or driver), {})[celtypes.StringType(ident)] = value
    return _DomainMap({domain: celtypes.MapType(inner) for domain, inner in domains.items()})


def device_value(device: k8stypes.Device, driver: str = names.DRIVER_NAME) -> celtypes.MapType:
    """The ``device`` variable for ``device`` as published by ``driver``."""
    attributes = {k: _attribute_value(k, v) for k, v in device.get("attributes", {}).items()}
    capacity = {k: _capacity_value(k, v) for k, v in device.get("capacity", {}).items()}
    return celtypes.MapType({
        celtypes.StringType("driver"): celtypes.StringType(driver),
        celtypes.StringType("allowMultipleAllocations"): celtypes.BoolType(
            device.get("allowMultipleAllocations") is True
        ),
        celtypes.StringType("attributes"): _by_domain(attributes, driver),
        celtypes.StringType("capacity"): _by_domain(capacity, driver),
    })


# ---- compile -------------------------------------------------------------------------------------------


@functools.cache
def _environment() -> celpy.Environment:
    return celpy.Environment()  # builds the lark parser (~0.3 s): once per process


def _where(token: object) -> str:
    line, column = getattr(token, "line", None), getattr(token, "column", None)
    return f"ERROR: <input>:{line or 1}:{column or 1}: "


def _is_ident(tree: object, name: str) -> bool:
    """True when ``tree`` is the bare identifier ``name`` (``member -> primary -> ident``)."""
    while isinstance(tree, lark.Tree) and tree.data in ("member", "primary") and len(tree.children) < 2:
        tree = tree.children[0]
    return isinstance(tree, lark.Tree) and tree.data == "ident" and tree.children[0] == name


def _macro_variables(ast: lark.Tree[lark.Token]) -> set[str]:
    bound: set[str] = set()
    for node in ast.find_data("member_dot_arg"):
        args = node.children[2] if len(node.children) > 2 else None
        if str(node.children[1]) in MACROS and isinstance(args, lark.Tree):
            first = args.children[0]
            if isinstance(first, lark.Tree):
                bound.update(str(ident.children[0]) for ident in first.find_data("ident"))
    return bound


def _check_node(node: lark.Tree[lark.Token], bound: set[str]) -> tuple[str, object] | None:
    """The compile error for one node and the token it is about, or None."""
    first = node.children[0] if node.children else None
    second = node.children[1] if len(node.children) > 1 else None
    undeclared = "undeclared reference to '{}' (in container '')"
    if node.data == "ident" and str(first) not in bound | TYPE_NAMES | {DEVICE_VARIABLE, "cel"}:
        return undeclared.format(first), first
    if node.data == "ident_arg" and str(first) not in GLOBAL_FUNCTIONS:
        return undeclared.format(first), first
    if node.data == "member_dot_arg" and _is_ident(first, "cel"):
        return f"cel.{second} is not supported by gpudra's CEL emulation", second
    if node.data == "member_dot_arg" and str(second) not in MEMBER_FUNCTIONS:
        return undeclared.format(second), second
    if node.data == "member_dot" and _is_ident(first, DEVICE_VARIABLE) and str(second) not in DEVICE_FIELDS:
        return f"undefined field '{second}'", second
    if node.data in ("dot_ident", "dot_ident_arg", "member_object"):
        return "message and package references are not supported in DRA selectors", first
    return None


def _position(token: object) -> tuple[int, int]:
    return getattr(token, "line", None) or 0, getattr(token, "column", None) or 0


def _check(ast: lark.Tree[lark.Token]) -> None:
    """Raise the first (in source order) problem a type checker would report; cel-go reports it likewise."""
    bound = _macro_variables(ast)
    problems = [p for p in (_check_node(node, bound) for node in ast.iter_subtrees()) if p is not None]
    if problems:
        message, token = min(problems, key=lambda p: _position(p[1]))
        raise CelCompileError(_where(token) + message)


@dataclass(frozen=True, eq=False)
class Selector:
    """A compiled selector expression; :meth:`matches` evaluates it for one device."""

    expression: str
    _runner: celpy.Runner

    def matches(self, device: k8stypes.Device, driver: str = names.DRIVER_NAME) -> bool:
        """Evaluate for ``device``; raises :class:`CelRuntimeError` like the scheduler's runtime errors."""
        activation = {DEVICE_VARIABLE: device_value(device, driver)}
        try:
            result = self._runner.evaluate(activation)
        except CELEvalError as err:
            raise CelRuntimeError(runtime_message(err)) from err
        except (CELUnsupportedError, CELSyntaxError, TypeError) as err:
            raise CelRuntimeError(f"{type(err).__name__}: {err}") from err
        if not isinstance(result, celtypes.BoolType):
            kind = cel_type_name(result)
            raise CelRuntimeError(f"CEL result of type {kind} could not be converted to bool")
        return bool(result)


@functools.lru_cache(maxsize=512)
def compile_selector(expression: str) -> Selector:
    """Parse and check ``expression``; raises :class:`CelCompileError`."""
    env = _environment()
    try:
        ast = env.compile(expression)
    except CELParseError as err:
        detail = str(err).rstrip("\n").replace("\n", "\n | ")
        raise CelCompileError(f"{_where(err)}Syntax error\n | {detail}") from err
    _check(ast)
    return Selector(expression, env.program(ast, functions=cast("dict[str, CELFunction]", FUNCTIONS)))


def evaluate_selector(expression: str, device: k8stypes.Device, driver: str = names.DRIVER_NAME) -> bool:
    """Whether ``device`` (published by ``driver``) matches ``expression``.

    Raises :class:`CelCompileError` or :class:`CelRuntimeError` (e.g. ``no such key: memory``).
    """
    return compile_selector(expression).matches(device, driver)


def device_matches(
    expressions: Iterable[str], device: k8stypes.Device, driver: str = names.DRIVER_NAME
) -> bool:
    """All selectors in order (class selectors first, then the request's), stopping at the first false.

    That is the scheduler's order: a device the class rejects never reaches the request's selectors, so a
    request may read an attribute every device of its class has without guarding it.
    """
    return all(evaluate_selector(expression, device, driver) for expression in expressions)


# ---- errors --------------------------------------------------------------------------------------------

_MEMBER_MISSING: Final = re.compile(r"no such member in mapping: '(.*)'", re.DOTALL)
_UNDECLARED: Final = re.compile(r"(undeclared reference to '[^']*')")


def runtime_message(err: CELEvalError) -> str:
    """celpy's error value as the message cel-go gives (``no such key: memory``, ``no such overload``)."""
    text = str(err.args[0]) if err.args else "evaluation error"
    detail: Sequence[object] = err.args[2] if len(err.args) > 2 and isinstance(err.args[2], tuple) else ()
    if text == "no such key" and detail:
        return f"no such key: {detail[0]}"
    member = _MEMBER_MISSING.fullmatch(text)
    if member:
        return f"no such key: {member.group(1)}"
    if text.startswith("found no matching overload") or text == "no such overload":
        return "no such overload"
    undeclared = _UNDECLARED.match(text)
    return undeclared.group(1) if undeclared else text
