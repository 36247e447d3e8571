"""What this node offers the scheduler — the one place where "published = allocatable" is decided (pure).

From one discovery pass (:class:`~gpudra.model.inventory.Inventory`) and the devices that exist only because
a claim created them, :func:`plan_offer` picks the devices that are published and therefore may be
prepared, under the names they are published as, with their ResourceSlice entries built once. The publisher
turns the entries into slices; the preparer looks claims' devices up by name and copies the published
attributes into the device metadata. Both read the same :class:`Offer`, so they cannot disagree.

Left out, with a warning: a device without a UUID (no stable name), a MIG device without parent or placement,
devices whose names would clash. Left out silently: a GPU in MIG mode (published as its MIG devices) and a
device a claim created (it is already allocated, as part of the device that claim was given).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType

from gpudra.model import k8stypes
from gpudra.model.inventory import Device, DeviceKind, Inventory
from gpudra.planning.devices import build_device


@dataclass(frozen=True, slots=True)
class Offer:
    """The published (= allocatable) devices of one discovery pass, by published name, in name order."""

    inventory: Inventory
    devices: Mapping[str, Device] = field(default_factory=dict)
    entries: Mapping[str, k8stypes.Device] = field(default_factory=dict)  # the ResourceSlice entries
    warnings: tuple[str, ...] = ()

    def attributes(self, name: str) -> Mapping[str, k8stypes.DeviceAttribute]:
        entry = self.entries.get(name)
        return entry.get("attributes", {}) if entry is not None else {}

    def same_offer(self, other: Offer) -> bool:
        """Whether ``other`` offers the same devices with the same published content."""
        return self.devices == other.devices and self.entries == other.entries


def _candidates(
    inv: Inventory, claim_created: AbstractSet[str]
) -> tuple[list[tuple[Device, k8stypes.Device]], list[str]]:
    found: list[tuple[Device, k8stypes.Device]] = []
    warnings: list[str] = []
    for dev in inv.devices:
        if not dev.uuid:
            warnings.append(f"device at index {dev.index}: no UUID, so no stable name; not published")
        elif dev.kind is DeviceKind.MIG and (dev.mig is None or not dev.parent_uuid):
            warnings.append(
                f"MIG device {dev.uuid}: no parent or placement, so no stable name; not published"
            )
        elif dev.kind is DeviceKind.GPU and dev.mig_enabled:
            continue  # a MIG-enabled GPU is published as its MIG devices, never whole
        elif dev.uuid in claim_created:
            continue  # made by prepare for a claim: part of a device already published and allocated
        else:
            entry = build_device(dev, inv)
            found.append((dev, entry.device))
            warnings.extend(entry.warnings)
    return found, warnings


def plan_offer(inv: Inventory, claim_created: AbstractSet[str] = frozenset()) -> Offer:
    """What ``inv`` offers; ``claim_created`` holds the UUIDs of devices prepare created for claims."""
    found, warnings = _candidates(inv, claim_created)
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
    )


