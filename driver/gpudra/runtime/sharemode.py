"""Fractional GPUs in effect, and their fall-back to exclusive devices when the cluster cannot take them.

``--fractional-gpus on`` publishes devices with ``allowMultipleAllocations`` and capacity request policies
(KEP-5075, :mod:`gpudra.planning.fractional`). A cluster whose ``DRAConsumableCapacity`` gate is off (alpha
and off in Kubernetes 1.34 and 1.35) drops those fields without an error (and the claims' capacity
requests too): the devices are then exclusive anyway, and prepare must not treat a device as shared when the
scheduler does not. So this node asks first and keeps watching:

- before the first publish, a probe slice with one shared device (pool ``<node>-gpudra-share-probe``) is
  created, read back and deleted (:func:`consumable_fields`);
- every write the publisher reads back is checked too (:meth:`ShareMode.on_dropped`), and a slice the API
  server refuses over a request policy (:meth:`ShareMode.on_rejected`).

The first time the fields are lost, the node falls back to exclusive devices for the rest of its life (a
restart tries again), says so in one log line, the ``gpudra_fractional_gpus`` metric and a
``GpudraFractionalGpusUnavailable`` Node Event, and the node state is planned again at once.

The policy every plan takes is :class:`~gpudra.planning.partitions.MigPolicy`, whose MIG part belongs to
:class:`~gpudra.runtime.migmode.MigManagement`; :attr:`ShareMode.policy` is that with ``fractional`` set
here. MigManagement plans again on its own fall-back with its own policy (``fractional`` unset), so the
publisher's callbacks pass its answers through :meth:`ShareMode.follow`, which plans once more when the
current plan does not share what it should.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Final, Literal, Protocol

from gpudra.kube.gateprobe import SliceApi, round_trip
from gpudra.model import names
from gpudra.model.k8stypes import ResourceSlice
from gpudra.planning import fractional
from gpudra.planning.offer import plan_offer
from gpudra.planning.partitions import MigPolicy
from gpudra.planning.slices import slice_name
from gpudra.runtime.migmode import MigManagement
from gpudra.state.node import NodeStateStore

log = logging.getLogger(__name__)

EVENT_REASON: Final = "GpudraFractionalGpusUnavailable"
#: Words of an API server's 422 that blame the consumable-capacity fields of a slice.
_POLICY_WORDS: Final = ("requestPolicy", "allowMultipleAllocations")

Answer = Literal["kept", "dropped", "refused"]


class EventSink(Protocol):
    def __call__(self, reason: str, message: str) -> None: ...


def probe_slice(node_name: str, node_uid: str | None) -> ResourceSlice:
    """A slice of a pool of its own with one shared device (8Gi, shares of 2Gi..8Gi by 1Mi)."""
    name = slice_name(node_name, 0).replace(f"-{names.DRIVER_NAME}-0", f"-{names.DRIVER_NAME}-share-probe")
    policy = fractional.memory_policy(8 * fractional.GIB)
    obj: ResourceSlice = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": name},
        "spec": {
            "driver": names.DRIVER_NAME,
            "nodeName": node_name,
            "pool": {"name": f"{node_name}-gpudra-share-probe", "generation": 1, "resourceSliceCount": 1},
            "devices": [
                {
                    "name": "probe",
                    "allowMultipleAllocations": True,
                    "capacity": {"memory": {"value": policy["default"], "requestPolicy": policy}},
                }
            ],
        },
    }
    if node_uid:
        obj["metadata"]["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": True}
        ]
    return obj


def consumable_fields(api: SliceApi, node_name: str, node_uid: str | None) -> Answer:
    """Whether the API server keeps a shared device's fields (``kept``), drops them (``dropped``), or refuses
    the probe as invalid (``refused``). Other API errors are raised for the caller to retry."""
    stored = round_trip(api, probe_slice(node_name, node_uid), "consumable-capacity")
    if stored is None:
        return "refused"
    devices = stored.get("spec", {}).get("devices", [])
    if not devices or not fractional.shared(devices[0]):
        return "dropped"
    memory = devices[0].get("capacity", {}).get("memory")
    return "kept" if memory is not None and "requestPolicy" in memory else "dropped"


class ShareMode:
    """Whether this node publishes devices for sharing; the fall-back; the policy every plan takes."""

    def __init__(
        self,
        enabled: bool,
        mig_policy: Callable[[], MigPolicy],
        claim_created: Callable[[], AbstractSet[str]],
        event: EventSink,
        metric: Callable[[bool], None],
    ) -> None:
        self._enabled = enabled
        self._mig_policy = mig_policy
        self._claim_created = claim_created
        self._event = event
        self._metric = metric
        self._lock = threading.Lock()
        self.node: NodeStateStore | None = None  # set once the node state exists

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def policy(self) -> MigPolicy:
        """The policy every plan of this node takes: MIG management's, with ``fractional`` from here."""
        return replace(self._mig_policy(), fractional=self._enabled)

    def probe(self, api: SliceApi, node_name: str, node_uid: str | None) -> None:
        """Before the first publish (after MIG management's probe, which may have planned again): ask the API
        server whether it keeps shared devices, and fall back at once when it does not."""
        self.follow(False)
        node = self.node
        if not self._enabled or node is None or not node.current.offer.shared_devices:
            return
        answer = consumable_fields(api, node_name, node_uid)
        if answer == "kept":
            log.info("the API server keeps consumable capacity: %d device(s) published for sharing",
                     node.current.offer.shared_devices)  # fmt: skip
        elif answer == "dropped":
            self.on_dropped(["spec.devices[probe].allowMultipleAllocations"])
        else:
            self._fall_back(
                "the API server refused a ResourceSlice with a shared device (allowMultipleAllocations and a "
                "memory requestPolicy): its resource.k8s.io/v1 does not take consumable capacity"
            )

    def on_dropped(self, fields: Sequence[str]) -> bool:
        """The publisher's report of fields the API server dropped. True when the node state was planned
        again (exclusive devices) and the plan being written must be redone."""
        lost = [f for f in fields if f.endswith((".allowMultipleAllocations", ".requestPolicy"))]
        if not lost:
            return False
        return self._fall_back(
            "the API server dropped the consumable-capacity fields gpudra wrote (" + ", ".join(lost[:3])
            + "): the cluster's DRAConsumableCapacity feature gate is off (alpha and off in Kubernetes 1.34 "
            "and 1.35, on from 1.36)"
        )  # fmt: skip

    def on_rejected(self, obj: ResourceSlice, error: str) -> bool:
        """The publisher's report of a slice the API server refused (422): when the refusal is about the
        consumable-capacity fields of a slice that has shared devices, exclusive devices from now on."""
        devices = obj.get("spec", {}).get("devices", [])
        if not any(fractional.shared(d) for d in devices) or not any(w in error for w in _POLICY_WORDS):
            return False
        return self._fall_back(f"the API server refused a ResourceSlice with shared devices ({error})")

    def follow(self, replanned: bool) -> bool:
        """Pass on MIG management's answer (True: it planned the node again, with its own policy), after
        planning once more when the current plan does not share what this node should."""
        node = self.node
        if node is not None and node.current.offer.policy.fractional != self._enabled:
            return self._replan() or replanned
        return replanned

    def _fall_back(self, why: str) -> bool:
        with self._lock:
            first, self._enabled = self._enabled, False
        if first:
            message = (
                f"{why}. Falling back to exclusive devices: no device is published for sharing, so every "
                "claim gets whole devices on this node. Enable DRAConsumableCapacity on the API server and "
                "scheduler (Kubernetes >= 1.34) and restart gpudra to share GPUs by memory"
            )
            log.error("%s", message)
            self._metric(False)
            self._event(EVENT_REASON, message)
        return self._replan()

    def _replan(self) -> bool:
        node = self.node
        if node is None:
            return False
        offer = node.current.offer
        return node.offer(plan_offer(offer.inventory, self._claim_created(), self.policy)) is not None


def probe_gates(
    api: SliceApi, node_name: str, node_uid: str | None, mig: MigManagement, share: ShareMode
) -> None:
    """The publisher's ``before_first``: MIG management's probe (partitionable devices), then sharing's."""
    mig.probe(api, node_name, node_uid)
    share.probe(api, node_name, node_uid)
