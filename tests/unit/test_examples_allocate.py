"""Every example claim in deviceclasses/examples/ can really be allocated on a matching mock node.

A small emulation of the scheduler's device choice: the request's DeviceClass selectors and its own
selectors (evaluated with gpudra.devtools.cel, as the scheduler would, including missing-key errors), its
count, and
``matchAttribute`` constraints. It proves each example is satisfiable on the profile its README targets and
that the selectors never hit a CEL runtime error on that node's devices.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpudra.devtools.cel import evaluate_selector
from gpudra.model import k8stypes
from gpudra.planning import slices
from gpudra.planning.offer import plan_offer
from gpudra.vendors.select import open_driver

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "deviceclasses" / "examples"

#: Which mock node each scenario targets (and a second vendor where the scenario says "any vendor").
PROFILES: dict[str, tuple[str, ...]] = {
    "one-gpu": ("dgx-h100",),
    "gpu-40gi-any-vendor": ("dgx-h100", "mi300x-8-spx-nps1"),
    "mig-slice-by-profile": ("h100-mig-mixed",),
    "two-mig-slices-one-parent": ("h100-mig-mixed",),
    "four-gpus-one-nvlink-domain": ("dgx-h100", "gb200-nvl72-tray"),
    "shared-claim-two-pods": ("dgx-h100",),
    "amd-partition": ("mi300x-8-cpx-nps4",),
}


def _devices(profile: str) -> list[k8stypes.Device]:
    backend = open_driver("mock", profile, Path("/sys"))
    try:
        inv = backend.discover()
    finally:
        backend.close()
    planned = slices.plan_slices(plan_offer(inv), "node", None, 1)
    return [d for s in planned for d in s["spec"].get("devices", [])]


def _classes() -> dict[str, list[str]]:
    out = {}
    for path in (REPO / "deviceclasses").glob("*.gpudra.io.yaml"):
        doc = yaml.safe_load(path.read_text())
        out[doc["metadata"]["name"]] = [s["cel"]["expression"] for s in doc["spec"].get("selectors", [])]
    return out


def _claim_specs(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == "ResourceClaim":
            yield doc["spec"]
        elif doc and doc["kind"] == "ResourceClaimTemplate":
            yield doc["spec"]["spec"]


def _attr(device: k8stypes.Device, qualified: str) -> object:
    domain, _, name = qualified.rpartition("/")
    key = name if domain == "gpudra.io" else qualified
    value = device.get("attributes", {}).get(key)
    return None if value is None else next(iter(value.values()))


def _candidates(
    request: dict[str, Any], devices: list[k8stypes.Device], classes: dict[str, list[str]]
) -> list[k8stypes.Device]:
    exactly = request["exactly"]
    selectors = [
        *classes[exactly["deviceClassName"]],
        *(s["cel"]["expression"] for s in exactly.get("selectors", [])),
    ]
    return [d for d in devices if all(evaluate_selector(expr, d) for expr in selectors)]


def _satisfiable(spec: dict[str, Any], devices: list[k8stypes.Device], classes: dict[str, list[str]]) -> bool:
    """Exact counts from distinct devices, with every matchAttribute constraint met (small search)."""
    requests = spec["devices"]["requests"]
    constraints = spec["devices"].get("constraints", [])
    options = []
    for request in requests:
        count = request["exactly"].get("count", 1)
        options.append(list(itertools.combinations(_candidates(request, devices, classes), count)))
    for choice in itertools.product(*options):
        picked = {r["name"]: list(c) for r, c in zip(requests, choice, strict=True)}
        names = [d["name"] for c in choice for d in c]
        if len(names) != len(set(names)):
            continue
        if all(_constraint_met(c, picked) for c in constraints):
            return True
    return False


def _constraint_met(constraint: dict[str, Any], picked: dict[str, list[k8stypes.Device]]) -> bool:
    members = [d for r in constraint.get("requests", picked) for d in picked[r]]
    values = {_attr(d, constraint["matchAttribute"]) for d in members}
    return len(values) == 1 and None not in values


def _cases() -> list[tuple[str, str]]:
    return [(s, p) for s in sorted(PROFILES) for p in PROFILES[s]]


def test_every_example_has_a_target_profile() -> None:
    assert {p.name for p in EXAMPLES.iterdir() if p.is_dir()} == set(PROFILES)


@pytest.mark.parametrize(("scenario", "profile"), _cases())
def test_example_is_allocatable_on_its_node(scenario: str, profile: str) -> None:
    devices, classes = _devices(profile), _classes()
    specs = list(_claim_specs(EXAMPLES / scenario / "example.yaml"))
    assert specs, f"{scenario} has no ResourceClaim(Template)"
    for spec in specs:
        assert _satisfiable(spec, devices, classes), f"{scenario} cannot be allocated on {profile}"
