"""Static MIG discovery: the MIG devices that exist on a MIG-enabled GPU, each with its placement.

Per parent GPU: ``nvmlDeviceGetMaxMigDeviceCount`` and ``nvmlDeviceGetMigDeviceHandleByIndex`` (NOT_FOUND =
empty slot). Per MIG device: its UUID, GPU-instance and compute-instance ids, ``nvmlDeviceGetAttributes``
(SMs, engines, slice counts), ``nvmlDeviceGetMemoryInfo``; the GPU instance's profile id and memory-slice
placement from ``nvmlDeviceGetGpuInstanceById`` + ``nvmlGpuInstanceGetInfo``; the compute instance's profile
and placement from ``nvmlGpuInstanceGetComputeInstanceById`` + ``nvmlComputeInstanceGetInfo``; the profile
name from the parent's ``nvmlDeviceGetGpuInstanceProfileInfo`` table (its ``name`` field, "MIG 1g.10gb").

A MIG device whose UUID, GPU-instance placement or profile cannot be read is skipped with a warning: its
device name encodes that placement, so it could not be named stably. Reading a GPU instance by id needs a
privileged user (NVML answers NO_PERMISSION otherwise), as the kubelet plugin runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from gpudra.model.inventory import Device, DeviceKind, EngineCounts, MigInfo, Vendor
from gpudra.vendors.nvidia.reader import Reader, field, integer, text

_MIG_ENABLE: Final = 1
_GI_PROFILE_COUNT: Final = 18  # NVML_GPU_INSTANCE_PROFILE_COUNT in nvidia-ml-py 13
_MIB: Final = 1 << 20


@dataclass(frozen=True, slots=True)
class GpuInstanceProfile:
    name: str  # "1g.10gb", without NVML's "MIG " prefix
    slices: int | None  # compute slices


def mig_mode(reader: Reader, handle: Any, where: str) -> tuple[bool | None, bool | None]:
    """``(migCapable, migEnabled)`` from ``nvmlDeviceGetMigMode`` (current mode).

    NOT_SUPPORTED is the answer "not MIG capable" (as go-nvlib reads it): ``(False, False)``. Any other
    failure leaves both unknown. A pending mode that differs from the current one is logged.
    """
    mode, error = reader.outcome("nvmlDeviceGetMigMode", handle, what=where)
    if error == "NOT_SUPPORTED":
        return False, False
    if not (isinstance(mode, list | tuple) and len(mode) == 2):
        return None, None
    current, pending = integer(mode[0]), integer(mode[1])
    if current is None:
        return True, None
    enable = reader.nvml.constant("NVML_DEVICE_MIG_ENABLE", _MIG_ENABLE)
    if pending is not None and pending != current:
        reader.warn(
            f"{where}: MIG mode change pending (current {current}, pending {pending}) until the GPU is "
            "reset; publishing the current mode"
        )
    return True, current == enable


def gpu_instance_profiles(reader: Reader, handle: Any, where: str) -> dict[int, GpuInstanceProfile]:
    """Profile id -> name and slices, from every profile index the parent supports."""
    count = reader.nvml.constant("NVML_GPU_INSTANCE_PROFILE_COUNT", _GI_PROFILE_COUNT)
    table: dict[int, GpuInstanceProfile] = {}
    for index in range(count):
        info, _ = reader.outcome(
            "nvmlDeviceGetGpuInstanceProfileInfo", handle, index, what=where, expected=("INVALID_ARGUMENT",)
        )
        profile_id, name = field(info, "id"), text(getattr(info, "name", None))
        if profile_id is not None and name:
            short = name.removeprefix("MIG ").strip()
            table[profile_id] = GpuInstanceProfile(short, field(info, "sliceCount"))
    return table


@dataclass(frozen=True, slots=True)
class _Parent:
    handle: Any
    device: Device
    profiles: dict[int, GpuInstanceProfile]


@dataclass(frozen=True, slots=True)
class _Instance:
    """Where a MIG device sits: its GPU instance (profile, memory-slice placement) and compute instance."""

    gi_id: int
    ci_id: int
    gi_profile_id: int
    start: int
    size: int
    ci_profile_id: int | None
    ci_start: int | None


def mig_devices(reader: Reader, handle: Any, parent: Device, where: str) -> list[tuple[Device, Any]]:
    """The MIG devices of a MIG-enabled ``parent``, each with its handle; a warning when there are none."""
    count = integer(reader.value("nvmlDeviceGetMaxMigDeviceCount", handle, what=where))
    if count is None:
        reader.warn(
            f"{where}: MIG mode is enabled but the MIG device count is unreadable; nothing "
            "is published for this GPU"
        )
        return []
    found: list[tuple[Device, Any]] = []
    context: _Parent | None = None
    for index in range(count):
        mig = reader.value("nvmlDeviceGetMigDeviceHandleByIndex", handle, index, what=where)
        if mig is None:
            continue
        if context is None:
            context = _Parent(handle, parent, gpu_instance_profiles(reader, handle, where))
        device = _mig_device(reader, context, mig, f"{where} MIG device {index}")
        if device is not None:
            found.append((device, mig))
    if not found:
        reader.warn(
            f"{where}: MIG mode is enabled but no MIG device exists; nothing is published "
            "for this GPU until MIG devices are created"
        )
    return found


def _mig_device(reader: Reader, parent: _Parent, mig: Any, where: str) -> Device | None:
    uuid = text(reader.value("nvmlDeviceGetUUID", mig, what=where))
    if uuid is None:
        reader.warn(f"{where} skipped: UUID unreadable")
        return None
    where = f"MIG device {uuid}"
    instance = _instance(reader, parent.handle, mig, where)
    profile = parent.profiles.get(instance.gi_profile_id) if instance else None
    if instance is None or profile is None:
        reader.warn(
            f"{where} skipped: GPU instance placement or profile unreadable, so it has no stable name"
        )
        return None
    attributes = reader.value("nvmlDeviceGetAttributes", mig, what=where)
    ci_slices = field(attributes, "computeInstanceSliceCount")
    gi_slices = field(attributes, "gpuInstanceSliceCount") or profile.slices
    spans = None if ci_slices is None or gi_slices is None else ci_slices >= gi_slices
    if spans is not True and (instance.ci_profile_id is None or instance.ci_start is None):
        reader.warn(
            f"{where} skipped: compute instance placement unreadable and its GPU instance may hold several"
        )
        return None
    info = MigInfo(
        profile=profile.name if spans is not False else f"{ci_slices}c.{profile.name}",
        gi_profile_id=instance.gi_profile_id, placement_start=instance.start, placement_size=instance.size,
        gi_id=instance.gi_id, ci_id=instance.ci_id, ci_profile_id=instance.ci_profile_id,
        parent_minor=parent.device.minor, ci_placement_start=instance.ci_start, ci_spans_gpu_instance=spans,
    )  # fmt: skip
    memory = _memory(reader, mig, attributes, where)
    return _with_parent_identity(parent.device, uuid, info, attributes, memory)


def _instance(reader: Reader, parent_handle: Any, mig: Any, where: str) -> _Instance | None:
    gi_id = integer(reader.value("nvmlDeviceGetGpuInstanceId", mig, what=where))
    ci_id = integer(reader.value("nvmlDeviceGetComputeInstanceId", mig, what=where))
    if gi_id is None or ci_id is None:
        return None
    gi, error = reader.outcome("nvmlDeviceGetGpuInstanceById", parent_handle, gi_id, what=where)
    if error == "NO_PERMISSION":
        reader.warn(
            f"{where}: nvmlDeviceGetGpuInstanceById needs a privileged user (root) to read the GPU "
            "instance's placement"
        )
    gi_info = reader.value("nvmlGpuInstanceGetInfo", gi, what=where) if gi is not None else None
    gi_profile_id = field(gi_info, "profileId")
    placement = getattr(gi_info, "placement", None)
    start, size = field(placement, "start"), field(placement, "size")
    if gi_profile_id is None or start is None or size is None:
        return None
    ci = reader.value("nvmlGpuInstanceGetComputeInstanceById", gi, ci_id, what=where)
    ci_info = reader.value("nvmlComputeInstanceGetInfo", ci, what=where) if ci is not None else None
    ci_start = field(getattr(ci_info, "placement", None), "start")
    return _Instance(gi_id, ci_id, gi_profile_id, start, size, field(ci_info, "profileId"), ci_start)


def _with_parent_identity(
    parent: Device, uuid: str, info: MigInfo, attributes: object, memory: int | None
) -> Device:
    return Device(
        kind=DeviceKind.MIG, vendor=Vendor.NVIDIA, uuid=uuid, product_name=parent.product_name,
        index=parent.index, minor=parent.minor, brand=parent.brand, architecture=parent.architecture,
        memory_bytes=memory, multiprocessors=field(attributes, "multiprocessorCount"),
        cuda_compute_capability=parent.cuda_compute_capability, pci=parent.pci, parent_uuid=parent.uuid,
        parent_pci_bus_id=parent.pci.bus_id if parent.pci else None, mig=info,
        addressing_mode=parent.addressing_mode,
        engines=EngineCounts(
            copy_engines=field(attributes, "sharedCopyEngineCount"),
            decoders=field(attributes, "sharedDecoderCount"),
            encoders=field(attributes, "sharedEncoderCount"),
            jpeg_engines=field(attributes, "sharedJpegCount"),
            ofa_engines=field(attributes, "sharedOfaCount"),
        ),
    )  # fmt: skip


def _memory(reader: Reader, mig: Any, attributes: object, where: str) -> int | None:
    """Bytes from ``nvmlDeviceGetMemoryInfo``, else the attributes' ``memorySizeMB`` (in MiB)."""
    total = field(reader.value("nvmlDeviceGetMemoryInfo", mig, what=where), "total")
    if total is not None and total > 0:
        return total
    mib = field(attributes, "memorySizeMB")
    return mib * _MIB if mib is not None and mib > 0 else None
