"""Fractional GPUs as published: the device JSON (allowMultipleAllocations, request policies) per mock
profile and MIG management, the API's rules for request policies, the stand-in API server with the
DRAConsumableCapacity gate on and off, and the fall-back to exclusive devices
(:mod:`gpudra.runtime.sharemode`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gpudra import cli
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.kube.client import KubeClient, load_config
from gpudra.model import k8stypes
from gpudra.model.inventory import Device, DeviceKind, Inventory, Vendor
from gpudra.planning import slicediff, slices
from gpudra.planning.apirules import check_device, request_policy_problem
from gpudra.planning.fractional import memory_policy
from gpudra.planning.offer import Offer, plan_offer
from gpudra.planning.partitions import MigPolicy
from gpudra.runtime.errors import UsageError
from gpudra.runtime.sharemode import EVENT_REASON, ShareMode, consumable_fields
from gpudra.state.node import NodeStateStore
from gpudra.vendors.select import open_driver

NODE = "node-f"
ZERO = {"default": "0", "validValues": ["0"]}


def _inventory(profile: str) -> Inventory:
    backend = open_driver("mock", profile, Path("/sys"))
    try:
        return backend.discover()
    finally:
        backend.close()


def _offer(profile: str, dynamic: bool = False, fractional: bool = True) -> Offer:
    return plan_offer(_inventory(profile), policy=MigPolicy(dynamic=dynamic, fractional=fractional))


def _memory_policy(total: str, default: str | None = None) -> dict[str, Any]:
    return {"default": default or total, "validRange": {"min": "2Gi", "max": default or total, "step": "1Mi"}}


# ---- the device JSON ------------------------------------------------------------------------------------


def test_a_full_h100_is_shared_by_memory_and_nothing_else() -> None:
    offer = _offer("dgx-h100")
    assert offer.shared_devices == 8
    for name, entry in offer.entries.items():
        assert offer.shareable(name)
        assert entry["allowMultipleAllocations"] is True
        assert entry["capacity"] == {
            "memory": {"value": "85520809984", "requestPolicy": _memory_policy("85520809984")},
            "multiprocessors": {"value": "132", "requestPolicy": ZERO},
        }
        check_device(entry)


def test_a_40gi_a100_writes_its_policy_in_binary_units() -> None:
    entry = next(iter(_offer("dgx-a100").entries.values()))
    assert entry["capacity"]["memory"] == {"value": "42949672960", "requestPolicy": _memory_policy("40Gi")}


def test_dynamic_mig_devices_stay_exclusive_and_admin_mig_devices_are_shared() -> None:
    assert _offer("dgx-h100", dynamic=True).shared_devices == 0  # whole GPUs and placements: counters
    offer = _offer("h100-mig-mixed", dynamic=True)
    shared = {n: e for n, e in offer.entries.items() if offer.shareable(n)}
    assert len(shared) == 3  # GPU 0's 3g.40gb and two 2g.20gb, made by an admin
    assert all(e["attributes"]["type"]["string"] == "mig" for e in shared.values())
    assert not any("consumesCounters" in e for e in shared.values())
    assert all("consumesCounters" in e for n, e in offer.entries.items() if n not in shared)
    mig = next(e for e in shared.values() if e["attributes"]["profile"]["string"] == "2g.20gb")
    caps = mig["capacity"]
    assert caps["memory"]["requestPolicy"] == _memory_policy(caps["memory"]["value"])
    for engine in ("copyEngines", "decoders", "encoders", "jpegEngines", "ofaEngines", "multiprocessors"):
        assert caps[engine]["requestPolicy"] == ZERO


def test_static_mig_shares_every_mig_device_and_no_mig_enabled_gpu_is_published() -> None:
    offer = _offer("h100-mig-mixed")
    kinds = {e["attributes"]["type"]["string"] for n, e in offer.entries.items() if offer.shareable(n)}
    assert kinds == {"gpu", "mig"}
    assert offer.shared_devices == len(offer.entries) == 10  # 7 whole GPUs and GPU 0's 3 MIG devices


def test_amd_gpus_and_partitions_share_their_memory() -> None:
    [spx] = {e["capacity"]["memory"]["value"] for e in _offer("mi300x-8-spx-nps1").entries.values()}
    assert spx == "206141652992"  # 196592Mi: MI300X
    entry = next(iter(_offer("mi300x-8-spx-nps1").entries.values()))
    assert entry["capacity"]["memory"]["requestPolicy"] == _memory_policy(spx)
    offer = _offer("mi300x-8-cpx-nps4")
    assert offer.shared_devices == 64
    caps = next(iter(offer.entries.values()))["capacity"]
    assert caps["memory"] == {"value": "25769803776", "requestPolicy": _memory_policy("25769803776", "24Gi")}
    for name in ("memoryPool", "computeUnits", "simdUnits"):
        assert caps[name]["requestPolicy"] == ZERO


def test_a_device_without_known_memory_stays_exclusive_with_a_warning() -> None:
    offer = _offer("mi210-pcie")
    assert offer.shared_devices == 0
    assert sum("not shared (fractional GPUs): its memory is unknown" in w for w in offer.warnings) == 8


@pytest.mark.parametrize(
    ("memory", "why"),
    [
        (80 * 2**30 + 1, "is not a whole number of MiB"),
        (2 * 2**30, "is below the smallest share and one step (2Gi + 1Mi)"),
    ],
)
def test_memory_the_policy_cannot_describe_stays_exclusive(memory: int, why: str) -> None:
    gpu = Device(DeviceKind.GPU, Vendor.NVIDIA, "GPU-00000000-0000-0000-0000-000000000001", "GPU", 0,
                 memory_bytes=memory)  # fmt: skip
    offer = plan_offer(Inventory(devices=(gpu,)), policy=MigPolicy(dynamic=False, fractional=True))
    assert offer.shared_devices == 0
    assert any(why in w for w in offer.warnings), offer.warnings


def test_off_publishes_every_device_exclusive() -> None:
    for profile in ("dgx-h100", "mi300x-8-cpx-nps4"):
        offer = _offer(profile, fractional=False)
        assert offer.shared_devices == 0
        assert not any("requestPolicy" in c for e in offer.entries.values() for c in e["capacity"].values())


# ---- the API's rules for request policies ----------------------------------------------------------


def test_every_published_policy_keeps_the_apis_rules() -> None:
    for profile in ("dgx-h100", "dgx-a100", "h100-mig-mixed", "pcie-l4-x2", "mi300x-8-cpx-nps4"):
        for entry in _offer(profile).entries.values():
            for cap in entry["capacity"].values():
                assert request_policy_problem(cap["value"], cap["requestPolicy"], True) is None, entry["name"]


@pytest.mark.parametrize(
    ("policy", "multiple", "problem"),
    [
        (memory_policy(80 * 2**30), None, "allowMultipleAllocations must be true"),
        ({"default": "80Gi", "validRange": {"min": "3Gi", "step": "2Gi"}}, True, "min + n * step"),
        ({"default": "1Gi", "validRange": {"min": "2Gi"}}, True, "0 <= min <= default"),
        ({"default": "90Gi", "validRange": {"min": "2Gi"}}, True, "0 <= min <= default"),
        ({"validRange": {"min": "2Gi"}}, True, "default is required"),
        ({"default": "2Gi", "validValues": ["4Gi", "2Gi"]}, True, "ascending"),
        ({"default": "3Gi", "validValues": ["2Gi", "4Gi"]}, True, "default is not one of validValues"),
        ({"default": "2Gi", "validValues": ["2Gi"], "validRange": {"min": "2Gi"}}, True, "only one of"),
    ],
)
def test_request_policies_the_api_refuses_are_named(
    policy: k8stypes.CapacityRequestPolicy, multiple: bool | None, problem: str
) -> None:
    found = request_policy_problem("80Gi", policy, multiple)
    assert found is not None
    assert problem in found
    capacity: k8stypes.DeviceCapacity = {"value": "80Gi", "requestPolicy": policy}
    device: k8stypes.Device = {"name": "gpu-0", "capacity": {"memory": capacity}}
    if multiple:
        device["allowMultipleAllocations"] = True
    with pytest.raises(ValueError, match="device gpu-0: capacity memory: requestPolicy: "):
        check_device(device)


# ---- the stand-in API server, the probe and the fall-back ------------------------------------------


def _api(gate: bool) -> Iterator[tuple[FakeApiServer, KubeClient]]:
    server = FakeApiServer(feature_gates={"DRAConsumableCapacity": gate}).start()
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        client = KubeClient(load_config(server.write_kubeconfig(Path(tmp) / "kubeconfig")))
        yield server, client
        client.close()
    server.stop()


@pytest.fixture(params=[True, False], ids=["gate-on", "gate-off"])
def gated(request: pytest.FixtureRequest) -> Iterator[tuple[bool, FakeApiServer, KubeClient]]:
    for server, client in _api(request.param):
        yield request.param, server, client


def test_the_api_keeps_the_fields_only_with_its_gate_on(
    gated: tuple[bool, FakeApiServer, KubeClient],
) -> None:
    gate, _, client = gated
    [sent] = slices.plan_slices(_offer("dgx-h100"), NODE, None, 1)
    kept = client.create_slice(sent)
    if gate:
        assert slicediff.slice_content_equal(sent, kept)  # request policies compare equal as text too
        assert slicediff.dropped_fields(sent, kept) == []
    else:
        dropped = slicediff.dropped_fields(sent, kept)
        assert len(dropped) == 8 * 3  # per device: the flag and the policies of its two capacities
        name = sent["spec"]["devices"][0]["name"]
        assert f"spec.devices[{name}].allowMultipleAllocations" in dropped
        assert f"spec.devices[{name}].capacity.memory.requestPolicy" in dropped
    assert consumable_fields(client, NODE, None) == ("kept" if gate else "dropped")
    assert [s["metadata"]["name"] for s in _listed(client)] == [sent["metadata"]["name"]]  # probe deleted


def _listed(client: KubeClient) -> list[k8stypes.ResourceSlice]:
    return client.list_slices(NODE)[0]


class _Told:
    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []
        self.metric: list[bool] = []


def _mode(profile: str = "dgx-h100", mig: MigPolicy | None = None) -> tuple[ShareMode, NodeStateStore, _Told]:
    told = _Told()
    mig_policy = mig or MigPolicy(dynamic=False)
    share = ShareMode(True, lambda: mig_policy, frozenset, lambda r, m: told.events.append((r, m)),
                      told.metric.append)  # fmt: skip
    share.node = node = NodeStateStore(plan_offer(_inventory(profile), policy=share.policy))
    return share, node, told


def test_dropped_fields_fall_back_once_to_exclusive_devices() -> None:
    share, node, told = _mode()
    assert node.current.offer.shared_devices == 8
    assert not share.on_dropped(["spec.devices[gpu-x].taints"])  # another gate: not ours
    assert share.on_dropped(["spec.devices[gpu-x].allowMultipleAllocations"])  # re-planned
    assert (share.enabled, node.current.offer.shared_devices, told.metric) == (False, 0, [False])
    [(reason, message)] = told.events
    assert reason == EVENT_REASON
    assert "DRAConsumableCapacity" in message
    assert "Falling back to exclusive devices" in message
    assert not share.on_dropped(["spec.devices[gpu-x].capacity.memory.requestPolicy"])  # told once
    assert len(told.events) == 1


def test_a_refusal_over_request_policies_falls_back_and_others_do_not() -> None:
    share, node, told = _mode()
    [obj] = slices.plan_slices(node.current.offer, NODE, None, 1)
    assert not share.on_rejected(obj, "spec.devices[0].consumesCounters: Too many")
    assert share.on_rejected(obj, "spec.devices[0].capacity[memory].requestPolicy.validRange.step: Invalid")
    assert node.current.offer.shared_devices == 0
    assert len(told.events) == 1


def test_a_mig_fall_back_is_followed_by_a_plan_that_shares() -> None:
    """MIG management plans again with its own policy (``fractional`` unset); follow() restores sharing."""
    share, node, _ = _mode()
    node.offer(plan_offer(node.current.offer.inventory, policy=MigPolicy(dynamic=False)))
    assert node.current.offer.shared_devices == 0
    assert share.follow(True)
    assert node.current.offer.shared_devices == 8
    assert not share.follow(False)  # nothing left to do


def test_the_probe_falls_back_before_anything_is_published() -> None:
    for server, client in _api(False):
        share, node, told = _mode()
        share.probe(client, NODE, None)
        assert node.current.offer.shared_devices == 0
        assert len(told.events) == 1
        assert server.list_objects("ResourceSlice") == []  # the probe is gone, nothing else written
    for _, client in _api(True):
        share, node, told = _mode()
        share.probe(client, NODE, None)
        assert (node.current.offer.shared_devices, told.events) == (8, [])


def test_mig_management_policy_changes_reach_the_plans() -> None:
    share, _, _ = _mode(mig=MigPolicy(dynamic=True))
    assert share.policy == MigPolicy(dynamic=True, fractional=True)
    assert replace(share.policy, fractional=False) == MigPolicy(dynamic=True)


# ---- the flag ------------------------------------------------------------------------------------------


def test_the_flag_and_its_environment_twin() -> None:
    assert cli.parse_args(["run", "--node-name", "n"], {}).fractional_gpus == "on"
    off = cli.parse_args(["run", "--node-name", "n"], {"GPUDRA_FRACTIONAL_GPUS": "off"})
    assert off.fractional_gpus == "off"
    flag = cli.parse_args(["discover", "--fractional-gpus", "off"], {"GPUDRA_FRACTIONAL_GPUS": "on"})
    assert flag.fractional_gpus == "off"
    with pytest.raises(UsageError, match="GPUDRA_FRACTIONAL_GPUS"):
        cli.parse_args(["run", "--node-name", "n"], {"GPUDRA_FRACTIONAL_GPUS": "maybe"})
