"""grpc.health.v1 for the kubelet's gRPC probes: a Check calls the plugin over its real sockets, so it fails
when the plugin does, and `gpudra run --probe-port` serves it for as long as the plugin runs."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpudra._proto import registration_v1_pb2, registration_v1_pb2_grpc
from gpudra.devtools import kubeletsim
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.kubelet import dra
from gpudra.kubelet.probe import READINESS, PluginChecker, ProbeServer
from gpudra.kubelet.registration import Registrar
from gpudra.kubelet.sockets import UnixServer
from gpudra.planning.plan import ClaimRef
from gpudra.state.prepare import ClaimResult
from tests.integration.conftest import PluginProcess, device_names

pytestmark = pytest.mark.integration


class Backend:
    """A PrepareBackend that answers, fails, or hangs until released."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.release = threading.Event()
        self.calls = 0

    def prepare(self, refs: list[ClaimRef]) -> dict[str, ClaimResult]:
        self.calls += 1
        if self.mode == "fail":
            raise RuntimeError("checkpoint unreadable")
        if self.mode == "hang":
            self.release.wait(10)
        return {}

    def unprepare(self, refs: list[ClaimRef]) -> dict[str, str | None]:
        return {}

    def health(self) -> None:
        self.prepare([])


class Plugin:
    """Registration and DRA sockets served in this process, plus the probe server in front of them."""

    def __init__(self, root: Path, backend: Backend, timeout_s: float = 1.0) -> None:
        self.registration = root / "gpudra.io-reg.sock"
        self.dra = root / "dra.sock"
        self.backend = backend
        self.dra_server = UnixServer(self.dra, dra.registrars(backend))
        self.registrar = Registrar(self.registration, self.dra)
        checker = PluginChecker(self.registration, self.dra, self.registrar.registered.is_set, timeout_s)
        self.probe = ProbeServer(0, checker, host="127.0.0.1")

    def check(self, service: str = "") -> str:
        with grpc.insecure_channel(f"127.0.0.1:{self.probe.port}") as channel:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=10
            )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))

    def stop(self) -> None:
        self.backend.release.set()
        self.probe.stop()
        self.registrar.stop()
        self.dra_server.stop(0)


class MakePlugin(Protocol):
    """Starts a :class:`Plugin` serving the sockets named in ``serve`` (and always its probe server)."""

    def __call__(
        self, backend: Backend, timeout_s: float = 1.0, serve: tuple[str, ...] = ("dra", "reg")
    ) -> Plugin: ...


@pytest.fixture
def make_plugin(short_tmp: Path) -> Iterator[MakePlugin]:
    started: list[Plugin] = []

    def start(backend: Backend, timeout_s: float = 1.0, serve: tuple[str, ...] = ("dra", "reg")) -> Plugin:
        plugin = Plugin(short_tmp, backend, timeout_s)
        started.append(plugin)
        if "dra" in serve:
            plugin.dra_server.start()
        if "reg" in serve:
            plugin.registrar.start()
        plugin.probe.start()
        return plugin

    yield start
    for p in started:
        p.stop()


def test_serving_when_both_sockets_answer_and_ready_once_the_kubelet_registered(
    make_plugin: MakePlugin,
) -> None:
    plugin = make_plugin(Backend())
    assert plugin.check() == "SERVING"
    assert plugin.backend.calls == 1  # the check went through the DRA service
    assert plugin.check(READINESS) == "NOT_SERVING"
    kubeletsim.register(plugin.registration)
    assert plugin.registrar.registered.wait(5)
    assert plugin.check(READINESS) == "SERVING"


def test_not_serving_without_the_registration_socket(make_plugin: MakePlugin) -> None:
    plugin = make_plugin(Backend(), serve=("dra",))
    assert plugin.check() == "NOT_SERVING"
    result = PluginChecker(plugin.registration, plugin.dra).check()
    assert not result.ok
    assert result.detail.startswith("UNAVAILABLE")


def test_not_serving_when_the_dra_service_fails(make_plugin: MakePlugin) -> None:
    plugin = make_plugin(Backend("fail"))
    assert plugin.check() == "NOT_SERVING"
    result = PluginChecker(plugin.registration, plugin.dra).check()
    assert result.detail.startswith("INTERNAL")
    assert "checkpoint unreadable" in result.detail


def test_not_serving_when_the_dra_service_hangs(make_plugin: MakePlugin) -> None:
    plugin = make_plugin(Backend("hang"), timeout_s=0.2)
    assert plugin.check() == "NOT_SERVING"
    result = PluginChecker(plugin.registration, plugin.dra, timeout_s=0.2).check()
    assert result.detail.startswith("DEADLINE_EXCEEDED")


def test_not_serving_when_registration_names_another_plugin(short_tmp: Path) -> None:
    class Impostor(registration_v1_pb2_grpc.RegistrationServicer):
        def GetInfo(
            self, request: registration_v1_pb2.InfoRequest, context: grpc.ServicerContext
        ) -> registration_v1_pb2.PluginInfo:
            return registration_v1_pb2.PluginInfo(type="DRAPlugin", name="other.example.com")

        def NotifyRegistrationStatus(
            self, request: registration_v1_pb2.RegistrationStatus, context: grpc.ServicerContext
        ) -> registration_v1_pb2.RegistrationStatusResponse:
            return registration_v1_pb2.RegistrationStatusResponse()

    reg = UnixServer(
        short_tmp / "reg.sock",
        [lambda s: registration_v1_pb2_grpc.add_RegistrationServicer_to_server(Impostor(), s)],
    )
    dra_server = UnixServer(short_tmp / "dra.sock", dra.registrars(Backend()))
    reg.start()
    dra_server.start()
    try:
        result = PluginChecker(reg.path, dra_server.path).check()
    finally:
        reg.stop(0)
        dra_server.stop(0)
    assert not result.ok
    assert "'other.example.com'" in result.detail


def test_unknown_service_is_not_found(make_plugin: MakePlugin) -> None:
    plugin = make_plugin(Backend())
    with pytest.raises(grpc.RpcError) as err:
        plugin.check("gpudra.io")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_gpudra_run_serves_probes_until_it_stops(api: FakeApiServer, short_tmp: Path) -> None:
    port = _free_port()
    plugin = PluginProcess(short_tmp, api, extra_args=["--probe-port", str(port)]).start()
    try:
        assert api.wait_for(lambda: device_names(api), timeout=20), plugin.log()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest
            serving = health_pb2.HealthCheckResponse.SERVING
            assert stub.Check(request(), timeout=10, wait_for_ready=True).status == serving
            assert stub.Check(request(service=READINESS), timeout=10).status != serving
            plugin.register()
            assert stub.Check(request(service=READINESS), timeout=10).status == serving
        assert plugin.terminate() == 0
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as err:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        if plugin.proc is not None:
            plugin.terminate()
