"""The device-health stream (KEP-4680) in both versions, over real gRPC on real unix sockets.

The plugin side is the real one: a node state from a mock DGX H100, the health streams and the DRA service
on one :class:`UnixServer`, the registration socket. The kubelet side is the stand-in's stream client.
Periods are shortened through the constructor; the only time limits are generous timeouts on waits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from gpudra.devtools import kubeletsim
from gpudra.devtools.kubeletsim import DeviceHealthReport, HealthStream, HealthStreamEnded, HealthVersion
from gpudra.kubelet import dra
from gpudra.kubelet.health import HealthStreams
from gpudra.kubelet.registration import KNOWN_SERVICES, SUPPORTED_VERSIONS, Registrar
from gpudra.kubelet.sockets import UnixServer
from gpudra.model.health import Condition, ConditionKind, DeviceHealth, Effect, HealthState
from gpudra.planning.offer import Offer, plan_offer
from gpudra.planning.plan import ClaimRef
from gpudra.state.node import NodeStateStore
from gpudra.state.prepare import ClaimResult
from gpudra.vendors.select import open_driver

NODE = "node-a"
NOW = 1_800_000_000.0  # the plugin's clock in these tests
WAIT = 10.0  # generous: a message that does not come within this is missing
VERSIONS: list[HealthVersion] = ["v1", "v1alpha1"]
UID = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"


@pytest.fixture(scope="module")
def offer() -> Offer:
    return plan_offer(open_driver("mock", "dgx-h100", Path("/sys")).discover())


class _Backend:
    """A DRA backend that answers at once: the streams must never hold these answers back."""

    def prepare(self, refs: list[ClaimRef]) -> dict[str, ClaimResult]:
        return {}

    def unprepare(self, refs: list[ClaimRef]) -> dict[str, str | None]:
        return {r.uid: None for r in refs}

    def health(self) -> None:
        return None


@dataclass
class Plugin:
    store: NodeStateStore
    streams: HealthStreams
    server: UnixServer
    opened: list[HealthStream] = field(default_factory=list)

    @property
    def socket(self) -> Path:
        return self.server.path

    def watch(self, version: HealthVersion) -> HealthStream:
        stream = HealthStream(self.socket, version)
        self.opened.append(stream)
        return stream

    def wait_open(self, count: int) -> None:
        deadline = time.monotonic() + WAIT
        while self.streams.open_streams != count:
            assert time.monotonic() < deadline, f"{self.streams.open_streams} streams open, not {count}"
            time.sleep(0.01)


Serve = Callable[..., Plugin]


@pytest.fixture
def serve(tmp_path: Path, offer: Offer) -> Iterator[Serve]:
    """Start a plugin; keyword arguments go to :class:`HealthStreams` (health=False: no health service)."""
    plugins: list[Plugin] = []

    def start(health: bool = True, **kwargs: Any) -> Plugin:
        store = NodeStateStore(offer)
        streams = HealthStreams(store, NODE, clock=lambda: NOW, **kwargs)
        registrars = dra.registrars(_Backend(), prepare_slots=1)
        registrars += streams.registrars() if health else []
        server = UnixServer(
            tmp_path / f"dra-{len(plugins)}.sock", registrars, dra.server_threads(1) + streams.threads
        )
        server.start()
        plugins.append(Plugin(store, streams, server))
        return plugins[-1]

    yield start
    for plugin in plugins:
        for stream in plugin.opened:
            stream.cancel()
        plugin.streams.stop()
        plugin.server.stop(None)


def _names(offer: Offer) -> list[str]:
    return list(offer.devices)


def _xid(since: float) -> DeviceHealth:
    condition = Condition(ConditionKind.XID, "79", Effect.NO_EXECUTE, "Xid 79: GPU has fallen off the bus",
                          since=since, last_seen=since)  # fmt: skip
    return DeviceHealth(HealthState.UNHEALTHY, (condition,), since=since)


def _by_device(message: tuple[DeviceHealthReport, ...]) -> dict[str, DeviceHealthReport]:
    return {r.device: r for r in message}


# ---- what is sent ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_the_first_message_lists_every_published_device_as_unknown(
    serve: Serve, offer: Offer, version: HealthVersion
) -> None:
    plugin = serve(timeout_s=300)
    first = plugin.watch(version).next(WAIT)
    assert len(offer.devices) == 8
    assert first == tuple(
        DeviceHealthReport(NODE, name, "UNKNOWN", int(NOW), 300, "not monitored") for name in _names(offer)
    )


@pytest.mark.parametrize("version", VERSIONS)
def test_a_health_change_is_the_next_message(serve: Serve, offer: Offer, version: HealthVersion) -> None:
    plugin = serve(timeout_s=300)  # resends every 100 s: none comes between the messages read here
    sick, well, *rest = _names(offer)
    stream = plugin.watch(version)
    stream.next(WAIT)
    plugin.store.set_health({sick: _xid(NOW - 60), well: DeviceHealth(HealthState.HEALTHY, since=NOW - 3600)})
    got = _by_device(stream.next(WAIT))
    assert got[sick] == DeviceHealthReport(
        NODE, sick, "UNHEALTHY", int(NOW - 60), 300, "Xid 79: GPU has fallen off the bus"
    )
    assert got[well] == DeviceHealthReport(NODE, well, "HEALTHY", int(NOW - 3600), 300, "")
    assert {got[name].health for name in rest} == {"UNKNOWN"}
    assert list(got) == _names(offer)

    plugin.store.set_health({well: DeviceHealth(HealthState.HEALTHY, since=NOW - 3600)})  # the Xid cleared
    got = _by_device(stream.next(WAIT))
    assert (got[sick].health, got[sick].message, got[well].health) == ("UNKNOWN", "not monitored", "HEALTHY")


def test_a_node_state_change_that_changes_nothing_sent_sends_nothing(serve: Serve, offer: Offer) -> None:
    plugin = serve(timeout_s=300)
    first = _names(offer)[0]
    stream = plugin.watch("v1")
    stream.next(WAIT)
    # A new version of the node state, but for a device that is not published: the message would not change.
    assert plugin.store.set_health({"gpu-not-published": _xid(NOW)}) is not None
    plugin.store.set_health({"gpu-not-published": _xid(NOW), first: _xid(NOW)})
    assert _by_device(stream.next(WAIT))[first].health == "UNHEALTHY"  # the next message is the real change


def test_long_messages_are_cut_as_the_kubelet_cuts_them(serve: Serve, offer: Offer) -> None:
    plugin = serve(timeout_s=300)
    first = _names(offer)[0]
    condition = Condition(
        ConditionKind.THERMAL, "hot", Effect.NO_SCHEDULE, "x" * 2000, since=NOW, last_seen=NOW
    )
    plugin.store.set_health({first: DeviceHealth(HealthState.UNHEALTHY, (condition,), since=NOW)})
    message = _by_device(plugin.watch("v1").next(WAIT))[first].message
    assert (len(message), message[-4:]) == (1024, "x...")


@pytest.mark.parametrize("version", VERSIONS)
def test_an_unchanged_state_is_sent_again_within_the_period(serve: Serve, version: HealthVersion) -> None:
    plugin = serve(timeout_s=30, resend_s=0.2)
    stream = plugin.watch(version)
    first = stream.next(WAIT)
    assert stream.next(WAIT) == first  # nothing changed: the same snapshot, sent again
    assert stream.next(WAIT) == first
    assert {r.timeout_s for r in first} == {30}


def test_the_resend_period_cannot_exceed_a_third_of_the_promised_timeout(offer: Offer) -> None:
    store = NodeStateStore(offer)
    with pytest.raises(ValueError, match="resend_s"):
        HealthStreams(store, NODE, timeout_s=30, resend_s=10.5)
    with pytest.raises(ValueError, match="max_streams"):
        HealthStreams(store, NODE, max_streams=0)
    assert HealthStreams(store, NODE, max_streams=3).threads == 3


# ---- slots, threads and the end of a stream ----------------------------------------------------------------


def test_cancelling_a_stream_frees_its_slot(serve: Serve) -> None:
    plugin = serve(max_streams=2)
    first, second = plugin.watch("v1"), plugin.watch("v1alpha1")
    first.next(WAIT)
    second.next(WAIT)
    plugin.wait_open(2)
    with pytest.raises(HealthStreamEnded) as refused:
        plugin.watch("v1").next(WAIT)
    assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    first.cancel()
    plugin.wait_open(1)
    assert len(plugin.watch("v1").next(WAIT)) == 8


def test_extra_streams_are_refused_while_prepare_and_unprepare_answer(serve: Serve) -> None:
    plugin = serve(max_streams=2, resend_s=0.1)
    held = [plugin.watch(v) for v in VERSIONS]
    for stream in held:
        stream.next(WAIT)
    # More streams than the DRA server has threads in all: without the limit they would take every one.
    extra = [plugin.watch("v1") for _ in range(dra.server_threads(1) + 4)]
    for stream in extra:
        with pytest.raises(HealthStreamEnded) as refused:
            stream.next(WAIT)
        assert refused.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    claim = kubeletsim.Claim("default", "c", UID)
    for version in ("v1", "v1beta1"):
        with kubeletsim.DraClient(plugin.socket, version) as client:
            assert dict(client.prepare([], timeout_s=WAIT).claims) == {}
            assert list(client.unprepare([claim], timeout_s=WAIT).claims) == [UID]
    assert plugin.streams.open_streams == 2
    assert [len(s.next(WAIT)) for s in held] == [8, 8]  # the held streams go on


def test_stop_ends_every_stream_cleanly_and_the_server_stops_at_once(serve: Serve) -> None:
    plugin = serve()
    streams = [plugin.watch(v) for v in VERSIONS]
    for stream in streams:
        stream.next(WAIT)
    plugin.streams.stop()
    for stream in streams:
        with pytest.raises(HealthStreamEnded) as ended:
            stream.next(WAIT)
        assert ended.value.code is grpc.StatusCode.OK
    with pytest.raises(HealthStreamEnded) as late:  # a stream opened while stopping ends at once, cleanly
        plugin.watch("v1").next(WAIT)
    assert late.value.code is grpc.StatusCode.OK
    stopper = threading.Thread(target=plugin.server.stop, args=(600.0,))  # far beyond WAIT
    stopper.start()
    stopper.join(WAIT)
    assert not stopper.is_alive(), "the server waited for a stream"
    assert plugin.streams.open_streams == 0


def test_a_server_stopped_without_a_grace_period_ends_the_streams(serve: Serve) -> None:
    plugin = serve()
    stream = plugin.watch("v1")
    stream.next(WAIT)
    plugin.server.stop(None)
    with pytest.raises(HealthStreamEnded) as ended:
        stream.next(WAIT)
    assert ended.value.code is not grpc.StatusCode.OK
    plugin.wait_open(0)  # the stream's slot (and thread) is free


# ---- registration ------------------------------------------------------------------------------------------


def _serves(socket: Path, advertised: str) -> bool:
    """Whether the DRA socket answers the gRPC service behind an advertised name (not UNIMPLEMENTED)."""
    service = KNOWN_SERVICES[advertised]
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        try:
            if service.endswith(".DRAPlugin"):
                channel.unary_unary(f"/{service}/NodePrepareResources", None, None)(b"", timeout=WAIT)
            else:
                call = channel.unary_stream(f"/{service}/NodeWatchResources", None, None)(b"", timeout=WAIT)
                try:
                    next(iter(call))
                finally:
                    call.cancel()  # type: ignore[no-untyped-call]
        except grpc.RpcError as e:
            if e.code() is grpc.StatusCode.UNIMPLEMENTED:
                return False
            raise
    return True


@pytest.mark.parametrize("health", [True, False], ids=["with-health", "without-health"])
def test_registration_advertises_exactly_the_served_services(
    serve: Serve, tmp_path: Path, health: bool
) -> None:
    plugin = serve(health=health)
    versions = (*SUPPORTED_VERSIONS, *(plugin.streams.services if health else ()))
    registrar = Registrar(tmp_path / "reg.sock", plugin.socket, versions=versions)
    registrar.start()
    try:
        info = kubeletsim.register(registrar.path)
    finally:
        registrar.stop()
    advertised = set(info.supported_versions)
    assert advertised == set(versions)
    assert {name for name in KNOWN_SERVICES if _serves(plugin.socket, name)} == advertised
    assert kubeletsim.health_version(info) == ("v1" if health else None)


def test_registration_refuses_a_service_it_does_not_know(tmp_path: Path) -> None:
    for versions in (
        ["v1.DRAPlugin", "v1beta1.DRAResourceHealth"],
        ["v1.DRAResourceHealth"],
        ["v1.DRAPlugin"] * 2,
    ):
        with pytest.raises(ValueError, match="advertised services"):
            Registrar(tmp_path / "reg.sock", tmp_path / "dra.sock", versions=versions)
