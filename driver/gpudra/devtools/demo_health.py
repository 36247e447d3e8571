"""``gpudra-dev demo --scenario health``: a GPU goes unhealthy and recovers, on mock GPUs, no cluster needed.

As in the basic demo (:mod:`gpudra.devtools.demo`), a stand-in API server runs in-process, here with the
``DRADeviceTaints`` gate on, and the real plugin runs on a mock DGX H100. The profile is a copy in a file:
editing the file is a hardware change that the next re-discovery pass (every 0.2 s here) delivers. A kubelet
stand-in registers the plugin and opens its health stream (v1). Then Xid 48 (double-bit ECC) is injected on
one GPU, and the demo shows the device's taint in the API, the stream's UNHEALTHY message and a prepare
refused. After the Xid's quiet period (``--health-quiet xid=3``) it shows the taint gone, the stream HEALTHY
and the prepare succeeding, then stops the plugin. Every step waits a bounded time. Exit code 0 means every
step was observed; 1 names the step that was not.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from gpudra.devtools import kubeletsim
from gpudra.devtools.demo import NODE, DemoError, allocate, demo_config, node_slices, say
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from gpudra.runtime.app import Plugin
from gpudra.runtime.config import RunConfig
from gpudra.vendors.base import WatchOptions
from gpudra.vendors.select import open_driver

PROFILE = "dgx-h100"
INTERVAL_S = 0.2  # re-discovery (which delivers the edit) and health polls
QUIET_S = 3.0  # --health-quiet xid=: the taint goes after this long without a repeat
STEP_TIMEOUT_S = 15.0  # for each step, on top of the quiet period where one applies
VICTIM = 2  # the GPU the Xid is injected on: devices[2] of the profile
XID = 48
TAINT = ("gpudra.io/xid", str(XID), "NoExecute")

T = TypeVar("T")
Reports = tuple[kubeletsim.DeviceHealthReport, ...]


@dataclass
class _Demo:
    root: Path
    api: FakeApiServer
    profile: Path
    cfg: RunConfig
    device: str  # the published name of the victim GPU
    plugin: Plugin | None = None
    endpoint: str = ""
    stream: kubeletsim.HealthStream | None = None
    claim: kubeletsim.Claim | None = None
    injected_at: float = 0.0


def _setup(root: Path, api: FakeApiServer) -> _Demo:
    api.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    source = resources.files("gpudra.vendors.mock").joinpath("profiles", f"{PROFILE}.json")
    profile = root / "node.json"
    profile.write_text(source.read_text(encoding="utf-8"))
    uuid = json.loads(profile.read_text())["devices"][VICTIM]["uuid"]
    cfg = demo_config(
        root,
        api,
        rediscover_interval_s=INTERVAL_S,
        mig_dynamic=False,
        health_quiet_s={"xid": QUIET_S},
    )
    return _Demo(root, api, profile, cfg, names.gpu_device_name(uuid))


# ---- the steps: each returns what it observed, or raises ------------------------------------------------


def _published(d: _Demo) -> str:
    health = WatchOptions(poll_s=INTERVAL_S)
    files = d.cfg.effective_run_dir / "claims"
    driver = open_driver("mock", str(d.profile), Path("/sys"), d.cfg.host_roots, files, health=health)
    d.plugin = Plugin(d.cfg, driver)
    d.plugin.start()
    if not d.api.wait_for(lambda: _devices(d.api), timeout=STEP_TIMEOUT_S):
        raise DemoError(f"no device was published within {STEP_TIMEOUT_S:.0f} s")
    return (
        f"    {len(_devices(d.api))} devices, profile file {d.profile} (re-discovered every {INTERVAL_S} s)"
    )


def _all_healthy(d: _Demo) -> str:
    info = kubeletsim.register(d.cfg.registration_socket)
    d.endpoint = info.endpoint
    d.stream = kubeletsim.HealthStream(info.endpoint, "v1")
    published = set(_devices(d.api))
    reports = _await_stream(
        d,
        lambda rs: {r.device for r in rs} == published and all(r.health == "HEALTHY" for r in rs),
        STEP_TIMEOUT_S,
    )
    return "\n".join(f"    {r.device} {r.health}" for r in sorted(reports, key=lambda r: r.device))


def _inject(d: _Demo) -> str:
    doc = json.loads(d.profile.read_text())
    event = {"id": "demo-xid", "type": "xid", "value": XID}
    doc["devices"][VICTIM].setdefault("events", []).append(event)
    tmp = d.profile.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2))
    tmp.replace(d.profile)  # written anew: the mock never reads half a file
    d.injected_at = time.monotonic()
    return f'    devices[{VICTIM}] ({d.device}) of {d.profile}: "events": [{json.dumps(event)}]'


def _tainted(d: _Demo) -> str:
    if not d.api.wait_for(lambda: _taints(d.api).get(d.device), timeout=STEP_TIMEOUT_S):
        raise DemoError(f"{d.device} has no taint {STEP_TIMEOUT_S:.0f} s after the edit")
    shown = [_taint_text(t) for t in _taints(d.api)[d.device]]
    if shown != ["=".join(TAINT[:2]) + ":" + TAINT[2]]:
        raise DemoError(f"{d.device} has the taints {shown}, not {TAINT[0]}={TAINT[1]}:{TAINT[2]}")
    return f"    ResourceSlice {d.device}: {shown[0]} ({_since(d)} after the edit)"


def _stream_unhealthy(d: _Demo) -> str:
    report = _device_report(d, "UNHEALTHY", STEP_TIMEOUT_S)
    if str(XID) not in report.message:
        raise DemoError(f"the UNHEALTHY message does not name Xid {XID}: {report.message!r}")
    return f"    {report.device} UNHEALTHY: {report.message}"


def _prepare_refused(d: _Demo) -> str:
    d.claim = kubeletsim.Claim("default", "demo-sick-gpu", allocate(d.api, d.device, "demo-sick-gpu"))
    with kubeletsim.DraClient(d.endpoint, "v1") as client:
        result = client.prepare([d.claim]).claims[d.claim.uid]
    if "unhealthy" not in result.error:
        raise DemoError(f"prepare of default/demo-sick-gpu on {d.device} was not refused: {result.error!r}")
    return f"    NodePrepareResources default/demo-sick-gpu -> error: {result.error}"


def _untainted(d: _Demo) -> str:
    timeout = QUIET_S + STEP_TIMEOUT_S
    if not d.api.wait_for(lambda: not _taints(d.api).get(d.device), timeout=timeout):
        raise DemoError(f"{d.device} still has its taint {timeout:.0f} s later")
    return (
        f"    ResourceSlice {d.device}: no taint ({_since(d)} after the edit; quiet period {QUIET_S:.0f} s)"
    )


def _stream_healthy(d: _Demo) -> str:
    report = _device_report(d, "HEALTHY", STEP_TIMEOUT_S)
    return f"    {report.device} HEALTHY"


def _prepare_succeeds(d: _Demo) -> str:
    claim = _set(d.claim)
    with kubeletsim.DraClient(d.endpoint, "v1") as client:
        result = client.prepare([claim]).claims[claim.uid]
        if result.error or len(result.devices) != 1:
            raise DemoError(f"prepare failed: {result.error or 'no device returned'}")
        unprepared = client.unprepare([claim]).claims[claim.uid]
    if unprepared.error:
        raise DemoError(f"unprepare failed: {unprepared.error}")
    ids = list(result.devices[0].cdi_device_ids)
    return f"    NodePrepareResources default/demo-sick-gpu -> {ids}\n    NodeUnprepareResources -> ok"


def _shutdown(d: _Demo) -> str:
    _set(d.plugin).stop()
    d.plugin = None
    ended = _stream_end(_set(d.stream))
    left = [p for p in (d.cfg.dra_socket, d.cfg.registration_socket) if p.exists()]
    if ended.code.name != "OK" or left:
        raise DemoError(f"unclean stop: stream ended {ended.code.name}; sockets left: {left}")
    return "    plugin stopped: health stream ended with status OK, DRA and registration sockets removed"


STEPS: tuple[tuple[str, Callable[[_Demo], str]], ...] = (
    ("the plugin publishes the mock node's GPUs (DRADeviceTaints on)", _published),
    ("kubelet: registered; health stream (v1) reports every device HEALTHY", _all_healthy),
    (f"hardware: Xid {XID} (double-bit ECC) injected on one GPU by editing the profile file", _inject),
    ("API: the device's taint in its ResourceSlice", _tainted),
    ("kubelet: the health stream reports the device UNHEALTHY", _stream_unhealthy),
    ("kubelet: prepare of a claim on the device is refused", _prepare_refused),
    (f"API: after the quiet period ({QUIET_S:.0f} s without the Xid) the taint is gone", _untainted),
    ("kubelet: the health stream reports the device HEALTHY again", _stream_healthy),
    ("kubelet: prepare of the same claim succeeds", _prepare_succeeds),
    ("clean shutdown", _shutdown),
)


# ---- helpers ------------------------------------------------------------------------------------------


def _devices(api: FakeApiServer) -> list[str]:
    return sorted(d["name"] for s in node_slices(api) for d in s["spec"].get("devices", []))


def _taints(api: FakeApiServer) -> dict[str, list[dict[str, Any]]]:
    return {d["name"]: d.get("taints", []) for s in node_slices(api) for d in s["spec"].get("devices", [])}


def _taint_text(taint: dict[str, Any]) -> str:
    return f"{taint['key']}={taint.get('value', '')}:{taint['effect']}"


def _since(d: _Demo) -> str:
    return f"{time.monotonic() - d.injected_at:.1f} s"


def _set(value: T | None) -> T:
    """What an earlier step set up (a step never runs without the steps before it)."""
    if value is None:
        raise DemoError("an earlier step did not set this up")
    return value


def _await_stream(d: _Demo, wanted: Callable[[Reports], bool], timeout: float) -> Reports:
    """The first message of the health stream that ``wanted`` accepts, within ``timeout`` seconds."""
    stream = _set(d.stream)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            reports = stream.next(timeout_s=left)
        except kubeletsim.KubeletError as e:
            raise DemoError(str(e)) from e
        if wanted(reports):
            return reports
    raise DemoError(f"not in any health message within {timeout:.0f} s")


def _device_report(d: _Demo, health: str, timeout: float) -> kubeletsim.DeviceHealthReport:
    reports = _await_stream(
        d, lambda rs: any(r.device == d.device and r.health == health for r in rs), timeout
    )
    return next(r for r in reports if r.device == d.device)


def _stream_end(stream: kubeletsim.HealthStream) -> kubeletsim.HealthStreamEnded:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while (left := deadline - time.monotonic()) > 0:
        try:
            stream.next(timeout_s=left)  # messages sent before the stop come first
        except kubeletsim.HealthStreamEnded as ended:
            return ended
        except kubeletsim.KubeletError as e:
            raise DemoError(str(e)) from e
    raise DemoError(f"the health stream did not end within {STEP_TIMEOUT_S:.0f} s")


# ---- the run ------------------------------------------------------------------------------------------


def _play(d: _Demo) -> int:
    for number, (title, step) in enumerate(STEPS, 1):
        try:
            detail = step(d)
        except Exception as e:  # every failure names its step
            what = str(e) if isinstance(e, DemoError) else f"{type(e).__name__}: {e}"
            print(f"gpudra demo --scenario health: FAILED at step {number} ({title}): {what}", flush=True)
            return 1
        say(f"[{number}/{len(STEPS)}] {title}", detail)
    say("demo finished: the device went unhealthy and recovered, every step observed")
    return 0


def run() -> int:
    root = Path(tempfile.mkdtemp(prefix="gpudra-demo-"))
    api = FakeApiServer(feature_gates={"DRADeviceTaints": True}).start()
    d: _Demo | None = None
    try:
        d = _setup(root, api)
        say(f"stand-in API server at {api.url} (DRADeviceTaints on); mock profile {PROFILE}; work dir {root}")
        return _play(d)
    finally:
        if d is not None and d.stream is not None:
            d.stream.cancel()
        if d is not None and d.plugin is not None:
            d.plugin.stop()
        api.stop()
        shutil.rmtree(root, ignore_errors=True)
