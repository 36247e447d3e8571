"""What ``gpudra explain`` found, as plain frozen data.

One :class:`ClaimReport` per claim; in it one :class:`NodeReport` per node the claim was explained against
(its verdict comes from the allocation simulator); in that one :class:`RequestReport` per request, or per
subrequest of a ``firstAvailable`` request, with one :class:`DeviceReport` per device checked and one
:class:`ConstraintReport` per constraint that covers it. Built by :mod:`.explain_eval`, rendered by
:mod:`.explain_text` and :mod:`.explain_json`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from fractions import Fraction
from typing import Any

from gpudra.devtools.allocator import DeviceResult
from gpudra.devtools.allocator_pools import JSON
from gpudra.devtools.allocator_requests import Toleration

__all__ = [
    "CapacityCheck",
    "ClaimInput",
    "ClaimReport",
    "ConstraintReport",
    "CounterCheck",
    "DeviceReport",
    "Held",
    "NodeReport",
    "Outcome",
    "PoolReport",
    "RequestReport",
    "RequestVerdict",
    "SelectorResult",
    "TaintCheck",
    "Target",
    "ValueGroup",
    "Verdict",
]


class Verdict(StrEnum):
    """A claim on one node, as the scheduler would see it."""

    ALLOCATABLE = "allocatable"
    PENDING = "pending"  # unschedulable: the pod waits
    ERROR = "error"  # the scheduler reports an error (a CEL error, an unknown class): the pod waits too


class RequestVerdict(StrEnum):
    """One request or subrequest."""

    ALLOCATED = "allocated"  # the claim's allocation gives it devices
    SATISFIABLE = "satisfiable"  # it could be allocated alone; the claim's allocation does not use it
    UNSATISFIABLE = "unsatisfiable"  # not even alone
    ERROR = "error"  # a selector error aborts the allocation
    NOT_NEEDED = "not-needed"  # a subrequest after the one that was allocated


class Outcome(StrEnum):
    """One selector on one device."""

    MATCH = "match"
    NO_MATCH = "no-match"
    ERROR = "error"
    SKIPPED = "skipped"  # an earlier selector was false or failed: the scheduler does not evaluate it


@dataclass(frozen=True, slots=True)
class Target:
    """The devices to explain against: one node's slices (``node`` None: only slices for all nodes)."""

    node: str | None
    devices_from: str  # "profile dgx-h100", "cluster", "slices from files"
    slices: tuple[JSON, ...]
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ClaimInput:
    """A claim to explain: a ResourceClaim (a template's claim spec becomes one), where it came from."""

    claim: Mapping[str, Any]
    kind: str  # ResourceClaim | ResourceClaimTemplate
    source: str  # "file.yaml (document 2)", "cluster"

    @property
    def label(self) -> str:
        meta = self.claim.get("metadata") or {}
        return f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"

    @property
    def uid(self) -> str | None:
        uid = (self.claim.get("metadata") or {}).get("uid")
        return uid if isinstance(uid, str) else None


@dataclass(frozen=True, slots=True)
class Held:
    """A claim that holds devices: its label and its ``status.allocation``."""

    label: str  # namespace/name
    allocation: Mapping[str, Any]
    uid: str | None = None


@dataclass(frozen=True, slots=True)
class SelectorResult:
    source: str  # "class" | "request"
    index: int
    outcome: Outcome
    error: str | None = None  # the evaluation error, as the scheduler words it
    guarded: str | None = None  # the selector with guards for the keys this device lacks
    hint: str | None = None


@dataclass(frozen=True, slots=True)
class TaintCheck:
    key: str
    value: str
    effect: str
    tolerated: bool
    blocks: bool  # NoSchedule / NoExecute and not tolerated

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}" if self.value else f"{self.key}:{self.effect}"


@dataclass(frozen=True, slots=True)
class CounterCheck:
    """One counter a (partitionable) device consumes, against what allocated claims left of it."""

    counter_set: str
    counter: str
    consumes: Fraction
    left: Fraction
    total: Fraction

    @property
    def fits(self) -> bool:
        return self.consumes <= self.left


@dataclass(frozen=True, slots=True)
class CapacityCheck:
    """One capacity a request consumes of a device (consumable capacity, KEP-5075)."""

    name: str
    consumes: Fraction
    used: Fraction  # by the shares allocated claims hold
    total: Fraction
    holders: tuple[str, ...] = ()  # claims holding shares

    @property
    def fits(self) -> bool:
        return self.used + self.consumes <= self.total


@dataclass(frozen=True, slots=True)
class DeviceReport:
    name: str
    driver: str
    pool: str
    selectors: tuple[SelectorResult, ...]
    in_use_by: str | None = None
    counters: tuple[CounterCheck, ...] = ()
    counters_shared: bool = False  # a shared device whose counters an earlier share already consumed
    capacity: tuple[CapacityCheck, ...] = ()
    capacity_refused: str | None = None  # a capacity request the device cannot serve at all
    taints: tuple[TaintCheck, ...] = ()
    unavailable: str | None = None  # why a selected device cannot be given; None when it can
    allocated: bool = False

    @property
    def selected(self) -> bool:
        """Every class and request selector is true."""
        return all(s.outcome is Outcome.MATCH for s in self.selectors)

    @property
    def errors(self) -> tuple[SelectorResult, ...]:
        return tuple(s for s in self.selectors if s.outcome is Outcome.ERROR)

    @property
    def available(self) -> bool:
        return self.selected and self.unavailable is None


@dataclass(frozen=True, slots=True)
class ValueGroup:
    value: str  # as shown: 'text', 3, true, 1.2.3
    devices: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ConstraintReport:
    """A constraint over the selected, available devices of one (sub)request. ``needed`` is what this
    (sub)request needs; the other requests a constraint covers add theirs (the allocator's reasons say
    whether the claim as a whole can hold it)."""

    index: int
    distinct: bool
    attribute: str
    requests: tuple[str, ...]  # empty: every request
    needed: int
    groups: tuple[ValueGroup, ...]
    without_value: tuple[str, ...]

    @property
    def kind(self) -> str:
        return "distinctAttribute" if self.distinct else "matchAttribute"

    @property
    def satisfiable(self) -> bool:
        """Enough devices share one value (match), or enough distinct values exist (distinct)."""
        if self.distinct:
            return len(self.groups) >= self.needed
        return any(len(g.devices) >= self.needed for g in self.groups)


@dataclass(frozen=True, slots=True)
class RequestReport:
    request: str
    sub: str | None
    device_class: str
    all_mode: bool
    count: int
    admin_access: bool
    class_selectors: tuple[str, ...]
    selectors: tuple[str, ...]
    capacity_requests: tuple[tuple[str, str], ...]
    tolerations: tuple[Toleration, ...]
    verdict: RequestVerdict
    summary: str
    reasons: tuple[str, ...]
    devices: tuple[DeviceReport, ...]
    constraints: tuple[ConstraintReport, ...]
    allocated: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return self.request if self.sub is None else f"{self.request}/{self.sub}"

    @property
    def matching(self) -> int:
        return sum(1 for d in self.devices if d.selected)

    @property
    def available(self) -> int:
        return sum(1 for d in self.devices if d.available)

    @property
    def error_count(self) -> int:
        return sum(1 for d in self.devices if d.errors)

    @property
    def needed(self) -> int:
        return self.matching if self.all_mode else self.count


@dataclass(frozen=True, slots=True)
class PoolReport:
    pool: str  # driver/name
    devices: int
    problem: str | None


@dataclass(frozen=True, slots=True)
class NodeReport:
    node: str | None
    devices_from: str  # "profile dgx-h100", "cluster", "file ..."
    verdict: Verdict
    summary: str
    reasons: tuple[str, ...]
    allocation: tuple[DeviceResult, ...]
    pools: tuple[PoolReport, ...]
    requests: tuple[RequestReport, ...]
    warnings: tuple[str, ...] = ()
    held: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (claim, its devices here) that other claims hold


@dataclass(frozen=True, slots=True)
class ClaimReport:
    claim: str  # namespace/name
    kind: str  # ResourceClaim | ResourceClaimTemplate
    source: str  # a file (and document number) or "cluster"
    nodes: tuple[NodeReport, ...]

    @property
    def verdict(self) -> Verdict:
        verdicts = {n.verdict for n in self.nodes}
        for verdict in (Verdict.ALLOCATABLE, Verdict.PENDING):
            if verdict in verdicts:
                return verdict
        return Verdict.ERROR

    @property
    def summary(self) -> str:
        fits = [n.node or "-" for n in self.nodes if n.verdict is Verdict.ALLOCATABLE]
        if len(self.nodes) == 1:
            return f"{self.nodes[0].verdict.value}: {self.nodes[0].summary}"
        if fits:
            return f"allocatable on {len(fits)} of {len(self.nodes)} nodes: {', '.join(fits)}"
        return f"{self.verdict.value} on every node ({len(self.nodes)})"
