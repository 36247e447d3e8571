"""KEP-5304 device metadata: what a container can read about the devices it was given (pure).

The protocol (Kubernetes 1.36 alpha, 1.37 beta) is driver-side; nothing in the cluster has to be enabled:

- one file per claim request, read-only in the container at
  ``/var/run/kubernetes.io/dra-device-attributes/resourceclaims/<claim>/<request>/<driver>-metadata.json``,
  or ``.../resourceclaimtemplates/<podClaimName>/<request>/...`` for a claim generated from a template
  (``podClaimName`` = ``pod.spec.resourceClaims[].name``, which the claim carries as an annotation);
- ``<request>`` is the top-level request name; inside the file ``requests[].name`` keeps ``req/sub``;
- the file is a JSON stream of ``DeviceMetadata`` objects, the same content once per API version, newest
  first (``metadata.resource.k8s.io/v1beta1``, then ``v1alpha1`` for older readers);
- ``metadata.generation`` increases with every rewrite (prepare writes each file once: generation 1).

Attributes are exactly the ones the device is published with in the ResourceSlice (capacities are not
part of the schema).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from gpudra.model import names
from gpudra.model.k8stypes import DeviceAttribute
from gpudra.planning import claimnames

CONTAINER_ROOT: Final = "/var/run/kubernetes.io/dra-device-attributes"
#: Set by the ResourceClaim controller on claims it generates from a template: pod.spec.resourceClaims[].name
POD_CLAIM_NAME_ANNOTATION: Final = "resource.kubernetes.io/pod-claim-name"
API_VERSIONS: Final = ("metadata.resource.k8s.io/v1beta1", "metadata.resource.k8s.io/v1alpha1")
FILE_NAME: Final = f"{names.DRIVER_NAME}-metadata.json"


@dataclass(frozen=True, slots=True)
class MetadataDevice:
    request: str  # as allocated, possibly "req/sub"
    pool: str
    name: str
    attributes: Mapping[str, DeviceAttribute]


def top_request(request: str) -> str:
    return request.split("/", 1)[0]


def container_path(claim_name: str, pod_claim_name: str | None, request: str) -> str:
    """Where the file for ``request`` appears in the container.

    Each name is one path component, so it must have its API format (the plan checks them, naming the
    field); a name that does not raises ValueError rather than build a path outside :data:`CONTAINER_ROOT`.
    """
    if pod_claim_name:
        base = f"{CONTAINER_ROOT}/resourceclaimtemplates/{_component(pod_claim_name, claimnames.DNS_LABEL)}"
    else:
        base = f"{CONTAINER_ROOT}/resourceclaims/{_component(claim_name, claimnames.DNS_SUBDOMAIN)}"
    return f"{base}/{_component(top_request(request), claimnames.DNS_LABEL)}/{FILE_NAME}"


def _component(name: str, fmt: claimnames.NameFormat) -> str:
    problem = fmt.problem(name)
    if problem is not None:
        raise ValueError(f"device metadata path: {problem}")
    return name


def metadata_stream(
    namespace: str,
    claim_name: str,
    claim_uid: str,
    *,
    pod_claim_name: str | None,
    devices: Sequence[MetadataDevice],
    generation: int = 1,
) -> bytes:
    """The file content for the devices of ONE top-level request: one object per API version."""
    requests: dict[str, list[dict[str, object]]] = {}
    for d in devices:
        entry: dict[str, object] = {"driver": names.DRIVER_NAME, "pool": d.pool, "name": d.name}
        if d.attributes:
            entry["attributes"] = dict(d.attributes)
        requests.setdefault(d.request, []).append(entry)
    body: dict[str, object] = {
        "metadata": {"name": claim_name, "namespace": namespace, "uid": claim_uid, "generation": generation},
    }
    if pod_claim_name:
        body["podClaimName"] = pod_claim_name
    body["requests"] = [{"name": name, "devices": devs} for name, devs in requests.items()]
    # The objects differ only in apiVersion: encode the body once and put each header in front of it.
    encoded = json.dumps(body)[1:]
    heads = (f'{{"kind": "DeviceMetadata", "apiVersion": {json.dumps(v)}, ' for v in API_VERSIONS)
    return "".join(f"{head}{encoded}\n" for head in heads).encode()
