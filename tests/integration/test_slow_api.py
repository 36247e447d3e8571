"""A slow or unreachable API server: the plugin stays live, and what does not need the API is not held back.

The real ``gpudra run`` reaches the stand-in API through a FaultProxy. Prepares that must read their claims
wait on the blackholed API and keep every prepare slot busy; meanwhile liveness probes answer SERVING,
unprepares and empty prepares answer at once, and a claim this node already prepared is answered from the
checkpoint (issue 13, items 1 and 12).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpudra.devtools import kubeletsim
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.devtools.faultproxy import FaultProxy
from tests.integration.conftest import PluginProcess, device_names, make_claim

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def proxy(api: FakeApiServer) -> Iterator[FaultProxy]:
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    p = FaultProxy(host, int(port)).start()
    yield p
    p.stop()


@pytest.fixture
def behind_proxy(
    api: FakeApiServer, proxy: FaultProxy, short_tmp: Path
) -> Iterator[tuple[PluginProcess, int]]:
    port = _free_port()
    plugin = PluginProcess(short_tmp, api, extra_args=["--probe-port", str(port)], server=proxy.url())
    plugin.start()
    try:
        assert api.wait_for(lambda: device_names(api), timeout=20), plugin.log()
        yield plugin, port
        plugin.assert_alive()
    finally:
        proxy.set_mode("pass")  # the waiting prepares end; the plugin stops without waiting for them
        plugin.terminate()


def _check(port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def _stuck_prepares(plugin: PluginProcess, claims: list[kubeletsim.Claim]) -> list[threading.Thread]:
    def prepare(claim: kubeletsim.Claim) -> None:
        # The deadline, once the test is over: what matters is what waited meanwhile.
        with plugin.client() as client, contextlib.suppress(grpc.RpcError):
            client.prepare([claim], timeout_s=30)

    threads = [threading.Thread(target=prepare, args=(c,), daemon=True) for c in claims]
    for t in threads:
        t.start()
    return threads


def test_a_blackholed_api_starves_neither_probes_nor_unprepare(
    api: FakeApiServer, proxy: FaultProxy, behind_proxy: tuple[PluginProcess, int]
) -> None:
    plugin, port = behind_proxy
    devices = device_names(api)
    held = make_claim(api, "held", [devices[0]])
    with plugin.client() as client:
        assert client.prepare([held]).claims[held.uid].error == ""
    waiting = [make_claim(api, f"waiting-{i}", [devices[1 + i]]) for i in range(6)]
    proxy.set_mode("blackhole")
    proxy.orphan_established()  # the plugin's keep-alive connections die too, silently
    threads = _stuck_prepares(plugin, waiting)
    time.sleep(0.3)  # let all six reach the API (more than the 4 prepare slots)
    assert all(t.is_alive() for t in threads)  # they do wait on the API: the fault is real

    statuses = [_check(port) for _ in range(14)]
    assert statuses == ["SERVING"] * 14
    with plugin.client() as client:
        t0 = time.monotonic()
        assert client.unprepare([held], timeout_s=5).claims[held.uid].error == ""
        assert len(client.prepare([], timeout_s=5).claims) == 0
        assert time.monotonic() - t0 < 2.0  # bounded: not behind the waiting prepares
    plugin.assert_alive()


def test_a_prepared_claim_is_answered_from_the_checkpoint_while_the_api_is_down(
    api: FakeApiServer, proxy: FaultProxy, behind_proxy: tuple[PluginProcess, int]
) -> None:
    plugin, _ = behind_proxy
    devices = device_names(api)
    done = make_claim(api, "done", [devices[0]])
    fresh = make_claim(api, "fresh", [devices[1]])
    with plugin.client() as client:
        first = client.prepare([done]).claims[done.uid]
        assert first.error == ""
        proxy.set_mode("refuse")  # the API server is down: connections are reset
        proxy.orphan_established()
        again = client.prepare([done, fresh], timeout_s=20).claims
    assert again[done.uid].error == ""
    assert list(again[done.uid].devices) == list(first.devices)  # the same answer as the first time
    assert "cannot read ResourceClaim default/fresh" in again[fresh.uid].error  # needs the API
    plugin.assert_alive()
