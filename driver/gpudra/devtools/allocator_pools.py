"""The resource pools the allocation simulator draws from: ResourceSlices grouped as the scheduler does.

Slices are grouped by (driver, pool name); only the slices with the highest ``pool.generation`` count, and a
pool is *complete* when ``resourceSliceCount`` of them are present. Counter sets (KEP-4815) come from any
slice of the pool: from 1.35 they sit in slices of their own (``spec.sharedCounters``), which count in
``resourceSliceCount`` like the device slices. A pool that is incomplete or invalid (duplicate device names,
a device consuming a counter its pool does not define, an unparseable quantity or request policy) is not
allocated from; its :attr:`Pool.problem` says why.

Node selection: slices with ``nodeName`` (the node's) or ``allNodes``. ``nodeSelector`` and
``perDeviceNodeSelection`` slices need the Node object and are refused with ValueError.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from gpudra.devtools.allocator_capacity import Capacity, capacities
from gpudra.model.quantity import stored_value

__all__ = ["Consumption", "DeviceKey", "Pool", "PoolDevice", "Taint", "device_id", "gather_pools"]

#: (driver, pool, device): how the scheduler identifies a device.
DeviceKey = tuple[str, str, str]
JSON = Mapping[str, Any]


def device_id(key: DeviceKey) -> str:
    """``driver/pool/device``, as the scheduler prints a device."""
    return "/".join(key)


@dataclass(frozen=True, slots=True)
class Consumption:
    """How much of one counter of a counter set a device takes while it is allocated."""

    counter_set: str
    counter: str
    amount: Fraction


@dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True, slots=True)
class PoolDevice:
    """A published device with what the allocator needs from it."""

    key: DeviceKey
    device: JSON  # the published dict, for CEL and attribute lookups
    node_name: str | None  # the slice's nodeName; None for allNodes
    consumes: tuple[Consumption, ...]
    taints: tuple[Taint, ...]
    multiple: bool  # allowMultipleAllocations
    capacity: Mapping[str, Capacity] = field(default_factory=dict)  # with request policies

    @property
    def name(self) -> str:
        return self.key[2]


@dataclass(frozen=True, slots=True)
class Pool:
    driver: str
    name: str
    generation: int
    devices: tuple[PoolDevice, ...]
    counters: Mapping[str, Mapping[str, Fraction]]  # counter set -> counter -> value
    problem: str | None  # why the pool is not used (incomplete, invalid); None when usable

    @property
    def id(self) -> str:
        return f"{self.driver}/{self.name}"


def _for_node(spec: JSON, node_name: str | None, slice_name: str) -> bool:
    """Whether the slice's devices are available on ``node_name``."""
    if spec.get("nodeSelector") is not None or spec.get("perDeviceNodeSelection"):
        raise ValueError(f"ResourceSlice {slice_name}: nodeSelector/perDeviceNodeSelection are not modelled")
    return spec.get("allNodes") is True or (node_name is not None and spec.get("nodeName") == node_name)


def _node_name(slices: list[JSON]) -> str | None:
    nodes = sorted({s["spec"]["nodeName"] for s in slices if s.get("spec", {}).get("nodeName")})
    if len(nodes) > 1:
        raise ValueError(f"slices of several nodes ({', '.join(nodes)}): pass node_name")
    return nodes[0] if nodes else None


def _taints(device: JSON) -> tuple[Taint, ...]:
    return tuple(
        Taint(t.get("key", ""), t.get("value", ""), t.get("effect", "")) for t in device.get("taints") or []
    )


def _consumes(device: JSON) -> tuple[Consumption, ...]:
    return tuple(
        Consumption(c["counterSet"], name, stored_value(counter["value"])[0])
        for c in device.get("consumesCounters") or []
        for name, counter in (c.get("counters") or {}).items()
    )


def _counter_sets(slices: list[JSON]) -> dict[str, dict[str, Fraction]]:
    sets: dict[str, dict[str, Fraction]] = {}
    for s in slices:
        for counter_set in s["spec"].get("sharedCounters") or []:
            if counter_set["name"] in sets:
                raise ValueError(f"duplicate counter set name {counter_set['name']}")
            sets[counter_set["name"]] = {
                name: stored_value(c["value"])[0] for name, c in (counter_set.get("counters") or {}).items()
            }
    return sets


def _devices(slices: list[JSON], driver: str, pool: str) -> list[PoolDevice]:
    out: list[PoolDevice] = []
    seen: set[str] = set()
    for s in slices:
        bound = None if s["spec"].get("allNodes") else s["spec"].get("nodeName")
        for device in s["spec"].get("devices") or []:
            if device["name"] in seen:
                raise ValueError(f"duplicate device name {device['name']}")
            seen.add(device["name"])
            key = (driver, pool, device["name"])
            multiple = device.get("allowMultipleAllocations") is True
            caps = capacities(device)
            out.append(PoolDevice(key, device, bound, _consumes(device), _taints(device), multiple, caps))
    return out


def _check_counters(devices: list[PoolDevice], sets: Mapping[str, Mapping[str, Fraction]]) -> None:
    for device in devices:
        for c in device.consumes:
            if c.counter not in sets.get(c.counter_set, {}):
                raise ValueError(
                    f"device {device.name} consumes counter {c.counter} of counter set {c.counter_set}, "
                    "which the pool does not define"
                )


def _pool(driver: str, name: str, slices: list[JSON]) -> Pool:
    pool = slices[0]["spec"]["pool"]
    generation, expected = int(pool.get("generation", 0)), int(pool.get("resourceSliceCount", 1))
    if len(slices) != expected:
        problem = (
            f"resource pool {driver}/{name} is incomplete: {len(slices)} of {expected} slices "
            f"of generation {generation} present"
        )
        return Pool(driver, name, generation, (), {}, problem)
    try:
        devices = _devices(slices, driver, name)
        sets = _counter_sets(slices)
        _check_counters(devices, sets)
    except (ValueError, KeyError, TypeError) as err:
        return Pool(driver, name, generation, (), {}, f"resource pool {driver}/{name} is invalid: {err}")
    return Pool(driver, name, generation, tuple(devices), sets, None)


def gather_pools(slices: Iterable[JSON], node_name: str | None = None) -> tuple[tuple[Pool, ...], str | None]:
    """The pools of the slices for ``node_name`` (default: the one node the slices name), in the order
    their first slice appears, each with its newest generation's slices; and the node name."""
    listed = list(slices)
    node = node_name if node_name is not None else _node_name(listed)
    grouped: dict[tuple[str, str], list[JSON]] = {}
    for s in listed:
        spec = s["spec"]
        if not _for_node(spec, node, s.get("metadata", {}).get("name", "?")):
            continue
        group = grouped.setdefault((spec["driver"], spec["pool"]["name"]), [])
        newest = group[0]["spec"]["pool"].get("generation", 0) if group else None
        generation = spec["pool"].get("generation", 0)
        if newest is not None and generation > newest:
            group.clear()
        if newest is None or generation >= newest:
            group.append(s)
    return tuple(_pool(driver, name, group) for (driver, name), group in grouped.items()), node
