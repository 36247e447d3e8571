"""Fractional GPUs published by the real ``gpudra run`` (mock dgx-h100) to the stand-in API server, with its
``DRAConsumableCapacity`` gate on (Kubernetes 1.36) and off (1.34/1.35 defaults: the server drops the fields).

With the gate on, every H100 is published for sharing and three claims from three namespaces (20Gi, 20Gi and
39Gi) are allocated on ONE of them by the allocation simulator from what the plugin published, each with its
own shareID. With the gate off, the plugin finds out with its probe before publishing, falls back to
exclusive devices, and says so once (log, metric, Node Event); the pool is written once.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gpudra.devtools.allocator import Allocation, Allocator
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.runtime.sharemode import EVENT_REASON
from tests.integration.conftest import NODE, PluginProcess, node_slices

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SLICES = "/apis/resource.k8s.io/v1/resourceslices"
GPU_CLASS = {
    "apiVersion": "resource.k8s.io/v1",
    "kind": "DeviceClass",
    "metadata": {"name": "gpu.gpudra.io"},
    "spec": {"selectors": [{"cel": {"expression": "device.driver == 'gpudra.io'"}}]},
}


def _api(**gates: bool) -> Iterator[FakeApiServer]:
    server = FakeApiServer(feature_gates=gates).start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    yield server
    server.stop()


@pytest.fixture
def gated_api() -> Iterator[FakeApiServer]:
    yield from _api(DRAConsumableCapacity=True)


def _devices(api: FakeApiServer) -> list[dict[str, Any]]:
    return [d for s in node_slices(api) for d in s["spec"].get("devices", [])]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def _events(api: FakeApiServer) -> list[dict[str, Any]]:
    return [e for e in api.list_objects("Event", "default") if e.get("reason") == EVENT_REASON]


def _start(api: FakeApiServer, root: Path, *args: str) -> tuple[PluginProcess, int]:
    port = _free_port()
    plugin = PluginProcess(root, api, ["--metrics-port", str(port), *args]).start()
    assert api.wait_for(lambda: len(_devices(api)) == 8, timeout=20), plugin.log()
    return plugin, port


def _claim(namespace: str, name: str, memory: str) -> dict[str, Any]:
    request = {"deviceClassName": "gpu.gpudra.io", "capacity": {"requests": {"memory": memory}}}
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": request}]}},
    }


def test_gate_on_publishes_every_gpu_for_sharing(gated_api: FakeApiServer, short_tmp: Path) -> None:
    plugin, port = _start(gated_api, short_tmp, "--mig-management", "static")
    try:
        devices = _devices(gated_api)
        assert all(d["allowMultipleAllocations"] is True for d in devices)
        memory = devices[0]["capacity"]["memory"]
        assert memory["requestPolicy"] == {
            "default": memory["value"],
            "validRange": {"min": "2Gi", "max": memory["value"], "step": "1Mi"},
        }
        assert devices[0]["capacity"]["multiprocessors"]["requestPolicy"] == {
            "default": "0",
            "validValues": ["0"],
        }
        assert "the API server keeps consumable capacity: 8 device(s)" in plugin.log()
        assert gated_api.wait_for(lambda: _metrics(port).get("gpudra_shared_devices") == 8.0, timeout=10)
        assert _metrics(port)["gpudra_fractional_gpus"] == 1.0
        assert gated_api.count("POST", SLICES) == 2  # the probe, then the pool: written once
        assert not [s for s in gated_api.list_objects("ResourceSlice") if "probe" in s["metadata"]["name"]]
        assert not _events(gated_api)

        allocator = Allocator(node_slices(gated_api), [GPU_CLASS], node_name=NODE)
        results = []
        for namespace, name, memory_asked in (("team-a", "a", "20Gi"), ("team-b", "b", "20Gi"),
                                              ("team-c", "c", "39Gi")):  # fmt: skip
            result = allocator.allocate(_claim(namespace, name, memory_asked))
            assert isinstance(result, Allocation), result
            allocator.commit(name, result)
            results.append(result.as_dict()["devices"]["results"][0])
        assert len({r["device"] for r in results}) == 1  # one H100 holds all three shares
        assert len({r["shareID"] for r in results}) == 3
        assert [r["consumedCapacity"]["memory"] for r in results] == ["20Gi", "20Gi", "39Gi"]
        plugin.assert_alive()
    finally:
        plugin.terminate()


def test_gate_off_falls_back_to_exclusive_devices(api: FakeApiServer, short_tmp: Path) -> None:
    plugin, port = _start(api, short_tmp, "--mig-management", "static")
    try:
        assert api.wait_for(lambda: "Falling back to exclusive devices" in plugin.log(), timeout=20)
        devices = _devices(api)
        assert not any("allowMultipleAllocations" in d for d in devices)
        assert not any("requestPolicy" in c for d in devices for c in d["capacity"].values())
        [event] = _events(api)
        assert "DRAConsumableCapacity" in event["message"]
        assert api.wait_for(lambda: _metrics(port).get("gpudra_fractional_gpus") == 0.0, timeout=10)
        assert _metrics(port)["gpudra_shared_devices"] == 0.0
        # the probe told before the first publish: the pool was written once, exclusive
        assert api.count("POST", SLICES) == 2
        assert api.count("PUT", SLICES) == 0
        assert {s["spec"]["pool"]["generation"] for s in node_slices(api)} == {1}
        assert "dropped fields of ResourceSlice" not in plugin.log()
        plugin.assert_alive()
    finally:
        plugin.terminate()


def test_sharing_follows_a_fall_back_to_static_mig(gated_api: FakeApiServer, short_tmp: Path) -> None:
    """Consumable capacity on, partitionable devices off (a 1.35 cluster with one gate enabled): dynamic MIG
    falls back to static, and the H100s it no longer partitions are published for sharing."""
    plugin, _ = _start(gated_api, short_tmp)  # --mig-management dynamic (the default)
    try:
        assert "Falling back to static MIG" in plugin.log()
        devices = _devices(gated_api)
        assert all(d.get("allowMultipleAllocations") is True for d in devices), devices[0]
        assert not _events(gated_api)
        plugin.assert_alive()
    finally:
        plugin.terminate()


def test_off_publishes_exclusive_devices_and_asks_nothing(gated_api: FakeApiServer, short_tmp: Path) -> None:
    plugin, port = _start(gated_api, short_tmp, "--mig-management", "static", "--fractional-gpus", "off")
    try:
        assert not any("allowMultipleAllocations" in d for d in _devices(gated_api))
        assert gated_api.count("POST", SLICES) == 1  # no probe
        assert gated_api.wait_for(lambda: _metrics(port).get("gpudra_fractional_gpus") == 0.0, timeout=10)
        assert not _events(gated_api)
        plugin.assert_alive()
    finally:
        plugin.terminate()
