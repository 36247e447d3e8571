"""The preparer's view of ResourceClaims: one GET each, with the API client's errors translated."""

from __future__ import annotations

from gpudra.kube.client import KubeClient, KubeError
from gpudra.model.k8stypes import ResourceClaim
from gpudra.state.prepare import ClaimReadError


class ApiClaims:
    """:class:`gpudra.state.prepare.ClaimSource` over the Kubernetes API."""

    def __init__(self, kube: KubeClient) -> None:
        self._get = kube.get_claim

    def get_claim(self, namespace: str, name: str) -> ResourceClaim:
        try:
            return self._get(namespace, name)
        except KubeError as e:
            raise ClaimReadError(str(e), not_found=e.not_found) from e
