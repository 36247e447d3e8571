"""Shared helpers of the ``gpudra explain`` tests: profiles published as the driver does, the shipped
DeviceClasses, claims built from parts, and the explanation as its ``-o json`` document."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpudra.devtools.explain_eval import explain_claims
from gpudra.devtools.explain_inputs import claim_input, default_classes_dir, load_classes, profile_slices
from gpudra.devtools.explain_json import as_json
from gpudra.devtools.explain_model import Held, Target
from gpudra.model import k8stypes
from gpudra.planning.offer import plan_offer
from gpudra.planning.partitions import MigPolicy
from gpudra.planning.slices import plan_slices
from gpudra.vendors.select import open_driver

REPO = Path(__file__).resolve().parents[3]
NODE = "mock-node"
JSON = dict[str, Any]


@functools.cache
def classes() -> tuple[JSON, ...]:
    directory = default_classes_dir()
    assert directory == REPO / "deviceclasses"
    return tuple(dict(c) for c in load_classes(directory))


@functools.cache
def _slices(profile: str, dynamic: bool, fractional: bool) -> tuple[JSON, ...]:
    slices, _ = profile_slices(profile, NODE, dynamic=dynamic, fractional=fractional)
    return tuple(dict(s) for s in slices)


def target(profile: str, *, dynamic: bool = True, fractional: bool = True) -> Target:
    return Target(NODE, f"profile {profile}", _slices(profile, dynamic, fractional))


def published(
    profile: str,
    node: str = NODE,
    *,
    dynamic: bool = False,
    taints: dict[int, list[k8stypes.DeviceTaint]] | None = None,
) -> list[JSON]:
    """The slices the driver publishes for ``profile`` on ``node`` (no fractional GPUs), with ``taints`` on
    the devices at those positions of the sorted device names, as the health monitor would add them."""
    backend = open_driver("mock", profile, Path("/sys"))
    try:
        inventory = backend.discover()
    finally:
        backend.close()
    offer = plan_offer(inventory, policy=MigPolicy(dynamic=dynamic))
    by_name = {sorted(offer.entries)[i]: t for i, t in (taints or {}).items()}
    return [dict(s) for s in plan_slices(offer, node, None, 1, taints=by_name)]


def selectors(*expressions: str) -> list[JSON]:
    return [{"cel": {"expression": e}} for e in expressions]


def exactly(name: str, device_class: str, *expressions: str, **fields: Any) -> JSON:
    spec: JSON = {"deviceClassName": device_class, **fields}
    if expressions:
        spec["selectors"] = selectors(*expressions)
    return {"name": name, "exactly": spec}


def claim(name: str, *requests: JSON, constraints: Sequence[JSON] = (), namespace: str = "default") -> JSON:
    devices: JSON = {"requests": list(requests)}
    if constraints:
        devices["constraints"] = list(constraints)
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": devices},
    }


def explain(
    docs: Sequence[JSON],
    targets: Target | Sequence[Target],
    *,
    held: Sequence[Held] = (),
    extra_classes: Sequence[JSON] = (),
) -> JSON:
    """The ``-o json`` document of explaining ``docs`` (claims or templates) in order."""
    items = [claim_input(d, f"test (document {i})") for i, d in enumerate(docs, start=1)]
    chosen = [targets] if isinstance(targets, Target) else list(targets)
    reports = explain_claims(items, [*classes(), *extra_classes], chosen, held)
    return as_json(reports)


def only_request(document: JSON, claim_index: int = 0, request: int = 0) -> JSON:
    """The one node's request ``request`` of claim ``claim_index``."""
    (node,) = document["claims"][claim_index]["nodes"]
    result: JSON = node["requests"][request]
    return result


def node_of(document: JSON, claim_index: int = 0) -> JSON:
    (node,) = document["claims"][claim_index]["nodes"]
    result: JSON = node
    return result
