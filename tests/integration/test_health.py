"""Device health end to end: the real ``gpudra run`` on a watched mock profile, Xids injected by editing the
profile file (a hardware change), seen as device taints in the stand-in API (DRADeviceTaints on), in both
versions of the kubelet's health stream, and at prepare; recovery after the quiet period."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools import kubeletsim
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from gpudra.vendors.mock import profile as nvidia_profiles
from tests.integration.conftest import NODE, PluginProcess, make_claim, node_slices, pool_complete

pytestmark = pytest.mark.integration

PROFILES = Path(nvidia_profiles.__file__).parent / "profiles"


def _uuid(index: int) -> str:
    return f"GPU-0b100000-0000-0000-0000-{index:012x}"


def _name(index: int) -> str:
    return names.gpu_device_name(_uuid(index))


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer(feature_gates={"DRADeviceTaints": True}).start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    yield server
    server.stop()


@pytest.fixture
def profile(short_tmp: Path) -> Path:
    path = short_tmp / "dgx-h100.json"
    path.write_text((PROFILES / "dgx-h100.json").read_text())
    return path


@pytest.fixture
def plugin(api: FakeApiServer, short_tmp: Path, profile: Path) -> Iterator[PluginProcess]:
    args = ["--profile", str(profile), "--mig-management", "static", "--rediscover-interval", "0.2",
            "--health-poll-interval", "0.2", "--health-quiet", "xid=3"]  # fmt: skip
    p = PluginProcess(short_tmp, api, args).start()
    try:
        assert api.wait_for(lambda: pool_complete(api), timeout=20), p.log()
        yield p
        p.assert_alive()
    finally:
        if p.proc is not None:
            p.terminate()


def _inject(profile: Path, events: dict[int, list[dict[str, Any]]]) -> None:
    doc = json.loads(profile.read_text())
    for index, added in events.items():
        doc["devices"][index].setdefault("events", []).extend(added)
    tmp = profile.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(profile)  # the mock never reads half a file


def _taints(api: FakeApiServer) -> dict[str, list[dict[str, Any]]]:
    return {d["name"]: d.get("taints", []) for s in node_slices(api) for d in s["spec"].get("devices", [])}


def _health(stream: kubeletsim.HealthStream, device: str, want: str, timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for report in stream.next(timeout_s=timeout):
            if report.device == device and report.health == want:
                return report
    raise AssertionError(f"{device} never reported {want}")


def test_an_xid_taints_its_gpu_streams_unhealthy_refuses_prepare_and_heals(
    api: FakeApiServer, plugin: PluginProcess, profile: Path
) -> None:
    info = plugin.register()
    streams = [kubeletsim.HealthStream(info.endpoint, v) for v in ("v1", "v1alpha1")]
    try:
        for stream in streams:
            _health(stream, _name(4), "HEALTHY")  # monitored: events registered, presence polled
        _inject(profile, {3: [{"id": "app", "type": "xid", "value": 13}],  # ignored: the app's own fault
                          4: [{"id": "dbe", "type": "xid", "value": 48}]})  # fmt: skip
        assert api.wait_for(lambda: _taints(api)[_name(4)], timeout=15), plugin.log()
        [taint] = _taints(api)[_name(4)]
        assert (taint["key"], taint["value"], taint["effect"]) == ("gpudra.io/xid", "48", "NoExecute")
        assert _taints(api)[_name(3)] == []  # delivered in the same change, and ignored
        for stream in streams:
            report = _health(stream, _name(4), "UNHEALTHY")
            assert "48" in report.message
        claim = make_claim(api, "on-the-sick-gpu", [_name(4)])
        with plugin.client() as client:
            refused = client.prepare([claim]).claims[claim.uid]
        assert "unhealthy" in refused.error
        # the Xid does not recur for its quiet period (3 s here): the taint goes without a restart
        assert api.wait_for(lambda: not _taints(api)[_name(4)], timeout=20), plugin.log()
        for stream in streams:
            _health(stream, _name(4), "HEALTHY")
        with plugin.client() as client:
            assert client.prepare([claim]).claims[claim.uid].error == ""
            assert client.unprepare([claim]).claims[claim.uid].error == ""
    finally:
        for stream in streams:
            stream.cancel()


def test_a_burst_of_events_keeps_the_plugin_serving(
    api: FakeApiServer, plugin: PluginProcess, profile: Path
) -> None:
    _inject(profile, {5: [{"id": f"e{i}", "type": "xid", "value": 94} for i in range(200)]})
    assert api.wait_for(lambda: _taints(api)[_name(5)], timeout=20), plugin.log()
    claims = [make_claim(api, f"c{i}", [_name(i)]) for i in (0, 1, 2)]
    with plugin.client() as client:  # prepares answer while the watcher works through the burst
        for claim in claims:
            assert client.prepare([claim]).claims[claim.uid].error == ""
            assert client.unprepare([claim]).claims[claim.uid].error == ""
    [taint] = _taints(api)[_name(5)]  # 200 observations of one condition: one taint
    assert (taint["key"], taint["value"], taint["effect"]) == ("gpudra.io/xid", "94", "NoSchedule")
    assert plugin.log().count("device " + _name(5) + ": Healthy -> Unhealthy") == 1  # logged once


def test_xid_79_taints_the_gpu_noexecute_as_lost(api: FakeApiServer, short_tmp: Path, profile: Path) -> None:
    # polls far apart: the fake GPU still answers, so only the event marks it lost until the next poll
    args = ["--profile", str(profile), "--mig-management", "static", "--rediscover-interval", "0.2",
            "--health-poll-interval", "60"]  # fmt: skip
    plugin = PluginProcess(short_tmp, api, args).start()
    try:
        assert api.wait_for(lambda: pool_complete(api), timeout=20), plugin.log()
        info = plugin.register()
        with (
            kubeletsim.HealthStream(info.endpoint, "v1") as v1,
            kubeletsim.HealthStream(info.endpoint, "v1alpha1") as v1alpha1,
        ):
            for stream in (v1, v1alpha1):
                _health(stream, _name(6), "HEALTHY")
            started = time.monotonic()
            _inject(profile, {6: [{"id": "bus", "type": "xid", "value": 79}]})
            assert api.wait_for(lambda: _taints(api)[_name(6)], timeout=15), plugin.log()
            latency = time.monotonic() - started  # reported, never asserted (no timed assertions)
            [taint] = _taints(api)[_name(6)]
            assert (taint["key"], taint["value"], taint["effect"]) == ("gpudra.io/lost", "true", "NoExecute")
            for stream in (v1, v1alpha1):
                assert "79" in _health(stream, _name(6), "UNHEALTHY").message
        print(f"edit -> NoExecute taint in the API: {latency * 1000:.0f} ms (re-discovery every 0.2 s)")
        assert all(not t for n, t in _taints(api).items() if n != _name(6))
        plugin.assert_alive()
    finally:
        plugin.terminate()


def test_taints_the_cluster_drops_are_reported_once_and_prepare_still_refuses(
    short_tmp: Path, profile: Path
) -> None:
    server = FakeApiServer().start()  # Kubernetes 1.34 defaults: DRADeviceTaints off
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    args = ["--profile", str(profile), "--mig-management", "static", "--rediscover-interval", "0.2",
            "--health-poll-interval", "0.2"]  # fmt: skip
    plugin = PluginProcess(short_tmp, server, args).start()
    try:
        assert server.wait_for(lambda: pool_complete(server), timeout=20), plugin.log()
        _inject(
            profile,
            {2: [{"id": "a", "type": "xid", "value": 48}], 3: [{"id": "b", "type": "xid", "value": 48}]},
        )

        def dropped() -> list[dict[str, Any]]:
            events = server.list_objects("Event", "default")
            return [e for e in events if e.get("reason") == "GpudraDeviceTaintsDropped"]

        assert server.wait_for(dropped, timeout=15), plugin.log()
        assert "DRADeviceTaints" in dropped()[0]["message"]
        assert not any(_taints(server).values())  # the server kept none
        claim = make_claim(server, "sick", [_name(2)])
        with plugin.client() as client:
            assert "unhealthy" in client.prepare([claim]).claims[claim.uid].error
        assert len(dropped()) == 1  # told once, though two devices were tainted
        plugin.assert_alive()
    finally:
        plugin.terminate()
        server.stop()
