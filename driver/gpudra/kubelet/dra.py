"""The DRAPlugin service in its v1 and v1beta1 versions: decode, call the Preparer, encode.

Both versions carry identical messages under different proto packages; one implementation serves both.
The gRPC error translation lives here: per-claim failures travel in the response's ``error`` field, and an
unexpected exception fails only the call (INTERNAL with a message), never the server.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol, TypeVar

import grpc

from gpudra._proto import dra_v1_pb2, dra_v1_pb2_grpc, dra_v1beta1_pb2, dra_v1beta1_pb2_grpc
from gpudra.planning.devicemeta import top_request
from gpudra.planning.plan import ClaimRef
from gpudra.state.prepare import ClaimResult

log = logging.getLogger(__name__)

R = TypeVar("R")


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


def _refs(request: Any) -> list[ClaimRef]:
    return [ClaimRef(namespace=c.namespace, name=c.name, uid=c.uid) for c in request.claims]


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


class _Servicer:
    """Shared implementation; ``pb`` is the generated message module of one API version."""

    def __init__(self, backend: PrepareBackend, pb: ModuleType, metrics: Metrics) -> None:
        self._backend = backend
        self._pb = pb
        self._metrics = metrics

    def NodePrepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        # An empty call is the health probe exercising the service: served in full, but not counted.
        metrics = self._metrics if request.claims else _NULL_METRICS
        return _guard("NodePrepareResources", context, metrics, lambda: self._prepare(request, metrics))

    def NodeUnprepareResources(self, request: Any, context: grpc.ServicerContext) -> Any:
        return _guard("NodeUnprepareResources", context, self._metrics, lambda: self._unprepare(request))

    def _prepare(self, request: Any, metrics: Metrics) -> Any:
        pb = self._pb
        results = self._backend.prepare(_refs(request))
        failed = [r for r in results.values() if r.error is not None]
        metrics.claims("NodePrepareResources", len(results) - len(failed), len(failed))
        for r in failed:
            metrics.claim_error("NodePrepareResources", r.error_kind or "other")
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
        results = self._backend.unprepare(_refs(request))
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


class _V1(dra_v1_pb2_grpc.DRAPluginServicer):
    def __init__(self, impl: _Servicer) -> None:
        self._impl = impl

    def NodePrepareResources(
        self, request: dra_v1_pb2.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1_pb2.NodePrepareResourcesResponse:
        response: dra_v1_pb2.NodePrepareResourcesResponse = self._impl.NodePrepareResources(request, context)
        return response

    def NodeUnprepareResources(
        self, request: dra_v1_pb2.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1_pb2.NodeUnprepareResourcesResponse:
        response: dra_v1_pb2.NodeUnprepareResourcesResponse = self._impl.NodeUnprepareResources(
            request, context
        )
        return response


class _V1beta1(dra_v1beta1_pb2_grpc.DRAPluginServicer):
    def __init__(self, impl: _Servicer) -> None:
        self._impl = impl

    def NodePrepareResources(
        self, request: dra_v1beta1_pb2.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1beta1_pb2.NodePrepareResourcesResponse:
        response: dra_v1beta1_pb2.NodePrepareResourcesResponse = self._impl.NodePrepareResources(
            request, context
        )
        return response

    def NodeUnprepareResources(
        self, request: dra_v1beta1_pb2.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1beta1_pb2.NodeUnprepareResourcesResponse:
        response: dra_v1beta1_pb2.NodeUnprepareResourcesResponse = self._impl.NodeUnprepareResources(
            request, context
        )
        return response


def registrars(
    backend: PrepareBackend, metrics: Metrics | None = None
) -> list[Callable[[grpc.Server], None]]:
    """Add the v1 and v1beta1 DRAPlugin services to a server."""
    m = metrics or NullMetrics()
    v1 = _V1(_Servicer(backend, dra_v1_pb2, m))
    v1beta1 = _V1beta1(_Servicer(backend, dra_v1beta1_pb2, m))
    return [
        lambda s: dra_v1_pb2_grpc.add_DRAPluginServicer_to_server(v1, s),
        lambda s: dra_v1beta1_pb2_grpc.add_DRAPluginServicer_to_server(v1beta1, s),
    ]
