"""The one module that knows the Kubernetes client (lightkube) and translates its errors.

Objects travel as raw JSON dicts (see :mod:`gpudra.model.k8stypes`): lightkube's *generic* resources are plain
dicts, so nothing is deserialised into models on the hot path and fields newer than this code pass through.
Every lightkube / httpx2 failure leaves this module as a :class:`KubeError`.

The ResourceClaim GET of every NodePrepareResources call goes over :mod:`gpudra.kube.http` (keep-alive
stdlib connections, one per thread) instead, when that transport can authenticate like lightkube; its
replies and failures are translated here too, into the same :class:`KubeError` shapes.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx2
from lightkube import ApiError, Client, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import Cluster
from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from gpudra.kube import http as kube_http
from gpudra.model import names
from gpudra.model.k8stypes import ResourceClaim, ResourceSlice

log = logging.getLogger(__name__)

_SliceRes = create_global_resource("resource.k8s.io", "v1", "ResourceSlice", "resourceslices")
_ClaimRes = create_namespaced_resource("resource.k8s.io", "v1", "ResourceClaim", "resourceclaims")
_NodeRes = create_global_resource("", "v1", "Node", "nodes")
_EventRes = create_namespaced_resource("", "v1", "Event", "events")

T = TypeVar("T")


class KubeError(Exception):
    """An API call failed. ``code`` is the HTTP status, or None when the server was not reached."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason

    @property
    def not_found(self) -> bool:
        return self.code == 404

    @property
    def conflict(self) -> bool:
        return self.code == 409

    @property
    def transient(self) -> bool:
        """Worth retrying: unreachable, throttled, or a server-side failure."""
        return self.code is None or self.code == 429 or self.code >= 500


def _translate(op: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ApiError as e:
        status = e.status
        raise KubeError(f"{op}: {status.message}", status.code, status.reason or "") from e
    except httpx2.HTTPError as e:
        raise KubeError(f"{op}: {type(e).__name__}: {e}") from e


def _status_error(op: str, reply: kube_http.Reply) -> KubeError:
    """A non-2xx answer: the Kubernetes ``Status`` it carries, or the bare HTTP status when it has none."""
    try:
        status = json.loads(reply.body)
    except ValueError:
        status = None
    if not isinstance(status, dict):
        text = reply.body[:200].decode("utf-8", "replace").strip()
        return KubeError(f"{op}: HTTP {reply.status} {reply.reason}: {text}", reply.status)
    message, code, reason = status.get("message"), status.get("code"), status.get("reason")
    return KubeError(
        f"{op}: {message}",
        code if isinstance(code, int) else reply.status,
        reason if isinstance(reason, str) else "",
    )


def _get_json(getter: kube_http.JsonGetter, op: str, path: str) -> dict[str, Any]:
    try:
        reply = getter.get(path)
    except (OSError, http.client.HTTPException) as e:
        raise KubeError(f"{op}: {type(e).__name__}: {e}") from e
    if not 200 <= reply.status < 300:
        raise _status_error(op, reply)
    try:
        obj = json.loads(reply.body)
    except ValueError as e:
        raise KubeError(f"{op}: the answer is not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise KubeError(f"{op}: the answer is not a JSON object")
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

    def __init__(self, config: KubeConfig, timeout_s: float = 10.0) -> None:
        single = config.get()
        if single is None:  # get() without a default raises instead; this keeps mypy informed
            raise KubeError("the kubeconfig selects no context")
        self._client = Client(
            _lightkube_config(single),
            timeout=httpx2.Timeout(timeout_s),
            field_manager=names.DRIVER_NAME,
            trust_env=False,
        )
        # None: exec / basic / auth-provider auth, which only lightkube does; get_claim then uses lightkube
        self._claims = kube_http.from_config(single, timeout_s)

    def close(self) -> None:
        self._client.close()
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
        """Stream changes after ``resource_version``; raises KubeError when the stream breaks."""
        stream = self._client.watch(
            _SliceRes, fields=self._slice_fields(node_name), resource_version=resource_version
        )
        while True:
            item = _translate("watch ResourceSlices", lambda: next(stream, None))
            if item is None:
                return
            kind, obj = item
            yield WatchEvent(kind, cast(ResourceSlice, _plain(obj)))

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
