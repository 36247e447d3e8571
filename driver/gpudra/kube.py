"""The one module that knows the Kubernetes client (lightkube) and translates its errors.

Objects travel as raw JSON dicts (see :mod:`gpudra.k8stypes`): lightkube's *generic* resources are plain
dicts, so nothing is deserialised into models on the hot path and fields newer than this code pass through.
Every lightkube / httpx2 failure leaves this module as a :class:`KubeError`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import httpx2
from lightkube import ApiError, Client, KubeConfig
from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from gpudra import names
from gpudra.k8stypes import ResourceClaim, ResourceSlice

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
        self._client = Client(
            config, timeout=httpx2.Timeout(timeout_s), field_manager=names.DRIVER_NAME, trust_env=False
        )

    def close(self) -> None:
        self._client.close()

    # ---- ResourceClaims (prepare) -------------------------------------------------------------------

    def get_claim(self, namespace: str, name: str) -> ResourceClaim:
        obj = _translate(
            f"get ResourceClaim {namespace}/{name}",
            lambda: self._client.get(_ClaimRes, name, namespace=namespace),
        )
        return cast(ResourceClaim, _plain(obj))

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
