"""``gpudra explain`` for people: per claim and node a one-line verdict, per request a one-line verdict,
then the details.

Devices with the same outcome (the same selector results, the same reason they cannot be given, the same
capacity left) are one line, ``N devices, ...: name, name and K more``; ``--all-devices`` names them. An
evaluation error is shown with the message the scheduler gives, what it means and, for a missing key, the
guarded form of the selector.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from gpudra.devtools.allocator_capacity import show
from gpudra.devtools.explain_eval import names
from gpudra.devtools.explain_model import (
    ClaimReport,
    ConstraintReport,
    DeviceReport,
    NodeReport,
    Outcome,
    RequestReport,
    RequestVerdict,
    SelectorResult,
)
from gpudra.devtools.explain_selectors import shown

__all__ = ["render_text"]

_UNLIMITED = 1 << 30
_ORDER = {"allocated": 0, "available": 1, "unavailable": 2, "error": 3, "request": 4, "class": 5}


def _selector_word(s: SelectorResult) -> str:
    label = f"{s.source} #{s.index}"
    if s.outcome is Outcome.ERROR:
        return f"{label} ERROR"
    return f"{label} {s.outcome.value.replace('-', ' ')}"


def _detail(device: DeviceReport) -> str:
    """What else matters about a selected device: the capacity a share takes, taints it tolerates."""
    parts = [
        f"{c.name}: needs {show(c.consumes)}, {show(c.total - c.used)} free"
        for c in device.capacity
        if c.consumes and (c.used or c.consumes != c.total)
    ]
    parts += [f"taint {t} tolerated" for t in device.taints if t.tolerated]
    parts += [f"taint {t} (does not block)" for t in device.taints if not t.tolerated and not t.blocks]
    return ", ".join(parts)


def _kind(device: DeviceReport) -> str:
    if device.allocated:
        return "allocated"
    if device.available:
        return "available"
    if device.selected:
        return "unavailable"
    if device.errors:
        return "error"
    first = next(s for s in device.selectors if s.outcome is not Outcome.MATCH)
    return first.source


def _line(device: DeviceReport) -> str:
    words = ", ".join(_selector_word(s) for s in device.selectors if s.outcome is not Outcome.SKIPPED)
    if not device.selectors:
        words = "no selectors"
    if device.allocated:
        words += " → allocated"
    elif device.available:
        words += " → available"
    elif device.unavailable is not None:
        words += f" → {device.unavailable}"
    detail = _detail(device) if device.selected else ""
    return words + (f" ({detail})" if detail else "")


def _error_lines(device: DeviceReport, indent: str) -> Iterator[str]:
    for s in device.errors:
        yield f"{indent}{s.source} selector #{s.index}: {s.error}"
        if s.hint:
            yield f"{indent}  {s.hint}"
        if s.guarded:
            yield f"{indent}  guarded: {s.guarded}"


def _devices(report: RequestReport, indent: str, limit: int) -> Iterator[str]:
    groups: dict[str, list[DeviceReport]] = {}
    for device in report.devices:
        groups.setdefault(_line(device), []).append(device)
    ordered = sorted(groups.items(), key=lambda g: _ORDER[_kind(g[1][0])])
    for line, members in ordered:
        listed = names([d.name for d in members], limit)
        yield f"{indent}{len(members)} device{'s' if len(members) > 1 else ''}, {line}: {listed}"
        yield from _error_lines(members[0], indent + "    ")


def _constraint(c: ConstraintReport) -> str:
    scope = f" (requests {', '.join(c.requests)})" if c.requests else ""
    counts = [f"{len(g.devices)} on {g.value}" for g in c.groups]
    if c.without_value:
        counts.append(f"{len(c.without_value)} without it")
    found = ", ".join(counts) or "no available device"
    need = f"{c.needed} needed " + ("with distinct values" if c.distinct else "on one value")
    holds = "can hold" if c.satisfiable else "cannot hold"
    return f"constraint #{c.index} {c.kind} {c.attribute}{scope}: {found}; {need} — {holds}"


def _mode(report: RequestReport) -> str:
    return "allocationMode All" if report.all_mode else f"ExactCount {report.count}"


def _request(report: RequestReport, limit: int) -> Iterator[str]:
    yield f"    request {report.name}: {report.verdict.value.upper()} — {report.summary}"
    if report.verdict is RequestVerdict.NOT_NEEDED:
        return
    errors = f", {report.error_count} with selector errors" if report.error_count else ""
    yield (
        f"      class {report.device_class}, {_mode(report)}: {len(report.devices)} devices checked, "
        f"{report.matching} match, {report.available} available{errors}"
    )
    if report.admin_access:
        yield "      adminAccess: devices in use by other claims count as available"
    if report.capacity_requests:
        yield "      capacity requests: " + ", ".join(f"{n} {q}" for n, q in report.capacity_requests)
    if report.tolerations:
        shown_tolerations = [
            " ".join(p for p in (t.key or "*", t.operator, t.value) if p) + f":{t.effect or '*'}"
            for t in report.tolerations
        ]
        yield "      tolerations: " + "; ".join(shown_tolerations)
    for index, expression in enumerate(report.class_selectors):
        yield f"      class selector #{index}: {shown(expression)}"
    for index, expression in enumerate(report.selectors):
        yield f"      request selector #{index}: {shown(expression)}"
    yield "      devices:"
    yield from _devices(report, "        ", limit)
    for c in report.constraints:
        yield f"      {_constraint(c)}"


def _node(node: NodeReport, limit: int) -> Iterator[str]:
    where = f"node {node.node}" if node.node else "devices for all nodes"
    yield f"  {where} ({node.devices_from}): {node.verdict.value.upper()} — {node.summary}"
    for warning in node.warnings:
        yield f"    warning: {warning}"
    for claim, devices in node.held:
        yield f"    held by claim {claim}: {names(list(devices), limit)}"
    for pool in node.pools:
        if pool.problem:
            yield f"    pool {pool.pool}: {pool.problem}; its devices are not used"
    for report in node.requests:
        yield from _request(report, limit)


def render_text(reports: Sequence[ClaimReport], *, all_devices: bool = False) -> str:
    """The whole explanation, one block per claim."""
    limit = _UNLIMITED if all_devices else 4
    lines: list[str] = []
    for claim in reports:
        overall = f": {claim.summary}" if len(claim.nodes) > 1 else ""
        lines.append(f"claim {claim.claim} ({claim.kind} from {claim.source}){overall}")
        for node in claim.nodes:
            lines.extend(_node(node, limit))
        lines.append("")
    return "\n".join(lines)
