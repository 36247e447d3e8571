"""``gpudra-dev demo --scenario sharing``: GPUs shared by claims, and each share enforced, on mock GPUs.

As in the basic demo (:mod:`gpudra.devtools.demo`), a stand-in API server runs in-process, here with the
``DRAConsumableCapacity`` gate on, and the real plugin runs on a mock DGX H100 (static MIG). Then:

1. the plugin publishes every H100 for sharing (``allowMultipleAllocations``, a consumable ``memory``);
2. the allocation simulator gives three claims of three namespaces a share of ONE H100 (20Gi, 20Gi, 39Gi),
   as the scheduler does;
3. the kubelet stand-in prepares them: each claim gets an MPS control daemon (the fake one, product code)
   limited to its share, read back from what the daemon was told; the GPU's compute mode stays DEFAULT;
4. a container of one of them reaches its own daemon (CDI: its pipe directory, ``CUDA_MPS_PIPE_DIRECTORY``);
5. a claim asks for time-slicing (``GpuConfig``, interval ``Long``) on another GPU: the fake GPU's time-slice
   is set, and the default is back after unprepare;
6. a share no GPU can give (100Gi of an 80GB H100) fails that claim, naming the field;
7. unprepare stops the daemons and removes their directories; the plugin stops cleanly.

Every step waits a bounded time and prints what it observed; exit code 0 means every step was observed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from gpudra.devtools import kubeletsim
from gpudra.devtools.allocator import Allocation, Allocator
from gpudra.devtools.demo import NODE, DemoError, demo_config, node_slices, say
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from gpudra.runtime.app import Plugin
from gpudra.runtime.config import RunConfig
from gpudra.vendors.mock.driver import MPS_DIR
from gpudra.vendors.mock.fake_mps_control import FakeMpsState, load_state
from gpudra.vendors.mock.fake_nvml_policy import POLICY_FILE, load_policy
from gpudra.vendors.select import open_driver

PROFILE = "dgx-h100"
SHARES = (("team-a", "20Gi"), ("team-b", "20Gi"), ("team-c", "39Gi"))
TIMEOUT_S = 15.0
GIB = 2**30
GPU_CLASS = {
    "apiVersion": "resource.k8s.io/v1",
    "kind": "DeviceClass",
    "metadata": {"name": names.CLASS_GPU},
    "spec": {"selectors": [{"cel": {"expression": f"device.driver == '{names.DRIVER_NAME}'"}}]},
}


@dataclass
class _Demo:
    root: Path
    api: FakeApiServer
    cfg: RunConfig
    plugin: Plugin | None = None
    endpoint: str = ""
    kubelet: kubeletsim.Kubelet | None = None
    client: kubeletsim.DraClient | None = None
    pods: list[kubeletsim.Pod] = field(default_factory=list)
    shared_gpu: str = ""  # the device the three shares are on
    daemons: list[Path] = field(default_factory=list)


def _published(d: _Demo) -> str:
    driver = open_driver("mock", PROFILE, Path("/sys"), d.cfg.host_roots, d.cfg.effective_run_dir / "claims")
    d.plugin = Plugin(d.cfg, driver)
    d.plugin.start()
    if not d.api.wait_for(lambda: len(_shared(d.api)) == 8, timeout=TIMEOUT_S):
        raise DemoError(f"8 shared GPUs were not published within {TIMEOUT_S:.0f} s")
    policy = _shared(d.api)[0]["capacity"]["memory"]["requestPolicy"]
    return f"    8 H100s with allowMultipleAllocations; memory requestPolicy {policy}"


def _allocated(d: _Demo) -> str:
    allocator = Allocator(node_slices(d.api), [GPU_CLASS], node_name=NODE)
    lines, devices = [], set()
    for namespace, memory in SHARES:
        request = {"deviceClassName": names.CLASS_GPU, "capacity": {"requests": {"memory": memory}}}
        spec = {"metadata": {"namespace": namespace, "name": "infer"},
                "spec": {"devices": {"requests": [{"name": "gpu", "exactly": request}]}}}  # fmt: skip
        result = allocator.allocate(spec)
        if not isinstance(result, Allocation):
            raise DemoError(f"{namespace}/infer ({memory}) was not allocated: {result}")
        status = {"allocation": result.as_dict()}
        stored = d.api.put_object({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim", **spec,
                                   "status": status})  # fmt: skip
        uid = str(stored["metadata"]["uid"])
        allocator.commit(uid, result)
        entry = status["allocation"]["devices"]["results"][0]
        devices.add(entry["device"])
        claim = kubeletsim.Claim(namespace, "infer", uid)
        d.pods.append(_pod(namespace, claim))
        lines.append(f"    {namespace}/infer: {entry['device']} shareID {entry['shareID']} "
                     f"consumedCapacity {entry['consumedCapacity']}")  # fmt: skip
    if len(devices) != 1:
        raise DemoError(f"the shares went to {sorted(devices)}, not to one GPU")
    d.shared_gpu = devices.pop()
    return "\n".join(lines)


def _prepared(d: _Demo) -> str:
    info = kubeletsim.register(d.cfg.registration_socket)
    d.endpoint = info.endpoint
    d.client = kubeletsim.DraClient(info.endpoint, "v1")
    d.kubelet = kubeletsim.Kubelet(d.client, [d.cfg.cdi_root])
    lines = []
    for pod in d.pods:
        _kubelet_call(partial(d.kubelet.prepare_pod, pod))
        claim = pod.claims[0].claim
        state = _daemon(d, claim)
        limits = ", ".join(f"{dev} {n / GIB:g}Gi" for dev, n in state.pinned_mem_limits.items())
        lines.append(f"    {claim.namespace}/infer: MPS daemon pid {state.pid}, active threads "
                     f"{state.active_thread_percentage:g}%, pinned memory limit {limits}")  # fmt: skip
    uuid = _uuid(d.api, d.shared_gpu)
    mode = load_policy(_policy_file(d)).get(uuid, {}).get("computeMode", 0)
    if mode != 0:
        raise DemoError(f"GPU {uuid} is in compute mode {mode}, not DEFAULT, while three claims share it")
    lines.append(f"    GPU {uuid}: compute mode DEFAULT (several MPS daemons, one per claim)")
    return "\n".join(lines)


def _container(d: _Demo) -> str:
    pod = d.pods[0]
    view = _kubelet_call(lambda: _set(d.kubelet).container_view(pod, "main"))
    pipe = view.mounts.get("/tmp/nvidia-mps")
    if pipe is None or view.env.get("CUDA_MPS_PIPE_DIRECTORY") != "/tmp/nvidia-mps":
        raise DemoError(f"the container of {pod.namespace}/{pod.name} does not reach an MPS daemon")
    return (f"    {pod.namespace}/{pod.name}: CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps, /tmp/nvidia-mps <- "
            f"{pipe.host_path}")  # fmt: skip


def _time_slicing(d: _Demo) -> str:
    gpus = sorted(x["name"] for x in _shared(d.api) if x["name"] != d.shared_gpu)
    params = {"apiVersion": "gpudra.io/v1alpha1", "kind": "GpuConfig",
              "sharing": {"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Long"}}}  # fmt: skip
    config = [{"source": "FromClaim", "opaque": {"driver": names.DRIVER_NAME, "parameters": params}}]
    claim = _claim(d.api, "batch", {"device": gpus[0]}, config)
    uuid = _uuid(d.api, gpus[0])
    client = _set(d.client)
    error = client.prepare([claim]).claims[claim.uid].error
    held = load_policy(_policy_file(d)).get(uuid, {})
    if error or held.get("timeslice") != 3:
        raise DemoError(f"time-slicing was not applied: {error or held}")
    error = client.unprepare([claim]).claims[claim.uid].error
    after = load_policy(_policy_file(d)).get(uuid, {})
    if error or after.get("timeslice", 0) != 0:
        raise DemoError(f"the default time-slice is not back: {error or after}")
    return (f"    default/batch on {gpus[0]}: GPU {uuid} time-slice Long (level 3, as nvidia-smi "
            "compute-policy --set-timeslice 3 sets it)\n    unprepared: the time-slice is Default again")


def _too_big(d: _Demo) -> str:
    result = {"device": d.shared_gpu, "shareID": "5e0c1a9e-0000-4000-8000-0000000000ff",
              "consumedCapacity": {"memory": "100Gi"}}  # fmt: skip
    claim = _claim(d.api, "too-big", result, [])
    error = _set(d.client).prepare([claim]).claims[claim.uid].error
    if "consumedCapacity[memory]" not in error:
        raise DemoError(f"the share of 100Gi was not refused for what it is: {error!r}")
    return f"    default/too-big -> error: {error}"


def _unprepared(d: _Demo) -> str:
    kubelet = _set(d.kubelet)
    for pod in d.pods:
        _kubelet_call(partial(kubelet.unprepare_pod, pod))
    left = [p for p in d.daemons if p.exists()]
    if left:
        raise DemoError(f"MPS daemon directories left: {left}")
    return f"    {len(d.pods)} claims unprepared: their MPS daemons stopped, their directories removed"


def _shutdown(d: _Demo) -> str:
    if d.client is not None:
        d.client.close()
    _set(d.plugin).stop()
    d.plugin = None
    left = [p for p in (d.cfg.dra_socket, d.cfg.registration_socket) if p.exists()]
    if left:
        raise DemoError(f"sockets left: {left}")
    return "    plugin stopped: DRA and registration sockets removed"


STEPS: tuple[tuple[str, Callable[[_Demo], str]], ...] = (
    ("the plugin publishes the mock node's GPUs for sharing (DRAConsumableCapacity on)", _published),
    ("scheduler: three claims of three namespaces get a share of one H100", _allocated),
    ("kubelet: the three claims are prepared, each MPS daemon limited to its share", _prepared),
    ("runtime: a container reaches its claim's MPS daemon", _container),
    ("time-slicing: a claim sets a GPU's time-slice interval while it is prepared", _time_slicing),
    ("a share no GPU can give fails that claim, naming the field", _too_big),
    ("kubelet: the shares are unprepared", _unprepared),
    ("clean shutdown", _shutdown),
)


# ---- helpers ------------------------------------------------------------------------------------------


def _shared(api: FakeApiServer) -> list[dict[str, Any]]:
    devices = [x for s in node_slices(api) for x in s["spec"].get("devices", [])]
    return [x for x in devices if x.get("allowMultipleAllocations")]


def _uuid(api: FakeApiServer, device: str) -> str:
    for s in node_slices(api):
        for x in s["spec"].get("devices", []):
            if x["name"] == device:
                return str(x["attributes"]["uuid"]["string"])
    raise DemoError(f"{device} is not published")


def _pod(namespace: str, claim: kubeletsim.Claim) -> kubeletsim.Pod:
    refs = (kubeletsim.ContainerClaim("gpu"),)
    claims = (kubeletsim.PodClaim("gpu", claim),)
    return kubeletsim.Pod(namespace, f"{namespace}-pod", f"uid-{namespace}", claims,
                          (kubeletsim.Container("main", refs),))  # fmt: skip


def _claim(api: FakeApiServer, name: str, result: dict[str, Any], config: list[Any]) -> kubeletsim.Claim:
    full = {"request": "gpu", "driver": names.DRIVER_NAME, "pool": NODE, **result}
    request = {"name": "gpu", "exactly": {"deviceClassName": names.CLASS_GPU}}
    stored = api.put_object({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"}, "spec": {"devices": {"requests": [request]}},
        "status": {"allocation": {"devices": {"results": [full], "config": config}}},
    })  # fmt: skip
    return kubeletsim.Claim("default", name, str(stored["metadata"]["uid"]))


def _policy_file(d: _Demo) -> Path:
    return d.cfg.effective_run_dir / POLICY_FILE


def _daemon(d: _Demo, claim: kubeletsim.Claim) -> FakeMpsState:
    base = d.cfg.effective_run_dir / MPS_DIR / f"mps-{claim.uid}"
    d.daemons.append(base)
    state = load_state(base / "log")
    if state is None or not state.running:
        raise DemoError(f"no MPS daemon runs for {claim.namespace}/{claim.name}")
    return state


def _kubelet_call(call: Callable[[], T]) -> T:
    try:
        return call()
    except kubeletsim.KubeletError as e:
        raise DemoError(str(e)) from e


T = TypeVar("T")


def _set(value: T | None) -> T:
    if value is None:
        raise DemoError("an earlier step did not set this up")
    return value


def _kill_daemons(root: Path) -> None:
    """What a failed run leaves: its fake MPS daemons (started by this process's plugin) end with it."""
    for pid_file in root.glob(f"plugins/{names.DRIVER_NAME}/{MPS_DIR}/*/pipe/*.pid"):
        with contextlib.suppress(ValueError, OSError):
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)


def _play(d: _Demo) -> int:
    for number, (title, step) in enumerate(STEPS, 1):
        try:
            detail = step(d)
        except Exception as e:  # every failure names its step
            what = str(e) if isinstance(e, DemoError) else f"{type(e).__name__}: {e}"
            print(f"gpudra demo --scenario sharing: FAILED at step {number} ({title}): {what}", flush=True)
            return 1
        say(f"[{number}/{len(STEPS)}] {title}", detail)
    say("demo finished: shares enforced with MPS, time-slicing set and put back, every step observed")
    return 0


def run() -> int:
    root = Path(tempfile.mkdtemp(prefix="gpudra-demo-"))
    api = FakeApiServer(feature_gates={"DRAConsumableCapacity": True}).start()
    d: _Demo | None = None
    try:
        api.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        d = _Demo(root, api, demo_config(root, api, mig_dynamic=False, mps_launcher="process"))
        say(f"stand-in API server at {api.url} (DRAConsumableCapacity on); mock profile {PROFILE}; "
            f"work dir {root}")  # fmt: skip
        return _play(d)
    finally:
        if d is not None and d.client is not None:
            d.client.close()
        if d is not None and d.plugin is not None:
            d.plugin.stop()
        api.stop()
        _kill_daemons(root)
        shutil.rmtree(root, ignore_errors=True)
