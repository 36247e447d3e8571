"""The publisher against the stand-in API server over real HTTP (through the real lightkube client)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.kube.client import KubeClient, load_config
from gpudra.kube.publisher import Backoff, Publisher
from gpudra.model.inventory import Device, DeviceKind, Inventory, PciPlacement, Semver, Vendor
from gpudra.model.k8stypes import ResourceSlice
from gpudra.planning.offer import plan_offer
from gpudra.state.node import NodeState, NodeStateStore

NODE = "node-p"
SLICES = "/apis/resource.k8s.io/v1/resourceslices"


def gpus(n: int, memory: int = 80 * 2**30) -> Inventory:
    devices = tuple(
        Device(
            kind=DeviceKind.GPU,
            vendor=Vendor.NVIDIA,
            uuid=f"GPU-{i:08x}-0000-0000-0000-000000000000",
            product_name="NVIDIA H100 80GB HBM3",
            index=i,
            minor=i,
            memory_bytes=memory,
            pci=PciPlacement(bus_id=f"0000:{i % 256:02x}:00.0", numa_node=i % 2),
        )
        for i in range(n)
    )
    return Inventory(
        devices=devices, driver_version=Semver(580, 105, 8), cuda_driver_version=Semver(13, 0, 0)
    )


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    yield server
    server.stop()


@pytest.fixture
def kube(api: FakeApiServer, tmp_path: Path) -> Iterator[KubeClient]:
    client = KubeClient(load_config(api.write_kubeconfig(tmp_path / "kubeconfig")))
    yield client
    client.close()


def start(kube: KubeClient, inv: Inventory) -> Publisher:
    p = Publisher(kube, NODE, NodeStateStore(plan_offer(inv)), backoff=Backoff(initial_s=0.05, max_s=0.2))
    p.start()
    assert p.synced.wait(10)
    return p


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


def pool(api: FakeApiServer) -> list[dict[str, Any]]:
    return [s for s in api.list_objects("ResourceSlice") if s["spec"]["nodeName"] == NODE]


def writes(api: FakeApiServer) -> int:
    return sum(api.count(m, SLICES) for m in ("POST", "PUT", "DELETE"))


def write_log(api: FakeApiServer) -> list[tuple[str, str]]:
    return [(r.method, r.path) for r in api.requests if r.method in ("POST", "PUT", "DELETE")]


STRAY = f"{NODE}-gpudra.io-stray"


def stray_is_removed(api: FakeApiServer) -> bool:
    """Put a slice into our pool that the plan does not have and wait for the publisher to delete it.

    The positive signal that the publisher still acts: once the stray is gone, it has reconciled every
    watch event before this one too, so a write it would have made for any of them has been made."""
    api.put_object({
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": STRAY},
        "spec": {
            "driver": "gpudra.io",
            "nodeName": NODE,
            "pool": {"name": NODE, "generation": 0, "resourceSliceCount": 1},
            "devices": [],
        },
    })
    # the request log, not the store: the store shows the deletion an instant before the log has it
    deleted = wait_for(lambda: api.count("DELETE", f"{SLICES}/{STRAY}") > 0)
    return deleted and api.get_object("ResourceSlice", STRAY) is None


def test_large_inventory_is_split_into_a_consistent_pool(api: FakeApiServer, kube: KubeClient) -> None:
    p = start(kube, gpus(200))
    try:
        slices = pool(api)
        assert len(slices) == 2
        assert {s["spec"]["pool"]["resourceSliceCount"] for s in slices} == {2}
        assert {s["spec"]["pool"]["generation"] for s in slices} == {1}
        names = [d["name"] for s in slices for d in s["spec"]["devices"]]
        assert len(names) == len(set(names)) == 200
    finally:
        p.stop()


def test_inventory_change_bumps_generation_and_drops_obsolete_slices(
    api: FakeApiServer, kube: KubeClient
) -> None:
    p = start(kube, gpus(200))
    try:
        assert p.node.offer(plan_offer(gpus(3))) is not None  # a new version: the follower publishes it
        assert wait_for(lambda: len(pool(api)) == 1)
        slices = pool(api)
        assert len(slices) == 1
        assert slices[0]["spec"]["pool"] == {"name": NODE, "generation": 2, "resourceSliceCount": 1}
        assert len(slices[0]["spec"]["devices"]) == 3
        api.clear_requests()
        assert p.node.offer(plan_offer(gpus(3))) is None  # same content: no new version, nothing to write
        assert writes(api) == 0
        assert p.alive
        # ... while the follower still publishes a real change, at the next generation
        assert p.node.offer(plan_offer(gpus(4))) is not None
        assert wait_for(lambda: [s["spec"]["pool"]["generation"] for s in pool(api)] == [3])
        assert len(pool(api)[0]["spec"]["devices"]) == 4
    finally:
        p.stop()


def test_restart_with_current_slices_writes_nothing(api: FakeApiServer, kube: KubeClient) -> None:
    first = start(kube, gpus(130))
    first.stop()
    api.clear_requests()
    second = start(kube, gpus(130))
    try:
        assert writes(api) == 0  # synced: its first reconcile is done
        assert {s["spec"]["pool"]["generation"] for s in pool(api)} == {1}
        assert second.alive
        assert stray_is_removed(api)  # it does write when its pool needs it
        assert write_log(api) == [("DELETE", f"{SLICES}/{STRAY}")]
    finally:
        second.stop()


def test_restart_with_changed_hardware_takes_a_new_generation(api: FakeApiServer, kube: KubeClient) -> None:
    start(kube, gpus(4)).stop()
    second = start(kube, gpus(4, memory=40 * 2**30))
    try:
        [s] = pool(api)
        assert s["spec"]["pool"]["generation"] == 2
        assert {d["capacity"]["memory"]["value"] for d in s["spec"]["devices"]} == {"42949672960"}
    finally:
        second.stop()


def test_other_nodes_and_drivers_are_left_alone(api: FakeApiServer, kube: KubeClient) -> None:
    foreign: ResourceSlice = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": "other-node-slice"},
        "spec": {
            "driver": "gpudra.io",
            "nodeName": "node-q",
            "pool": {"name": "node-q", "generation": 7, "resourceSliceCount": 1},
            "devices": [],
        },
    }
    other_driver: ResourceSlice = {
        **foreign,
        "metadata": {"name": "other-driver-slice"},
        "spec": {**foreign["spec"], "driver": "gpu.example.com", "nodeName": NODE},
    }
    api.put_object(foreign)
    api.put_object(other_driver)
    p = start(kube, gpus(2))
    try:
        assert api.get_object("ResourceSlice", "other-node-slice") is not None
        assert api.get_object("ResourceSlice", "other-driver-slice") is not None
        assert api.count("DELETE", SLICES) == 0
        assert p.alive
        # it does delete a slice of its own pool that it does not plan, and still not the others
        assert stray_is_removed(api)
        assert api.get_object("ResourceSlice", "other-node-slice") is not None
        assert api.get_object("ResourceSlice", "other-driver-slice") is not None
        assert api.count("DELETE", SLICES) == 1
    finally:
        p.stop()


def _with_taint(state: NodeState, node: str, node_uid: str | None, generation: int) -> list[ResourceSlice]:
    from gpudra.planning import slices

    planned = slices.plan_slices(state.offer, node, node_uid, generation)
    # a field a disabled gate drops
    planned[0]["spec"]["devices"][0]["taints"] = [{"key": "gpudra.io/maintenance", "effect": "NoSchedule"}]
    return planned


@pytest.mark.parametrize("gate_on", [False, True])
def test_fields_dropped_by_a_disabled_gate_are_reported_not_rewritten(
    tmp_path: Path, gate_on: bool
) -> None:
    server = FakeApiServer(feature_gates={"DRADeviceTaints": gate_on}).start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    client = KubeClient(load_config(server.write_kubeconfig(tmp_path / "kubeconfig")))
    node = NodeStateStore(plan_offer(gpus(2)))
    p = Publisher(client, NODE, node, backoff=Backoff(initial_s=0.05, max_s=0.2), planner=_with_taint)
    p.start()
    try:
        assert p.synced.wait(10)
        [stored] = pool(server)
        has_taint = "taints" in stored["spec"]["devices"][0]
        assert has_taint is gate_on
        name = stored["spec"]["devices"][0]["name"]
        assert p.dropped_fields == ([] if gate_on else [f"spec.devices[{name}].taints"])
        server.clear_requests()
        # A new version with the same plan: reconciling it must not rewrite because of the dropped field.
        assert node.offer(plan_offer(gpus(2, memory=80 * 2**30 + 1))) is not None
        assert wait_for(lambda: writes(server) > 0)  # the changed memory is published once ...
        server.clear_requests()
        # ... and not rewritten after its watch echo: a later event is handled, and its write is the only one
        assert stray_is_removed(server)
        assert write_log(server) == [("DELETE", f"{SLICES}/{STRAY}")]
        assert p.alive
    finally:
        p.stop()
        client.close()
        server.stop()


def test_each_failed_attempt_is_reported_and_retried(api: FakeApiServer, kube: KubeClient) -> None:
    api.delete_object("Node", NODE)  # the publisher cannot even learn its Node's UID: an API error
    failures: list[str] = []
    node = NodeStateStore(plan_offer(gpus(2)))
    p = Publisher(kube, NODE, node, backoff=Backoff(initial_s=0.05, max_s=0.2), on_failed=failures.append)
    p.start()
    try:
        assert wait_for(lambda: len(failures) >= 2)
        api.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        assert p.synced.wait(10)
        assert len(pool(api)) == 1
        assert set(failures) == {"api"}
    finally:
        p.stop()
