"""What this node offers the scheduler — the one place where "published = allocatable" is decided (pure).

From one discovery pass (:class:`~gpudra.model.inventory.Inventory`) and the devices that exist only because
a claim created them, :func:`plan_offer` picks the devices that are published and therefore may be
prepared, under the names they are published as, with their ResourceSlice entries built once. The publisher
turns the entries into slices; the preparer looks claims' devices up by name and copies the published
attributes into the device metadata. Both read the same :class:`Offer`, so they cannot disagree.

Left out, with a warning: a device without a UUID (no stable name), a MIG device without parent or placement,
devices whose names would clash. Left out silently: a GPU in MIG mode (published as its MIG devices) and a
device a claim created (it is already allocated, as part of the device that claim was given).

Under a dynamic :class:`~gpudra.planning.partitions.MigPolicy`, a MIG-capable GPU that gpudra partitions
offers itself whole and every MIG placement, all drawing on its counter set (:mod:`.partitions`); its
``migEnabled`` attribute is not published, because prepare switches MIG mode as the allocated device needs
and the published devices must not change when it does.

Under a ``fractional`` policy, every other device that can be shared by memory is published with
``allowMultipleAllocations`` and request policies (:mod:`.fractional`); the devices of dynamic MIG stay
exclusive.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from gpudra.model import k8stypes, names
from gpudra.model.inventory import Device, DeviceKind, Inventory
from gpudra.planning import fractional
from gpudra.planning.devices import build_device, device_name
from gpudra.planning.partitions import (
    STATIC_MIG,
    DynamicGpu,
    MigPolicy,
    claim_made,
    dynamic_gpu,
    foreign_instances,
)


@dataclass(frozen=True, slots=True)
class Offer:
    """The published (= allocatable) devices of one discovery pass, by published name, in name order."""

    inventory: Inventory
    devices: Mapping[str, Device] = field(default_factory=dict)
    entries: Mapping[str, k8stypes.Device] = field(default_factory=dict)  # the ResourceSlice entries
    warnings: tuple[str, ...] = ()
    #: counter sets of the GPUs partitioned at prepare, by name (published in slices of their own)
    counter_sets: Mapping[str, k8stypes.CounterSet] = field(default_factory=dict)
    policy: MigPolicy = STATIC_MIG

    def attributes(self, name: str) -> Mapping[str, k8stypes.DeviceAttribute]:
        entry = self.entries.get(name)
        return entry.get("attributes", {}) if entry is not None else {}

    def same_offer(self, other: Offer) -> bool:
        """Whether ``other`` offers the same devices with the same published content."""
        return (
            self.devices == other.devices
            and self.entries == other.entries
            and self.counter_sets == other.counter_sets
        )

    def shareable(self, name: str) -> bool:
        """Whether device ``name`` is published for several claims (``allowMultipleAllocations``): only then
        may prepare give it to a claim while another holds it (each with its ``shareID``)."""
        entry = self.entries.get(name)
        return entry is not None and fractional.shared(entry)

    @property
    def shared_devices(self) -> int:
        """How many devices are published for sharing."""
        return sum(1 for entry in self.entries.values() if fractional.shared(entry))

    @property
    def dynamic_gpus(self) -> tuple[str, ...]:
        """UUIDs of the GPUs partitioned at prepare (whose counter sets are published)."""
        return tuple(d.uuid for d in self.devices.values() if d.kind is DeviceKind.GPU and d.uuid and
                     names.mig_counter_set_name(d.uuid) in self.counter_sets)  # fmt: skip


def _candidates(
    inv: Inventory, claim_created: AbstractSet[str], policy: MigPolicy
) -> tuple[list[tuple[Device, k8stypes.Device]], list[str], list[DynamicGpu]]:
    found: list[tuple[Device, k8stypes.Device]] = []
    warnings: list[str] = []
    dynamic: list[DynamicGpu] = []
    for dev in inv.devices:
        partitioned = dynamic_gpu(dev, inv.devices, claim_created) if policy.dynamic else None
        if partitioned is not None:
            dynamic.append(partitioned)
            warnings.extend(partitioned.warnings)
            found.extend(_partitionable(partitioned, inv, warnings))
            continue
        foreign = foreign_instances(dev, inv.devices, claim_created) if policy.dynamic else []
        if foreign and dev.mig_capable and dev.mig_profiles:
            warnings.append(
                f"GPU {dev.uuid} has MIG devices gpudra did not create ({', '.join(foreign)}): its layout is "
                "published as it is and never changed; MIG devices are created on it at prepare once they "
                "are gone"
            )
        if not dev.uuid:
            warnings.append(f"device at index {dev.index}: no UUID, so no stable name; not published")
        elif dev.kind is DeviceKind.MIG and (dev.mig is None or not dev.parent_uuid):
            warnings.append(
                f"MIG device {dev.uuid}: no parent or placement, so no stable name; not published"
            )
        elif dev.kind is DeviceKind.GPU and dev.mig_enabled:
            continue  # a MIG-enabled GPU is published as its MIG devices, never whole
        elif dev.uuid in claim_created or claim_made(dev, claim_created):
            continue  # made by prepare for a claim: part of a device already published and allocated
        else:
            entry = build_device(dev, inv)
            warnings.extend(entry.warnings)
            found.append((dev, _shared(entry.device, warnings) if policy.fractional else entry.device))
    return found, warnings, dynamic


def _shared(entry: k8stypes.Device, warnings: list[str]) -> k8stypes.Device:
    """``entry`` published for several claims to share (:mod:`.fractional`), or as it is, with why."""
    shared, why = fractional.share(entry)
    if why is not None:
        warnings.append(f"device {entry['name']}: not shared (fractional GPUs): {why}; published exclusive")
    return shared


def _partitionable(
    gpu: DynamicGpu, inv: Inventory, warnings: list[str]
) -> list[tuple[Device, k8stypes.Device]]:
    """The whole GPU and its MIG placements, each with what it consumes of the GPU's counter set."""
    whole = build_device(gpu.gpu, inv)
    gpu_device = replace(gpu.gpu, mig_managed=True)
    warnings.extend(whole.warnings)
    entry = whole.device
    entry.get("attributes", {}).pop(names.ATTR_MIG_ENABLED, None)
    if gpu.whole is not None:
        entry["consumesCounters"] = [gpu.whole]
    out = [(gpu_device, entry)] if gpu.whole is not None else []
    # The placements of one profile differ only in their names and counters: built once per profile
    # (a DGX H100 has 200 placements; building each took 70 % of the plan's time).
    by_profile: dict[str, k8stypes.Device] = {}
    for slot, use in gpu.slots:
        profile = slot.mig.profile if slot.mig is not None else ""
        template = by_profile.get(profile)
        if template is None:
            built = build_device(slot, inv)
            warnings.extend(built.warnings)
            template = by_profile[profile] = built.device
        device: k8stypes.Device = {**template, "name": device_name(slot), "consumesCounters": [use]}
        out.append((slot, device))
    return out


def plan_offer(
    inv: Inventory, claim_created: AbstractSet[str] = frozenset(), policy: MigPolicy = STATIC_MIG
) -> Offer:
    """What ``inv`` offers under ``policy``; ``claim_created`` holds the UUIDs of devices prepare created
    for claims and the published names of the MIG devices claims created or are creating."""
    found, warnings, dynamic = _candidates(inv, claim_created, policy)
    counts = Counter(entry["name"] for _, entry in found)
    clashes = sorted(name for name, count in counts.items() if count > 1)
    if clashes:
        warnings.append(f"devices not published because they would share a device name: {clashes}")
    kept = sorted(((e["name"], d, e) for d, e in found if counts[e["name"]] == 1), key=lambda t: t[0])
    return Offer(
        inventory=inv,
        devices=MappingProxyType({name: d for name, d, _ in kept}),
        entries=MappingProxyType({name: e for name, _, e in kept}),
        warnings=tuple(warnings),
        counter_sets=MappingProxyType({g.counter_set["name"]: g.counter_set for g in dynamic}),
        policy=policy,
    )
