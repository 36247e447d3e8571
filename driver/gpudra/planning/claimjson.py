"""The ResourceClaim JSON prepare reads, checked once at the edge (pure).

The plugin reads claims as raw JSON. The API server validates what it stores, but a field of the wrong JSON
type must not become an ``AttributeError`` deep in planning, nor a value the plugin records (a numeric
``shareID`` in the checkpoint) or builds a path from (a request named ``..`` in a container mount). So every
field :func:`gpudra.planning.plan.plan_claim` reads is checked here, in one place: its JSON type, and for
every value the plugin records or turns into a name, the format the API defines for it
(:mod:`gpudra.planning.claimnames`). A problem raises :class:`ClaimJsonError`, naming the field the way the
apiserver does: ``status.allocation.devices.results[1].device: expected a string, got list``.

What the plugin does not read is not checked: a result or config of another driver is read only as far as
telling that it is not ours. ``null`` is refused wherever a value is read: the apiserver omits unset fields
and never writes ``null``, so one means the JSON did not come from it. An absent optional field keeps its
meaning (no ``status.allocation``: the claim is not allocated yet).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Final, TypeVar

from gpudra.model import names
from gpudra.model.quantity import parse_quantity
from gpudra.planning import claimnames
from gpudra.planning.apirules import MAX_ATTRIBUTES_AND_CAPACITIES, check_qualified_name
from gpudra.planning.claimnames import NameFormat
from gpudra.planning.config import OpaqueConfig
from gpudra.planning.devicemeta import POD_CLAIM_NAME_ANNOTATION

RESULTS: Final = "status.allocation.devices.results"
CONFIG: Final = "status.allocation.devices.config"
POD_CLAIM_NAME: Final = f"metadata.annotations[{POD_CLAIM_NAME_ANNOTATION}]"
SOURCES: Final = ("FromClass", "FromClaim")
_ABSENT: Final = object()

JsonObject = Mapping[str, object]
_T = TypeVar("_T")


class ClaimJsonError(ValueError):
    """A field of the claim that the plugin cannot use; ``path`` names it (``status.allocation...``)."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path or 'the claim'}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True, slots=True)
class AllocatedDevice:
    """One allocation result of our driver, every field checked."""

    path: str  # where the claim holds it, e.g. ``status.allocation.devices.results[2]``
    request: str  # a request name (``req`` or ``req/sub``)
    pool: str  # a pool name
    device: str  # a DNS label
    admin_access: bool = False
    share_id: str | None = None  # a normalized UID
    #: ``consumedCapacity``: (capacity name, exact quantity), sorted by name; empty when absent
    consumed_capacity: tuple[tuple[str, Fraction], ...] = ()


@dataclass(frozen=True, slots=True)
class CheckedClaim:
    """What prepare reads from a ResourceClaim, every field checked; None where the claim leaves it out."""

    uid: str | None = None
    name: str | None = None
    namespace: str | None = None
    pod_claim_name: str | None = None  # a DNS label; None when absent or empty
    devices: tuple[AllocatedDevice, ...] = ()  # the results of our driver, in order
    configs: tuple[OpaqueConfig, ...] = ()  # the opaque configs for our driver, in list order


def check_claim(claim: object) -> CheckedClaim:
    """Check every field prepare reads; raises :class:`ClaimJsonError` for the first one that is wrong."""
    root = _object(claim, "")
    meta = _optional(root, "metadata", "metadata", _object) or {}
    annotations = _optional(meta, "annotations", "metadata.annotations", _object) or {}
    pod_claim_name = _optional(annotations, POD_CLAIM_NAME_ANNOTATION, POD_CLAIM_NAME, _string)
    if pod_claim_name:  # an empty one is no pod claim name
        _check_format(pod_claim_name, POD_CLAIM_NAME, claimnames.DNS_LABEL)
    devices = _device_allocation(root)
    return CheckedClaim(
        uid=_optional(meta, "uid", "metadata.uid", _string),
        name=_optional(meta, "name", "metadata.name", _string),
        namespace=_optional(meta, "namespace", "metadata.namespace", _string),
        pod_claim_name=pod_claim_name or None,
        devices=_our_results(devices),
        configs=_our_configs(devices),
    )


def _device_allocation(root: JsonObject) -> JsonObject:
    status = _optional(root, "status", "status", _object) or {}
    allocation = _optional(status, "allocation", "status.allocation", _object) or {}
    return _optional(allocation, "devices", "status.allocation.devices", _object) or {}


# ---- allocation results -------------------------------------------------------------------------------


def _our_results(devices: JsonObject) -> tuple[AllocatedDevice, ...]:
    out = []
    for i, item in enumerate(_optional(devices, "results", RESULTS, _list) or ()):
        path = f"{RESULTS}[{i}]"
        result = _object(item, path)
        if _required(result, "driver", path, _string) == names.DRIVER_NAME:
            out.append(_our_result(result, path))
    return tuple(out)


def _our_result(result: JsonObject, path: str) -> AllocatedDevice:
    share_id = _optional(result, "shareID", f"{path}.shareID", _string)
    if share_id is not None:
        _check_format(share_id, f"{path}.shareID", claimnames.SHARE_ID)
    return AllocatedDevice(
        path=path,
        request=_formatted(result, "request", path, claimnames.REQUEST_NAME),
        pool=_formatted(result, "pool", path, claimnames.POOL_NAME),
        device=_formatted(result, "device", path, claimnames.DNS_LABEL),
        admin_access=_optional(result, "adminAccess", f"{path}.adminAccess", _bool) or False,
        share_id=share_id,
        consumed_capacity=_consumed(result, f"{path}.consumedCapacity"),
    )


def _consumed(result: JsonObject, path: str) -> tuple[tuple[str, Fraction], ...]:
    """``consumedCapacity``: capacity names (``[domain/]identifier``) to non-negative quantities."""
    consumed = _optional(result, "consumedCapacity", path, _object)
    if consumed is None:
        return ()
    if len(consumed) > MAX_ATTRIBUTES_AND_CAPACITIES:
        raise ClaimJsonError(path, f"must have at most {MAX_ATTRIBUTES_AND_CAPACITIES} entries")
    out = []
    for name, raw in consumed.items():
        where = f"{path}[{name}]"
        try:
            check_qualified_name(name)
        except ValueError as e:
            raise ClaimJsonError(where, f"invalid capacity name: {e}") from None
        text = _string(raw, where)
        try:
            value = parse_quantity(text)
        except ValueError as e:
            raise ClaimJsonError(where, str(e)) from None
        if value < 0:
            raise ClaimJsonError(where, f"{json.dumps(text)} is negative")
        out.append((name, value))
    return tuple(sorted(out))


# ---- opaque configs -----------------------------------------------------------------------------------


def _our_configs(devices: JsonObject) -> tuple[OpaqueConfig, ...]:
    out = []
    for i, item in enumerate(_optional(devices, "config", CONFIG, _list) or ()):
        path = f"{CONFIG}[{i}]"
        entry = _object(item, path)
        opaque = _optional(entry, "opaque", f"{path}.opaque", _object)
        if opaque is None:  # a kind of configuration other than opaque: not ours
            continue
        if _required(opaque, "driver", f"{path}.opaque", _string) == names.DRIVER_NAME:
            out.append(_our_config(entry, opaque, path))
    return tuple(out)


def _our_config(entry: JsonObject, opaque: JsonObject, path: str) -> OpaqueConfig:
    source = _required(entry, "source", path, _string)
    if source not in SOURCES:
        allowed = " or ".join(json.dumps(s) for s in SOURCES)
        raise ClaimJsonError(f"{path}.source", f"unsupported value {json.dumps(source)}: must be {allowed}")
    requests = []
    for j, item in enumerate(_optional(entry, "requests", f"{path}.requests", _list) or ()):
        where = f"{path}.requests[{j}]"
        requests.append(_check_format(_string(item, where), where, claimnames.REQUEST_NAME))
    params_path = f"{path}.opaque.parameters"
    params = _required(opaque, "parameters", f"{path}.opaque", _object)
    return OpaqueConfig(
        source=source,
        requests=tuple(requests),
        api_version=_non_empty(params, "apiVersion", params_path),
        kind=_non_empty(params, "kind", params_path),
        parameters=params,
        path=params_path,
    )


# ---- typed access -------------------------------------------------------------------------------------


def _type_name(value: object) -> str:
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


def _object(value: object, path: str) -> JsonObject:
    if isinstance(value, dict):  # parsed JSON: its keys are strings
        return value
    raise ClaimJsonError(path, f"expected an object, got {_type_name(value)}")


def _list(value: object, path: str) -> Sequence[object]:
    if isinstance(value, list):
        return value
    raise ClaimJsonError(path, f"expected a list, got {_type_name(value)}")


def _string(value: object, path: str) -> str:
    if isinstance(value, str):
        return value
    raise ClaimJsonError(path, f"expected a string, got {_type_name(value)}")


def _bool(value: object, path: str) -> bool:
    if isinstance(value, bool):
        return value
    raise ClaimJsonError(path, f"expected a bool, got {_type_name(value)}")


def _optional(obj: JsonObject, key: str, path: str, read: Callable[[object, str], _T]) -> _T | None:
    """The field converted by ``read``, or None when it is absent (``null`` is not absent: it is refused)."""
    value = obj.get(key, _ABSENT)
    return None if value is _ABSENT else read(value, path)


def _required(obj: JsonObject, key: str, base: str, read: Callable[[object, str], _T]) -> _T:
    path = f"{base}.{key}"
    if key not in obj:
        raise ClaimJsonError(path, "required value is missing")
    return read(obj[key], path)


def _non_empty(obj: JsonObject, key: str, base: str) -> str:
    value = _required(obj, key, base, _string)
    if not value:
        raise ClaimJsonError(f"{base}.{key}", "must not be empty")
    return value


def _formatted(obj: JsonObject, key: str, base: str, fmt: NameFormat) -> str:
    return _check_format(_required(obj, key, base, _string), f"{base}.{key}", fmt)


def _check_format(value: str, path: str, fmt: NameFormat) -> str:
    problem = fmt.problem(value)
    if problem is not None:
        raise ClaimJsonError(path, problem)
    return value
