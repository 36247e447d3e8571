"""Every example claim in deviceclasses/examples/ can really be allocated on a matching mock node.

The node's slices are what ``gpudra`` publishes for the profile (static MIG, or dynamic MIG for the scenarios
that use it); the claims are allocated by the allocation simulator (:mod:`gpudra.devtools.allocator`), which
evaluates the DeviceClass and request selectors as the scheduler does (a CEL runtime error fails the test),
counts, constraints and counters. So each example is satisfiable on the profile its README targets.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpudra.devtools.allocator import Allocation, Allocator
from gpudra.planning import sharing_config, slices
from gpudra.planning.offer import plan_offer
from gpudra.planning.partitions import MigPolicy
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
    "dynamic-mig-1g10gb": ("dgx-h100", "dgx-h100-mig-all"),
    "time-slicing-shared-claim": ("dgx-h100",),
    "mps-shared-claim": ("dgx-h100",),
    "fractional-gpu-three-claims": ("dgx-h100",),
    "fractional-amd-memory": ("mi300x-8-spx-nps1",),
}
#: Scenarios published with dynamic MIG (the others with static MIG, as a cluster without the gate sees them).
DYNAMIC = {"dynamic-mig-1g10gb"}
#: Scenarios published with fractional GPUs (--fractional-gpus on, DRAConsumableCapacity on): every claim
#: of the example lands on ONE device, each with a share of its own.
FRACTIONAL = {"fractional-gpu-three-claims", "fractional-amd-memory"}


def _slices(profile: str, dynamic: bool, fractional: bool = False) -> list[dict[str, Any]]:
    backend = open_driver("mock", profile, Path("/sys"))
    try:
        inv = backend.discover()
    finally:
        backend.close()
    offer = plan_offer(inv, policy=MigPolicy(dynamic=dynamic, fractional=fractional))
    return [dict(s) for s in slices.plan_slices(offer, "node", None, 1)]


def _classes() -> list[dict[str, Any]]:
    return [yaml.safe_load(p.read_text()) for p in sorted((REPO / "deviceclasses").glob("*.gpudra.io.yaml"))]


def _claims(path: Path) -> Iterator[dict[str, Any]]:
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc["kind"] == "ResourceClaim":
            yield doc
        elif doc and doc["kind"] == "ResourceClaimTemplate":
            yield {
                "metadata": {"name": doc["metadata"]["name"], "namespace": "default"},
                "spec": doc["spec"]["spec"],
            }


def _cases() -> list[tuple[str, str]]:
    return [(s, p) for s in sorted(PROFILES) for p in PROFILES[s]]


def test_every_example_has_a_target_profile() -> None:
    assert {p.name for p in EXAMPLES.iterdir() if p.is_dir()} == set(PROFILES)


@pytest.mark.parametrize(("scenario", "profile"), _cases())
def test_example_is_allocatable_on_its_node(scenario: str, profile: str) -> None:
    published = _slices(profile, scenario in DYNAMIC, scenario in FRACTIONAL)
    allocator = Allocator(published, _classes(), node_name="node")
    claims = list(_claims(EXAMPLES / scenario / "example.yaml"))
    assert claims, f"{scenario} has no ResourceClaim(Template)"
    held: list[dict[str, Any]] = []
    for index, claim in enumerate(claims):
        if scenario in FRACTIONAL:  # independent claims: each in a namespace of its own
            claim["metadata"]["namespace"] = f"team-{index}"
        result = allocator.allocate(claim)
        assert isinstance(result, Allocation), f"{scenario} cannot be allocated on {profile}: {result}"
        assert result.devices
        if scenario in DYNAMIC and profile == "dgx-h100":  # no MIG device exists: only dynamic MIG has one
            assert all("-mig-1g10gb-19-" in d for d in result.devices), result.devices
        allocator.commit(claim["metadata"]["name"], result)  # they are meant to run together
        held.extend(dict(r) for r in result.as_dict()["devices"]["results"])
    if scenario in FRACTIONAL:
        assert len(claims) > 1
        assert len({r["device"] for r in held}) == 1, held  # one GPU, as the example says
        assert len({r["shareID"] for r in held}) == len(claims)


def test_sharing_examples_use_the_config_api_as_decoded() -> None:
    """The opaque configs of the examples decode with the driver's own decoders (gpudra.io/v1alpha1)."""
    decoded = []
    for folder in sorted(p for p in EXAMPLES.iterdir() if p.is_dir()):
        for claim in _claims(folder / "example.yaml"):
            for config in claim["spec"]["devices"].get("config", []):
                params = config["opaque"]["parameters"]
                decoded.append(sharing_config.KINDS[params["apiVersion"], params["kind"]](params))
    configs = [d for d in decoded if isinstance(d, sharing_config.GpuConfig)]
    assert len(configs) == len(decoded)
    sharings = {c.sharing.strategy.value: c.sharing for c in configs if c.sharing is not None}
    assert sorted(sharings) == ["MPS", "TimeSlicing"]
    slicing, mps = sharings["TimeSlicing"].time_slicing, sharings["MPS"].mps
    assert slicing is not None
    assert slicing.interval.value == "Long"
    assert mps is not None
    assert (mps.default_active_thread_percentage, mps.default_pinned_device_memory_limit) == (50, 10 * 2**30)
