"""The evaluation behind ``gpudra explain``: a claim against the devices of one node, or of several.

The verdict for a node is the allocation simulator's (:class:`.allocator.Allocator`, the scheduler's
structured allocator emulated): allocatable, pending (unschedulable) with its reasons, or an error. Then,
per request and per subrequest of a ``firstAvailable`` request: its own verdict (allocated; could be
allocated alone; cannot, with :func:`.allocator_explain.explain`'s reasons; a selector error), every device
with its selectors evaluated (:mod:`.explain_selectors`) and, when they all match, whether it can be given
(:mod:`.explain_devices`), and the constraints that cover it over the devices that can.

Claims are explained in order: a claim that can be allocated holds its devices (on the first node where
it fits) for the claims after it, as the claims the cluster already allocated (``held``) do for all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from gpudra.devtools.allocator import DEFAULT_MAX_STEPS, Allocation, AllocationFailure, Allocator
from gpudra.devtools.allocator_explain import explain
from gpudra.devtools.allocator_pools import JSON, Pool
from gpudra.devtools.allocator_requests import (
    Alternative,
    ClaimError,
    ParsedClaim,
    Request,
    parse_claim,
)
from gpudra.devtools.allocator_search import Search, SearchAborted, Usage, attribute_value
from gpudra.devtools.explain_devices import check_device, with_checks
from gpudra.devtools.explain_model import (
    ClaimInput,
    ClaimReport,
    ConstraintReport,
    DeviceReport,
    Held,
    NodeReport,
    PoolReport,
    RequestReport,
    RequestVerdict,
    Target,
    ValueGroup,
    Verdict,
)
from gpudra.devtools.explain_selectors import ABORTS, Evaluations, selector_results

__all__ = ["explain_claims", "explain_on", "names"]

#: At most this many device names in a one-line summary.
SHOWN_NAMES = 4


@dataclass(frozen=True, slots=True)
class _Context:
    parsed: ParsedClaim
    pools: tuple[Pool, ...]
    usage: Usage
    max_steps: int
    result: Allocation | AllocationFailure
    cache: Evaluations = field(default_factory=dict)

    @property
    def pool_reasons(self) -> frozenset[str]:
        return frozenset(f"{p.problem}; its devices are not used" for p in self.pools if p.problem)


def names(items: Sequence[str], limit: int = SHOWN_NAMES) -> str:
    """``a, b, c and 5 more``."""
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


# ---- one (sub)request ----------------------------------------------------------------------------------


def _solo(ctx: _Context, alt: Alternative) -> tuple[RequestVerdict, tuple[str, ...]]:
    """Whether ``alt`` could be allocated alone (with the constraints that cover it), and why not."""
    only = len(ctx.parsed.requests) == 1 and len(ctx.parsed.requests[0].alternatives) == 1
    if only and isinstance(ctx.result, AllocationFailure):
        verdict = RequestVerdict.ERROR if ctx.result.error else RequestVerdict.UNSATISFIABLE
        return verdict, tuple(r for r in ctx.result.reasons if r not in ctx.pool_reasons)
    if only:
        return RequestVerdict.SATISFIABLE, ()
    constraints = tuple(c for c in ctx.parsed.constraints if c.applies(alt))
    sub = replace(ctx.parsed, requests=(Request(alt.request, (alt,)),), constraints=constraints)
    try:
        picks = Search(sub, ctx.pools, ctx.usage, ctx.max_steps).run()
    except SearchAborted as err:
        return RequestVerdict.ERROR, (str(err),)
    if picks is not None:
        return RequestVerdict.SATISFIABLE, ()
    reasons = explain(sub, ctx.pools, ctx.usage, ctx.max_steps)
    return RequestVerdict.UNSATISFIABLE, tuple(r for r in reasons if r not in ctx.pool_reasons)


def _devices(ctx: _Context, alt: Alternative) -> tuple[DeviceReport, ...]:
    results = ctx.result.results if isinstance(ctx.result, Allocation) else ()
    allocated = {r.key for r in results if r.request == alt.name}
    out: list[DeviceReport] = []
    for pool in ctx.pools:
        for device in pool.devices if pool.problem is None else ():
            selectors = selector_results(alt, device, ctx.cache)
            given = device.key in allocated
            report = DeviceReport(device.name, pool.driver, pool.name, selectors, allocated=given)
            if report.selected:
                report = with_checks(report, check_device(alt, device, pool, ctx.usage))
            out.append(report)
    return tuple(out)


def _shown_value(value: tuple[str, object]) -> str:
    kind, raw = value
    if kind == "string":
        return f"'{raw}'"
    if kind == "bool":
        return "true" if raw else "false"
    return str(raw)


def _constraints(
    ctx: _Context, alt: Alternative, devices: Sequence[DeviceReport]
) -> tuple[ConstraintReport, ...]:
    by_key = {d.key: d for p in ctx.pools for d in p.devices}
    candidates = [by_key[r.driver, r.pool, r.name] for r in devices if r.available]
    needed = sum(1 for r in devices if r.selected) if alt.all_mode else alt.count
    out: list[ConstraintReport] = []
    for c in (c for c in ctx.parsed.constraints if c.applies(alt)):
        groups: dict[str, list[str]] = {}
        without: list[str] = []
        for device in candidates:
            value = attribute_value(device, c.attribute)
            if value is None:
                without.append(device.name)
            else:
                groups.setdefault(_shown_value(value), []).append(device.name)
        shown = tuple(ValueGroup(v, tuple(n)) for v, n in sorted(groups.items(), key=lambda g: -len(g[1])))
        scope, none = tuple(sorted(c.requests)), tuple(without)
        out.append(ConstraintReport(c.index, c.distinct, c.attribute, scope, needed, shown, none))
    return tuple(out)


def _strip(alt: Alternative, reason: str) -> str:
    return reason.removeprefix(f"request {alt.name}: ")


def _chosen(ctx: _Context, request: Request) -> int | None:
    if not isinstance(ctx.result, Allocation):
        return None
    taken = {r.request for r in ctx.result.results}
    return next((i for i, a in enumerate(request.alternatives) if a.name in taken), None)


def _error_summary(
    ctx: _Context, alt: Alternative, reasons: Sequence[str], devices: Sequence[DeviceReport]
) -> str:
    """The first selector error as this (sub)request's devices show it, else the scheduler's words."""
    failing = [d for d in devices if d.errors]
    if not failing:
        text = reasons[0] if reasons else "an error"
        for prefix in (f"claim {ctx.parsed.label}, request {alt.name}: ", f"claim {ctx.parsed.label}: "):
            text = text.removeprefix(prefix)
        return f"{text}; {ABORTS}"
    error = failing[0].errors[0]
    where = f"{error.source} selector #{error.index}"
    return f"{where}: {error.error} on {len(failing)} of {len(devices)} devices; {ABORTS}"


def _verdict(
    ctx: _Context, request: Request, position: int, devices: Sequence[DeviceReport]
) -> tuple[RequestVerdict, str, tuple[str, ...]]:
    alt = request.alternatives[position]
    chosen = _chosen(ctx, request)
    if chosen == position:
        allocated = [d.name for d in devices if d.allocated]
        return RequestVerdict.ALLOCATED, f"allocated {names(allocated)}", ()
    if chosen is not None and position > chosen:
        return RequestVerdict.NOT_NEEDED, f"not tried: {request.alternatives[chosen].name} was allocated", ()
    verdict, reasons = _solo(ctx, alt)
    after = f"; the scheduler took {request.alternatives[chosen].name}" if chosen is not None else ""
    if verdict is RequestVerdict.ERROR:
        return verdict, _error_summary(ctx, alt, reasons, devices), reasons
    if verdict is RequestVerdict.UNSATISFIABLE:
        text = "; ".join(_strip(alt, r) for r in reasons) or "cannot be allocated"
        return verdict, text + after, reasons
    if chosen is not None:
        return verdict, f"could be allocated alone, but not with the other requests{after}", ()
    failure = ctx.result.reasons if isinstance(ctx.result, AllocationFailure) else ()
    return verdict, "could be allocated alone; the claim fails: " + "; ".join(failure), ()


def _request_reports(ctx: _Context, request: Request) -> list[RequestReport]:
    out: list[RequestReport] = []
    for position, alt in enumerate(request.alternatives):
        devices = _devices(ctx, alt)
        verdict, summary, reasons = _verdict(ctx, request, position, devices)
        failing = sum(1 for d in devices if d.errors)
        if failing and verdict is not RequestVerdict.ERROR:
            summary += f"; selector errors on {failing} device(s): {ABORTS} once it evaluates one of them"
        out.append(
            RequestReport(
                request=alt.request, sub=alt.sub, device_class=alt.class_name, all_mode=alt.all_mode,
                count=alt.count, admin_access=alt.admin_access, class_selectors=alt.class_selectors,
                selectors=alt.selectors, capacity_requests=tuple((n, a.text) for n, a in alt.capacity),
                tolerations=alt.tolerations, verdict=verdict, summary=summary, reasons=reasons,
                devices=devices, constraints=_constraints(ctx, alt, devices),
                allocated=tuple(d.name for d in devices if d.allocated),
            )
        )  # fmt: skip
    return out


# ---- one node, then every claim ------------------------------------------------------------------------


def _node_verdict(result: Allocation | AllocationFailure) -> tuple[Verdict, str]:
    if isinstance(result, Allocation):
        by_request: dict[str, list[str]] = {}
        for r in result.results:
            by_request.setdefault(r.request, []).append(r.device)
        shown = "; ".join(f"{request}: {names(devices)}" for request, devices in by_request.items())
        return Verdict.ALLOCATABLE, shown
    return (Verdict.ERROR if result.error else Verdict.PENDING), "; ".join(result.reasons)


def _commit(
    allocator: Allocator, held: Sequence[Held]
) -> tuple[list[str], list[tuple[str, tuple[str, ...]]]]:
    """Commit what ``held`` claims hold; the warnings, and which of them hold devices of this node."""
    warnings: list[str] = []
    here: list[tuple[str, tuple[str, ...]]] = []
    known = {d.key for p in allocator.pools for d in p.devices}
    for h in held:
        try:
            allocator.commit(h.label, h.allocation)
        except (ValueError, KeyError, TypeError) as err:
            warnings.append(f"claim {h.label}: its allocation is not counted: {err}")
            continue
        results = (h.allocation.get("devices") or {}).get("results") or []
        devices = tuple(r["device"] for r in results if (r["driver"], r["pool"], r["device"]) in known)
        if devices:
            here.append((h.label, devices))
    return warnings, here


def explain_on(
    claim: JSON,
    classes: Sequence[JSON],
    target: Target,
    held: Sequence[Held] = (),
    max_steps: int = DEFAULT_MAX_STEPS,
) -> tuple[NodeReport, Allocation | None]:
    """``claim`` against ``target``'s devices while ``held`` claims hold theirs; and its allocation there."""
    allocator = Allocator(target.slices, classes, node_name=target.node, max_steps=max_steps)
    committed, here = _commit(allocator, held)
    warnings = [*target.warnings, *committed]
    pools = tuple(PoolReport(p.id, len(p.devices), p.problem) for p in allocator.pools)
    result = allocator.allocate(claim)
    verdict, summary = _node_verdict(result)
    requests: list[RequestReport] = []
    try:
        parsed = parse_claim(claim, allocator.classes)
    except ClaimError:
        pass  # the verdict says why; there is nothing to evaluate
    else:
        ctx = _Context(parsed, allocator.pools, allocator.usage(), max_steps, result)
        requests = [report for request in parsed.requests for report in _request_reports(ctx, request)]
    if isinstance(result, Allocation):
        node = NodeReport(
            target.node, target.devices_from, verdict, summary, (), result.results, pools, tuple(requests),
            tuple(warnings), tuple(here),
        )  # fmt: skip
        return node, result
    node = NodeReport(
        target.node, target.devices_from, verdict, summary, result.reasons, (), pools, tuple(requests),
        tuple(warnings), tuple(here),
    )  # fmt: skip
    return node, None


def _same(held: Held, item: ClaimInput) -> bool:
    return held.label == item.label or (held.uid is not None and held.uid == item.uid)


def explain_claims(
    claims: Sequence[ClaimInput],
    classes: Sequence[JSON],
    targets: Sequence[Target],
    held: Sequence[Held] = (),
    max_steps: int = DEFAULT_MAX_STEPS,
) -> tuple[ClaimReport, ...]:
    """Each claim against every target, in order; each that fits holds its devices for the next ones."""
    holding = list(held)
    out: list[ClaimReport] = []
    for item in claims:
        holding = [h for h in holding if not _same(h, item)]
        nodes: list[NodeReport] = []
        first: Allocation | None = None
        for target in targets:
            report, allocation = explain_on(item.claim, classes, target, holding, max_steps)
            nodes.append(report)
            first = first or allocation
        out.append(ClaimReport(item.label, item.kind, item.source, tuple(nodes)))
        if first is not None:
            holding.append(Held(item.label, first.as_dict(), item.uid))
    return tuple(out)
