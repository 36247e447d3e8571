"""The backtracking search of the allocation simulator, after the scheduler's structured allocator.

For each request in order (and within a ``firstAvailable`` request, each subrequest in order) it picks
devices one after the other in pool/slice/device order, trying later devices only after the earlier
choice failed further down, and combinations rather than permutations within a request. A device is a
candidate when it is not in use (in-flight picks of this claim included; an admin-access request only needs
it not to be picked twice in this claim), its class's and the request's selectors are true, its counters
have room (already allocated claims plus this claim's earlier picks), its NoSchedule/NoExecute taints are
tolerated and the claim's constraints still hold. A CEL error, as in the scheduler, aborts the search
(:class:`SearchAborted`); so does exceeding ``max_steps`` (the simulator's bound on work).

Consumable capacity (KEP-5075, :mod:`.allocator_capacity`): every candidate must have the capacities the
request asks for, as its request policies allow. A device with ``allowMultipleAllocations`` is never "in
use" (unless a claim holds it without a share, from before it was shared): it can be picked by several claims
and several requests of one claim while the sum of what their shares consume fits each capacity, and its
counters are consumed by its first share only, as the scheduler does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import cast

from gpudra.devtools.allocator_capacity import Amount, consume, fits
from gpudra.devtools.allocator_pools import DeviceKey, Pool, PoolDevice, device_id
from gpudra.devtools.allocator_requests import MAX_RESULTS, Alternative, ParsedClaim
from gpudra.devtools.cel import CelCompileError, CelError, compile_selector
from gpudra.model import k8stypes

__all__ = ["Pick", "Search", "SearchAborted", "Usage", "attribute_value", "counter_room", "selects"]

#: (driver, pool, counter set) -> counter -> amount consumed
Consumed = dict[tuple[str, str, str], dict[str, Fraction]]


class SearchAborted(Exception):
    """The search stopped with an error the scheduler would report (CEL error, ``All`` on an incomplete
    pool, a constraint that can never hold for ``All``) or the simulator's step bound."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What allocated claims hold: devices (-> claim uid), consumed counters, and the shares of devices with
    ``allowMultipleAllocations``: what they consume per capacity and which claims (uids) hold them."""

    in_use: Mapping[DeviceKey, str] = field(default_factory=dict)
    consumed: Mapping[tuple[str, str, str], Mapping[str, Fraction]] = field(default_factory=dict)
    capacity: Mapping[DeviceKey, Mapping[str, Fraction]] = field(default_factory=dict)
    shares: Mapping[DeviceKey, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Pick:
    alternative: Alternative
    device: PoolDevice
    share: Mapping[str, Amount] | None = None  # what a share of a shared device consumes, per capacity


def attribute_value(device: PoolDevice, qualified: str) -> tuple[str, object] | None:
    """``(type, value)`` of a fully-qualified attribute; an unqualified published name is the driver's."""
    attributes = device.device.get("attributes") or {}
    domain, _, ident = qualified.partition("/")
    raw = attributes.get(qualified)
    if raw is None and domain == device.key[0]:
        raw = attributes.get(ident)
    return next(iter(raw.items())) if raw else None


def counter_room(
    device: PoolDevice, pool: Pool, consumed: Mapping[tuple[str, str, str], Mapping[str, Fraction]]
) -> str | None:
    """None when every counter the device consumes has room; else which counters do not (first named)."""
    short: list[str] = []
    for c in device.consumes:
        value = pool.counters[c.counter_set][c.counter]
        used = consumed.get((pool.driver, pool.name, c.counter_set), {}).get(c.counter, Fraction(0))
        if used + c.amount > value:
            left = max(value - used, Fraction(0))
            short.append(
                f"counter set {c.counter_set} counter {c.counter}: needs {_n(c.amount)}, "
                f"{_n(left)} of {_n(value)} left"
            )
    if not short:
        return None
    more = f" (and {len(short) - 1} more counter{'s' if len(short) > 2 else ''})" if len(short) > 1 else ""
    return short[0] + more


def _n(value: Fraction) -> str:
    return str(value.numerator) if value.denominator == 1 else f"{float(value):g}"


def _selector_error(claim: str, alt: Alternative, index: int, in_class: bool, err: CelError) -> str:
    """The scheduler's text for a selector that failed to compile or evaluate."""
    owner = f"class {alt.class_name}" if in_class else f"claim {claim}"
    kind = "compile" if isinstance(err, CelCompileError) else "runtime"
    return f"{owner}: selector #{index}: CEL {kind} error: {err}"


def selects(claim: str, alt: Alternative, device: PoolDevice) -> bool:
    """Class selectors, then the request's, stopping at the first false; CelError -> SearchAborted."""
    for in_class, expressions in ((True, alt.class_selectors), (False, alt.selectors)):
        for index, expression in enumerate(expressions):
            try:
                published = cast(k8stypes.Device, device.device)
                if not compile_selector(expression).matches(published, device.key[0]):
                    return False
            except CelError as err:
                raise SearchAborted(_selector_error(claim, alt, index, in_class, err)) from err
    return True


class Search:
    """One search over ``requests``; :meth:`run` returns the picks of the first solution or None."""

    def __init__(self, claim: ParsedClaim, pools: Sequence[Pool], usage: Usage, max_steps: int) -> None:
        self.claim, self.requests, self.constraints = claim.label, claim.requests, claim.constraints
        self.pools = {(p.driver, p.name): p for p in pools}
        self.devices = [d for p in pools if p.problem is None for d in p.devices]
        self.usage, self.max_steps, self.steps = usage, max_steps, 0
        self.consumed: Consumed = {k: dict(v) for k, v in usage.consumed.items()}
        self.values: list[list[tuple[str, object]]] = [[] for _ in self.constraints]
        self.picks: list[Pick] = []
        self.picked: set[DeviceKey] = set()
        self.allocating: dict[DeviceKey, dict[str, Fraction]] = {}  # this claim's shares so far
        self.matches: dict[tuple[Alternative, DeviceKey], bool] = {}
        self.all_devices = {
            alt: self._all_devices(alt) for r in self.requests for alt in r.alternatives if alt.all_mode
        }

    def run(self) -> tuple[Pick, ...] | None:
        return tuple(self.picks) if self._request(0) else None

    # ---- the recursion ---------------------------------------------------------------------------------

    def _request(self, r: int) -> bool:
        if r == len(self.requests):
            return True
        for alt in self.requests[r].alternatives:
            done = self._fill_all(alt, r, 0) if alt.all_mode else self._fill(alt, r, 0, 0)
            if done:
                return True
        return False

    def _tick(self) -> None:
        self.steps += 1
        if self.steps > self.max_steps:
            raise SearchAborted(
                f"claim {self.claim}: search stopped after {self.max_steps} steps without an allocation "
                "(the simulator's bound on work)"
            )

    def _fill(self, alt: Alternative, r: int, k: int, start: int) -> bool:
        """Pick device ``k`` of ``alt.count`` from ``self.devices[start:]``, then the rest."""
        self._tick()
        if k == alt.count:
            return self._request(r + 1)
        if len(self.picks) + alt.count - k > MAX_RESULTS:
            return False
        for pos in range(start, len(self.devices)):
            device = self.devices[pos]
            if not self._candidate(alt, device):
                continue
            undo = self._take(alt, device)
            if undo is None:
                continue
            if self._fill(alt, r, k + 1, pos + 1):
                return True
            undo()
        return False

    def _fill_all(self, alt: Alternative, r: int, k: int) -> bool:
        """``All``: every matching device, in order; the first that cannot be taken ends the attempt."""
        self._tick()
        devices = self.all_devices[alt]
        if not devices or len(self.picks) + len(devices) - k > MAX_RESULTS:
            return False
        if k == len(devices):
            return self._request(r + 1)
        device = devices[k]
        if not self._free(alt, device):
            return False
        undo = self._take(alt, device, must=True)
        if undo is None:
            return False
        if self._fill_all(alt, r, k + 1):
            return True
        undo()
        return False

    # ---- one device ------------------------------------------------------------------------------------

    def _free(self, alt: Alternative, device: PoolDevice) -> bool:
        if device.multiple:  # shared: only a claim holding it whole (no share) keeps others off
            return alt.admin_access or device.key not in self.usage.in_use
        if alt.admin_access:
            return device.key not in self.picked
        return device.key not in self.picked and device.key not in self.usage.in_use

    def _candidate(self, alt: Alternative, device: PoolDevice) -> bool:
        if not self._free(alt, device):
            return False
        cached = self.matches.get((alt, device.key))
        if cached is None:
            cached = self.matches[alt, device.key] = selects(self.claim, alt, device)
        return cached

    def _all_devices(self, alt: Alternative) -> list[PoolDevice]:
        for pool in self.pools.values():
            if pool.problem is not None:
                state = "being updated" if "incomplete" in pool.problem else "invalid"
                raise SearchAborted(
                    f"claim {self.claim}, request {alt.name}: asks for all devices, but resource pool "
                    f"{pool.id} is currently {state}"
                )
        return [d for d in self.devices if selects(self.claim, alt, d)]

    def share(self, alt: Alternative, device: PoolDevice) -> dict[str, Amount] | None:
        """What ``alt`` consumes of ``device`` when it fits beside what is held of it; None when it does not
        (a capacity it lacks, a request its policy refuses, or too little left)."""
        if not device.multiple and not alt.capacity:
            return {}  # the whole device, which has all of its capacity: nothing to check
        want = consume(device.capacity, alt.capacity_requests)
        if isinstance(want, str):
            return None
        held = (self.usage.capacity.get(device.key, {}), self.allocating.get(device.key, {}))
        return want if fits(device.capacity, want, *(held if device.multiple else ())) is None else None

    def _take(self, alt: Alternative, device: PoolDevice, must: bool = False) -> Callable[[], None] | None:
        """Capacity, counters, taints, constraints; on success record the pick and return how to undo it."""
        pool = self.pools[device.key[0], device.key[1]]
        share = self.share(alt, device)
        if share is None:
            return None
        # a shared device's counters are consumed by its first share only
        count = not (device.multiple and (device.key in self.usage.capacity or device.key in self.allocating))
        if count and counter_room(device, pool, self.consumed) is not None:
            return None
        if alt.blocking_taint(device.taints):
            return None
        added = self._constrain(alt, device, must)
        if added is None:
            return None
        if count:
            self._count(pool, device, 1)
        self._hold(device, share if device.multiple else None, 1)
        self.picks.append(Pick(alt, device, share if device.multiple else None))

        def undo() -> None:
            self.picks.pop()
            self._hold(device, share if device.multiple else None, -1)
            if count:
                self._count(pool, device, -1)
            for j in added:
                self.values[j].pop()

        return undo

    def _constrain(self, alt: Alternative, device: PoolDevice, must: bool) -> list[int] | None:
        """Add the device's values to the constraints that apply; None (nothing added) when one fails."""
        added: list[int] = []
        for i, constraint in enumerate(self.constraints):
            if not constraint.applies(alt):
                continue
            value = attribute_value(device, constraint.attribute)
            held = self.values[i]
            if value is None or (value in held if constraint.distinct else bool(held) and held[0] != value):
                for j in added:
                    self.values[j].pop()
                if must:
                    raise SearchAborted(
                        f"claim {self.claim}, request {alt.name}: cannot add device {device_id(device.key)} "
                        "because a claim constraint would not be satisfied"
                    )
                return None
            held.append(value)
            added.append(i)
        return added

    def _hold(self, device: PoolDevice, share: Mapping[str, Amount] | None, sign: int) -> None:
        if share is None:
            if sign > 0:
                self.picked.add(device.key)
            else:
                self.picked.discard(device.key)
            return
        held = self.allocating.setdefault(device.key, {})
        for name, amount in share.items():
            held[name] = held.get(name, Fraction(0)) + sign * amount.value
        if sign < 0 and not any(p.device.key == device.key for p in self.picks):
            del self.allocating[device.key]

    def _count(self, pool: Pool, device: PoolDevice, sign: int) -> None:
        for c in device.consumes:
            counters = self.consumed.setdefault((pool.driver, pool.name, c.counter_set), {})
            counters[c.counter] = counters.get(c.counter, Fraction(0)) + sign * c.amount
