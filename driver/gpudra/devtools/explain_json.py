"""``gpudra explain -o json``: the explanation for tools, in a stable shape.

The shape (``apiVersion: explain.gpudra.io/v1``; fields are only ever added to it, never renamed or given
another meaning; enumerations may gain values)::

    {"apiVersion": "explain.gpudra.io/v1", "kind": "Explanation",
     "verdict": "allocatable" | "pending" | "error",       # the worst over the claims
     "claims": [{
       "claim": "namespace/name", "kind": "ResourceClaim" | "ResourceClaimTemplate", "source": str,
       "verdict": "allocatable" | "pending" | "error",     # allocatable when it fits on some node
       "summary": str,
       "nodes": [{
         "node": str | null, "devicesFrom": str,
         "verdict": "allocatable" | "pending" | "error", "summary": str,
         "reasons": [str],                                 # why not (the allocation simulator's words)
         "warnings": [str],
         "held": [{"claim": "namespace/name", "devices": [str]}],   # other claims' devices on this node
         "allocation": [{"request", "driver", "pool", "device", "adminAccess"?, "shareID"?,
                         "consumedCapacity"?}],
         "pools": [{"pool": "driver/name", "devices": int, "problem": str | null}],
         "requests": [{
           "request": str, "subrequest": str | null, "name": "request[/subrequest]",
           "verdict": "allocated" | "satisfiable" | "unsatisfiable" | "error" | "not-needed",
           "summary": str, "reasons": [str],
           "deviceClass": str, "allocationMode": "ExactCount" | "All", "count": int, "needed": int,
           "adminAccess": bool, "capacityRequests": {name: quantity},
           "tolerations": [{"key", "operator", "value", "effect"}],
           "selectors": {"class": [str], "request": [str]},
           "checked": int, "matching": int, "available": int, "errors": int, "allocated": [device],
           "devices": [{
             "device": str, "driver": str, "pool": str,
             "selected": bool, "available": bool, "allocated": bool,
             "selectors": [{"source": "class" | "request", "index": int,
                            "result": "match" | "no-match" | "error" | "skipped",
                            "error": str?, "guarded": str?, "hint": str?}],
             "unavailable": str | null,                    # why a selected device cannot be given
             "inUseBy": str | null,
             "taints": [{"key", "value", "effect", "tolerated": bool, "blocks": bool}],
             "counters": [{"counterSet", "counter", "consumes", "left", "total", "fits": bool}],
             "countersShared": bool,
             "capacity": [{"name", "consumes", "used", "total", "holders": [str], "fits": bool}],
             "capacityRefused": str | null}],
           "constraints": [{"index": int, "kind": "matchAttribute" | "distinctAttribute",
                            "attribute": str, "requests": [str], "needed": int,
                            "groups": [{"value": str, "devices": [str]}], "withoutValue": [str],
                            "satisfiable": bool}]}]}]}]}

Quantities (counters, capacities) are strings in Kubernetes quantity form; ``value`` of a group is shown as
in CEL (``'text'``, ``3``, ``true``). ``checked`` counts the devices of usable pools; ``devices`` lists
them all, in published order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Final

from gpudra.devtools.allocator_capacity import show
from gpudra.devtools.explain_model import (
    ClaimReport,
    ConstraintReport,
    DeviceReport,
    NodeReport,
    RequestReport,
    SelectorResult,
    Verdict,
)

__all__ = ["API_VERSION", "as_json", "overall", "render_json"]

API_VERSION: Final = "explain.gpudra.io/v1"


def _selector(s: SelectorResult) -> dict[str, Any]:
    out: dict[str, Any] = {"source": s.source, "index": s.index, "result": s.outcome.value}
    for key, value in (("error", s.error), ("guarded", s.guarded), ("hint", s.hint)):
        if value is not None:
            out[key] = value
    return out


def _device(d: DeviceReport) -> dict[str, Any]:
    return {
        "device": d.name, "driver": d.driver, "pool": d.pool,
        "selected": d.selected, "available": d.available, "allocated": d.allocated,
        "selectors": [_selector(s) for s in d.selectors],
        "unavailable": d.unavailable, "inUseBy": d.in_use_by,
        "taints": [
            {"key": t.key, "value": t.value, "effect": t.effect, "tolerated": t.tolerated, "blocks": t.blocks}
            for t in d.taints
        ],
        "counters": [
            {"counterSet": c.counter_set, "counter": c.counter, "consumes": show(c.consumes, False),
             "left": show(c.left, False), "total": show(c.total, False), "fits": c.fits}
            for c in d.counters
        ],
        "countersShared": d.counters_shared,
        "capacity": [
            {"name": c.name, "consumes": show(c.consumes), "used": show(c.used), "total": show(c.total),
             "holders": list(c.holders), "fits": c.fits}
            for c in d.capacity
        ],
        "capacityRefused": d.capacity_refused,
    }  # fmt: skip


def _constraint(c: ConstraintReport) -> dict[str, Any]:
    return {
        "index": c.index, "kind": c.kind, "attribute": c.attribute, "requests": list(c.requests),
        "needed": c.needed, "groups": [{"value": g.value, "devices": list(g.devices)} for g in c.groups],
        "withoutValue": list(c.without_value), "satisfiable": c.satisfiable,
    }  # fmt: skip


def _request(r: RequestReport) -> dict[str, Any]:
    return {
        "request": r.request, "subrequest": r.sub, "name": r.name,
        "verdict": r.verdict.value, "summary": r.summary, "reasons": list(r.reasons),
        "deviceClass": r.device_class, "allocationMode": "All" if r.all_mode else "ExactCount",
        "count": r.count, "needed": r.needed, "adminAccess": r.admin_access,
        "capacityRequests": dict(r.capacity_requests),
        "tolerations": [
            {"key": t.key, "operator": t.operator, "value": t.value, "effect": t.effect}
            for t in r.tolerations
        ],
        "selectors": {"class": list(r.class_selectors), "request": list(r.selectors)},
        "checked": len(r.devices), "matching": r.matching, "available": r.available,
        "errors": r.error_count, "allocated": list(r.allocated),
        "devices": [_device(d) for d in r.devices],
        "constraints": [_constraint(c) for c in r.constraints],
    }  # fmt: skip


def _node(n: NodeReport) -> dict[str, Any]:
    return {
        "node": n.node, "devicesFrom": n.devices_from, "verdict": n.verdict.value, "summary": n.summary,
        "reasons": list(n.reasons), "warnings": list(n.warnings),
        "held": [{"claim": claim, "devices": list(devices)} for claim, devices in n.held],
        "allocation": [dict(r.as_dict()) for r in n.allocation],
        "pools": [{"pool": p.pool, "devices": p.devices, "problem": p.problem} for p in n.pools],
        "requests": [_request(r) for r in n.requests],
    }  # fmt: skip


def overall(reports: Sequence[ClaimReport]) -> Verdict:
    """The worst claim verdict: error, then pending, else allocatable."""
    verdicts = {r.verdict for r in reports}
    for verdict in (Verdict.ERROR, Verdict.PENDING):
        if verdict in verdicts:
            return verdict
    return Verdict.ALLOCATABLE


def as_json(reports: Sequence[ClaimReport]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "Explanation",
        "verdict": overall(reports).value,
        "claims": [
            {"claim": c.claim, "kind": c.kind, "source": c.source, "verdict": c.verdict.value,
             "summary": c.summary, "nodes": [_node(n) for n in c.nodes]}
            for c in reports
        ],
    }  # fmt: skip


def render_json(reports: Sequence[ClaimReport]) -> str:
    return json.dumps(as_json(reports), indent=2)
