"""Pure translation of the node's :class:`~gpudra.model.inventory.Inventory` into ``resource.k8s.io/v1``
slices.

No I/O, no clock, no state: the same inventory always yields the same slices, so the publisher can diff
what it wants against what the API holds (:func:`slice_content_equal`).

A value the API would reject (string or version > 64 bytes, a version that is not strict semver, an int
outside int64, a malformed PCI address) is OMITTED with a warning, never cut: a truncated product name is
a fabricated value a CEL selector could match by accident, while an absent attribute is honest (selectors
must guard optional attributes anyway). "" and a negative NUMA node mean unknown and are omitted silently.
A rule only our own code can break (attribute names, > 32 attributes + capacities, device names, duplicate
names handed to :func:`pool_slices`) raises ValueError.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from gpudra.model import k8stypes, names
from gpudra.model.inventory import Device, DeviceKind, EngineCounts, Inventory, Semver, Vendor
from gpudra.planning.apirules import (
    attribute_problem,
    check_device,
    is_dns_subdomain,
    normalize_bus_id,
)

API_VERSION: Final = "resource.k8s.io/v1"
KIND: Final = "ResourceSlice"
#: Label on every slice gpudra writes; value from :func:`node_label_value`. (Could move to names.py.)
LABEL_NODE: Final = f"{names.DRIVER_NAME}/node"

MAX_DEVICES_PER_SLICE: Final = 128
#: From 1.35 a slice in which any device uses taints or consumesCounters holds at most 64 devices.
MAX_DEVICES_PER_SLICE_RESTRICTED: Final = 64
_RESTRICTED_DEVICE_FIELDS: Final = ("taints", "consumesCounters")

_INT64_MAX: Final = 2**63 - 1
_OBJECT_NAME_MAX: Final = 253
_LABEL_VALUE_MAX: Final = 63
_LABEL_VALUE: Final = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", re.ASCII)
_VENDOR_VALUES: Final = {Vendor.NVIDIA: names.VENDOR_NVIDIA, Vendor.AMD: names.VENDOR_AMD}


# ---- one device ----------------------------------------------------------------------------------------


class _Entry:
    """Accumulates one device's attributes and capacities; drops unpublishable values with a warning."""

    def __init__(self, device_name: str) -> None:
        self.name = device_name
        self.attributes: dict[str, k8stypes.DeviceAttribute] = {}
        self.capacity: dict[str, k8stypes.DeviceCapacity] = {}
        self.warnings: list[str] = []

    def put(self, name: str, value: str | int | bool | Semver | None) -> None:
        """Publish attribute ``name`` unless the value is unknown (None or "") or the API cannot take it."""
        if value is None or value == "":
            return
        attr: k8stypes.DeviceAttribute
        if isinstance(value, bool):
            attr = {"bool": value}
        elif isinstance(value, int):
            attr = {"int": value}
        elif isinstance(value, Semver):
            attr = {"version": str(value)}
        else:
            attr = {"string": value}
        problem = attribute_problem(attr)
        if problem:
            self.warnings.append(f"device {self.name}: attribute {name} not published: {problem}")
        else:
            self.attributes[name] = attr

    def quantity(self, name: str, value: int | None) -> None:
        if value is not None and value < 0:
            self.warnings.append(f"device {self.name}: capacity {name} not published: negative value {value}")
        elif value is not None:
            self.capacity[name] = {"value": str(value)}

    def add_pci(self, dev: Device, bus_attribute: str = names.ATTR_STD_PCI_BUS_ID) -> None:
        """PCI placement; a MIG device puts its parent's bus id in ``parentPciBusID`` instead."""
        if dev.pci is None:
            return
        bus_id = normalize_bus_id(dev.pci.bus_id)
        if bus_id is None:
            self.warnings.append(
                f"device {self.name}: attribute {bus_attribute} not published: "
                f"{dev.pci.bus_id!r} is not a dddd:bb:dd.f PCI address"
            )
        self.put(bus_attribute, bus_id)
        self.put(names.ATTR_STD_PCIE_ROOT, dev.pci.pcie_root)
        if dev.pci.numa_node is not None and dev.pci.numa_node >= 0:
            self.put(names.ATTR_STD_NUMA_NODE, dev.pci.numa_node)

    def result(self) -> k8stypes.Device:
        device: k8stypes.Device = {"name": self.name}
        if self.attributes:
            device["attributes"] = dict(sorted(self.attributes.items()))
        if self.capacity:
            device["capacity"] = dict(sorted(self.capacity.items()))
        check_device(device)
        return device


@dataclass(frozen=True)
class DeviceEntry:
    """One device as published, plus what could not be published and why."""

    device: k8stypes.Device
    warnings: tuple[str, ...]


def device_name(dev: Device) -> str:
    """The name ``dev`` is published under (prepare looks devices up by it): :func:`names.mig_device_name`
    for a placed MIG device (its compute instance only when not spanning its GI), else the UUID's name."""
    mig = dev.mig
    if dev.kind is not DeviceKind.MIG or mig is None or not dev.parent_uuid:
        return names.gpu_device_name(dev.uuid)
    ci_profile, ci_start = mig.ci_profile_id, mig.ci_placement_start
    if mig.ci_spans_gpu_instance is True or ci_profile is None or ci_start is None:
        ci_profile = ci_start = None
    return names.mig_device_name(
        dev.parent_uuid, mig.profile, mig.gi_profile_id, mig.placement_start,
        ci_profile_id=ci_profile, ci_start=ci_start,
    )  # fmt: skip


def build_device(dev: Device, inv: Inventory) -> DeviceEntry:
    """The ResourceSlice device for ``dev`` (a full GPU or a MIG device), with warnings about omitted values.

    Every attribute and capacity this function can write adds up to 21 + 7 = 28, within the API's 32
    (a full NVIDIA GPU publishes at most 19 + 2, a MIG device 17 + 7).
    """
    if not dev.uuid:
        raise ValueError(f"device at index {dev.index} has no UUID, so it has no stable name")
    if dev.kind is DeviceKind.MIG and (dev.mig is None or not dev.parent_uuid):
        raise ValueError(f"MIG device {dev.uuid!r} has no parent or placement, so it has no stable name")
    entry = _Entry(device_name(dev))
    _identity(entry, dev, inv)
    if dev.kind is DeviceKind.MIG:
        entry.add_pci(dev, names.ATTR_PARENT_PCI_BUS_ID)  # a MIG device has no PCI function of its own
    elif dev.kind is DeviceKind.PARTITION:
        _partition(entry, dev)
        return DeviceEntry(entry.result(), tuple(entry.warnings))
    else:  # MIG devices have no MIG mode of their own and join no fabric (MIG does no P2P)
        entry.add_pci(dev)
        entry.put(names.ATTR_MIG_CAPABLE, dev.mig_capable)
        entry.put(names.ATTR_MIG_ENABLED, dev.mig_enabled)
        entry.put(names.ATTR_FABRIC_DOMAIN, dev.fabric_domain)
        entry.put(names.ATTR_NVLINK_COUNT, dev.nvlink_links)
    entry.quantity(names.CAP_MEMORY, dev.memory_bytes)
    entry.quantity(names.CAP_MULTIPROCESSORS, dev.multiprocessors)
    engines = dev.engines or EngineCounts()
    entry.quantity(names.CAP_COPY_ENGINES, engines.copy_engines)
    entry.quantity(names.CAP_DECODERS, engines.decoders)
    entry.quantity(names.CAP_ENCODERS, engines.encoders)
    entry.quantity(names.CAP_JPEG_ENGINES, engines.jpeg_engines)
    entry.quantity(names.CAP_OFA_ENGINES, engines.ofa_engines)
    return DeviceEntry(entry.result(), tuple(entry.warnings))


def _partition(entry: _Entry, dev: Device) -> None:
    """An AMD compute partition: placement via its parent, and memory published honestly (see names)."""
    entry.put(names.ATTR_PARENT_PCI_BUS_ID, normalize_bus_id(dev.parent_pci_bus_id or ""))
    if dev.pci is not None:  # the partition's own "bus id" is not a PCI function: no pciBusID
        entry.put(names.ATTR_STD_PCIE_ROOT, dev.pci.pcie_root)
        if dev.pci.numa_node is not None and dev.pci.numa_node >= 0:
            entry.put(names.ATTR_STD_NUMA_NODE, dev.pci.numa_node)
    entry.put(names.ATTR_FABRIC_DOMAIN, dev.fabric_domain)
    part = dev.partition
    shared = part.memory_shared_with if part is not None else None
    if part is not None:
        entry.put(names.ATTR_PARTITION_PROFILE, f"{part.compute_mode}_{part.memory_mode}".lower())
        entry.put(names.ATTR_MEMORY_PARTITION, part.memory_partition)
        entry.put(names.ATTR_MEMORY_SHARED_WITH, shared)
    if dev.memory_bytes is not None and shared:
        entry.quantity(names.CAP_MEMORY, dev.memory_bytes // shared)
        entry.quantity(names.CAP_MEMORY_POOL, dev.memory_bytes)
    entry.quantity(names.CAP_COMPUTE_UNITS, dev.compute_units)
    entry.quantity(names.CAP_SIMD_UNITS, dev.simd_units)


_TYPES: Final = {
    DeviceKind.GPU: names.TYPE_GPU,
    DeviceKind.MIG: names.TYPE_MIG,
    DeviceKind.PARTITION: names.TYPE_PARTITION,
}


def _identity(entry: _Entry, dev: Device, inv: Inventory) -> None:
    """What the device is (for a MIG device: its own identity, then its parent GPU's)."""
    entry.put(names.ATTR_VENDOR, _VENDOR_VALUES[dev.vendor])
    entry.put(names.ATTR_TYPE, _TYPES[dev.kind])
    entry.put(names.ATTR_UUID, dev.uuid)
    entry.put(names.ATTR_PARENT_UUID, dev.parent_uuid)
    entry.put(names.ATTR_PROFILE, dev.mig.profile if dev.mig else None)
    entry.put(names.ATTR_PRODUCT_NAME, dev.product_name)
    entry.put(names.ATTR_BRAND, dev.brand)
    entry.put(names.ATTR_ARCHITECTURE, dev.architecture)
    entry.put(names.ATTR_DRIVER_VERSION, inv.driver_version)
    if dev.vendor is Vendor.NVIDIA:
        entry.put(names.ATTR_CUDA_COMPUTE_CAPABILITY, dev.cuda_compute_capability)
        entry.put(names.ATTR_CUDA_DRIVER_VERSION, inv.cuda_driver_version)
    else:
        entry.put(names.ATTR_GFX_VERSION, dev.gfx_version)
        entry.put(names.ATTR_DEVICE_ID, dev.pci_device_id)
    entry.put(names.ATTR_INDEX, dev.index)
    entry.put(names.ATTR_MINOR, dev.minor)
    entry.put(names.ATTR_ADDRESSING_MODE, dev.addressing_mode)


def device_entry(dev: Device, inv: Inventory) -> k8stypes.Device:
    """The ResourceSlice device for ``dev``; :func:`build_device` also returns the warnings."""
    return build_device(dev, inv).device


# ---- the pool ------------------------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def slice_name(node_name: str, index: int) -> str:
    """Object name ``<node>-gpudra.io-<index>``; a node name too long for that is cut and given a hash."""
    tail = f"-{names.DRIVER_NAME}-{index}"
    if is_dns_subdomain(node_name + tail):
        return node_name + tail
    tail = f"-{_digest(node_name)}{tail}"
    prefix = re.sub(r"[^a-z0-9.-]", "-", node_name.lower()[: _OBJECT_NAME_MAX - len(tail)])
    prefix = re.sub(r"[-.]*\.[-.]*", ".", prefix).strip("-.")  # no label may start or end with "-"
    return f"{prefix or 'node'}{tail}"


def node_label_value(node_name: str) -> str:
    """Value of the :data:`LABEL_NODE` label: the node name, or a cut + hashed form when it is too long."""
    if len(node_name) <= _LABEL_VALUE_MAX and _LABEL_VALUE.fullmatch(node_name):
        return node_name
    suffix = f"-{_digest(node_name)}"
    prefix = re.sub(r"[^A-Za-z0-9_.-]", "-", node_name)[: _LABEL_VALUE_MAX - len(suffix)]
    prefix = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", prefix)
    return f"{prefix}{suffix}" if prefix else suffix[1:]


def _chunk_size(devices: Sequence[k8stypes.Device], max_devices_per_slice: int) -> int:
    if not 1 <= max_devices_per_slice <= MAX_DEVICES_PER_SLICE:
        raise ValueError(f"max_devices_per_slice must be 1..{MAX_DEVICES_PER_SLICE}: {max_devices_per_slice}")
    restricted = any(field in dev for dev in devices for field in _RESTRICTED_DEVICE_FIELDS)
    limit = MAX_DEVICES_PER_SLICE_RESTRICTED if restricted else MAX_DEVICES_PER_SLICE
    return min(max_devices_per_slice, limit)


def _metadata(node_name: str, node_uid: str | None, index: int) -> k8stypes.ObjectMeta:
    meta: k8stypes.ObjectMeta = {
        "name": slice_name(node_name, index),
        "labels": {LABEL_NODE: node_label_value(node_name)},
    }
    if node_uid is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": True}
        ]
    return meta


def pool_slices(
    devices: Sequence[k8stypes.Device],
    node_name: str,
    node_uid: str | None,
    generation: int,
    max_devices_per_slice: int = MAX_DEVICES_PER_SLICE,
) -> list[k8stypes.ResourceSlice]:
    """Spread built devices, sorted by name, over the slices of the node's pool (at least one slice)."""
    if not is_dns_subdomain(node_name):
        raise ValueError(f"node name {node_name!r} is not a DNS subdomain")
    if node_uid is not None and not node_uid:
        raise ValueError("node_uid must be None (unknown) or a non-empty UID")
    if not 0 <= generation <= _INT64_MAX:
        raise ValueError(f"pool generation must be a non-negative int64, not {generation}")
    for dev in devices:
        check_device(dev)
    ordered = sorted(devices, key=lambda d: d["name"])
    duplicates = sorted({a["name"] for a, b in itertools.pairwise(ordered) if a["name"] == b["name"]})
    if duplicates:
        raise ValueError(f"duplicate device names in one pool: {duplicates}")
    size = _chunk_size(ordered, max_devices_per_slice)
    chunks = [ordered[i : i + size] for i in range(0, len(ordered), size)] or [[]]
    return [
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": _metadata(node_name, node_uid, index),
            "spec": {
                "driver": names.DRIVER_NAME,
                "nodeName": node_name,
                "pool": {"name": node_name, "generation": generation, "resourceSliceCount": len(chunks)},
                "devices": copy.deepcopy(chunk),
            },
        }
        for index, chunk in enumerate(chunks)
    ]


@dataclass(frozen=True)
class SlicePlan:
    """The node's pool as slices, plus every value or device left out and why (for logs and Events)."""

    slices: tuple[k8stypes.ResourceSlice, ...]
    warnings: tuple[str, ...]


def _publishable_devices(inv: Inventory) -> tuple[list[k8stypes.Device], list[str]]:
    devices: list[k8stypes.Device] = []
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
        else:
            entry = build_device(dev, inv)
            devices.append(entry.device)
            warnings.extend(entry.warnings)
    counts = Counter(d["name"] for d in devices)
    clashes = sorted(name for name, count in counts.items() if count > 1)
    if clashes:
        warnings.append(f"devices not published because they would share a device name: {clashes}")
    return [d for d in devices if counts[d["name"]] == 1], warnings


def plan_pool(
    inv: Inventory,
    node_name: str,
    node_uid: str | None,
    generation: int,
    max_devices_per_slice: int = MAX_DEVICES_PER_SLICE,
) -> SlicePlan:
    """All slices of the node's pool for ``inv``; an inventory without devices gives one empty slice.

    Devices this code cannot publish yet (partitions), devices without a UUID or (MIG) placement and devices
    whose names clash are left out with a warning rather than failing the whole pool. A MIG-enabled GPU is
    published as its MIG devices, not as a whole GPU.
    """
    devices, warnings = _publishable_devices(inv)
    slices = pool_slices(devices, node_name, node_uid, generation, max_devices_per_slice)
    return SlicePlan(tuple(slices), tuple(warnings))


def plan_slices(
    inv: Inventory,
    node_name: str,
    node_uid: str | None,
    generation: int,
    max_devices_per_slice: int = MAX_DEVICES_PER_SLICE,
) -> list[k8stypes.ResourceSlice]:
    """:func:`plan_pool` without the warnings."""
    return list(plan_pool(inv, node_name, node_uid, generation, max_devices_per_slice).slices)
