"""The resources the stand-in API serves, and its discovery documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

__all__ = ["RESOURCES", "Resource", "lookup"]

RESOURCE_GROUP: Final = "resource.k8s.io"
RESOURCE_VERSION: Final = "v1"
_VERBS: Final = ("create", "delete", "deletecollection", "get", "list", "update", "watch")


@dataclass(frozen=True)
class Resource:
    group: str  # "" for the core group
    plural: str
    kind: str
    namespaced: bool
    field_labels: tuple[str, ...]
    status_subresource: bool = False
    version: str = "v1"

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def prefix(self) -> str:
        """URL prefix of the group version: ``/api/v1`` or ``/apis/<group>/<version>``."""
        return f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def gvk(self) -> str:
        """``schema.GroupVersionKind.String()``, used in some apiserver messages."""
        return f"{self.group}/{self.version}, Kind={self.kind}"


RESOURCE_SLICES: Final = Resource(
    RESOURCE_GROUP,
    "resourceslices",
    "ResourceSlice",
    False,
    ("metadata.name", "spec.driver", "spec.nodeName"),
)
RESOURCE_CLAIMS: Final = Resource(
    RESOURCE_GROUP,
    "resourceclaims",
    "ResourceClaim",
    True,
    ("metadata.name", "metadata.namespace"),
    status_subresource=True,
)
DEVICE_CLASSES: Final = Resource(RESOURCE_GROUP, "deviceclasses", "DeviceClass", False, ("metadata.name",))
NODES: Final = Resource("", "nodes", "Node", False, ("metadata.name", "spec.unschedulable"))
EVENTS: Final = Resource(
    "",
    "events",
    "Event",
    True,
    (
        "metadata.name",
        "metadata.namespace",
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "reason",
        "type",
    ),
)

PODS: Final = Resource(
    "",
    "pods",
    "Pod",
    True,
    (
        "metadata.name",
        "metadata.namespace",
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    status_subresource=True,
)

RESOURCES: Final = (RESOURCE_SLICES, RESOURCE_CLAIMS, DEVICE_CLASSES, NODES, EVENTS, PODS)


def lookup(name: str) -> Resource:
    """A resource by kind (``ResourceSlice``), plural (``resourceslices``) or singular (``resourceslice``)."""
    for res in RESOURCES:
        if name in (res.kind, res.plural, res.singular):
            return res
    known = ", ".join(r.kind for r in RESOURCES)
    raise KeyError(f"unknown resource {name!r}; known: {known}")


def by_path(prefix: str, plural: str) -> Resource | None:
    for res in RESOURCES:
        if res.prefix == prefix and res.plural == plural:
            return res
    return None


def field_values(res: Resource, obj: dict[str, Any]) -> dict[str, str]:
    """The selectable fields of ``obj`` (``GetAttrs``): unset fields select as the empty string."""
    values: dict[str, str] = {}
    for label in res.field_labels:
        node: Any = obj
        for part in label.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, bool):
            values[label] = "true" if node else "false"
        else:
            values[label] = "" if node is None else str(node)
    return values


# ---- discovery ---------------------------------------------------------------------------------------


def _api_resource(res: Resource) -> list[dict[str, Any]]:
    main = {
        "name": res.plural,
        "singularName": res.singular,
        "namespaced": res.namespaced,
        "kind": res.kind,
        "verbs": list(_VERBS),
    }
    if not res.status_subresource:
        return [main]
    status = {
        "name": f"{res.plural}/status",
        "singularName": "",
        "namespaced": res.namespaced,
        "kind": res.kind,
        "verbs": ["get", "update"],
    }
    return [main, status]


def resource_list(group_version: str) -> dict[str, Any] | None:
    """``APIResourceList`` of a group version, or None when not served."""
    served = [r for r in RESOURCES if r.api_version == group_version]
    if not served:
        return None
    resources = [entry for res in served for entry in _api_resource(res)]
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group() -> dict[str, Any]:
    version = {"groupVersion": f"{RESOURCE_GROUP}/{RESOURCE_VERSION}", "version": RESOURCE_VERSION}
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": RESOURCE_GROUP,
        "versions": [version],
        "preferredVersion": version,
    }


def api_group_list() -> dict[str, Any]:
    group = api_group()
    del group["kind"], group["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [group]}


def version_info(kube_version: str) -> dict[str, str]:
    major, minor, *_ = kube_version.split(".")
    return {
        "major": major,
        "minor": minor,
        "gitVersion": f"v{kube_version}",
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "2025-08-27T00:00:00Z",
        "goVersion": "go1.24.6",
        "compiler": "gc",
        "platform": "linux/amd64",
    }
