"""``grpc.health.v1`` on TCP, for the kubelet's gRPC liveness, readiness and startup probes.

A kubelet gRPC probe calls ``grpc.health.v1.Health/Check`` on the pod's IP and port, so this listens on
TCP. Its answer is not a flag the process sets for itself: every ``Check`` exercises the plugin the way the
kubelet does, with

1. ``GetInfo`` on the registration socket (the name must be ``gpudra.io``, the type ``DRAPlugin``), and
2. an empty ``NodePrepareResources`` (API v1) on the DRA socket (it must answer, with no claims in it),

each under a short deadline. ``SERVING`` means both answered; anything else is ``NOT_SERVING`` and the reason
is logged. Two service names are known:

- ``""`` (the overall health; liveness and startup probes): the two calls above;
- ``"readiness"``: the same, and the kubelet has confirmed our registration (``NotifyRegistrationStatus``).
  During a rolling update the old pod is stopped only once the new one is ready, so only once the kubelet
  knows it. Liveness must not wait for that: a kubelet restart would otherwise restart the plugin too.

Any other service name gets ``NOT_FOUND``, as the health protocol asks. ``Watch`` is left unimplemented:
kubelet probes never call it.

An empty prepare reads no claim and never waits on the API server: the plugin answers it by checking its own
state (the checkpoint can be locked and read; see ``Preparer.health``). It goes through the DRA server's
threads and servicer, so a wedged server or a checkpoint lock held forever fails the probe, but prepares
waiting on a slow API server do not: they hold at most ``--grpc-workers`` of the server's threads and the
rest are kept for everything else (``gpudra.kubelet.dra``). So liveness reflects the plugin's own health,
never the control plane's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpudra._proto import dra_v1_pb2, dra_v1_pb2_grpc, registration_v1_pb2, registration_v1_pb2_grpc
from gpudra.model import names

log = logging.getLogger(__name__)

#: Service names: the plugin as a whole (liveness, startup), and readiness (also registered by the kubelet).
OVERALL: Final = ""
READINESS: Final = "readiness"
#: Deadline of each of the two calls one Check makes; a Check answers within twice this.
DEFAULT_TIMEOUT_S: Final = 1.0


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    detail: str


class PluginChecker:
    """Calls the plugin over its own unix sockets, as the kubelet would.

    ``registered`` tells whether the kubelet has confirmed the registration; without it, readiness is the
    same as liveness.
    """

    def __init__(
        self,
        registration_socket: Path,
        dra_socket: Path,
        registered: Callable[[], bool] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.registration_socket = registration_socket
        self.dra_socket = dra_socket
        self.timeout_s = timeout_s
        self._registered = registered

    def check(self, service: str = OVERALL) -> CheckResult:
        try:
            problem = self._get_info() or self._empty_prepare()
        except grpc.RpcError as e:
            return CheckResult(False, _rpc_error_text(e))
        if not problem and service == READINESS and self._registered is not None and not self._registered():
            problem = "the kubelet has not confirmed the plugin's registration yet"
        if problem:
            return CheckResult(False, problem)
        return CheckResult(True, "registration and DRA service answer")

    def _get_info(self) -> str | None:
        with grpc.insecure_channel(f"unix://{self.registration_socket}") as channel:
            stub = registration_v1_pb2_grpc.RegistrationStub(channel)
            info = stub.GetInfo(registration_v1_pb2.InfoRequest(), timeout=self.timeout_s)
        if info.name != names.DRIVER_NAME or info.type != "DRAPlugin":
            return f"registration GetInfo answered name {info.name!r}, type {info.type!r}"
        return None

    def _empty_prepare(self) -> str | None:
        with grpc.insecure_channel(f"unix://{self.dra_socket}") as channel:
            stub = dra_v1_pb2_grpc.DRAPluginStub(channel)
            response = stub.NodePrepareResources(
                dra_v1_pb2.NodePrepareResourcesRequest(), timeout=self.timeout_s
            )
        if len(response.claims) != 0:
            return f"empty NodePrepareResources answered {len(response.claims)} claim(s)"
        return None


def _rpc_error_text(e: grpc.RpcError) -> str:
    """``<CODE>: <details>`` of a failed call (the RpcError a stub raises is also a grpc.Call)."""
    code = e.code() if isinstance(e, grpc.Call) else None
    details = e.details() if isinstance(e, grpc.Call) else str(e)
    return f"{code.name if code is not None else 'UNKNOWN'}: {details}"


class _HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]  # untyped generated base
    def __init__(self, checker: PluginChecker) -> None:
        self._checker = checker
        self._last_ok: bool | None = None

    def Check(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.service not in (OVERALL, READINESS):
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        result = self._checker.check(request.service)
        if not result.ok:
            log.warning("health check (%s) failed: %s", request.service or "overall", result.detail)
        elif self._last_ok is False:
            log.info("health check passes again")
        self._last_ok = result.ok
        response = health_pb2.HealthCheckResponse
        return response(status=response.SERVING if result.ok else response.NOT_SERVING)


class ProbeServer:
    """The health server on ``host:port`` (port 0: any free port; :attr:`port` tells which after start)."""

    def __init__(self, port: int, checker: PluginChecker, host: str = "[::]", max_workers: int = 2) -> None:
        self._requested = port
        self._host = host
        self._checker = checker
        self._max_workers = max_workers
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self) -> int:
        # No SO_REUSEPORT (gRPC's default): a second process must not share, or steal, the probe port.
        pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="probe")
        server = grpc.server(pool, options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(_HealthServicer(self._checker), server)
        port = server.add_insecure_port(f"{self._host}:{self._requested}")
        if port == 0:
            raise OSError(f"cannot listen for health probes on {self._host}:{self._requested}")
        server.start()
        self._server, self.port = server, port
        log.info("serving grpc.health.v1 probes on port %d", port)
        return port

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop(0)
