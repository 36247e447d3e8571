"""The node's MIG management in effect, and its fall-back from dynamic to static MIG.

``--mig-management dynamic`` publishes MIG-capable GPUs as partitionable devices (counter sets and devices
that consume them). A cluster whose ``DRAPartitionableDevices`` gate is off (alpha and off in 1.34 and 1.35)
drops those fields without an error; what is left would let the scheduler hand out overlapping MIG
placements. So the publisher reads back every write (counter slices first) and tells :meth:`on_dropped` what
the server lost: the first time counters are lost, this node falls back to static MIG for the rest of its
life (a restart tries again), says so in one log line, the ``gpudra_mig_dynamic`` metric and a Node Event,
and the node state is planned again at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import replace
from typing import Protocol

from gpudra.kube.gateprobe import SliceApi, partitionable_fields
from gpudra.model.applied import AppliedState
from gpudra.model.inventory import DeviceKind, Inventory
from gpudra.model.k8stypes import ResourceSlice
from gpudra.planning.offer import plan_offer
from gpudra.planning.partitions import MigPolicy, foreign_instances
from gpudra.state.node import NodeStateStore
from gpudra.vendors.base import ApplyError, ClaimApplier
from gpudra.vendors.nvidia.mig_dynamic import existing_instances

log = logging.getLogger(__name__)

EVENT_REASON = "GpudraDynamicMigUnavailable"


class EventSink(Protocol):
    def __call__(self, reason: str, message: str) -> None: ...


class MigManagement:
    """Holds the :class:`~gpudra.planning.partitions.MigPolicy` every plan of this node uses."""

    def __init__(
        self,
        dynamic: bool,
        claim_created: Callable[[], AbstractSet[str]],
        event: EventSink,
        metric: Callable[[bool], None],
    ) -> None:
        self._policy = MigPolicy(dynamic)
        self._claim_created = claim_created
        self._event = event
        self._metric = metric
        self._lock = threading.Lock()
        self.node: NodeStateStore | None = None  # set once the node state exists

    @property
    def policy(self) -> MigPolicy:
        return self._policy

    def probe(self, api: SliceApi, node_name: str, node_uid: str | None) -> None:
        """Before the first publish: ask the API server whether it keeps counters (:mod:`gateprobe`), and
        fall back to static MIG at once when it does not, so the node's pool is written once, right."""
        node = self.node
        if not self._policy.dynamic or node is None or not node.current.offer.counter_sets:
            return
        answer = partitionable_fields(api, node_name, node_uid)
        if answer == "kept":
            log.info("the API server keeps partitionable devices: MIG devices are created at prepare")
        elif answer == "dropped":
            self.on_dropped(["spec.sharedCounters"])
        else:
            self._fall_back(
                "the API server refused a ResourceSlice with a counter set: its resource.k8s.io/v1 does not "
                "take counter sets in a slice of their own (Kubernetes before 1.35)"
            )
            self._replan()

    def on_dropped(self, fields: Sequence[str]) -> bool:
        """The publisher's report of fields the API server dropped. True when the node state was planned
        again (static MIG) and the plan being written must be redone."""
        lost = [f for f in fields if f == "spec.sharedCounters" or f.endswith(".consumesCounters")]
        if not lost:
            return False
        return self._fall_back(
            "the API server dropped the partitionable-device fields gpudra wrote (" + ", ".join(lost[:3])
            + "): the cluster's DRAPartitionableDevices feature gate is off (alpha and off in Kubernetes "
            "1.34 and 1.35, on from 1.36)"
        )  # fmt: skip

    def on_rejected(self, obj: ResourceSlice, error: str) -> bool:
        """The publisher's report of a slice the API server refused as invalid: when it holds counters
        (Kubernetes 1.34 with the gate on keeps counter sets inside the device slice and refuses them in a
        slice of their own), static MIG as for :meth:`on_dropped`."""
        spec = obj.get("spec", {})
        if not spec.get("sharedCounters") and not any(
            "consumesCounters" in d for d in spec.get("devices", [])
        ):
            return False
        return self._fall_back(
            f"the API server refused a ResourceSlice with partitionable devices ({error}): Kubernetes before "
            "1.35 keeps counter sets in the slice of the devices using them, which gpudra does not publish"
        )

    def _fall_back(self, why: str) -> bool:
        with self._lock:
            first, self._policy = self._policy.dynamic, replace(self._policy, dynamic=False)
        if first:
            message = (
                f"{why}. Falling back to static MIG: MIG-capable GPUs are published as the MIG layout they "
                "have, and no MIG device is created at prepare. Enable DRAPartitionableDevices on the API "
                "server and scheduler (Kubernetes >= 1.35) and restart gpudra to use dynamic MIG"
            )
            log.error("%s", message)
            self._metric(False)
            self._event(EVENT_REASON, message)
        return self._replan()

    def _replan(self) -> bool:
        node = self.node
        if node is None or not node.current.offer.policy.dynamic:
            return False
        offer = node.current.offer  # the node's other choices (fractional GPUs) stay as they are
        policy = replace(offer.policy, dynamic=self._policy.dynamic)
        node.offer(plan_offer(offer.inventory, self._claim_created(), policy))
        return True


def destroy_unowned(driver: ClaimApplier, inventory: Inventory, claim_created: AbstractSet[str]) -> int:
    """``--mig-destroy-unowned``: destroy the MIG devices no recorded claim created on MIG-capable GPUs with
    a profile table (an old layout, or one a lost checkpoint left), so that those GPUs are partitioned at
    prepare again. The vendor driver finds each by placement and UUID; NVML refuses one a process uses (that
    one stays, with an error line). Returns how many were destroyed."""
    gpus = [d for d in inventory.devices if d.kind is DeviceKind.GPU and d.mig_capable and d.mig_profiles]
    destroyed = 0
    for gpu in gpus:
        unowned = set(foreign_instances(gpu, inventory.devices, claim_created))
        devices = [d for d in inventory.devices if d.uuid in unowned]
        for change, dev in zip(existing_instances(devices), devices, strict=True):
            try:
                driver.undo(AppliedState((change,)))
            except ApplyError as e:
                log.error("--mig-destroy-unowned: MIG device %s stays: %s", dev.uuid, e)
                continue
            destroyed += 1
            profile = dev.mig.profile if dev.mig else "?"
            log.warning(
                "--mig-destroy-unowned: destroyed MIG device %s (%s on GPU %s), which no claim of this node "
                "created", dev.uuid, profile, gpu.uuid,
            )  # fmt: skip
    return destroyed
