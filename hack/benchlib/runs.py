"""The two kinds of plugin run: short start/stop runs (startup, RSS at ready, SIGTERM) and the claim run."""

from __future__ import annotations

import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import claims as bc
from benchlib.phases import Kubelet, Shape, claim_phase
from benchlib.procs import (
    BenchError,
    Http,
    PluginProc,
    StandIn,
    add_node,
    first_added,
    has_devices,
    node_events,
    node_slices,
    open_slice_watch,
)
from benchlib.stats import latency_ms
from gpudra.devtools import kubeletsim

SHAPES = (Shape("sequential", 1, 1), Shape("batch16", 16, 1), Shape("inflight8", 1, 8))


@dataclass(frozen=True, slots=True)
class Settings:
    claims: int
    startup_runs: int
    idle_s: float
    profile: str  # for the claim run
    startup_profile: str
    py_spy: Path | None = None
    py_spy_phase: str = "sequential"
    py_spy_native: bool = False


#: The Node Event gpudra records when it falls back from dynamic to static MIG (gpudra.runtime.migmode).
FALLBACK_EVENT = "GpudraDynamicMigUnavailable"


def start_until_ready(standin: StandIn, api: Http, plugin: PluginProc) -> dict[str, Any]:
    """Exec the plugin; ready = registration socket offered and the first ResourceSlice with devices
    accepted (a counter-set slice, which dynamic MIG writes first, has none)."""
    add_node(api, plugin.node)
    watch = open_slice_watch(standin, plugin.node, timeout_s=30)
    try:
        plugin.start()
        seen = first_added(watch)
    except TimeoutError as e:
        raise BenchError(
            f"no ResourceSlice with devices for {plugin.node} within 30 s:\n{plugin.log()}"
        ) from e
    finally:
        watch.close()
    reg_at = plugin.wait_registration()
    return {
        "exec_to_first_slice_s": seen.devices_at - plugin.exec_at,
        "exec_to_any_slice_s": seen.first_at - plugin.exec_at,
        "exec_to_registration_s": reg_at - plugin.exec_at,
        "first_slice": seen.devices["metadata"]["name"],
        "first_slice_of_any_kind": seen.first["metadata"]["name"],
        "memory_kib": plugin.memory_kib(),
        "log_marks_ms": plugin.lifecycle_ms(),
    }


def settled_pool(api: Http, node: str, timeout_s: float = 10.0) -> list[dict[str, Any]]:
    """The node's slices once the pool is complete: resourceSliceCount slices of one generation (the
    counter-set slice a fall-back leaves is deleted, and the count drops to the static pool's)."""
    deadline = time.monotonic() + timeout_s
    while True:
        slices = node_slices(api, node)
        pools = {
            (sl["spec"]["pool"]["generation"], sl["spec"]["pool"]["resourceSliceCount"]) for sl in slices
        }
        if (len(pools) == 1 and len(slices) == min(pools)[1]) or time.monotonic() > deadline:
            return slices
        time.sleep(0.02)


def _check_static_fallback(api: Http, node: str, want_devices: int, v: bc.Validation, what: str) -> None:
    """The stand-in's DRAPartitionableDevices gate is off (Kubernetes 1.34 defaults), so dynamic MIG (the
    plugin's default) falls back to static MIG at start: a complete pool of ``want_devices`` devices with no
    counters left anywhere, and one Warning Event on the Node."""
    slices = settled_pool(api, node)
    devices = bc.slice_devices(slices)
    pools = {(sl["spec"]["pool"]["generation"], sl["spec"]["pool"]["resourceSliceCount"]) for sl in slices}
    v.expect(len(devices) == want_devices, f"{what}: published {len(devices)} devices, want {want_devices}")
    v.expect(pools == {(min(pools)[0], len(slices))}, f"{what}: pool generation/resourceSliceCount {pools}")
    v.expect(all(has_devices(sl) for sl in slices), f"{what}: a slice without devices is left in the pool")
    counters = [
        sl["metadata"]["name"]
        for sl in slices
        if sl["spec"].get("sharedCounters") or any(d.get("consumesCounters") for d in sl["spec"]["devices"])
    ]
    v.expect(not counters, f"{what}: counters left after the fall-back to static MIG in {counters}")
    events = node_events(api, node, FALLBACK_EVENT)
    v.expect(len(events) == 1, f"{what}: {len(events)} {FALLBACK_EVENT} Events on the Node, want 1")
    v.expect(all(e.get("type") == "Warning" for e in events), f"{what}: Event type {events[:1]}")


def startup_runs(
    standin: StandIn, api: Http, root: Path, s: Settings, v: bc.Validation, *, want_devices: int
) -> dict[str, Any]:
    runs = []
    for i in range(s.startup_runs):
        volatile = tmpfs_dir()
        plugin = PluginProc(
            root / f"start-{i}", f"start-{i}", s.startup_profile, standin.kubeconfig, volatile=volatile
        )
        try:
            run = start_until_ready(standin, api, plugin)
            _check_static_fallback(api, plugin.node, want_devices, v, f"startup run {i}")
            time.sleep(0.2)  # let the publisher settle into its watch, as a DaemonSet pod would be
            run["sigterm_s"], code = plugin.sigterm_timed()
        finally:
            plugin.kill()
            if volatile is not None:
                shutil.rmtree(volatile, ignore_errors=True)
        v.expect(code == 0, f"startup run {i}: exit code {code}")
        v.expect(not plugin.registration_socket.exists(), f"startup run {i}: registration socket left behind")
        runs.append(run)
    rss = [r["memory_kib"]["VmRSS"] for r in runs]
    return {
        "profile": s.startup_profile,
        "runs": runs,
        "exec_to_first_slice_ms": latency_ms([r["exec_to_first_slice_s"] for r in runs]),
        "exec_to_any_slice_ms": latency_ms([r["exec_to_any_slice_s"] for r in runs]),
        "exec_to_registration_ms": latency_ms([r["exec_to_registration_s"] for r in runs]),
        "sigterm_exit_ms": latency_ms([r["sigterm_s"] for r in runs]),
        "rss_ready_kib": {
            "median": statistics.median(rss),
            "max": max(rss),
            "hwm_max": max(r["memory_kib"]["VmHWM"] for r in runs),
        },
    }


def _check_slices(api: Http, node: str, want: int, v: bc.Validation) -> tuple[list[str], list[int]]:
    """Wait until the whole pool is published; check the split (<= 128 devices, one generation, count)."""
    deadline = time.monotonic() + 30
    while True:
        slices = node_slices(api, node)
        devices = bc.slice_devices(slices)
        if len(devices) >= want or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    sizes = [len(sl["spec"].get("devices", [])) for sl in slices]
    pools = {(sl["spec"]["pool"]["generation"], sl["spec"]["pool"]["resourceSliceCount"]) for sl in slices}
    v.expect(len(devices) == want, f"published {len(devices)} devices, the profile has {want}")
    v.expect(len(set(devices)) == len(devices), "a device name is published twice")
    v.expect(all(n <= 128 for n in sizes), f"a slice holds more than 128 devices: {sizes}")
    v.expect(pools == {(min(pools)[0], len(slices))}, f"pool generation/resourceSliceCount disagree: {pools}")
    return devices, sizes


def _check_request_log(standin: StandIn, node: str, claims: int, v: bc.Validation) -> None:
    """The idle count is only as good as the request log: it must hold the plugin's own requests."""
    logged = standin.requests_between(0, time.time())
    slices = sum(1 for r in logged if r["method"] == "POST" and r["path"].endswith("/resourceslices"))
    gets = sum(1 for r in logged if r["method"] == "GET" and "/resourceclaims/" in r["path"])
    v.expect(slices >= 2, f"request log: {slices} ResourceSlice creations logged for {node}")
    v.expect(gets >= 4 * claims, f"request log: {gets} claim GETs logged, want >= {4 * claims}")


@contextmanager
def _py_spy(pid: int, out: Path | None, native: bool) -> Iterator[None]:
    """Sample the plugin with py-spy (raw collapsed stacks, 1 kHz, idle threads too) while the block runs.
    Non-blocking by default; ``native`` pauses the process per sample to read C frames (perturbs more)."""
    if out is None:
        yield
        return
    beside = Path(sys.executable).with_name("py-spy")
    exe = str(beside) if beside.exists() else shutil.which("py-spy")
    if exe is None:
        raise BenchError("--py-spy needs py-spy (pip install py-spy) beside python or on PATH")
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "1000",
        "--format",
        "raw",
        "--idle",
        "--output",
        str(out),
    ]
    cmd.append("--native" if native else "--nonblocking")
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # attach
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=60)
        if spy.returncode != 0 or not out.exists():
            raise BenchError(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")


def _phases(
    kubelet: Kubelet,
    api: Http,
    plugin: PluginProc,
    devices: list[str],
    *,
    s: Settings,
    v: bc.Validation,
    api_pid: int | None = None,
) -> tuple[dict[str, Any], dict[str, int]]:
    """Warm-up, then the measured phases, each on fresh claims; also VmRSS (KiB) after each phase."""
    results, rss = {}, {"ready": plugin.memory_kib()["VmRSS"]}
    assert plugin.proc is not None
    pids = {"plugin": plugin.proc.pid, **({"api": api_pid} if api_pid else {})}
    for shape in (Shape("warmup", 1, 1), *SHAPES):
        claims = [bc.allocate(api, f"{shape.name}-{i:03d}", plugin.node, devices[i]) for i in range(s.claims)]
        assert plugin.proc is not None
        spy = s.py_spy if shape.name == s.py_spy_phase else None
        with _py_spy(plugin.proc.pid, spy, s.py_spy_native):
            result = claim_phase(
                kubelet, claims, shape, node=plugin.node, cdi_root=plugin.cdi_root, v=v, pids=pids
            )
        if shape.name != "warmup":
            results[shape.name] = result
        rss[shape.name] = plugin.memory_kib()["VmRSS"]
    return results, rss


def claim_run(
    standin: StandIn, api: Http, root: Path, s: Settings, v: bc.Validation, *, want_devices: int
) -> dict[str, Any]:
    volatile = tmpfs_dir()
    plugin = PluginProc(root / "claims", "bench-node", s.profile, standin.kubeconfig, volatile=volatile)
    try:
        ready = start_until_ready(standin, api, plugin)
        info = kubeletsim.register(plugin.registration_socket)  # validates GetInfo like the kubelet
        devices, sizes = _check_slices(api, plugin.node, want_devices, v)
        if len(devices) < s.claims:
            raise BenchError(
                f"profile {s.profile} publishes {len(devices)} devices, fewer than {s.claims} claims"
            )
        kubelet = Kubelet(info.endpoint)
        try:
            api_pid = standin.proc.pid if standin.proc is not None else None
            phases, rss_trace = _phases(kubelet, api, plugin, devices, s=s, v=v, api_pid=api_pid)
        finally:
            kubelet.close()
        after = plugin.memory_kib()
        t0 = time.time()
        time.sleep(s.idle_s)
        idle = standin.requests_between(t0, time.time())
        _check_request_log(standin, plugin.node, s.claims, v)
        sigterm_s, code = plugin.sigterm_timed()
        v.expect(code == 0, f"claim run: exit code {code}")
    finally:
        plugin.kill()
        if volatile is not None:
            shutil.rmtree(volatile, ignore_errors=True)
    return {
        "profile": s.profile,
        "node": plugin.node,
        "devices": len(devices),
        "slices": sizes,
        "exec_to_first_slice_ms": round(ready["exec_to_first_slice_s"] * 1000, 1),
        "phases": phases,
        "calls": kubelet.calls,
        "rss": {"ready": ready["memory_kib"], "after_calls": after, "vmrss_kib_after_each_phase": rss_trace},
        "idle": {"seconds": s.idle_s, "requests": len(idle), "sample": idle[:5]},
        "sigterm_exit_ms": round(sigterm_s * 1000, 2),
        "state_dir": str(plugin.state_dir),
        "cdi_root_and_run_dir": "tmpfs" if volatile is not None else "the work dir (no tmpfs found)",
    }


def precompile() -> str:
    """Compile gpudra's modules to bytecode, as installing the wheel into the image does. An editable install
    under ``PYTHONDONTWRITEBYTECODE=1`` (this machine) would otherwise compile ~50 modules from source at
    every plugin start, ~65 ms that no deployed plugin pays."""
    import gpudra

    package = Path(gpudra.__file__).parent
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    cmd = [sys.executable, "-m", "compileall", "-q", str(package)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        output = (done.stdout + done.stderr)[-300:]
        return f"not precompiled (compileall exit {done.returncode}: {output})"
    return f"precompiled ({package})"


def tmpfs_dir() -> Path | None:
    """A fresh directory on tmpfs (/dev/shm), where a node keeps /var/run: the CDI root and gpudra's run dir
    live there in a cluster, while the checkpoint stays on disk. None when there is no tmpfs to use."""
    shm = Path("/dev/shm")
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    if not any(line.split()[1:3] == [str(shm), "tmpfs"] for line in mounts if len(line.split()) > 2):
        return None
    return Path(tempfile.mkdtemp(prefix="gpudra-bench-", dir=shm))
