"""One device as the ResourceSlice publishes it: its name and its attributes and capacities (pure).

A value the API would reject (string or version > 64 bytes, a version that is not strict semver, an int
outside int64, a malformed PCI address) is OMITTED with a warning, never cut: a truncated product name is
a fabricated value a CEL selector could match by accident, while an absent attribute is honest (selectors
must guard optional attributes anyway). "" and a negative NUMA node mean unknown and are omitted silently.
A rule only our own code can break (attribute names, > 32 attributes + capacities, device names) raises
ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from gpudra.model import k8stypes, names
from gpudra.model.inventory import Device, DeviceKind, EngineCounts, Inventory, Semver, Vendor
from gpudra.planning.apirules import attribute_problem, check_device, normalize_bus_id

_VENDOR_VALUES: Final = {Vendor.NVIDIA: names.VENDOR_NVIDIA, Vendor.AMD: names.VENDOR_AMD}


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
    if not dev.uuid and not dev.created_at_prepare:
        raise ValueError(f"device at index {dev.index} has no UUID, so it has no stable name")
    if dev.kind is DeviceKind.MIG and (dev.mig is None or not dev.parent_uuid):
        raise ValueError(f"MIG device {dev.uuid!r} has no parent or placement, so it has no stable name")
    # A MIG device created at prepare has no UUID yet: its entry has no uuid attribute (never a made-up one).
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
