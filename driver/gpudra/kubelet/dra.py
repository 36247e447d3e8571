"""The DRAPlugin service in its v1 and v1beta1 versions: decode, call the Preparer, encode.

Both versions carry identical messages under different proto packages; one implementation serves both.
The gRPC error translation lives here: per-claim failures travel in the response's ``error`` field, a body
that is not a request is refused with INVALID_ARGUMENT and one warning line, and an unexpected exception
fails only the call (INTERNAL with a message), never the server.

Concurrency: the server runs :func:`server_threads` threads, but at most ``prepare_slots`` prepares that
name claims run at once (they read claims from the API server and hold the GIL for their CPU work). The
other threads are a reserve, so that a slow or unreachable API server, which keeps every slot waiting,
never holds back an unprepare, a health probe's empty prepare, or a prepare answered without the API.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, Final, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError

from gpudra._proto import dra_v1_pb2, dra_v1beta1_pb2
from gpudra.kubelet.claimrefs import check_refs
from gpudra.planning.devicemeta import top_request
from gpudra.planning.plan import ClaimRef
from gpudra.state.prepare import ClaimResult

log = logging.getLogger(__name__)

R = TypeVar("R")
#: Threads beyond the prepare slots: unprepares, probes and prepares that need no slot.
RESERVE_THREADS: Final = 16
_SERVICES: Final = (
    ("k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin", dra_v1_pb2),
    ("k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin", dra_v1beta1_pb2),
)


class Metrics(Protocol):
    """What the DRA service reports (:class:`gpudra.runtime.metrics.Metrics` is one)."""

    def call(self, method: str, seconds: float, ok: bool) -> None: ...
    def claims(self, method: str, succeeded: int, failed: int) -> None: ...
    def claim_error(self, method: str, kind: str) -> None: ...


class NullMetrics:
    def call(self, method: str, seconds: float, ok: bool) -> None:
        return None

    def claims(self, method: str, succeeded: int, failed: int) -> None:
        return None

    def claim_error(self, method: str, kind: str) -> None:
        return None


_NULL_METRICS = NullMetrics()


class PrepareBackend(Protocol):
    def prepare(self, refs: list[ClaimRef]) -> dict[str, ClaimResult]: ...
    def unprepare(self, refs: list[ClaimRef]) -> dict[str, str | None]: ...
    def health(self) -> None:
        """Raise when the plugin's own state cannot serve (its checkpoint unreadable); hang when it is
        wedged (a lock never released). Never waits on the API server."""
        ...


def server_threads(prepare_slots: int) -> int:
    """The DRA server's thread count for ``prepare_slots`` prepares at once."""
    return prepare_slots + RESERVE_THREADS


class _Undecodable:
    """What a body that is not a request decodes to (gRPC would log a traceback for an exception)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _decoder(message: Any) -> Callable[[bytes], Any]:
    def decode(data: bytes) -> Any:
        try:
            return message.FromString(data)
        except DecodeError as e:
            return _Undecodable(str(e))

    return decode


def _guard(method: str, context: grpc.ServicerContext, metrics: Metrics, fn: Callable[[], R]) -> R:
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as e:
        metrics.call(method, time.perf_counter() - start, ok=False)
        log.exception("%s failed unexpectedly", method)
        context.abort(grpc.StatusCode.INTERNAL, f"{method}: internal error: {type(e).__name__}: {e}")
        raise  # abort() raises; this line only satisfies the type checker
    metrics.call(method, time.perf_counter() - start, ok=True)
    return result


def _refuse_undecodable(method: str, request: Any, context: grpc.ServicerContext) -> None:
    if isinstance(request, _Undecodable):
        log.warning("%s: refused a body that is not a request (%s)", method, request.reason)
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: cannot decode the request")


class _Servicer:
    """One API version; ``pb`` is its generated message module."""

    def __init__(
        self, backend: PrepareBackend, pb: ModuleType, metrics: Metrics, slots: threading.Semaphore
    ) -> None:
        self._backend = backend
        self._pb = pb
        self._metrics = metrics
        self._slots = slots

    def NodePrepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        _refuse_undecodable("NodePrepareResources", request, context)
        if not request.claims:  # the health probe: the plugin's own state, no slot, not counted
            return _guard("NodePrepareResources", context, _NULL_METRICS, self._health)
        return _guard("NodePrepareResources", context, self._metrics, lambda: self._prepare(request))

    def NodeUnprepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        _refuse_undecodable("NodeUnprepareResources", request, context)
        return _guard("NodeUnprepareResources", context, self._metrics, lambda: self._unprepare(request))

    def _health(self) -> Any:
        self._backend.health()
        return self._pb.NodePrepareResourcesResponse()

    def _prepare(self, request: Any) -> Any:
        checked = check_refs(request.claims)
        results: dict[str, ClaimResult] = {
            uid: ClaimResult(error=why, error_kind="invalid") for uid, why in checked.errors.items()
        }
        if checked.refs:
            with self._slots:
                results.update(self._backend.prepare(checked.refs))
        self._count_prepared(results)
        return self._encode_prepared(results)

    def _count_prepared(self, results: dict[str, ClaimResult]) -> None:
        failed = [r for r in results.values() if r.error is not None]
        self._metrics.claims("NodePrepareResources", len(results) - len(failed), len(failed))
        for r in failed:
            self._metrics.claim_error("NodePrepareResources", r.error_kind or "other")

    def _encode_prepared(self, results: dict[str, ClaimResult]) -> Any:
        pb = self._pb
        response = pb.NodePrepareResourcesResponse()
        for uid, result in results.items():
            entry = response.claims[uid]
            if result.error is not None:
                entry.error = result.error
                continue
            for d in result.devices:
                entry.devices.append(
                    pb.Device(
                        # The kubelet hands a device to the containers whose resources.claims[].request
                        # equals one of these names, exactly; containers name the top-level request, never
                        # the "req/sub" a prioritized list is allocated as.
                        request_names=[top_request(d.request)],
                        pool_name=d.pool,
                        device_name=d.device,
                        cdi_device_ids=list(d.cdi_device_ids),
                        **({"share_id": d.share_id} if d.share_id else {}),
                    )
                )
        return response

    def _unprepare(self, request: Any) -> Any:
        checked = check_refs(request.claims)
        results: dict[str, str | None] = dict(checked.errors)
        if checked.refs:
            results.update(self._backend.unprepare(checked.refs))
        failed = sum(1 for e in results.values() if e)
        self._metrics.claims("NodeUnprepareResources", len(results) - failed, failed)
        for _ in range(failed):
            self._metrics.claim_error("NodeUnprepareResources", "io")
        response = self._pb.NodeUnprepareResourcesResponse()
        for uid, error in results.items():
            entry = response.claims[uid]
            if error:
                entry.error = error
        return response


def _add(server: grpc.Server, service: str, pb: ModuleType, servicer: _Servicer) -> None:
    handlers = {
        "NodePrepareResources": grpc.unary_unary_rpc_method_handler(
            servicer.NodePrepareResources,
            request_deserializer=_decoder(pb.NodePrepareResourcesRequest),
            response_serializer=pb.NodePrepareResourcesResponse.SerializeToString,
        ),
        "NodeUnprepareResources": grpc.unary_unary_rpc_method_handler(
            servicer.NodeUnprepareResources,
            request_deserializer=_decoder(pb.NodeUnprepareResourcesRequest),
            response_serializer=pb.NodeUnprepareResourcesResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    # gRPC's faster method lookup, as the generated code registers it (grpc-stubs does not know it yet)
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]


def registrars(
    backend: PrepareBackend, metrics: Metrics | None = None, prepare_slots: int = 4
) -> list[Callable[[grpc.Server], None]]:
    """Add the v1 and v1beta1 DRAPlugin services to a server (run it with :func:`server_threads`)."""
    m = metrics or NullMetrics()
    slots = threading.BoundedSemaphore(prepare_slots)  # shared by both versions
    def registrar(service: str, pb: ModuleType) -> Callable[[grpc.Server], None]:
        return lambda server: _add(server, service, pb, _Servicer(backend, pb, m, slots))

    return [registrar(service, pb) for service, pb in _SERVICES]
