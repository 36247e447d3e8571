"""Does the cluster keep partitionable-device fields? Asked once, with a slice of its own, before publishing.

An API server whose ``DRAPartitionableDevices`` gate is off (Kubernetes 1.34 and 1.35 by default) drops
``sharedCounters`` and ``consumesCounters`` without an error. Finding that out by publishing the node's real
pool would bump its generation and rewrite its slices on every start. So gpudra asks with a probe: a
ResourceSlice in a pool of its own (``<node>-gpudra-probe``, one counter set, no devices, not labelled as
one of the node's slices), created, read back from the answer, and deleted. A probe left by a crash is
replaced; the Node owner reference lets the garbage collector remove one left forever.

The answer is only about this cluster's gate; Kubernetes 1.34 with the gate on accepts the probe but refuses
counters in a slice of their own (the publisher's 422 handling falls back then).
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

from gpudra.kube.errors import KubeError
from gpudra.model import names
from gpudra.model.k8stypes import ResourceSlice
from gpudra.planning.slices import slice_name

log = logging.getLogger(__name__)

Answer = Literal["kept", "dropped", "refused"]


class SliceApi(Protocol):
    def create_slice(self, obj: ResourceSlice) -> ResourceSlice: ...
    def delete_slice(self, name: str) -> None: ...


def probe_slice(node_name: str, node_uid: str | None) -> ResourceSlice:
    name = slice_name(node_name, 0).replace(f"-{names.DRIVER_NAME}-0", f"-{names.DRIVER_NAME}-probe")
    obj: ResourceSlice = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": names.DRIVER_NAME,
            "nodeName": node_name,
            "pool": {"name": f"{node_name}-gpudra-probe", "generation": 1, "resourceSliceCount": 1},
            "sharedCounters": [{"name": "probe", "counters": {"probe": {"value": "1"}}}],
        },
    }
    if node_uid:
        obj["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": True}
        ]
    return obj


def partitionable_fields(api: SliceApi, node_name: str, node_uid: str | None) -> Answer:
    """Whether the API server keeps a counter set (``kept``), drops it (``dropped``), or refuses the probe
    as invalid (``refused``). Other API errors are raised (:class:`KubeError`) for the caller to retry."""
    stored = round_trip(api, probe_slice(node_name, node_uid), "partitionable-devices")
    if stored is None:
        return "refused"
    return "kept" if stored.get("spec", {}).get("sharedCounters") else "dropped"


def round_trip(api: SliceApi, obj: ResourceSlice, what: str) -> ResourceSlice | None:
    """Create the probe slice ``obj``, delete it again and return what the API server stored (read back:
    fields of a gate that is off are gone); None when the server refused it as invalid (422, logged as the
    ``what`` probe). A probe a crash left behind is replaced. Other API errors raise :class:`KubeError`."""
    name = obj["metadata"]["name"]
    try:
        stored = _create(api, obj, name)
    except KubeError as e:
        if e.code == 422:
            log.warning("the API server refused the %s probe: %s", what, e)
            return None
        raise
    try:
        api.delete_slice(name)
    except KubeError as e:
        log.warning("could not delete the probe ResourceSlice %s: %s", name, e)
    return stored


def _create(api: SliceApi, obj: ResourceSlice, name: str) -> ResourceSlice:
    try:
        return api.create_slice(obj)
    except KubeError as e:
        if not e.conflict:
            raise
    api.delete_slice(name)  # a probe a crash left behind
    return api.create_slice(obj)
