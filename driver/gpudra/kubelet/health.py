"""The kubelet's device-health stream (KEP-4680): ``NodeWatchResources`` in dra-health v1 and v1alpha1.

The kubelet keeps one never-ending stream open per plugin and shows what it last heard about a device in the
``allocatedResourcesStatus`` of the pods using it. Each message here is a snapshot of every published device
of the node's pool (the pool is named after the node): HEALTHY, UNHEALTHY or UNKNOWN as the node state's
health says (a device without health is Unknown, never Healthy unchecked), with the message of its conditions.

When to send: at once when a stream opens; whenever the node state changes what would be sent (a device's
state or message, or the set of published devices); and again, unchanged, at least every
``timeout_s / 3`` seconds. Every device carries ``health_check_timeout_seconds = timeout_s``, the promise
those resends keep: the kubelet turns a device Unknown only when a plugin stays silent longer than that.

Threads: the streams share the DRA server, and each open stream holds one of its threads for as long as it
lasts. At most ``max_streams`` are open at once, and the server runs :attr:`HealthStreams.threads` threads
more than the DRA service needs, so streams never take a thread that prepare or unprepare would use. A
stream beyond the limit is refused with RESOURCE_EXHAUSTED. A stream ends when its client cancels or goes
away (its thread is released at once) and, cleanly (status OK), when :meth:`HealthStreams.stop` is called:
call it before stopping the server, which would otherwise wait its whole grace period for the streams.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final

import grpc

from gpudra._proto import dra_health_v1_pb2, dra_health_v1alpha1_pb2
from gpudra.kubelet.sockets import Registrar
from gpudra.model.health import HealthState
from gpudra.state.node import NodeState, NodeStateStore

log = logging.getLogger(__name__)

#: (version, gRPC service, generated messages). For the health API the name the plugin advertises at
#: registration is the gRPC service name itself. The kubelet prefers v1 (1.37+); 1.34-1.36 know v1alpha1.
_SERVICES: Final = (
    ("v1", "v1.DRAResourceHealth", dra_health_v1_pb2),
    ("v1alpha1", "v1alpha1.DRAResourceHealth", dra_health_v1alpha1_pb2),
)
#: What registration advertises for the services registered by :meth:`HealthStreams.registrars`.
ADVERTISED: Final = tuple(service for _, service, _ in _SERVICES)
#: Streams open at once: the kubelet holds one; the others cover a reconnect overlapping a stream whose
#: end the server has not seen yet, and a tool watching beside the kubelet.
MAX_STREAMS: Final = 4
#: The health_check_timeout_seconds sent with every device (the kubelet's own default is 30 s).
TIMEOUT_S: Final = 30
#: The kubelet keeps at most this much of a message (and cuts the rest the same way).
MESSAGE_MAX: Final = 1024

_STATUS_NAMES: Final = {
    HealthState.HEALTHY: "HEALTHY",
    HealthState.UNHEALTHY: "UNHEALTHY",
    HealthState.UNKNOWN: "UNKNOWN",
}


@dataclass(frozen=True, slots=True)
class _Entry:
    """What one device's line of a message says, apart from the time it is sent."""

    device: str
    state: HealthState
    message: str
    since: float | None  # None: "now" whenever sent (Unknown, or a state with no time of its own)


_Snapshot = tuple[_Entry, ...]


def _clip(message: str) -> str:
    return message if len(message) <= MESSAGE_MAX else message[: MESSAGE_MAX - 3] + "..."


def _snapshot(state: NodeState) -> _Snapshot:
    entries = []
    for name in state.offer.devices:
        health = state.health_of(name)
        known = health.state is not HealthState.UNKNOWN and health.since > 0
        entries.append(_Entry(name, health.state, _clip(health.message), health.since if known else None))
    return tuple(entries)


def _encode(pb: ModuleType, pool: str, snapshot: _Snapshot, timeout_s: int, now: float) -> Any:
    return pb.NodeWatchResourcesResponse(
        devices=[
            pb.DeviceHealth(
                device=pb.DeviceIdentifier(pool_name=pool, device_name=e.device),
                health=pb.HealthStatus.Value(_STATUS_NAMES[e.state]),
                last_updated_time=int(e.since if e.since is not None else now),
                health_check_timeout_seconds=timeout_s,
                message=e.message,
            )
            for e in snapshot
        ]
    )


class HealthStreams:
    """The device-health service of one plugin: both API versions, the stream limit, and the stop.

    ``pool`` is the pool the devices are published in (the node name). ``resend_s`` (default
    ``timeout_s / 3``, never more) is the period of unchanged resends; ``clock`` gives Unix time.
    Stopping is final: a server started again with these registrars ends every new stream at once.
    """

    def __init__(
        self,
        store: NodeStateStore,
        pool: str,
        *,
        max_streams: int = MAX_STREAMS,
        timeout_s: int = TIMEOUT_S,
        resend_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        resend = timeout_s / 3 if resend_s is None else resend_s
        if max_streams < 1 or timeout_s < 1 or not 0 < resend <= timeout_s / 3:
            raise ValueError(
                f"health streams need max_streams >= 1, timeout_s >= 1 and 0 < resend_s <= timeout_s / 3 "
                f"(got {max_streams}, {timeout_s}, {resend})"
            )
        self._store = store
        self._pool = pool
        self._max = max_streams
        self._timeout_s = timeout_s
        self._resend_s = resend
        self._clock = clock
        self._lock = threading.Lock()
        self._open: set[threading.Event] = set()
        self._stopped = False

    @property
    def services(self) -> tuple[str, ...]:
        """The names registration advertises for what :meth:`registrars` serves."""
        return ADVERTISED

    @property
    def threads(self) -> int:
        """Server threads to add for the streams (one per stream that may be open)."""
        return self._max

    @property
    def open_streams(self) -> int:
        with self._lock:
            return len(self._open)

    def registrars(self) -> list[Registrar]:
        """Add both versions of the service to a server (one whose pool has :attr:`threads` to spare)."""
        return [self._registrar(version, service, pb) for version, service, pb in _SERVICES]

    def stop(self) -> None:
        """End every open stream cleanly (the kubelet reads the end of the stream) and every later one."""
        with self._lock:
            self._stopped = True
            ended = list(self._open)
        for event in ended:
            event.set()
        self._store.wake()

    def _registrar(self, version: str, service: str, pb: ModuleType) -> Registrar:
        def watch(request: bytes, context: grpc.ServicerContext) -> Iterator[Any]:
            return self._watch(version, pb, context)

        handlers = {
            "NodeWatchResources": grpc.unary_stream_rpc_method_handler(
                watch,  # the request has no fields: its bytes are not even decoded
                response_serializer=pb.NodeWatchResourcesResponse.SerializeToString,
            )
        }

        def register(server: grpc.Server) -> None:
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
            server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]

        return register

    def _admit(self, ended: threading.Event) -> str | None:
        """Take a stream slot: None when taken, else why not ("stopped" or "full")."""
        with self._lock:
            if self._stopped:
                return "stopped"
            if len(self._open) >= self._max:
                return "full"
            self._open.add(ended)
            return None

    def _leave(self, ended: threading.Event) -> None:
        with self._lock:
            self._open.discard(ended)

    def _watch(self, version: str, pb: ModuleType, context: grpc.ServicerContext) -> Iterator[Any]:
        ended = threading.Event()
        refused = self._admit(ended)
        if refused == "stopped":
            return  # the plugin is stopping: an empty stream, ended cleanly
        if refused is not None:
            log.warning("refused a device health stream (%s): %d already open", version, self._max)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"at most {self._max} health streams at once")

        def on_end() -> None:  # the client cancelled or went away, or the server stops
            self._leave(ended)
            ended.set()
            self._store.wake()

        if not context.add_callback(on_end):
            self._leave(ended)
            return
        log.info("device health stream opened (%s)", version)
        try:
            yield from self._updates(pb, ended)
        finally:
            self._leave(ended)
            log.info("device health stream ended (%s)", version)

    def _updates(self, pb: ModuleType, ended: threading.Event) -> Iterator[Any]:
        state = self._store.current
        sent: _Snapshot | None = None
        due = 0.0
        while not ended.is_set():
            snapshot = _snapshot(state)
            if snapshot != sent or time.monotonic() >= due:
                yield _encode(pb, self._pool, snapshot, self._timeout_s, self._clock())
                sent, due = snapshot, time.monotonic() + self._resend_s
            newer = self._store.wait_newer(state.version, max(0.0, due - time.monotonic()), ended)
            if newer is not None:
                state = newer
