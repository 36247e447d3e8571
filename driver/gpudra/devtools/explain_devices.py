"""Whether a device the selectors chose can be given to a request, with every check shown: in use by
another claim, the counters it consumes (partitionable devices), the capacity a request consumes of it
(consumable capacity), its taints against the request's tolerations.

The checks are the allocation simulator's (:mod:`.allocator_search`, :mod:`.allocator_capacity`), in its
order; the first that fails is the device's :attr:`DeviceReport.unavailable` reason.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from fractions import Fraction

from gpudra.devtools.allocator_capacity import consume, show
from gpudra.devtools.allocator_pools import Pool, PoolDevice
from gpudra.devtools.allocator_requests import Alternative
from gpudra.devtools.allocator_search import Usage, counter_room
from gpudra.devtools.explain_model import CapacityCheck, CounterCheck, DeviceReport, TaintCheck

__all__ = ["DeviceChecks", "check_device", "with_checks"]

_BLOCKING = frozenset({"NoSchedule", "NoExecute"})


@dataclass(frozen=True, slots=True)
class DeviceChecks:
    in_use_by: str | None
    counters: tuple[CounterCheck, ...]
    counters_shared: bool
    capacity: tuple[CapacityCheck, ...]
    capacity_refused: str | None
    taints: tuple[TaintCheck, ...]
    unavailable: str | None


def _counters(device: PoolDevice, pool: Pool, usage: Usage) -> tuple[CounterCheck, ...]:
    out: list[CounterCheck] = []
    for c in device.consumes:
        total = pool.counters.get(c.counter_set, {}).get(c.counter, Fraction(0))
        used = usage.consumed.get((pool.driver, pool.name, c.counter_set), {}).get(c.counter, Fraction(0))
        out.append(CounterCheck(c.counter_set, c.counter, c.amount, max(total - used, Fraction(0)), total))
    return tuple(out)


def _capacity(
    alt: Alternative, device: PoolDevice, usage: Usage
) -> tuple[tuple[CapacityCheck, ...], str | None]:
    """What ``alt`` consumes of each capacity beside the shares others hold; or why it cannot ask at all."""
    if not device.multiple and not alt.capacity:
        return (), None
    want = consume(device.capacity, alt.capacity_requests)
    if isinstance(want, str):
        return (), want
    used = usage.capacity.get(device.key, {}) if device.multiple else {}
    holders = usage.shares.get(device.key, ()) if device.multiple else ()
    checks = tuple(
        CapacityCheck(name, a.value, used.get(name, Fraction(0)), device.capacity[name].value.value, holders)
        for name, a in want.items()
    )
    return checks, None


def _capacity_reason(alt: Alternative, checks: tuple[CapacityCheck, ...]) -> str | None:
    short = next((c for c in checks if not c.fits), None)
    if short is None:
        return None
    if not short.holders:
        need = show(short.consumes)
        return f"capacity {short.name} is {show(short.total)}, request {alt.name} needs {need}"
    return (
        f"capacity exhausted: {short.name} {show(short.used)} of {show(short.total)} consumed by claims "
        f"{', '.join(short.holders)} (request {alt.name} needs {show(short.consumes)})"
    )


def _taints(alt: Alternative, device: PoolDevice) -> tuple[TaintCheck, ...]:
    out: list[TaintCheck] = []
    for taint in device.taints:
        tolerated = any(t.tolerates(taint) for t in alt.tolerations)
        blocks = taint.effect in _BLOCKING and not tolerated
        out.append(TaintCheck(taint.key, taint.value, taint.effect, tolerated, blocks))
    return tuple(out)


def check_device(alt: Alternative, device: PoolDevice, pool: Pool, usage: Usage) -> DeviceChecks:
    """Every check of ``device`` for ``alt``, given what allocated claims hold."""
    holder = usage.in_use.get(device.key)
    in_use = None
    if holder is not None and not alt.admin_access:
        in_use = f"in use by claim {holder}" + (" (whole, without a share)" if device.multiple else "")
    capacity, refused = _capacity(alt, device, usage)
    # a shared device's counters are consumed by its first share only
    shared = bool(device.consumes) and device.multiple and device.key in usage.shares
    counters = _counters(device, pool, usage)
    taints = _taints(alt, device)
    reasons = (
        in_use,
        f"capacity request refused: {refused}" if refused is not None else None,
        _capacity_reason(alt, capacity),
        None if shared else counter_room(device, pool, usage.consumed),
        next((f"taint {t} not tolerated" for t in taints if t.blocks), None),
    )
    unavailable = next((r for r in reasons if r is not None), None)
    return DeviceChecks(holder, counters, shared, capacity, refused, taints, unavailable)


def with_checks(report: DeviceReport, checks: DeviceChecks) -> DeviceReport:
    """``report`` with the checks of a selected device."""
    return replace(
        report,
        in_use_by=checks.in_use_by,
        counters=checks.counters,
        counters_shared=checks.counters_shared,
        capacity=checks.capacity,
        capacity_refused=checks.capacity_refused,
        taints=checks.taints,
        unavailable=checks.unavailable,
    )
