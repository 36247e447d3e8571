"""The vendor-neutral, frozen model of what discovery found on this node.

Backends (NVML, AMD, the mock) produce an :class:`Inventory`; everything above them — slice planning,
prepare, CDI — reads only this model and never a vendor library. Unknown values are ``None``: a backend
never fills a gap with a guess.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Vendor(StrEnum):
    NVIDIA = "nvidia"
    AMD = "amd"


class DeviceKind(StrEnum):
    GPU = "gpu"
    MIG = "mig"
    PARTITION = "partition"


@dataclass(frozen=True, slots=True)
class Semver:
    """A strict semver 2.0 core version (what the ResourceSlice ``version`` attribute accepts)."""

    major: int
    minor: int
    patch: int

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    @classmethod
    def loose(cls, text: str) -> Semver | None:
        """Parse ``580.159.04`` / ``9.0`` / ``13`` (leading zeros dropped); None if not numeric."""
        parts = text.strip().split(".")
        if not 1 <= len(parts) <= 3 or not all(p.isascii() and p.isdigit() for p in parts):
            return None
        nums = [int(p) for p in parts] + [0] * (3 - len(parts))
        return cls(nums[0], nums[1], nums[2])


@dataclass(frozen=True, slots=True)
class PciPlacement:
    """Where a device sits on the PCI tree, in Kubernetes' formats."""

    bus_id: str  # lower case, 4-digit domain: "0000:1b:00.0"
    pcie_root: str | None = None  # "pci0000:16", from the resolved sysfs path
    numa_node: int | None = None  # never negative; None when unknown


@dataclass(frozen=True, slots=True)
class MigInfo:
    """Where a MIG device sits inside its parent GPU (NVML GPU-instance / compute-instance identity)."""

    profile: str  # "1g.10gb", "1g.10gb+me" — as NVML names it, without the "MIG " prefix
    gi_profile_id: int  # NVML GPU-instance profile id (e.g. 19 for 1g.10gb on H100)
    placement_start: int  # first memory slice of the GPU instance
    placement_size: int
    #: GPU instance id on the parent; None for a device published to be created at prepare (dynamic MIG):
    #: the hardware assigns the ids when prepare creates the instances
    gi_id: int | None
    ci_id: int | None  # compute instance id inside the GPU instance; None as gi_id
    ci_profile_id: int | None = None
    parent_minor: int | None = None  # /dev/nvidia<minor> of the parent
    ci_placement_start: int | None = None  # first compute slice of the compute instance inside its GI
    #: True: the compute instance spans its whole GPU instance (the usual one CI per GI); False: the GI is
    #: split into several compute instances; None: unknown. Device names encode the CI only when not True.
    ci_spans_gpu_instance: bool | None = None
    gi_slices: int | None = None  # compute slices of the GPU instance (its profile's sliceCount)


@dataclass(frozen=True, slots=True)
class EngineCounts:
    """Media/copy engines of a device (MIG slices and AMD partitions own a share of them)."""

    copy_engines: int | None = None
    decoders: int | None = None
    encoders: int | None = None
    jpeg_engines: int | None = None
    ofa_engines: int | None = None


@dataclass(frozen=True, slots=True)
class MigPlacement:
    """Where a GPU instance may sit: its first memory slice and how many memory slices it spans."""

    start: int
    size: int


@dataclass(frozen=True, slots=True)
class MigProfile:
    """One GPU-instance profile a MIG-capable GPU supports, as NVML describes it, with every placement NVML
    allows for it (``nvmlDeviceGetGpuInstancePossiblePlacements``). What a dynamic MIG device of this
    profile gets is exactly this: its compute slices, memory, SMs and engines."""

    name: str  # "1g.10gb", "1g.10gb+me" (without NVML's "MIG " prefix)
    gi_profile_id: int  # NVML GPU-instance profile id (19 for 1g.10gb on H100)
    compute_slices: int
    memory_bytes: int | None
    multiprocessors: int | None
    engines: EngineCounts
    placements: tuple[MigPlacement, ...]


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """An AMD compute partition and the memory it really draws from."""

    compute_mode: str  # "SPX" | "DPX" | "QPX" | "CPX"
    memory_mode: str  # "NPS1" | "NPS2" | "NPS4"
    index: int  # partition index on the parent GPU
    memory_partition: int | None = None  # which NUMA memory partition of the parent it allocates from
    memory_shared_with: int | None = None  # compute partitions drawing from that same memory pool


@dataclass(frozen=True, slots=True)
class Device:
    """One allocatable device: a full GPU, a MIG slice or an AMD partition."""

    kind: DeviceKind
    vendor: Vendor
    uuid: str  # vendor identity, e.g. "GPU-bb61b538-..."; the device name derives from it
    product_name: str
    index: int  # enumeration index (informational; never used for naming)
    minor: int | None = None  # device-node minor (/dev/nvidia<minor>)
    brand: str | None = None
    architecture: str | None = None  # "Hopper", "Ampere", ...
    memory_bytes: int | None = None
    multiprocessors: int | None = None
    cuda_compute_capability: Semver | None = None
    pci: PciPlacement | None = None
    parent_uuid: str | None = None  # for MIG slices / partitions
    parent_pci_bus_id: str | None = None  # for partitions (and MIG: the parent's bus id)
    # NVIDIA
    mig: MigInfo | None = None
    mig_capable: bool | None = None
    mig_enabled: bool | None = None
    #: A MIG-capable GPU: every GPU-instance profile it supports with its placements (empty when NVML did
    #: not give the whole table: such a GPU is never partitioned at prepare)
    mig_profiles: tuple[MigProfile, ...] = ()
    #: Set by the offer on a whole GPU published as a partitionable device: gpudra manages its MIG mode
    #: (prepare may switch it). Never set by discovery, never on a GPU published under static MIG.
    mig_managed: bool = False
    addressing_mode: str | None = None  # NVML addressing mode name, when reported
    engines: EngineCounts | None = None
    # fabric: a vendor-neutral id of the high-bandwidth domain (NVLink clique / node-local NVLink island /
    # AMD XGMI hive) the device belongs to; devices with equal values can talk over that fabric
    fabric_domain: str | None = None
    nvlink_links: int | None = None  # active NVLink links
    # AMD
    gfx_version: str | None = None  # "gfx942"
    pci_device_id: str | None = None  # "0x74a1"
    compute_units: int | None = None
    simd_units: int | None = None
    partition: PartitionInfo | None = None

    @property
    def created_at_prepare(self) -> bool:
        """A MIG device published before it exists (dynamic MIG): prepare creates it at its placement, and
        its UUID and instance ids are known only then (``uuid`` is "")."""
        return self.mig is not None and self.mig.gi_id is None


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything one discovery pass found on the node."""

    devices: tuple[Device, ...] = ()
    driver_version: Semver | None = None  # kernel driver, e.g. 580.159.4
    cuda_driver_version: Semver | None = None  # e.g. 13.0.0 from NVML's 13000
    warnings: tuple[str, ...] = field(default=())  # what discovery skipped or could not read, for logs
    #: Some GPU's NVLink fabric registration has not finished (NVML state NOT_STARTED / IN_PROGRESS): its
    #: ``fabric_domain`` is missing for now. Discover again later and republish when it changes.
    fabric_pending: bool = False

    def by_uuid(self) -> dict[str, Device]:
        return {d.uuid: d for d in self.devices}
