"""Dynamic MIG end to end: the real ``gpudra run`` on the mock (dgx-h100), the stand-in API server with the
partitionable-devices gate on, claims allocated by the allocation simulator from what the plugin published
(counters included, as the scheduler does), prepared and unprepared over the real sockets.

The mock's hardware is the fake NVML; the MIG devices it holds are read from the state file it keeps (as
``nvidia-smi mig -lgi`` would show them on a real node), never from the plugin's memory.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gpudra.devtools import kubeletsim
from gpudra.devtools.allocator import Allocation, AllocationFailure, Allocator
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from gpudra.vendors.mock import profile as nvidia_profiles
from gpudra.vendors.mock.driver import MIG_STATE_FILE
from tests.integration.conftest import NODE, PluginProcess, cdi_spec_path, node_slices

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PROFILES = Path(nvidia_profiles.__file__).parent / "profiles"
GPU0 = "GPU-0b100000-0000-0000-0000-000000000000"
GPU1 = "GPU-0b100000-0000-0000-0000-000000000001"


@pytest.fixture
def gated_api() -> Iterator[FakeApiServer]:
    server = FakeApiServer(feature_gates={"DRAPartitionableDevices": True}).start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    yield server
    server.stop()


def _counter_sets(api: FakeApiServer) -> list[dict[str, Any]]:
    return [c for s in node_slices(api) for c in s["spec"].get("sharedCounters", [])]


def _start(api: FakeApiServer, root: Path, *args: str) -> PluginProcess:
    plugin = PluginProcess(root, api, list(args)).start()
    assert api.wait_for(lambda: len(_counter_sets(api)) == 8 and len(_devices(api)) == 8 * 26, timeout=20), (
        plugin.log()
    )
    return plugin


@pytest.fixture
def plugin(gated_api: FakeApiServer, short_tmp: Path) -> Iterator[PluginProcess]:
    p = _start(gated_api, short_tmp)
    yield p
    if p.proc is not None:
        p.assert_alive()
        p.terminate()


def _instances(plugin: PluginProcess, gpu: str = GPU0) -> list[tuple[int, int]]:
    """(GPU-instance profile id, placement start) of the MIG devices the fake GPU holds now."""
    path = plugin.state_dir / MIG_STATE_FILE
    if not path.exists():
        return []
    state = json.loads(path.read_text())["gpus"].get(gpu, {})
    return sorted((gi["profile_id"], gi["placement"]["start"]) for gi in state.get("gpu_instances", []))


def _mig_uuids(plugin: PluginProcess, gpu: str = GPU0) -> set[str]:
    path = plugin.state_dir / MIG_STATE_FILE
    state = json.loads(path.read_text())["gpus"].get(gpu, {})
    return {ci["uuid"] for ci in state.get("compute_instances", [])}


class Scheduler:
    """Allocates claims from the plugin's published slices as the scheduler would, and stores them."""

    def __init__(self, api: FakeApiServer) -> None:
        classes = [yaml.safe_load(p.read_text()) for p in (REPO / "deviceclasses").glob("*.gpudra.io.yaml")]
        self.api = api
        self.allocator = Allocator(node_slices(api), classes, node_name=NODE)
        self.count = 0

    def claim(self, device_class: str, selector: str) -> kubeletsim.Claim | AllocationFailure:
        self.count += 1
        selectors = [{"cel": {"expression": selector}}]
        request = {"name": "slice", "exactly": {"deviceClassName": device_class, "selectors": selectors}}
        spec = {"devices": {"requests": [request]}}
        name = f"c{self.count}"
        obj: dict[str, Any] = {"metadata": {"name": name, "namespace": "default"}, "spec": spec}
        result = self.allocator.allocate(obj)
        if isinstance(result, AllocationFailure):
            return result
        assert isinstance(result, Allocation)
        stored = self.api.put_object({
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", **obj,
            "status": {"allocation": result.as_dict()},
        })  # fmt: skip
        uid = str(stored["metadata"]["uid"])
        self.allocator.commit(uid, result)
        return kubeletsim.Claim("default", name, uid)

    def device(self, claim: kubeletsim.Claim) -> str:
        obj = self.api.get_object("ResourceClaim", claim.name, "default")
        assert obj is not None
        result: str = obj["status"]["allocation"]["devices"]["results"][0]["device"]
        return result

    def release(self, claim: kubeletsim.Claim) -> None:
        self.allocator.release(claim.uid)


def _mig(profile: str, gpu: str = GPU0) -> str:
    return (f"device.attributes['gpudra.io'].profile == '{profile}' && "
            f"device.attributes['gpudra.io'].parentUUID == '{gpu}'")  # fmt: skip


def _whole(gpu: str = GPU0) -> str:
    return f"device.attributes['gpudra.io'].uuid == '{gpu}'"


def _ok(scheduler: Scheduler, device_class: str, selector: str) -> kubeletsim.Claim:
    claim = scheduler.claim(device_class, selector)
    assert isinstance(claim, kubeletsim.Claim), claim
    return claim


def test_published_as_partitionable_devices(gated_api: FakeApiServer, plugin: PluginProcess) -> None:
    pool = node_slices(gated_api)
    devices = [d for s in pool for d in s["spec"].get("devices", [])]
    assert len(devices) == 8 * 26
    assert all(("devices" in s["spec"]) != ("sharedCounters" in s["spec"]) for s in pool)
    assert all(len(s["spec"].get("devices", [])) <= 64 for s in pool)
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in pool} == {len(pool)}
    assert "Falling back to static MIG" not in plugin.log()


def test_two_3g_get_disjoint_placements_a_third_and_the_whole_gpu_wait(
    gated_api: FakeApiServer, plugin: PluginProcess
) -> None:
    scheduler = Scheduler(gated_api)
    first, second = (
        _ok(scheduler, names.CLASS_MIG, _mig("3g.40gb")),
        _ok(scheduler, names.CLASS_MIG, _mig("3g.40gb")),
    )
    assert {scheduler.device(first), scheduler.device(second)} == {
        names.mig_device_name(GPU0, "3g.40gb", 9, 0),
        names.mig_device_name(GPU0, "3g.40gb", 9, 4),
    }
    third = scheduler.claim(names.CLASS_MIG, _mig("3g.40gb"))
    assert isinstance(third, AllocationFailure)
    assert "in use by claim" in third.message  # both 3g.40gb placements are taken
    small = scheduler.claim(names.CLASS_MIG, _mig("1g.10gb"))  # every memory slice is: the counters say no
    assert isinstance(small, AllocationFailure)
    assert "counter" in small.message
    assert isinstance(scheduler.claim(names.CLASS_GPU, _whole()), AllocationFailure)
    with plugin.client() as client:
        for claim in (first, second):
            assert client.prepare([claim]).claims[claim.uid].error == ""
        assert _instances(plugin) == [(9, 0), (9, 4)]
        spec = cdi_spec_path(plugin, first.uid).read_text()
        assert any(uuid in spec for uuid in _mig_uuids(plugin))  # the edits name the created MIG device
        for claim in (first, second):
            assert client.unprepare([claim]).claims[claim.uid].error == ""
            scheduler.release(claim)
        assert _instances(plugin) == []
        whole = _ok(scheduler, names.CLASS_GPU, _whole())
        assert client.prepare([whole]).claims[whole.uid].error == ""  # MIG mode goes off again
        assert client.unprepare([whole]).claims[whole.uid].error == ""
    assert not cdi_spec_path(plugin, first.uid).exists()
    plugin.assert_alive()


def test_seven_1g10gb_fit_on_one_h100(gated_api: FakeApiServer, plugin: PluginProcess) -> None:
    scheduler = Scheduler(gated_api)
    claims = [_ok(scheduler, names.CLASS_MIG, _mig("1g.10gb", GPU1)) for _ in range(7)]
    assert len({scheduler.device(c) for c in claims}) == 7
    assert isinstance(scheduler.claim(names.CLASS_MIG, _mig("1g.10gb", GPU1)), AllocationFailure)
    with plugin.client() as client:
        for claim in claims:
            assert client.prepare([claim]).claims[claim.uid].error == ""
        assert _instances(plugin, GPU1) == [(19, i) for i in range(7)]
        assert len(_mig_uuids(plugin, GPU1)) == 7
        before = {s["metadata"]["name"]: s["spec"] for s in node_slices(gated_api)}
        for claim in claims:
            assert client.unprepare([claim]).claims[claim.uid].error == ""
    assert _instances(plugin, GPU1) == []
    # creating and destroying MIG devices changed nothing that is published: the counters track use
    assert {s["metadata"]["name"]: s["spec"] for s in node_slices(gated_api)} == before


def _slow_profile(root: Path) -> Path:
    doc = json.loads((PROFILES / "dgx-h100.json").read_text())
    doc["devices"][0]["mig_create_seconds"] = 1.5  # about what real NVML takes per instance
    path = root / "slow-dgx-h100.json"
    path.write_text(json.dumps(doc))
    return path


def test_kill_9_between_creating_and_recording_leaks_nothing(
    gated_api: FakeApiServer, short_tmp: Path
) -> None:
    profile = _slow_profile(short_tmp)
    plugin = _start(gated_api, short_tmp, "--profile", str(profile))
    scheduler = Scheduler(gated_api)
    claim = _ok(scheduler, names.CLASS_MIG, _mig("2g.20gb"))
    outcome: list[object] = []
    client = plugin.client()
    call = threading.Thread(target=lambda: outcome.append(_try(lambda: client.prepare([claim]))))
    call.start()
    deadline = time.monotonic() + 20
    while not _instances(plugin) and time.monotonic() < deadline:  # the GPU instance exists: mid-prepare
        time.sleep(0.01)
    assert _instances(plugin) == [(14, 0)], plugin.log()
    assert plugin.proc is not None
    plugin.proc.kill()
    plugin.proc.wait(10)
    call.join(30)
    client.close()
    assert outcome
    assert isinstance(outcome[0], Exception)  # the kubelet got no answer
    plugin.proc = None
    # a short grace (90 s by default, longer than any prepare of an instance being replaced) before the
    # prepares left unfinished are rolled back
    grace = {"GPUDRA_ROLLBACK_GRACE_S": "1"}
    restarted = PluginProcess(short_tmp, gated_api, ["--profile", str(profile)], env=grace).start()
    try:
        # the log file is the killed process's too: wait for the second "serving" (its sockets are stale)
        assert gated_api.wait_for(lambda: restarted.log().count("gpudra serving") == 2, timeout=20), (
            restarted.log()
        )
        assert _instances(restarted) == [(14, 0)]  # left by the killed prepare, until the grace is over
        assert gated_api.wait_for(
            lambda: "rolled back the interrupted prepare" in restarted.log(), timeout=20
        )
        assert _instances(restarted) == []  # the half-made MIG device is gone
        with restarted.client() as again:  # the kubelet asks again: it is made once, and works
            assert again.prepare([claim]).claims[claim.uid].error == ""
            assert _instances(restarted) == [(14, 0)]
            assert again.unprepare([claim]).claims[claim.uid].error == ""
        assert _instances(restarted) == []
        restarted.assert_alive()
    finally:
        restarted.terminate()


def _try(fn: Any) -> object:
    try:
        return fn()
    except Exception as e:  # the call is expected to fail when the plugin dies
        return e


def _metrics(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_gate_off_falls_back_to_static_mig(api: FakeApiServer, short_tmp: Path) -> None:
    port = _free_port()
    plugin = PluginProcess(short_tmp, api, ["--metrics-port", str(port)]).start()
    try:
        assert api.wait_for(lambda: "Falling back to static MIG" in plugin.log(), timeout=20), plugin.log()
        assert api.wait_for(lambda: len(_devices(api)) == 8, timeout=20), plugin.log()
        assert not _counter_sets(api)
        assert all("consumesCounters" not in d for d in _devices(api))
        assert {s["spec"]["pool"]["generation"] for s in node_slices(api)} == {1}  # asked before publishing
        # the partitionable-devices probe, the consumable-capacity probe (fractional GPUs), the pool
        assert api.count("POST", "/apis/resource.k8s.io/v1/resourceslices") == 3
        events = [
            e
            for e in api.list_objects("Event", "default")
            if e.get("reason") == "GpudraDynamicMigUnavailable"
        ]
        assert len(events) == 1
        assert "DRAPartitionableDevices" in events[0]["message"]
        assert api.wait_for(lambda: _metrics(port).get("gpudra_mig_dynamic") == 0.0, timeout=10)
        plugin.assert_alive()
    finally:
        plugin.terminate()


def test_gate_on_counts_the_partitionable_gpus(gated_api: FakeApiServer, short_tmp: Path) -> None:
    port = _free_port()
    plugin = _start(gated_api, short_tmp, "--metrics-port", str(port))
    try:
        assert gated_api.wait_for(lambda: _metrics(port).get("gpudra_mig_dynamic_gpus") == 8.0, timeout=10)
        assert _metrics(port)["gpudra_mig_dynamic"] == 1.0
        assert "the API server keeps partitionable devices" in plugin.log()
        assert not [s for s in gated_api.list_objects("ResourceSlice") if "probe" in s["metadata"]["name"]]
    finally:
        plugin.terminate()


def _devices(api: FakeApiServer) -> list[dict[str, Any]]:
    return [d for s in node_slices(api) for d in s["spec"].get("devices", [])]


MIXED_GPU0 = "GPU-0d100000-0000-0000-0000-000000000000"


def _mixed_start(api: FakeApiServer, root: Path, *args: str) -> PluginProcess:
    return PluginProcess(root, api, ["--profile", "h100-mig-mixed", *args]).start()


def test_an_admin_layout_is_kept_and_destroyed_only_when_asked(
    gated_api: FakeApiServer, short_tmp: Path
) -> None:
    # h100-mig-mixed: GPU 0 carries an admin's 3g.40gb + 2 x 2g.20gb; GPUs 1-7 have no MIG device
    (short_tmp / "a").mkdir()
    (short_tmp / "b").mkdir()
    kept = _mixed_start(gated_api, short_tmp / "a")
    try:
        mixed = 3 + 7 * 26  # GPU 0 as the admin's three devices, GPUs 1-7 partitionable
        assert gated_api.wait_for(
            lambda: len(_counter_sets(gated_api)) == 7 and len(_devices(gated_api)) == mixed, timeout=20
        ), kept.log()
        assert "has MIG devices gpudra did not create" in kept.log()
        kept.assert_alive()
    finally:
        kept.terminate()
    destroyer = _mixed_start(
        gated_api, short_tmp / "b", "--mig-destroy-unowned", "--rediscover-interval", "0"
    )
    try:
        assert gated_api.wait_for(
            lambda: len(_counter_sets(gated_api)) == 8 and len(_devices(gated_api)) == 8 * 26, timeout=20
        ), destroyer.log()
        assert destroyer.log().count("--mig-destroy-unowned: destroyed MIG device") == 3
        destroyer.assert_alive()
    finally:
        destroyer.terminate()
