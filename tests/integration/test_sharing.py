"""GPU sharing end to end: the real ``gpudra run`` on the mock (dgx-h100), claims prepared and unprepared over
the real sockets by the kubelet stand-in, containers as the runtime's CDI injection builds them.

What the node holds is read where a real node keeps it, never from the plugin's memory: the fake GPUs' compute
modes and time-slices in the mock's hardware state (``mock-gpu-policy.json``, what ``nvidia-smi`` would show),
and each MPS control daemon's limits from the state file the fake daemon writes (what it was told through the
control protocol).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.allocator import Allocation, Allocator
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.devtools.kubeletsim import Claim, Container, ContainerClaim, Kubelet, Pod, PodClaim
from gpudra.model import names
from gpudra.vendors.mock.driver import MPS_DIR
from gpudra.vendors.mock.edits import env_key
from gpudra.vendors.mock.fake_mps_control import FakeMpsState, control_command, load_state
from gpudra.vendors.mock.fake_nvml_policy import POLICY_FILE, load_policy
from gpudra.vendors.nvidia.mps import MpsControl, MpsError
from tests.integration.conftest import NODE, PluginProcess, device_names, node_slices

pytestmark = pytest.mark.integration

API_VERSION = "gpudra.io/v1alpha1"
GIB = 2**30
MEMORY = 85520809984  # an H100 80GB HBM3 of the dgx-h100 profile
MPS_ENV = "CUDA_MPS_PIPE_DIRECTORY"
GPU_CLASS = {
    "apiVersion": "resource.k8s.io/v1",
    "kind": "DeviceClass",
    "metadata": {"name": "gpu.gpudra.io"},
    "spec": {"selectors": [{"cel": {"expression": "device.driver == 'gpudra.io'"}}]},
}


# ---- helpers ------------------------------------------------------------------------------------------


def _config(sharing: dict[str, Any]) -> list[dict[str, Any]]:
    params = {"apiVersion": API_VERSION, "kind": "GpuConfig", "sharing": sharing}
    opaque = {"driver": names.DRIVER_NAME, "parameters": params}
    return [{"source": "FromClaim", "requests": [], "opaque": opaque}]


def _claim(api: FakeApiServer, name: str, results: list[dict[str, Any]], *, namespace: str = "default",
           config: list[dict[str, Any]] | None = None) -> Claim:  # fmt: skip
    """A claim allocated as ``results`` (each completed with driver, pool and request ``gpu``)."""
    full = [{"request": "gpu", "driver": names.DRIVER_NAME, "pool": NODE, **r} for r in results]
    obj = api.put_object({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": names.CLASS_GPU}}]}},
        "status": {"allocation": {"devices": {"results": full, "config": config or []}}},
    })  # fmt: skip
    return Claim(namespace, name, str(obj["metadata"]["uid"]))


def _pod(name: str, *claims: Claim) -> Pod:
    pod_claims = tuple(PodClaim(f"c{i}", c) for i, c in enumerate(claims))
    refs = tuple(ContainerClaim(pc.name) for pc in pod_claims)
    return Pod("default", name, f"uid-{name}", pod_claims, (Container("main", refs),))


def _uuid(api: FakeApiServer, device: str) -> str:
    for s in node_slices(api):
        for d in s["spec"]["devices"]:
            if d["name"] == device:
                return str(d["attributes"]["uuid"]["string"])
    raise AssertionError(f"{device} is not published")


def _policy(plugin: PluginProcess) -> dict[str, dict[str, int]]:
    """The fake GPUs' compute modes and time-slices that differ from the defaults, by GPU UUID."""
    return load_policy(plugin.state_dir / POLICY_FILE)


def _daemon_dir(plugin: PluginProcess, claim: Claim) -> Path:
    return plugin.state_dir / MPS_DIR / f"mps-{claim.uid}"


def _daemon(plugin: PluginProcess, claim: Claim) -> FakeMpsState:
    state = load_state(_daemon_dir(plugin, claim) / "log")
    assert state is not None, f"no MPS daemon of claim {claim.name}"
    return state


def _answers(plugin: PluginProcess, claim: Claim) -> bool:
    """The claim's daemon answers a client now (as a CUDA process in a container would reach it)."""
    base = _daemon_dir(plugin, claim)
    try:
        MpsControl(control_command(), timeout_s=10).server_list(base / "pipe", base / "log")
    except MpsError:
        return False
    return True


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[:1] == ["Z"]
    return False


@pytest.fixture(autouse=True)
def _no_daemon_left(short_tmp: Path) -> Iterator[None]:
    """Whatever a failing test leaves, its fake MPS daemons (started by its plugin) do not outlive it."""
    yield
    for pid_file in short_tmp.glob(f"plugins/{names.DRIVER_NAME}/{MPS_DIR}/*/pipe/*.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)


def _restart(plugin: PluginProcess, api: FakeApiServer) -> None:
    """``kill -9`` the plugin, then start it again on the same directories (its sockets are stale: wait for
    the second "serving" line)."""
    assert plugin.proc is not None
    serving = plugin.log().count("gpudra serving")
    plugin.proc.kill()
    plugin.proc.wait(10)
    plugin.start(wait=False)
    assert api.wait_for(lambda: plugin.log().count("gpudra serving") == serving + 1, timeout=20), plugin.log()


# ---- time-slicing --------------------------------------------------------------------------------------


def test_time_slicing_one_claim_two_pods(api: FakeApiServer, plugin: PluginProcess) -> None:
    gpu = device_names(api)[0]
    uuid = _uuid(api, gpu)
    claim = _claim(api, "shared", [{"device": gpu}], config=_config(
        {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Long"}}))  # fmt: skip
    pods = [_pod("a", claim), _pod("b", claim)]
    with plugin.client() as client:
        kubelet = Kubelet(client, [plugin.cdi_root])
        for pod in pods:
            kubelet.prepare_pod(pod)
        assert _policy(plugin) == {uuid: {"timeslice": 3, "computeMode": 0}}  # Long, compute mode DEFAULT
        for pod in pods:  # both pods' containers get the GPU
            assert kubelet.container_view(pod, "main").env[env_key(gpu, "UUID")] == uuid

        # another claim on the GPU (adminAccess) cannot have another interval while this one holds it
        other = _claim(api, "other", [{"device": gpu, "adminAccess": True}], config=_config(
            {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Short"}}))  # fmt: skip
        refused = client.prepare([other]).claims[other.uid].error
        assert f"GPU {uuid}: another claim prepared on it set the time-slice interval Long" in refused
        assert "asks for Short" in refused

        kubelet.unprepare_pod(pods[0])  # the claim is still used by the other pod: nothing changes
        assert _policy(plugin) == {uuid: {"timeslice": 3, "computeMode": 0}}
        kubelet.unprepare_pod(pods[1])
        assert _policy(plugin) == {}  # the default interval is back
    plugin.assert_alive()


# ---- MPS across a plugin kill --------------------------------------------------------------------------


def test_mps_daemon_outlives_the_plugin_and_ends_with_the_claim(
    api: FakeApiServer, plugin: PluginProcess
) -> None:
    gpu = device_names(api)[1]
    uuid = _uuid(api, gpu)
    claim = _claim(api, "mps", [{"device": gpu}], config=_config({
        "strategy": "MPS",
        "mpsConfig": {"defaultActiveThreadPercentage": 50, "defaultPinnedDeviceMemoryLimit": "8Gi"},
    }))  # fmt: skip
    pod = _pod("p", claim)
    with plugin.client() as client:
        kubelet = Kubelet(client, [plugin.cdi_root])
        kubelet.prepare_pod(pod)
        view = kubelet.container_view(pod, "main")
    first = _daemon(plugin, claim)
    assert (first.running, first.visible_devices) == (True, (uuid,))
    assert (first.active_thread_percentage, first.pinned_mem_limits) == (50.0, {uuid: 8 * GIB})
    assert _policy(plugin) == {uuid: {"computeMode": 3}}  # EXCLUSIVE_PROCESS: the daemon owns the GPU
    assert view.env[MPS_ENV] == "/tmp/nvidia-mps"
    assert view.mounts["/tmp/nvidia-mps"].host_path == str(_daemon_dir(plugin, claim) / "pipe")
    assert view.mounts["/dev/shm"].host_path == str(_daemon_dir(plugin, claim) / "shm")

    _restart(plugin, api)  # kill -9: the daemon is nobody's child, and serves on
    assert not _gone(first.pid)
    assert _answers(plugin, claim)
    assert _daemon(plugin, claim).pid == first.pid  # found running at start: left alone

    assert plugin.proc is not None
    plugin.proc.kill()  # the plugin and then the daemon die (a node's restart of both, say)
    plugin.proc.wait(10)
    os.kill(first.pid, signal.SIGKILL)
    assert api.wait_for(lambda: _gone(first.pid), timeout=10)
    _restart_stopped(plugin, api)
    again = _daemon(plugin, claim)  # started again at start-up, with the claim's limits
    assert again.pid != first.pid
    assert again.running
    assert _answers(plugin, claim)
    assert (again.active_thread_percentage, again.pinned_mem_limits) == (50.0, {uuid: 8 * GIB})

    with plugin.client() as client:
        assert client.unprepare([claim]).claims[claim.uid].error == ""
    assert api.wait_for(lambda: _gone(again.pid), timeout=10)
    assert not _daemon_dir(plugin, claim).exists()
    assert _policy(plugin) == {}  # compute mode DEFAULT again
    plugin.assert_alive()


def _restart_stopped(plugin: PluginProcess, api: FakeApiServer) -> None:
    serving = plugin.log().count("gpudra serving")
    plugin.start(wait=False)
    assert api.wait_for(lambda: plugin.log().count("gpudra serving") == serving + 1, timeout=20), plugin.log()


# ---- fractional GPUs -----------------------------------------------------------------------------------


@pytest.fixture
def gated_api() -> Iterator[FakeApiServer]:
    server = FakeApiServer(feature_gates={"DRAConsumableCapacity": True}).start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    yield server
    server.stop()


def _share_request(namespace: str, name: str, memory: str) -> dict[str, Any]:
    request = {"deviceClassName": "gpu.gpudra.io", "capacity": {"requests": {"memory": memory}}}
    return {"metadata": {"namespace": namespace, "name": name},
            "spec": {"devices": {"requests": [{"name": "gpu", "exactly": request}]}}}  # fmt: skip


def _allocate_shares(api: FakeApiServer, shares: list[tuple[str, str]]) -> tuple[list[Claim], str]:
    """Claims (namespace, memory) allocated as the scheduler would from the published slices; and the one
    device they got."""
    allocator = Allocator(node_slices(api), [GPU_CLASS], node_name=NODE)
    claims, devices = [], set()
    for namespace, memory in shares:
        spec = _share_request(namespace, "work", memory)
        result = allocator.allocate(spec)
        assert isinstance(result, Allocation), result
        status = {"allocation": result.as_dict()}
        stored = api.put_object({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", **spec,
                                 "status": status})  # fmt: skip
        allocator.commit(str(stored["metadata"]["uid"]), result)
        claims.append(Claim(namespace, "work", str(stored["metadata"]["uid"])))
        devices.add(status["allocation"]["devices"]["results"][0]["device"])
    assert len(devices) == 1, devices  # one H100 holds every share
    return claims, devices.pop()


def _shared(api: FakeApiServer) -> bool:
    return any(d.get("allowMultipleAllocations") for s in node_slices(api) for d in s["spec"]["devices"])


def test_three_claims_share_one_gpu_each_limited_to_its_share(
    gated_api: FakeApiServer, short_tmp: Path
) -> None:
    plugin = PluginProcess(short_tmp, gated_api, ["--mig-management", "static"]).start()
    try:
        assert gated_api.wait_for(lambda: _shared(gated_api), timeout=20), plugin.log()
        shares = [("team-a", "20Gi"), ("team-b", "20Gi"), ("team-c", "39Gi")]
        claims, device = _allocate_shares(gated_api, shares)
        uuid = _uuid(gated_api, device)
        with plugin.client() as client:
            kubelet = Kubelet(client, [plugin.cdi_root])
            pods = [_pod(f"p{i}", c) for i, c in enumerate(claims)]
            for pod in pods:
                kubelet.prepare_pod(pod)
            for claim, share, threads in zip(claims, (20, 20, 39), (26, 26, 49), strict=True):
                state = _daemon(plugin, claim)  # ceil(100 * share / 81559 MiB) percent of the SMs
                assert state.active_thread_percentage == threads
                assert state.pinned_mem_limits == {uuid: share * GIB}
            pipes = {kubelet.container_view(p, "main").mounts["/tmp/nvidia-mps"].host_path for p in pods}
            assert len(pipes) == 3  # each container reaches its own claim's daemon
            assert _policy(plugin) == {}  # shared: compute mode stays DEFAULT
            for pod in pods:
                kubelet.unprepare_pod(pod)
        assert not any(_daemon_dir(plugin, c).exists() for c in claims)
        plugin.assert_alive()
    finally:
        plugin.terminate()


def test_a_share_the_gpu_cannot_give_fails_that_claim_only(
    api: FakeApiServer, plugin: PluginProcess
) -> None:
    gpu = device_names(api)[2]
    share = "5e0c1a9e-0000-4000-8000-00000000000{}"
    good = _claim(api, "fits", [{"device": gpu, "shareID": share.format(1),
                                 "consumedCapacity": {"memory": "20Gi"}}])  # fmt: skip
    bad = _claim(api, "too-big", [{"device": gpu, "shareID": share.format(2),
                                   "consumedCapacity": {"memory": "100Gi"}}])  # fmt: skip
    with plugin.client() as client:
        results = client.prepare([good, bad]).claims
        assert results[good.uid].error == ""
        assert results[bad.uid].error.startswith(
            "cannot prepare devices: status.allocation.devices.results[0].consumedCapacity[memory]: "
            f"107374182400 bytes, 100.00 GiB is more than device {gpu} has ({MEMORY} bytes"
        )
        assert _daemon(plugin, good).pinned_mem_limits == {_uuid(api, gpu): 20 * GIB}
        assert not _daemon_dir(plugin, bad).exists()
        assert client.unprepare([good, bad]).claims[good.uid].error == ""
    assert not _daemon_dir(plugin, good).exists()
    plugin.assert_alive()


def test_a_daemon_that_cannot_start_fails_the_claim_and_puts_the_gpu_back(
    api: FakeApiServer, plugin: PluginProcess
) -> None:
    gpu = device_names(api)[3]
    (plugin.state_dir / MPS_DIR).write_text("not a directory\n")  # no daemon directory can be made
    claim = _claim(api, "mps", [{"device": gpu}], config=_config({"strategy": "MPS"}))
    with plugin.client() as client:
        error = client.prepare([claim]).claims[claim.uid].error
    assert error.startswith("cannot prepare devices: MPS daemon of the claim: cannot create the directories")
    assert (plugin.state_dir / POLICY_FILE).exists()  # the fake GPU's compute mode was set ...
    assert _policy(plugin) == {}  # ... and is DEFAULT again
    plugin.assert_alive()
