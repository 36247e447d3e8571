"""Hardware that changes while the real ``gpudra run`` serves: re-discovery republishes it without a restart.

The mock's hardware is its profile file: editing the file of a running mock is a hardware change (a GPU lost,
a MIG layout or mode changed, an AMD partition mode switched), seen by the next re-discovery pass — periodic
(``--rediscover-interval``) or on demand (SIGHUP). Checked end to end against the stand-in API server: the
slices change and the pool generation increments; prepare and unprepare behave as a kubelet needs.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.vendors.mock import profile as nvidia_profiles
from tests.integration.conftest import NODE, PluginProcess, cdi_spec_path, make_claim, node_slices

pytestmark = pytest.mark.integration

PROFILES = Path(nvidia_profiles.__file__).parent / "profiles"
LOST = "GPU-0b100000-0000-0000-0000-000000000003"
MIG_PARENT = "GPU-0d100000-0000-0000-0000-000000000000"


def _profile(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.json"
    path.write_text((PROFILES / f"{name}.json").read_text())
    return path


def _edit(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    doc = json.loads(path.read_text())
    change(doc)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc))
    tmp.replace(path)  # the mock never reads half a file


def _devices(api: FakeApiServer) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in node_slices(api) for d in s["spec"].get("devices", [])}


def _generations(api: FakeApiServer) -> set[int]:
    return {s["spec"]["pool"]["generation"] for s in node_slices(api)}


def _passes_at_least(plugin: PluginProcess, n: int) -> bool:
    return plugin.log().count("re-discovery pass") >= n and plugin.log().count("unchanged") >= n


def _uuid(device: dict[str, Any]) -> str:
    uuid: str = device["attributes"]["uuid"]["string"]
    return uuid


@pytest.fixture
def start(api: FakeApiServer, short_tmp: Path) -> Iterator[Callable[[Path, str], PluginProcess]]:
    started: list[PluginProcess] = []

    def _start(profile: Path, interval: str) -> PluginProcess:
        args = ["--profile", str(profile), "--rediscover-interval", interval]
        args += ["--rediscover-pending-interval", "0.1"]
        root = short_tmp / f"p{len(started)}"
        root.mkdir()
        p = PluginProcess(root, api, args).start()
        started.append(p)
        assert api.wait_for(lambda: _devices(api), timeout=20), p.log()
        return p

    yield _start
    for p in started:
        if p.proc is not None:
            p.assert_alive()
            p.terminate()


def test_a_lost_gpu_is_withdrawn_and_its_claims_still_unprepare(
    api: FakeApiServer, short_tmp: Path, start: Callable[[Path, str], PluginProcess]
) -> None:
    profile = _profile(short_tmp, "dgx-h100")
    plugin = start(profile, "0")  # passes only on SIGHUP: the test decides when hardware is looked at
    lost = next(n for n, d in _devices(api).items() if _uuid(d) == LOST)
    held = make_claim(api, "held", [lost])
    with plugin.client() as client:
        assert client.prepare([held]).claims[held.uid].error == ""
    (generation,) = _generations(api)

    _edit(profile, lambda doc: doc["devices"][3].update(errors={"*": "NVML_ERROR_GPU_IS_LOST"}))
    assert plugin.proc is not None
    plugin.proc.send_signal(signal.SIGHUP)
    assert api.wait_for(lambda: lost not in _devices(api), timeout=10), plugin.log()
    assert len(_devices(api)) == 7
    # one pool generation, newer (the health watcher may have tainted the GPU lost just before it went)
    (newer,) = _generations(api)
    assert newer > generation
    assert "GPU index 3 skipped" in plugin.log()  # and the log says why

    late = make_claim(api, "late", [lost])
    with plugin.client() as client:
        error = client.prepare([late]).claims[late.uid].error
        assert f"device {lost} is not on this node" in error
        assert client.unprepare([held]).claims[held.uid].error == ""
    assert not cdi_spec_path(plugin, held.uid).exists()
    plugin.assert_alive()


def test_an_admin_changing_mig_is_republished_within_a_period(
    api: FakeApiServer, short_tmp: Path, start: Callable[[Path, str], PluginProcess]
) -> None:
    profile = _profile(short_tmp, "h100-mig-mixed")
    start(profile, "0.2")
    migs = {n for n, d in _devices(api).items() if d["attributes"]["type"]["string"] == "mig"}
    assert len(migs) == 3

    def drop_one(doc: dict[str, Any]) -> None:
        doc["devices"][0]["mig_devices"] = doc["devices"][0]["mig_devices"][:2]

    _edit(profile, drop_one)
    assert api.wait_for(lambda: len({n for n in _devices(api) if n in migs}) == 2, timeout=10)

    def mig_off(doc: dict[str, Any]) -> None:
        doc["devices"][0]["mig_devices"] = []
        doc["devices"][0]["mig_mode"] = [0, 0]

    _edit(profile, mig_off)
    assert api.wait_for(lambda: any(_uuid(d) == MIG_PARENT for d in _devices(api).values()), timeout=10)
    assert not migs & set(_devices(api))
    whole = next(d for d in _devices(api).values() if _uuid(d) == MIG_PARENT)
    assert whole["attributes"]["migEnabled"] == {"bool": False}
    assert len(_generations(api)) == 1


def test_an_amd_partition_mode_switch_is_republished(
    api: FakeApiServer, short_tmp: Path, start: Callable[[Path, str], PluginProcess]
) -> None:
    profile = _profile(short_tmp, "mi300x-8-spx-nps1")
    start(profile, "0.2")
    assert {d["attributes"]["type"]["string"] for d in _devices(api).values()} == {"gpu"}
    (generation,) = _generations(api)
    cpx = json.loads((PROFILES / "mi300x-8-cpx-nps4.json").read_text())

    def switch(doc: dict[str, Any]) -> None:
        for key in ("gpus", "cpu_nodes", "bmc_vga"):
            doc[key] = cpx[key]

    _edit(profile, switch)
    assert api.wait_for(lambda: len(_devices(api)) == 64, timeout=10)
    assert {d["attributes"]["type"]["string"] for d in _devices(api).values()} == {"partition"}
    assert _generations(api) == {generation + 1}


def test_pending_fabric_registration_is_published_once_it_completes(
    api: FakeApiServer, short_tmp: Path, start: Callable[[Path, str], PluginProcess]
) -> None:
    profile = _profile(short_tmp, "gb200-nvl72-tray")

    def registration(state: int) -> Callable[[dict[str, Any]], None]:
        def change(doc: dict[str, Any]) -> None:
            for device in doc["devices"]:
                device["fabric"]["state"] = state

        return change

    _edit(profile, registration(2))  # NVML_GPU_FABRIC_STATE_IN_PROGRESS
    plugin = start(profile, "0")  # no periodic passes: only the pending-fabric retries run
    assert plugin.proc is not None
    assert not [d for d in _devices(api).values() if "fabricDomain" in d["attributes"]]
    _edit(profile, registration(3))  # COMPLETED
    assert api.wait_for(
        lambda: all("fabricDomain" in d["attributes"] for d in _devices(api).values()), timeout=10
    ), plugin.log()
    # the pass logs its line after the slices it changed are published: wait for it too (bounded)
    assert api.wait_for(lambda: "NVLink fabric registration settled" in plugin.log(), timeout=5), plugin.log()


def test_nothing_changed_writes_nothing(
    api: FakeApiServer, short_tmp: Path, start: Callable[[Path, str], PluginProcess]
) -> None:
    plugin = start(_profile(short_tmp, "dgx-h100"), "0")
    api.clear_requests()
    for n in range(1, 4):  # three passes over unchanged hardware, on demand, one after the other
        assert plugin.proc is not None
        plugin.proc.send_signal(signal.SIGHUP)
        assert api.wait_for(partial(_passes_at_least, plugin, n), timeout=10), plugin.log()
    writes = sum(api.count(m, "/apis/resource.k8s.io/v1/resourceslices") for m in ("POST", "PUT", "DELETE"))
    assert writes == 0
    plugin.assert_alive()
    assert NODE in {s["spec"]["nodeName"] for s in node_slices(api)}
