"""The one module that knows the Kubernetes client (lightkube) and translates its errors.

Objects travel as raw JSON dicts (see :mod:`gpudra.model.k8stypes`): lightkube's *generic* resources are plain
dicts, so nothing is deserialised into models on the hot path and fields newer than this code pass through.
Every lightkube / httpx2 failure leaves this module as a :class:`KubeError`.

The ResourceClaim GET of every NodePrepareResources call goes over :mod:`gpudra.kube.http` (keep-alive
stdlib connections, one per thread) instead, when that transport can authenticate like lightkube; its
replies and failures are translated here too, into the same :class:`KubeError` shapes: one line each,
whatever answered (:mod:`gpudra.kube.errors`). The ResourceSlice watch is one HTTP stream with the bounds
of :mod:`gpudra.kube.watch` (server timeout, read timeout, TCP keepalive).
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx2
from lightkube import Client, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import Cluster
from lightkube.core.selector import build_selector
from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from gpudra.kube import errors
from gpudra.kube import http as kube_http
from gpudra.kube import watch as kube_watch
from gpudra.kube.errors import KubeError
from gpudra.kube.watch import ApiTimeouts
from gpudra.model import names
from gpudra.model.k8stypes import ResourceClaim, ResourceSlice

__all__ = ["ApiTimeouts", "KubeClient", "KubeError", "WatchEvent", "load_config"]  # KubeError: catch it here

log = logging.getLogger(__name__)

_SliceRes = create_global_resource("resource.k8s.io", "v1", "ResourceSlice", "resourceslices")
_ClaimRes = create_namespaced_resource("resource.k8s.io", "v1", "ResourceClaim", "resourceclaims")
_NodeRes = create_global_resource("", "v1", "Node", "nodes")
_EventRes = create_namespaced_resource("", "v1", "Event", "events")
_PodRes = create_namespaced_resource("", "v1", "Pod", "pods")

T = TypeVar("T")


def _translate(op: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except Exception as e:
        error = errors.from_client(op, e)
        if error is None:  # not an API failure: a bug, raised as it is
            raise
        raise error from e


def _get_json(getter: kube_http.JsonGetter, op: str, path: str) -> dict[str, Any]:
    try:
        reply = getter.get(path)
    except (OSError, http.client.HTTPException) as e:
        raise KubeError(f"{op}: {type(e).__name__}: {errors.one_line(str(e)) or 'no detail'}") from e
    if not 200 <= reply.status < 300:
        raise errors.answer_error(op, reply.status, reply.reason, reply.content_type, reply.body)
    try:
        obj = json.loads(reply.body)
    except ValueError as e:
        raise errors.undecodable(op, f"not JSON: {e}", reply.body) from e
    if not isinstance(obj, dict):
        raise errors.undecodable(op, "not a JSON object", reply.body)
    return obj


def _lightkube_config(config: SingleConfig) -> SingleConfig:
    """``config`` for the lightkube client. For an http:// server no TLS is ever used, so the cluster is
    marked insecure: lightkube then builds a bare SSL context instead of loading a CA bundle."""
    if not config.cluster.server.lower().startswith("http://"):
        return config
    return config._replace(cluster=Cluster(server=config.cluster.server, insecure=True))


def _plain(obj: Any) -> dict[str, Any]:
    """lightkube's generic objects are dict subclasses; hand out plain dicts."""
    return dict(obj)


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str  # ADDED | MODIFIED | DELETED
    object: ResourceSlice


def load_config(kubeconfig: Path | None) -> KubeConfig:
    """A kubeconfig file when given, else in-cluster service-account config, else $KUBECONFIG / ~/.kube."""
    if kubeconfig is not None:
        return KubeConfig.from_file(kubeconfig)
    return KubeConfig.from_env()


class KubeClient:
    """The API calls gpudra makes, nothing more (matching the RBAC the DaemonSet grants)."""

    def __init__(
        self, config: KubeConfig, timeout_s: float | None = None, *, timeouts: ApiTimeouts | None = None
    ) -> None:
        """``timeouts``: the default :class:`ApiTimeouts` with its hidden environment variables applied;
        ``timeout_s`` (each request) overrides its ``request_s``."""
        single = config.get()
        if single is None:  # get() without a default raises instead; this keeps mypy informed
            raise KubeError("the kubeconfig selects no context")
        timeouts = timeouts or ApiTimeouts.from_env()
        if timeout_s is not None:
            timeouts = dataclasses.replace(timeouts, request_s=timeout_s)
        self._timeouts = timeouts
        self._client = Client(
            _lightkube_config(single),
            timeout=httpx2.Timeout(timeouts.request_s),
            field_manager=names.DRIVER_NAME,
            trust_env=False,
        )
        # None: exec / basic / auth-provider auth, which only lightkube does; get_claim then uses lightkube
        self._claims = kube_http.from_config(single, timeouts.request_s)
        self._watches = kube_watch.stream_client(_lightkube_config(single), timeouts)

    def close(self) -> None:
        self._client.close()
        self._watches.close()
        if self._claims is not None:
            self._claims.close()

    # ---- ResourceClaims (prepare) -------------------------------------------------------------------

    def get_claim(self, namespace: str, name: str) -> ResourceClaim:
        op = f"get ResourceClaim {namespace}/{name}"
        if not namespace or not name:  # an empty segment would turn the GET into a LIST
            raise KubeError(f"{op}: a namespace and a name are required", 400, "BadRequest")
        if self._claims is None:
            obj = _translate(op, lambda: self._client.get(_ClaimRes, name, namespace=namespace))
            return cast(ResourceClaim, _plain(obj))
        seg = kube_http.path_segment
        path = f"/apis/resource.k8s.io/v1/namespaces/{seg(namespace)}/resourceclaims/{seg(name)}"
        return cast(ResourceClaim, _get_json(self._claims, op, path))

    # ---- ResourceSlices (publisher) -----------------------------------------------------------------

    @staticmethod
    def _slice_fields(node_name: str) -> Any:
        return {"spec.nodeName": node_name, "spec.driver": names.DRIVER_NAME}

    def list_slices(self, node_name: str) -> tuple[list[ResourceSlice], str]:
        """This node's slices of our driver, and the list's resourceVersion to watch from."""

        def run() -> tuple[list[ResourceSlice], str]:
            it = self._client.list(_SliceRes, fields=self._slice_fields(node_name))
            items = [cast(ResourceSlice, _plain(o)) for o in it]
            return items, it.resourceVersion

        return _translate("list ResourceSlices", run)

    def watch_slices(self, node_name: str, resource_version: str) -> Iterator[WatchEvent]:
        """Stream changes after ``resource_version`` until the server ends the watch (``timeoutSeconds``);
        raises KubeError when the stream breaks or stays silent too long (see :mod:`gpudra.kube.watch`)."""
        params = {
            "resourceVersion": resource_version,
            "fieldSelector": build_selector(self._slice_fields(node_name), for_fields=True),
        }
        path = "/apis/resource.k8s.io/v1/resourceslices"
        for kind, obj in kube_watch.events(
            self._watches, "watch ResourceSlices", path, params, self._timeouts
        ):
            yield WatchEvent(kind, cast(ResourceSlice, obj))

    def create_slice(self, obj: ResourceSlice) -> ResourceSlice:
        name = obj.get("metadata", {}).get("name", "")
        res = _translate(
            f"create ResourceSlice {name}", lambda: self._client.create(_SliceRes.from_dict(dict(obj)))
        )
        return cast(ResourceSlice, _plain(res))

    def replace_slice(self, obj: ResourceSlice) -> ResourceSlice:
        name = obj.get("metadata", {}).get("name", "")
        res = _translate(
            f"update ResourceSlice {name}", lambda: self._client.replace(_SliceRes.from_dict(dict(obj)))
        )
        return cast(ResourceSlice, _plain(res))

    def delete_slice(self, name: str) -> None:
        _translate(f"delete ResourceSlice {name}", lambda: self._client.delete(_SliceRes, name))

    # ---- Nodes and Events ---------------------------------------------------------------------------

    def get_node_uid(self, node_name: str) -> str:
        obj = _translate(f"get Node {node_name}", lambda: self._client.get(_NodeRes, node_name))
        uid = _plain(obj).get("metadata", {}).get("uid")
        if not isinstance(uid, str):
            raise KubeError(f"Node {node_name} has no uid", 500)
        return uid

    def node_event(self, node_name: str, node_uid: str | None, reason: str, message: str) -> None:
        """Record a Warning Event on the Node (best effort: failures are logged, never raised)."""
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{node_name}.gpudra-", "namespace": "default"},
            "involvedObject": {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid or ""},
            "reason": reason,
            "message": message[:1024],
            "type": "Warning",
            "source": {"component": names.DRIVER_NAME, "host": node_name},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
            "reportingComponent": names.DRIVER_NAME,
            "reportingInstance": node_name,
        }
        try:
            _translate(
                "create Event", lambda: self._client.create(_EventRes.from_dict(event), namespace="default")
            )
        except KubeError as e:
            log.warning("could not record Node event %s: %s", reason, e)

    # ---- Pods (MPS control daemons: gpudra.runtime.mps_pods) -------------------------------------------

    def create_pod(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        meta = obj.get("metadata") or {}
        namespace, name = meta.get("namespace", ""), meta.get("name", "")
        res = _translate(
            f"create Pod {namespace}/{name}",
            lambda: self._client.create(_PodRes.from_dict(dict(obj)), namespace=namespace),
        )
        return _plain(res)

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        op = f"get Pod {namespace}/{name}"
        if not namespace or not name:  # an empty segment would turn the GET into a LIST
            raise KubeError(f"{op}: a namespace and a name are required", 400, "BadRequest")
        return _plain(_translate(op, lambda: self._client.get(_PodRes, name, namespace=namespace)))

    def delete_pod(self, namespace: str, name: str, grace_period_s: int | None = None) -> None:
        op = f"delete Pod {namespace}/{name}"
        if not namespace or not name:  # an empty segment would delete the collection
            raise KubeError(f"{op}: a namespace and a name are required", 400, "BadRequest")
        _translate(
            op,
            lambda: self._client.delete(_PodRes, name, namespace=namespace, grace_period=grace_period_s),
        )

    def list_pods(
        self, namespace: str, labels: Mapping[str, str], node_name: str | None = None
    ) -> list[dict[str, Any]]:
        """The Pods of ``namespace`` with all of ``labels`` (and bound to ``node_name`` when given)."""
        fields: dict[str, Any] | None = None if node_name is None else {"spec.nodeName": node_name}

        def run() -> list[dict[str, Any]]:
            found = self._client.list(_PodRes, namespace=namespace, labels=dict(labels), fields=fields)
            return [_plain(o) for o in found]

        return _translate(f"list Pods in {namespace}", run)
