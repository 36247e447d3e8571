"""What a claim needs from this node: the pure half of prepare.

From the ResourceClaim JSON, the node's inventory and what is already prepared, decide which devices to
prepare for the claim — or why it cannot be. No I/O: :mod:`gpudra.state.prepare` does the fetching and
writing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gpudra.model import names
from gpudra.model.inventory import Device
from gpudra.model.k8stypes import DeviceRequestAllocationResult, ResourceClaim
from gpudra.planning import config
from gpudra.planning.devicemeta import POD_CLAIM_NAME_ANNOTATION


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
    """Validate the claim against the kubelet's view and turn its allocation for gpudra.io into a plan."""
    uid = claim.get("metadata", {}).get("uid")
    if uid != ref.uid:
        raise PlanError(
            f"ResourceClaim {ref.namespace}/{ref.name} has UID {uid}, the kubelet asked for {ref.uid}",
            "uid_mismatch",
        )
    allocation = claim.get("status", {}).get("allocation", {}).get("devices", {})
    results = [r for r in allocation.get("results", []) if r.get("driver") == names.DRIVER_NAME]
    if not results:
        raise PlanError(
            f"ResourceClaim {ref} is not allocated any device of driver {names.DRIVER_NAME}", "not_allocated"
        )
    requests = {r.get("request", "") for r in results}
    try:
        configs = config.resolve(allocation.get("config", []), requests, config_kinds)
    except config.ConfigError as e:
        raise PlanError(str(e), "config") from e
    annotations = claim.get("metadata", {}).get("annotations", {})
    return ClaimPlan(
        ref,
        tuple(_device_to_prepare(r, devices, pool_name, configs) for r in results),
        annotations.get(POD_CLAIM_NAME_ANNOTATION) or None,
    )


def _device_to_prepare(
    r: DeviceRequestAllocationResult,
    devices: Mapping[str, Device],
    pool_name: str,
    configs: Mapping[str, tuple[object, ...]],
) -> DeviceToPrepare:
    pool, name, request = r.get("pool", ""), r.get("device", ""), r.get("request", "")
    if pool != pool_name:
        raise PlanError(
            f"device {pool}/{name} is in pool {pool!r}, this node publishes pool {pool_name!r}",
            "unknown_device",
        )
    dev = devices.get(name)
    if dev is None:
        raise PlanError(
            f"device {name} is not on this node (it may have been removed since allocation)", "unknown_device"
        )
    return DeviceToPrepare(
        request=request,
        pool=pool,
        name=name,
        device=dev,
        admin_access=bool(r.get("adminAccess", False)),
        share_id=r.get("shareID") or None,
        configs=configs.get(request, ()),
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
