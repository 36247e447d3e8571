"""A ResourceClaim's requests and constraints as the allocation simulator uses them, and its config result.

Each request becomes a :class:`Request` with one :class:`Alternative` (``exactly``) or one per
``firstAvailable`` subrequest, in priority order. The scheduler refuses some claims before any search; here
that is :class:`ClaimError`, whose message reads like the scheduler's (``claim default/c, request gpu: ...``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from gpudra.devtools.allocator_capacity import Amount
from gpudra.devtools.allocator_pools import JSON, Taint
from gpudra.model import k8stypes
from gpudra.model.quantity import stored_value

__all__ = [
    "MAX_RESULTS",
    "Alternative",
    "ClaimError",
    "Constraint",
    "ParsedClaim",
    "Request",
    "Toleration",
    "allocation_config",
    "claim_label",
    "parse_claim",
]

#: resource.k8s.io/v1 AllocationResultsMaxSize: at most this many devices in one claim's allocation.
MAX_RESULTS: Final = 32
_BLOCKING_EFFECTS: Final = frozenset({"NoSchedule", "NoExecute"})


class ClaimError(Exception):
    """The scheduler refuses the claim outright (unknown class, unsupported field); str() is the reason."""


@dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def tolerates(self, taint: Taint) -> bool:
        """``resourceclaim.ToleratesTaint``: effect and key match when set; Equal compares the value."""
        if (self.effect and self.effect != taint.effect) or (self.key and self.key != taint.key):
            return False
        if self.operator == "Exists":
            return True
        return self.operator in ("", "Equal") and self.value == taint.value


@dataclass(frozen=True, slots=True)
class Alternative:
    """One way to satisfy a request: its ``exactly`` spec, or one ``firstAvailable`` subrequest."""

    request: str
    sub: str | None
    class_name: str
    class_selectors: tuple[str, ...]
    selectors: tuple[str, ...]
    all_mode: bool
    count: int
    admin_access: bool
    tolerations: tuple[Toleration, ...]
    #: ``capacity.requests``: what each device must have (consumable capacity: what a share consumes)
    capacity: tuple[tuple[str, Amount], ...] = ()

    @property
    def capacity_requests(self) -> dict[str, Amount]:
        return dict(self.capacity)

    @property
    def name(self) -> str:
        """The request name in the allocation result: ``gpu`` or ``gpu/h100``."""
        return self.request if self.sub is None else f"{self.request}/{self.sub}"

    def blocking_taint(self, taints: Iterable[Taint]) -> Taint | None:
        """The first NoSchedule/NoExecute taint none of the tolerations tolerates."""
        for taint in taints:
            if taint.effect in _BLOCKING_EFFECTS and not any(t.tolerates(taint) for t in self.tolerations):
                return taint
        return None


@dataclass(frozen=True, slots=True)
class Request:
    name: str
    alternatives: tuple[Alternative, ...]


@dataclass(frozen=True, slots=True)
class Constraint:
    """``matchAttribute`` (all devices share one value) or ``distinctAttribute`` (all values differ)."""

    index: int
    requests: frozenset[str]  # empty: every request
    attribute: str  # fully qualified
    distinct: bool

    def applies(self, alt: Alternative) -> bool:
        return not self.requests or alt.request in self.requests or alt.name in self.requests

    def __str__(self) -> str:
        kind = "distinctAttribute" if self.distinct else "matchAttribute"
        scope = ", ".join(sorted(self.requests)) if self.requests else "all"
        return f"constraint #{self.index} ({kind} {self.attribute}, requests {scope})"


@dataclass(frozen=True, slots=True)
class ParsedClaim:
    label: str  # namespace/name
    requests: tuple[Request, ...]
    constraints: tuple[Constraint, ...]


def claim_label(claim: JSON) -> str:
    """``namespace/name`` as the scheduler prints a claim (``klog.KObj``)."""
    meta = claim.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"


def _selectors(spec: JSON) -> tuple[str, ...]:
    return tuple(s["cel"]["expression"] for s in spec.get("selectors") or [])


def _tolerations(spec: JSON) -> tuple[Toleration, ...]:
    return tuple(
        Toleration(t.get("key", ""), t.get("operator", "Equal"), t.get("value", ""), t.get("effect", ""))
        for t in spec.get("tolerations") or []
    )


def _alternative(
    label: str, request: str, sub: str | None, spec: JSON, classes: Mapping[str, JSON]
) -> Alternative:
    shown = request if sub is None else f"{request}/{sub}"
    class_name = spec.get("deviceClassName", "")
    if not class_name:
        raise ClaimError(f"claim {label}, request {shown}: missing device class name")
    if class_name not in classes:
        raise ClaimError(
            f"claim {label}, request {shown}: could not retrieve device class {class_name}: "
            f'deviceclass.resource.k8s.io "{class_name}" not found'
        )
    mode = spec.get("allocationMode", "ExactCount")
    if mode not in ("ExactCount", "All"):
        raise ClaimError(f"claim {label}, request {shown}: unsupported count mode {mode}")
    return Alternative(
        request=request,
        sub=sub,
        class_name=class_name,
        class_selectors=_selectors(classes[class_name].get("spec") or {}),
        selectors=_selectors(spec),
        all_mode=mode == "All",
        count=int(spec.get("count", 1)) if mode == "ExactCount" else 0,
        admin_access=spec.get("adminAccess") is True,
        tolerations=_tolerations(spec),
        capacity=_capacity(label, shown, spec),
    )


def _capacity(label: str, shown: str, spec: JSON) -> tuple[tuple[str, Amount], ...]:
    """``capacity.requests`` (the API refuses an unparseable or negative quantity before anyone sees it)."""
    out: list[tuple[str, Amount]] = []
    for name, text in sorted(((spec.get("capacity") or {}).get("requests") or {}).items()):
        try:
            amount = Amount(stored_value(str(text))[0], str(text))
        except ValueError as err:
            raise ClaimError(f"claim {label}, request {shown}: capacity.requests[{name}]: {err}") from err
        if amount.value < 0:
            raise ClaimError(f"claim {label}, request {shown}: capacity.requests[{name}]: negative quantity")
        out.append((name, amount))
    return tuple(out)


def _request(label: str, raw: JSON, classes: Mapping[str, JSON]) -> Request:
    name = raw["name"]
    if raw.get("exactly") is not None:
        return Request(name, (_alternative(label, name, None, raw["exactly"], classes),))
    subs = raw.get("firstAvailable") or []
    if not subs:
        raise ClaimError(f"claim {label}, request {name}: neither exactly nor firstAvailable is set")
    return Request(name, tuple(_alternative(label, name, s["name"], s, classes) for s in subs))


def _constraint(label: str, index: int, raw: JSON) -> Constraint:
    requests = frozenset(raw.get("requests") or ())
    if raw.get("matchAttribute"):
        return Constraint(index, requests, raw["matchAttribute"], distinct=False)
    if raw.get("distinctAttribute"):
        return Constraint(index, requests, raw["distinctAttribute"], distinct=True)
    raise ClaimError(f"claim {label}, constraint #{index}: empty constraint (unsupported constraint type?)")


def parse_claim(claim: JSON, classes: Mapping[str, JSON]) -> ParsedClaim:
    """The claim's requests and constraints; ClaimError for what the scheduler refuses up front."""
    label = claim_label(claim)
    devices = (claim.get("spec") or {}).get("devices") or {}
    requests = tuple(_request(label, r, classes) for r in devices.get("requests") or [])
    constraints = tuple(_constraint(label, i, c) for i, c in enumerate(devices.get("constraints") or []))
    minimum = sum(min(a.count for a in r.alternatives) for r in requests)
    if minimum > MAX_RESULTS:
        raise ClaimError(
            f"claim {label}: number of requested devices {minimum} exceeds the claim limit of {MAX_RESULTS}"
        )
    return ParsedClaim(label, requests, constraints)


# ---- the config in the allocation result ---------------------------------------------------------------


def _entry(source: str, requests: list[str], raw: JSON) -> k8stypes.DeviceAllocationConfiguration:
    entry: dict[str, Any] = {"source": source}
    if requests:
        entry["requests"] = list(requests)
    entry.update({k: copy.deepcopy(v) for k, v in raw.items() if k != "requests"})
    return entry  # type: ignore[return-value]  # opaque (or a future config kind) passes through


def allocation_config(
    claim: JSON, chosen: list[Alternative], classes: Mapping[str, JSON]
) -> list[k8stypes.DeviceAllocationConfiguration]:
    """``devices.config`` of the result: each used class's configs once (``FromClass``, the requests using
    it), then the claim's configs that apply to an allocated request (``FromClaim``); a config that covers
    every request loses its ``requests`` (empty means all)."""
    by_class: dict[str, list[str]] = {}
    for alt in chosen:
        by_class.setdefault(alt.class_name, []).append(alt.name)
    out: list[tuple[str, list[str], JSON]] = []
    for class_name, names in by_class.items():
        for raw in (classes[class_name].get("spec") or {}).get("config") or []:
            out.append(("FromClass", names, raw))
    wanted = {alt.request for alt in chosen} | {alt.name for alt in chosen}
    for raw in ((claim.get("spec") or {}).get("devices") or {}).get("config") or []:
        requests = list(raw.get("requests") or [])
        if not requests or wanted & set(requests):
            out.append(("FromClaim", requests, raw))
    return [_entry(source, [] if _covers_all(names, chosen) else names, raw) for source, names, raw in out]


def _covers_all(names: list[str], chosen: list[Alternative]) -> bool:
    return all(alt.request in names or alt.name in names for alt in chosen)
