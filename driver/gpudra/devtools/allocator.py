"""An allocation simulator for tests and demos: allocate ResourceClaims on one node's ResourceSlices as the
kube-scheduler's structured DRA allocator does, and say why when it cannot.

THIS IS AN EMULATION, NOT THE SCHEDULER (written from ``k8s.io/dynamic-resource-allocation/structured``).
Give it the slices of a node (``resource.k8s.io/v1`` dicts as the plugin publishes them) and the
DeviceClasses; :meth:`Allocator.allocate` returns an :class:`Allocation` (``status.allocation`` via
:meth:`Allocation.as_dict`) or an :class:`AllocationFailure` whose ``reasons`` name the cause per request.
:meth:`Allocator.commit` / :meth:`Allocator.release` track what allocated claims hold (devices, counters).

Modelled: pools (newest generation, complete only), partitionable devices (counter sets in their own
slices, ``consumesCounters`` checked against allocated claims and this claim's earlier picks), ``exactly``
(class + request CEL selectors, ExactCount/All, adminAccess, tolerations of NoSchedule/NoExecute taints) and
``firstAvailable`` requests (result ``request/subrequest``), ``matchAttribute``/``distinctAttribute``
constraints, a backtracking search in published order with a bound on work, config and nodeSelector of
the result, the scheduler's texts for CEL errors. As in the scheduler, an admin-access device is not "in
use" for other claims but its counters are still checked, and incomplete pools are skipped (an ``All``
request on one is an error). Consumable capacity (KEP-5075, the scheduler with ``DRAConsumableCapacity``
on): ``capacity.requests`` against each device's capacities and request policies, devices with
``allowMultipleAllocations`` shared by several claims while their shares fit, each result with a fresh
``shareID`` and its ``consumedCapacity`` (:mod:`.allocator_capacity`). Not modelled: nodeSelector /
perDeviceNodeSelection slices, list-type attributes, binding conditions, ``tolerations`` in the results,
several claims of one pod allocated together (allocate and commit them one by one), scoring.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, TypedDict

from gpudra.devtools.allocator_explain import explain
from gpudra.devtools.allocator_pools import JSON, DeviceKey, Pool, PoolDevice, device_id, gather_pools
from gpudra.devtools.allocator_requests import ClaimError, allocation_config, claim_label, parse_claim
from gpudra.devtools.allocator_search import Pick, Search, SearchAborted, Usage
from gpudra.model import k8stypes
from gpudra.model.quantity import stored_value

__all__ = ["Allocation", "AllocationFailure", "AllocationStatus", "Allocator", "DeviceResult"]

DEFAULT_MAX_STEPS = 100_000


class NodeSelectorRequirement(TypedDict):
    key: str
    operator: str
    values: list[str]


class NodeSelectorTerm(TypedDict, total=False):
    matchFields: list[NodeSelectorRequirement]


class NodeSelector(TypedDict):
    nodeSelectorTerms: list[NodeSelectorTerm]


class AllocationStatus(k8stypes.AllocationResult, total=False):
    """``status.allocation`` of a claim."""

    nodeSelector: NodeSelector


@dataclass(frozen=True, slots=True)
class DeviceResult:
    """One allocated device: ``devices.results[]``."""

    request: str  # "gpu", or "gpu/h100" for a firstAvailable subrequest
    driver: str
    pool: str
    device: str
    admin_access: bool = False
    share_id: str | None = None  # a share of a device with allowMultipleAllocations
    consumed: tuple[tuple[str, str], ...] = ()  # its consumedCapacity: (capacity, quantity)

    @property
    def key(self) -> DeviceKey:
        return self.driver, self.pool, self.device

    def as_dict(self) -> k8stypes.DeviceRequestAllocationResult:
        out: k8stypes.DeviceRequestAllocationResult = {
            "request": self.request,
            "driver": self.driver,
            "pool": self.pool,
            "device": self.device,
        }
        if self.admin_access:
            out["adminAccess"] = True
        if self.share_id is not None:
            out["shareID"] = self.share_id
        if self.consumed:
            out["consumedCapacity"] = dict(self.consumed)
        return out


@dataclass(frozen=True, slots=True)
class Allocation:
    """A claim's allocation; :meth:`as_dict` is its ``status.allocation``."""

    claim: str  # namespace/name
    results: tuple[DeviceResult, ...]
    config: tuple[k8stypes.DeviceAllocationConfiguration, ...] = ()
    node_name: str | None = None  # the node the devices are bound to (nodeSelector), None for allNodes

    @property
    def devices(self) -> tuple[str, ...]:
        """The device names, in result order."""
        return tuple(r.device for r in self.results)

    def as_dict(self) -> AllocationStatus:
        devices: k8stypes.DeviceAllocationResult = {"results": [r.as_dict() for r in self.results]}
        if self.config:
            devices["config"] = copy.deepcopy(list(self.config))
        out: AllocationStatus = {"devices": devices}
        if self.node_name is not None:
            node = NodeSelectorRequirement(key="metadata.name", operator="In", values=[self.node_name])
            out["nodeSelector"] = {"nodeSelectorTerms": [{"matchFields": [node]}]}
        return out


@dataclass(frozen=True, slots=True)
class AllocationFailure:
    """Why a claim cannot be allocated. ``error`` is True when the scheduler reports an error for it (CEL
    error, ``All`` on an incomplete pool, unknown class, the simulator's step bound) rather than leaving the
    pod pending as unschedulable."""

    claim: str
    reasons: tuple[str, ...]
    error: bool = False

    @property
    def message(self) -> str:
        return "\n".join(self.reasons)

    def __str__(self) -> str:
        return f"cannot allocate claim {self.claim}: " + "; ".join(self.reasons)


class Allocator:
    """Allocates claims on fixed slices and classes, one claim at a time, tracking committed claims."""

    def __init__(
        self,
        slices: Iterable[JSON],
        classes: Iterable[JSON],
        *,
        node_name: str | None = None,
        max_steps: int = DEFAULT_MAX_STEPS,
    ) -> None:
        """``slices``: ResourceSlice dicts of one node (``node_name`` picks one when they name several);
        ``classes``: DeviceClass dicts; ``max_steps``: bound on search work per claim."""
        self.pools, self.node_name = gather_pools(slices, node_name)
        self.classes: dict[str, JSON] = {c["metadata"]["name"]: c for c in classes}
        self.max_steps = max_steps
        self._devices: dict[DeviceKey, tuple[Pool, PoolDevice]] = {
            d.key: (p, d) for p in self.pools for d in p.devices
        }
        self._committed: dict[str, tuple[DeviceResult, ...]] = {}

    # ---- allocate --------------------------------------------------------------------------------------

    def allocate(self, claim: JSON) -> Allocation | AllocationFailure:
        """The claim's allocation given what committed claims hold, or why there is none. Commits nothing."""
        try:
            parsed = parse_claim(claim, self.classes)
        except ClaimError as err:
            return AllocationFailure(claim_label(claim), (str(err),), error=True)
        usage = self.usage()
        try:
            picks = Search(parsed, self.pools, usage, self.max_steps).run()
        except SearchAborted as err:
            return AllocationFailure(parsed.label, (str(err),), error=True)
        if picks is None:
            return AllocationFailure(parsed.label, explain(parsed, self.pools, usage, self.max_steps))
        return self._allocation(claim, parsed.label, picks)

    def _allocation(self, claim: JSON, label: str, picks: tuple[Pick, ...]) -> Allocation:
        results = tuple(
            DeviceResult(
                p.alternative.name, *p.device.key, admin_access=p.alternative.admin_access,
                share_id=None if p.share is None else str(uuid.uuid4()),
                consumed=tuple((name, a.text) for name, a in sorted((p.share or {}).items())),
            )
            for p in picks
        )  # fmt: skip
        chosen = list({p.alternative.request: p.alternative for p in picks}.values())
        nodes = [p.device.node_name for p in picks if p.device.node_name is not None]
        config = tuple(allocation_config(claim, chosen, self.classes))
        return Allocation(label, results, config, nodes[0] if nodes else None)

    # ---- what allocated claims hold --------------------------------------------------------------------

    def commit(self, claim_uid: str, allocation: Allocation | Mapping[str, Any]) -> None:
        """Record that claim ``claim_uid`` holds ``allocation`` (ours, or a claim's ``status.allocation``):
        its devices are in use (admin access ones are not; a share, with a ``shareID``, consumes its
        ``consumedCapacity`` instead) and consume their counters until released."""
        if isinstance(allocation, AllocationFailure):
            raise TypeError(f"claim {claim_uid}: cannot commit a failed allocation: {allocation}")
        if claim_uid in self._committed:
            raise ValueError(f"claim {claim_uid} is already allocated")
        results = allocation.results if isinstance(allocation, Allocation) else _parse_results(allocation)
        usage = self.usage()
        for r in results:
            if not r.admin_access and r.key in usage.in_use:
                raise ValueError(
                    f"device {device_id(r.key)} is already allocated to claim {usage.in_use[r.key]}"
                )
            if not r.admin_access and r.share_id is None and r.key in usage.shares:
                holders = ", ".join(usage.shares[r.key])
                raise ValueError(f"device {device_id(r.key)} is shared by claims {holders}: cannot be whole")
        self._committed[claim_uid] = results

    def release(self, claim_uid: str) -> None:
        """Forget claim ``claim_uid``'s allocation (KeyError when it has none)."""
        del self._committed[claim_uid]

    def usage(self) -> Usage:
        """Devices in use (-> claim uid), counters consumed, and shares, by the committed claims."""
        in_use: dict[DeviceKey, str] = {}
        consumed: dict[tuple[str, str, str], dict[str, Fraction]] = {}
        capacity: dict[DeviceKey, dict[str, Fraction]] = {}
        shares: dict[DeviceKey, tuple[str, ...]] = {}
        for uid, results in self._committed.items():
            for r in results:
                if r.admin_access:
                    continue
                if r.share_id is None:
                    in_use[r.key] = uid
                elif r.key in capacity:  # counters: consumed by the first share only
                    _add(capacity[r.key], r.consumed)
                    shares[r.key] = (*shares[r.key], uid)
                    continue
                else:
                    _add(capacity.setdefault(r.key, {}), r.consumed)
                    shares[r.key] = (uid,)
                pool_device = self._devices.get(r.key)
                for c in pool_device[1].consumes if pool_device else ():
                    counters = consumed.setdefault((r.driver, r.pool, c.counter_set), {})
                    counters[c.counter] = counters.get(c.counter, Fraction(0)) + c.amount
        return Usage(in_use, consumed, capacity, shares)


def _add(held: dict[str, Fraction], consumed: tuple[tuple[str, str], ...]) -> None:
    for name, text in consumed:
        held[name] = held.get(name, Fraction(0)) + stored_value(text)[0]


def _parse_results(allocation: Mapping[str, Any]) -> tuple[DeviceResult, ...]:
    return tuple(
        DeviceResult(
            r["request"], r["driver"], r["pool"], r["device"], r.get("adminAccess") is True,
            share_id=r.get("shareID"),
            consumed=tuple(sorted((k, str(v)) for k, v in (r.get("consumedCapacity") or {}).items())),
        )
        for r in (allocation.get("devices") or {}).get("results") or []
    )  # fmt: skip
