"""What a claim needs from this node: the pure half of prepare.

From the ResourceClaim JSON (checked field by field in :mod:`gpudra.planning.claimjson`), the node's inventory
and what is already prepared, decide which devices to prepare for the claim — or why it cannot be. Every
error names the claim field it comes from. No I/O: :mod:`gpudra.state.prepare` does the fetching and
writing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from fractions import Fraction

from gpudra.model import names
from gpudra.model.inventory import Device
from gpudra.model.k8stypes import ResourceClaim
from gpudra.planning import claimjson, claimnames, config


class PlanError(Exception):
    """This claim cannot be prepared; the message goes back to the kubelet for this claim only. ``kind`` is
    a short, stable label for metrics (``uid_mismatch``, ``not_allocated``, ``config``, ...)."""

    def __init__(self, message: str, kind: str = "invalid") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class ClaimRef:
    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}:{self.uid}"


@dataclass(frozen=True, slots=True)
class DeviceToPrepare:
    request: str
    pool: str
    name: str  # device name in the ResourceSlice
    device: Device
    admin_access: bool = False
    share_id: str | None = None
    configs: tuple[object, ...] = ()
    #: the allocation's ``consumedCapacity`` (a shared device): (capacity name, exact quantity), by name
    consumed_capacity: tuple[tuple[str, Fraction], ...] = ()
    #: where the claim holds this result, for messages only (``status.allocation.devices.results[2]``)
    path: str = dataclass_field(default="", compare=False)

    def consumed(self, capacity: str) -> Fraction | None:
        """What the allocation consumed of ``capacity``; None when it does not say."""
        for name, value in self.consumed_capacity:
            if name == capacity:
                return value
        return None


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    ref: ClaimRef
    devices: tuple[DeviceToPrepare, ...]
    pod_claim_name: str | None = None  # set on claims generated from a ResourceClaimTemplate


@dataclass(frozen=True, slots=True)
class DeviceUse:
    """A device held by a prepared (or half-prepared) claim, as the checkpoint records it."""

    claim_uid: str
    device: str
    admin_access: bool = False
    share_id: str | None = None


def plan_claim(
    ref: ClaimRef,
    claim: ResourceClaim,
    devices: Mapping[str, Device],
    pool_name: str,
    config_kinds: Mapping[tuple[str, str], config.Decoder] = config.KNOWN_KINDS,
) -> ClaimPlan:
    """Validate the claim against the kubelet's view and turn its allocation for gpudra.io into a plan.

    Every name that becomes part of a path or is recorded is checked first: the kubelet's reference here,
    the claim's fields in :func:`gpudra.planning.claimjson.check_claim`.
    """
    _check_ref(ref)
    try:
        checked = claimjson.check_claim(claim)
    except claimjson.ClaimJsonError as e:
        raise PlanError(f"ResourceClaim {ref.namespace}/{ref.name} is malformed: {e}", "invalid") from e
    if checked.uid != ref.uid:
        raise PlanError(
            f"ResourceClaim {ref.namespace}/{ref.name} has UID {checked.uid}, "
            f"the kubelet asked for {ref.uid}",
            "uid_mismatch",
        )
    _check_same_claim(ref, checked)
    if not checked.devices:
        raise PlanError(
            f"ResourceClaim {ref} is not allocated any device of driver {names.DRIVER_NAME}", "not_allocated"
        )
    requests = {d.request for d in checked.devices}
    try:
        configs = config.resolve(checked.configs, requests, config_kinds)
    except config.ConfigError as e:
        raise PlanError(str(e), "config") from e
    return ClaimPlan(
        ref,
        tuple(_device_to_prepare(d, devices, pool_name, configs) for d in checked.devices),
        checked.pod_claim_name,
    )


def _check_ref(ref: ClaimRef) -> None:
    """The kubelet's reference: its UID, namespace and name become file names and container paths."""
    for field, value, fmt in (
        ("uid", ref.uid, claimnames.CLAIM_UID),
        ("namespace", ref.namespace, claimnames.DNS_LABEL),
        ("name", ref.name, claimnames.DNS_SUBDOMAIN),
    ):
        problem = fmt.problem(value)
        if problem is not None:
            raise PlanError(f"the kubelet's claim reference: {field}: {problem}", "invalid")


def _check_same_claim(ref: ClaimRef, checked: claimjson.CheckedClaim) -> None:
    """The API answered for the claim the kubelet named (the UID is checked before)."""
    pairs = (("namespace", checked.namespace, ref.namespace), ("name", checked.name, ref.name))
    for field, got, want in pairs:
        if got is not None and got != want:
            raise PlanError(
                f"ResourceClaim {ref.namespace}/{ref.name}: metadata.{field} is {json.dumps(got)}, "
                f"the kubelet asked for {json.dumps(want)}",
                "uid_mismatch",
            )


def _device_to_prepare(
    d: claimjson.AllocatedDevice,
    devices: Mapping[str, Device],
    pool_name: str,
    configs: Mapping[str, tuple[object, ...]],
) -> DeviceToPrepare:
    if d.pool != pool_name:
        raise PlanError(
            f"{d.path}.pool: device {d.pool}/{d.device} is in pool {d.pool!r}, "
            f"this node publishes pool {pool_name!r}",
            "unknown_device",
        )
    dev = devices.get(d.device)
    if dev is None:
        raise PlanError(
            f"{d.path}.device: device {d.device} is not on this node "
            "(it may have been removed since allocation)",
            "unknown_device",
        )
    return DeviceToPrepare(
        request=d.request,
        pool=d.pool,
        name=d.device,
        device=dev,
        admin_access=d.admin_access,
        share_id=d.share_id,
        configs=configs.get(d.request, ()),
        consumed_capacity=d.consumed_capacity,
        path=d.path,
    )


def _may_share(new: DeviceToPrepare, held: DeviceUse) -> bool:
    if new.admin_access or held.admin_access:
        return True  # adminAccess sees devices in use by others by design
    # Truthiness, not ``is not None``: an empty share ID (e.g. from a hand-edited checkpoint) is no share ID.
    return bool(new.share_id) and bool(held.share_id)


def find_conflict(plan: ClaimPlan, in_use: Iterable[DeviceUse]) -> str | None:
    """Why this plan would hand out a device another claim already holds exclusively, or None."""
    held: dict[str, list[DeviceUse]] = {}
    for use in in_use:
        if use.claim_uid != plan.ref.uid:
            held.setdefault(use.device, []).append(use)
    for dev in plan.devices:
        for use in held.get(dev.name, []):
            if not _may_share(dev, use):
                return (
                    f"device {dev.name} is already prepared for claim {use.claim_uid}; "
                    "it can only be shared with adminAccess or when both allocations carry a share ID"
                )
    return None
