"""Why the allocation simulator found no allocation: one reason per cause, for tests and ``gpudra explain``.

Called after a search failed without an error. In order it names: pools that are not used (incomplete,
invalid); per request (per subrequest of a ``firstAvailable`` request, when none of them works) what is
missing: no device matches, fewer available than needed (each unavailable device with why: in use by which
claim, which counter is exhausted, which taint, which capacity is exhausted by which claims' shares or which
capacity request a device's policy refuses), or available devices that do not fit together; then, when every
request works alone, whether the requests compete with each other or which constraint cannot hold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Final

from gpudra.devtools.allocator_capacity import consume, fits, show
from gpudra.devtools.allocator_pools import Pool, PoolDevice
from gpudra.devtools.allocator_requests import Alternative, Constraint, ParsedClaim, Request
from gpudra.devtools.allocator_search import (
    Search,
    SearchAborted,
    Usage,
    attribute_value,
    counter_room,
    selects,
)

__all__ = ["explain"]

#: At most this many unavailable devices are named in one reason.
MAX_NAMED: Final = 8


@dataclass(frozen=True, slots=True)
class _Context:
    parsed: ParsedClaim
    pools: tuple[Pool, ...]
    usage: Usage
    max_steps: int

    def feasible(self, requests: Sequence[Request], constraints: Sequence[Constraint] = ()) -> bool | None:
        """Whether a search for just these requests succeeds; None when it cannot tell (aborted)."""
        claim = replace(self.parsed, requests=tuple(requests), constraints=tuple(constraints))
        try:
            return Search(claim, self.pools, self.usage, self.max_steps).run() is not None
        except SearchAborted:
            return None


def _matching(ctx: _Context, alt: Alternative, devices: list[PoolDevice]) -> tuple[int, list[PoolDevice]]:
    """(how many devices the class selects, the devices class and request select); errors count as no."""

    def ok(selectors: tuple[str, ...], device: PoolDevice) -> bool:
        probe = Alternative(alt.request, alt.sub, alt.class_name, selectors, (), False, 1, False, ())
        try:
            return selects(ctx.parsed.label, probe, device)
        except SearchAborted:
            return False

    in_class = [d for d in devices if ok(alt.class_selectors, d)]
    return len(in_class), [d for d in in_class if ok(alt.class_selectors + alt.selectors, d)]


def _unavailable(ctx: _Context, alt: Alternative, device: PoolDevice) -> str | None:
    """Why ``device`` cannot be given to ``alt`` on its own, or None."""
    holder = ctx.usage.in_use.get(device.key)
    if holder is not None and not alt.admin_access:
        return f"in use by claim {holder}" + (" (whole, without a share)" if device.multiple else "")
    short = _capacity(ctx, alt, device)
    if short is None and not (device.multiple and device.key in ctx.usage.shares):
        pool = next(p for p in ctx.pools if (p.driver, p.name) == device.key[:2])
        short = counter_room(device, pool, ctx.usage.consumed)
    if short is not None:
        return short
    taint = alt.blocking_taint(device.taints)
    return None if taint is None else f"taint {taint} not tolerated"


def _capacity(ctx: _Context, alt: Alternative, device: PoolDevice) -> str | None:
    """Why the device's capacities cannot serve ``alt`` (beside the shares allocated claims hold), or None."""
    if not device.multiple and not alt.capacity:
        return None
    want = consume(device.capacity, alt.capacity_requests)
    if isinstance(want, str):
        return f"capacity request refused: {want}"
    used = ctx.usage.capacity.get(device.key, {}) if device.multiple else {}
    name = fits(device.capacity, want, used)
    if name is None:
        return None
    total, need = device.capacity[name].value.value, want[name].value
    holders = ctx.usage.shares.get(device.key, ()) if device.multiple else ()
    if not holders:
        return f"capacity {name} is {show(total)}, request {alt.name} needs {show(need)}"
    return (
        f"capacity exhausted: {name} {show(used.get(name, Fraction(0)))} of {show(total)} consumed by claims "
        f"{', '.join(holders)} (request {alt.name} needs {show(need)})"
    )


def _named(blocked: list[tuple[PoolDevice, str]]) -> str:
    shown = "; ".join(f"{d.name}: {why}" for d, why in blocked[:MAX_NAMED])
    more = f"; and {len(blocked) - MAX_NAMED} more" if len(blocked) > MAX_NAMED else ""
    return shown + more


def _no_match(alt: Alternative, in_class: int, total: int) -> str:
    if not total:
        return f"request {alt.name}: no device in a usable resource pool"
    if not in_class or not alt.selectors:
        return f"request {alt.name}: no device matches class {alt.class_name} ({total} devices checked)"
    return (
        f"request {alt.name}: no device matches class {alt.class_name} and the request's selectors "
        f"({in_class} of {total} devices match the class)"
    )


def _alternative(ctx: _Context, alt: Alternative) -> str | None:
    """Why ``alt`` cannot be allocated even alone, or None when it can."""
    devices = [d for p in ctx.pools if p.problem is None for d in p.devices]
    in_class, matching = _matching(ctx, alt, devices)
    if not matching:
        return _no_match(alt, in_class, len(devices))
    checked = [(d, _unavailable(ctx, alt, d)) for d in matching]
    blocked = [(d, why) for d, why in checked if why is not None]
    free = len(matching) - len(blocked)
    if alt.all_mode and blocked:
        return (
            f"request {alt.name}: allocationMode All needs all {len(matching)} matching devices, "
            f"{len(blocked)} unavailable: {_named(blocked)}"
        )
    needed = len(matching) if alt.all_mode else alt.count
    if free < needed:
        details = f": {_named(blocked)}" if blocked else ""
        return (
            f"request {alt.name}: {needed} device(s) needed, {free} of {len(matching)} matching devices "
            f"available{details}"
        )
    if ctx.feasible([Request(alt.request, (alt,))]) is False:
        sets = sorted({c.counter_set for d, why in checked if why is None for c in d.consumes})
        shared = f" (counter sets {', '.join(sets)})" if sets else ""
        return (
            f"request {alt.name}: {needed} device(s) needed and {free} matching devices available, "
            f"but no {needed} of them fit together: they consume the same counters{shared}"
        )
    return None


def _values(ctx: _Context, constraint: Constraint, requests: Sequence[Request]) -> str:
    """The constraint's attribute over the available devices of the requests it covers."""
    devices = [d for p in ctx.pools if p.problem is None for d in p.devices]
    groups: dict[str, list[str]] = {}
    for alt in (a for r in requests for a in r.alternatives if constraint.applies(a)):
        for device in _matching(ctx, alt, devices)[1]:
            if _unavailable(ctx, alt, device) is None:
                value = attribute_value(device, constraint.attribute)
                shown = "no value" if value is None else repr(value[1])
                members = groups.setdefault(shown, [])
                if device.name not in members:
                    members.append(device.name)
    return "; ".join(f"{v} ({len(names)}): {_some(names)}" for v, names in groups.items()) or "none"


def _some(names: list[str], limit: int = 4) -> str:
    more = f", and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _constraints(ctx: _Context, requests: Sequence[Request], constraints: Sequence[Constraint]) -> list[str]:
    failing = [c for c in constraints if ctx.feasible(requests, [c]) is False]
    if not failing:
        listed = ", ".join(f"#{c.index}" for c in constraints)
        return [f"constraints {listed} cannot be satisfied together"]
    word = {False: "share one value", True: "have distinct values"}
    return [
        f"{c}: no choice of available devices can {word[c.distinct]}; values of the available devices: "
        f"{_values(ctx, c, requests)}"
        for c in failing
    ]


def _request_reasons(ctx: _Context, request: Request) -> list[str]:
    reasons = [_alternative(ctx, alt) for alt in request.alternatives]
    return [] if any(r is None for r in reasons) else [r for r in reasons if r is not None]


def explain(claim: ParsedClaim, pools: Sequence[Pool], usage: Usage, max_steps: int) -> tuple[str, ...]:
    """The reasons a claim cannot be allocated (the search already failed without an error)."""
    ctx = _Context(claim, tuple(pools), usage, max_steps)
    requests, constraints = claim.requests, claim.constraints
    reasons = [f"{p.problem}; its devices are not used" for p in ctx.pools if p.problem is not None]
    per_request = [reason for r in requests for reason in _request_reasons(ctx, r)]
    if per_request:
        return (*reasons, *per_request)
    together = ctx.feasible(requests)
    if together is False:
        names = ", ".join(r.name for r in requests)
        competing = f"requests {names}: each can be allocated alone, but not all together"
        return (*reasons, f"{competing} (they compete for the same devices or counters)")
    if constraints and together:
        return (*reasons, *_constraints(ctx, requests, constraints))
    return (*reasons, f"claim {claim.label}: no allocation found")
