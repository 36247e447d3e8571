"""The MIG sections of a hardware profile: a GPU's GPU-instance profile table and its existing MIG devices.

Schema, inside a device (field names are pynvml's structure fields, so values copy straight from captures)::

    "mig_mode": [1, 1],                   # nvmlDeviceGetMigMode [current, pending]; null -> NOT_SUPPORTED
    "max_mig_device_count": 7,            # nvmlDeviceGetMaxMigDeviceCount
    "gpu_instance_profiles": [            # nvmlDeviceGetGpuInstanceProfileInfo(handle, index); other -> N/S
      {"index": 0, "id": 19, "name": "MIG 1g.10gb", "sliceCount": 1, "instanceCount": 7,
       "multiprocessorCount": 16, "copyEngineCount": 1, "decoderCount": 1, "encoderCount": 0,
       "jpegCount": 1, "ofaCount": 0, "memorySizeMB": 9984, "isP2pSupported": 0}
    ],
    "mig_devices": [                      # in MIG device index order (nvmlDeviceGetMigDeviceHandleByIndex)
      {"uuid": "MIG-...", "memory_bytes": 42412802048,        # nvmlDeviceGetMemoryInfo(mig).total
       "gpu_instance": {"id": 2, "profile_id": 9, "placement": {"start": 4, "size": 4}},
       "compute_instance": {"id": 0, "profile_id": 2, "placement": {"start": 0, "size": 3}},
       "attributes": {"multiprocessorCount": 60, "sharedCopyEngineCount": 3, ...},   # nvmlDeviceGetAttributes
       "errors": {"nvmlDeviceGetAttributes": "NVML_ERROR_NOT_SUPPORTED"}}            # see MIG_CALLS
    ]
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gpudra.vendors.mock.profile_json import Invalid, errors, int_list, non_negative, obj, opt, req

#: Calls whose faults a MIG device can inject (``"*"`` = all of them, for that MIG device only).
MIG_CALLS: Final = frozenset(
    {
        "nvmlDeviceGetMigDeviceHandleByIndex", "nvmlDeviceGetUUID", "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetAttributes", "nvmlDeviceGetGpuInstanceId", "nvmlDeviceGetComputeInstanceId",
        "nvmlDeviceGetGpuInstanceById", "nvmlGpuInstanceGetInfo", "nvmlGpuInstanceGetComputeInstanceById",
        "nvmlComputeInstanceGetInfo", "*",
    }
)  # fmt: skip
GI_PROFILE_FIELDS: Final = (
    "id", "isP2pSupported", "sliceCount", "instanceCount", "multiprocessorCount", "copyEngineCount",
    "decoderCount", "encoderCount", "jpegCount", "ofaCount", "memorySizeMB",
)  # fmt: skip
ATTRIBUTE_FIELDS: Final = (
    "multiprocessorCount", "sharedCopyEngineCount", "sharedDecoderCount", "sharedEncoderCount",
    "sharedJpegCount", "sharedOfaCount", "gpuInstanceSliceCount", "computeInstanceSliceCount",
    "memorySizeMB",
)  # fmt: skip
_MIG_KEYS: Final = frozenset(
    {"uuid", "memory_bytes", "gpu_instance", "compute_instance", "attributes", "errors"}
)
_INSTANCE_KEYS: Final = frozenset({"id", "profile_id", "placement"})


@dataclass(frozen=True, slots=True)
class GpuInstanceProfileInfo:
    """One row of ``c_nvmlGpuInstanceProfileInfo_v2_t``, served for profile ``index``."""

    index: int
    name: str  # "MIG 1g.10gb", as NVML names it
    values: Mapping[str, int]  # GI_PROFILE_FIELDS -> value (missing fields read 0)


@dataclass(frozen=True, slots=True)
class Placement:
    start: int
    size: int


@dataclass(frozen=True, slots=True)
class InstanceProfile:
    """A GPU instance or compute instance: id, profile id and placement."""

    id: int
    profile_id: int
    placement: Placement


@dataclass(frozen=True, slots=True)
class MigDeviceProfile:
    """One existing MIG device. ``None`` values make the matching call raise NOT_SUPPORTED."""

    uuid: str | None
    gpu_instance: InstanceProfile
    compute_instance: InstanceProfile
    memory_bytes: int | None = None
    attributes: Mapping[str, int] | None = None  # ATTRIBUTE_FIELDS -> value
    errors: dict[str, int] = field(default_factory=dict)


def mig_mode(value: object, where: str) -> tuple[int, int] | None:
    pair = int_list(value, where, length=2)
    return (pair[0], pair[1]) if pair is not None else None


def gpu_instance_profiles(value: object, where: str) -> tuple[GpuInstanceProfileInfo, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid(f"{where}: expected a list of GPU-instance profile objects")
    rows = tuple(_gi_profile(item, f"{where}[{i}]") for i, item in enumerate(value))
    indices = [row.index for row in rows]
    if len(set(indices)) != len(indices):
        raise Invalid(f"{where}: profile indices must be unique, got {indices}")
    return rows


def _gi_profile(item: object, where: str) -> GpuInstanceProfileInfo:
    raw = obj(item, where, frozenset({"index", "name", *GI_PROFILE_FIELDS}))
    req(raw, "id", int, where)
    req(raw, "sliceCount", int, where)
    values = {k: non_negative(raw, k, where, 0) or 0 for k in GI_PROFILE_FIELDS}
    return GpuInstanceProfileInfo(
        index=non_negative(raw, "index", where) or 0, name=req(raw, "name", str, where), values=values
    )


def mig_devices(
    value: object, where: str, gi_profiles: tuple[GpuInstanceProfileInfo, ...]
) -> tuple[MigDeviceProfile, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid(f"{where}: expected a list of MIG device objects")
    known = {row.values["id"] for row in gi_profiles}
    devices = tuple(_mig_device(item, f"{where}[{i}]") for i, item in enumerate(value))
    for i, dev in enumerate(devices):
        if dev.gpu_instance.profile_id not in known:
            raise Invalid(
                f"{where}[{i}].gpu_instance.profile_id: {dev.gpu_instance.profile_id} is not "
                "the id of any entry in gpu_instance_profiles"
            )
    return devices


def _mig_device(item: object, where: str) -> MigDeviceProfile:
    raw = obj(item, where, _MIG_KEYS)
    attributes = raw.get("attributes")
    values: dict[str, int] | None = None
    if attributes is not None:
        attrs = obj(attributes, f"{where}.attributes", frozenset(ATTRIBUTE_FIELDS))
        values = {k: non_negative(attrs, k, f"{where}.attributes", 0) or 0 for k in ATTRIBUTE_FIELDS}
    return MigDeviceProfile(
        uuid=opt(raw, "uuid", str, where),
        gpu_instance=_instance(raw.get("gpu_instance"), f"{where}.gpu_instance"),
        compute_instance=_instance(raw.get("compute_instance"), f"{where}.compute_instance"),
        memory_bytes=non_negative(raw, "memory_bytes", where),
        attributes=values,
        errors=errors(raw.get("errors"), f"{where}.errors", MIG_CALLS),
    )


def _instance(value: object, where: str) -> InstanceProfile:
    raw = obj(value, where, _INSTANCE_KEYS)
    placement = obj(raw.get("placement"), f"{where}.placement", frozenset({"start", "size"}))
    return InstanceProfile(
        id=req(raw, "id", int, where),
        profile_id=req(raw, "profile_id", int, where),
        placement=Placement(
            req(placement, "start", int, f"{where}.placement"),
            req(placement, "size", int, f"{where}.placement"),
        ),
    )


def mig_section(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The MIG keys of a device object, parsed, as DeviceProfile keyword arguments."""
    gi_profiles = gpu_instance_profiles(raw.get("gpu_instance_profiles"), f"{where}.gpu_instance_profiles")
    devices = mig_devices(raw.get("mig_devices"), f"{where}.mig_devices", gi_profiles)
    max_count = non_negative(raw, "max_mig_device_count", where)
    if len(devices) > (max_count or 0):
        shown = "null" if max_count is None else max_count
        raise Invalid(f"{where}.max_mig_device_count: {shown} is fewer than the {len(devices)} mig_devices")
    return {
        "mig_mode": mig_mode(raw.get("mig_mode"), f"{where}.mig_mode"),
        "max_mig_device_count": max_count,
        "gpu_instance_profiles": gi_profiles,
        "mig_devices": devices,
    }


MIG_KEYS: Final = frozenset({"mig_mode", "max_mig_device_count", "gpu_instance_profiles", "mig_devices"})
