"""What ``gpudra explain`` reads from a cluster (kubeconfig): the claim or template to explain, the
ResourceSlices, the DeviceClasses, and the claims already allocated (they hold devices and counters).

Read-only, with lightkube's generic resources (raw JSON dicts); every lightkube / httpx2 failure leaves as
the product's :class:`gpudra.kube.errors.KubeError` through its one translation layer.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx2
from lightkube import Client
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import Cluster as ClusterConfig
from lightkube.generic_resource import create_global_resource, create_namespaced_resource

from gpudra.devtools.allocator_pools import JSON
from gpudra.devtools.explain_inputs import CLAIM, TEMPLATE, claim_input
from gpudra.devtools.explain_model import ClaimInput, Held
from gpudra.kube.client import load_config
from gpudra.kube.errors import KubeError, from_client

__all__ = ["Cluster", "KubeError"]

_Slices = create_global_resource("resource.k8s.io", "v1", "ResourceSlice", "resourceslices")
_Classes = create_global_resource("resource.k8s.io", "v1", "DeviceClass", "deviceclasses")
_Claims = create_namespaced_resource("resource.k8s.io", "v1", "ResourceClaim", "resourceclaims")
_Templates = create_namespaced_resource(
    "resource.k8s.io", "v1", "ResourceClaimTemplate", "resourceclaimtemplates"
)
T = TypeVar("T")


def _call(op: str, fn: Callable[[], T]) -> T:
    try:
        return fn()
    except Exception as err:
        error = from_client(op, err)
        if error is None:
            raise
        raise error from err


def _client_config(config: SingleConfig) -> SingleConfig:
    """For an http:// server lightkube must not build a TLS context from a CA bundle."""
    if not config.cluster.server.lower().startswith("http://"):
        return config
    return config._replace(cluster=ClusterConfig(server=config.cluster.server, insecure=True))


class Cluster:
    """The reads explain makes; :meth:`close` when done."""

    def __init__(self, kubeconfig: Path | None, timeout_s: float = 30.0) -> None:
        try:
            single = load_config(kubeconfig).get()
        except Exception as err:  # lightkube's ConfigError, a missing or unreadable file, bad YAML
            where = kubeconfig or "$KUBECONFIG / ~/.kube/config / in-cluster"
            detail = " ".join(str(err).split()) or type(err).__name__
            raise KubeError(f"kubeconfig {where}: {detail}") from err
        if single is None:
            raise KubeError("the kubeconfig selects no context")
        self.namespace: str = single.namespace or "default"
        self._client = Client(_client_config(single), timeout=httpx2.Timeout(timeout_s), trust_env=False)

    def close(self) -> None:
        self._client.close()

    def claim(self, namespace: str, name: str) -> ClaimInput:
        """The ResourceClaim ``namespace/name``, else the ResourceClaimTemplate of that name."""
        try:
            obj = _call(
                f"get ResourceClaim {namespace}/{name}",
                lambda: self._client.get(_Claims, name, namespace=namespace),
            )
            return claim_input({**dict(obj), "kind": CLAIM}, "cluster", namespace)
        except KubeError as err:
            if err.code != 404:
                raise
        try:
            obj = _call(
                f"get ResourceClaimTemplate {namespace}/{name}",
                lambda: self._client.get(_Templates, name, namespace=namespace),
            )
        except KubeError as err:
            if err.code != 404:
                raise
            raise KubeError(f"no ResourceClaim or ResourceClaimTemplate {namespace}/{name}", 404) from err
        return claim_input({**dict(obj), "kind": TEMPLATE}, "cluster", namespace)

    def _list(self, what: str, resource: Any, **kwargs: Any) -> list[JSON]:
        return _call(f"list {what}", lambda: [dict(o) for o in self._client.list(resource, **kwargs)])

    def slices(self) -> list[JSON]:
        return self._list("ResourceSlices", _Slices)

    def classes(self) -> list[JSON]:
        return self._list("DeviceClasses", _Classes)

    def allocated(self) -> list[Held]:
        """Every claim with ``status.allocation``, in every namespace."""
        out: list[Held] = []
        for claim in self._list("ResourceClaims", _Claims, namespace="*"):
            allocation = (claim.get("status") or {}).get("allocation")
            if allocation:
                meta = claim.get("metadata") or {}
                label = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
                out.append(Held(label, allocation, meta.get("uid")))
        return out
