"""The MIG sections of a hardware profile: a GPU's GPU-instance profile table and its existing MIG devices.

Schema, inside a device (field names are pynvml's structure fields, so values copy straight from captures)::

    "mig_mode": [1, 1],                   # nvmlDeviceGetMigMode [current, pending]; null -> NOT_SUPPORTED
    "mig_mode_change": "immediate",       # nvmlDeviceSetMigMode: "immediate" (Hopper and later, default) or
                                          # "reset_required" (Ampere: only the pending mode changes)
    "processes": 0,                       # processes running on the GPU (default 0): MIG mode cannot switch
    "mig_create_seconds": 0,              # how long creating a compute instance takes (real NVML: about a
                                          # second per instance; default 0); the GPU instance exists meanwhile
    "max_mig_device_count": 7,            # nvmlDeviceGetMaxMigDeviceCount (with the profile's MIG mode)
    "gpu_instance_profiles": [            # nvmlDeviceGetGpuInstanceProfileInfo(handle, index); other -> N/S
      {"index": 0, "id": 19, "name": "MIG 1g.10gb", "sliceCount": 1, "instanceCount": 7,
       "multiprocessorCount": 16, "copyEngineCount": 1, "decoderCount": 1, "encoderCount": 0,
       "jpegCount": 1, "ofaCount": 0, "memorySizeMB": 9984, "isP2pSupported": 0,
       "placements": [{"start": 0, "size": 1}, ...],   # nvmlDeviceGetGpuInstancePossiblePlacements (memory
                                                       # slices); null/missing -> N/S, nothing can be created
       "ci_profiles": [                   # nvmlGpuInstanceGetComputeInstanceProfileInfo in such a GI
         {"index": 0, "id": 0, "name": "MIG 1g.10gb", "sliceCount": 1, "instanceCount": 1,
          "multiprocessorCount": 16, "sharedCopyEngineCount": 1, "sharedDecoderCount": 1,
          "sharedEncoderCount": 0, "sharedJpegCount": 1, "sharedOfaCount": 0}
       ]}
    ],
    "mig_devices": [                      # in MIG device index order (nvmlDeviceGetMigDeviceHandleByIndex)
      {"uuid": "MIG-...", "memory_bytes": 42412802048,        # nvmlDeviceGetMemoryInfo(mig).total
       "gpu_instance": {"id": 2, "profile_id": 9, "placement": {"start": 4, "size": 4}},
       "compute_instance": {"id": 0, "profile_id": 2, "placement": {"start": 0, "size": 3}},
       "attributes": {"multiprocessorCount": 60, "sharedCopyEngineCount": 3, ...},   # nvmlDeviceGetAttributes
       "errors": {"nvmlDeviceGetAttributes": "NVML_ERROR_NOT_SUPPORTED"}}            # see MIG_CALLS
    ]

A GI profile or CI profile value given as null (or left out) is unknown: the profile-info structures read
0 there, and a MIG device created from such a row answers NOT_SUPPORTED for what needs it (its memory when
``memorySizeMB`` is unknown, ``nvmlDeviceGetAttributes`` when any of its counts is). A CI profile's
``index`` (its NVML_COMPUTE_INSTANCE_PROFILE_* value) defaults to its ``id``: NVML's CI profile id equals the
index on every GPU seen. The full-size CI profile (``sliceCount`` = the GI's) is the one compute instances
are created from (:mod:`~gpudra.vendors.mock.fake_nvml_migops`). A pre-made MIG device's GPU-instance
placement must be one of its profile's ``placements`` when those are given.
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
#: The calls that change or list MIG instances; a device's ``errors`` can inject their faults.
DYNAMIC_MIG_CALLS: Final = frozenset(
    {
        "nvmlDeviceSetMigMode", "nvmlDeviceGetGpuInstancePossiblePlacements",
        "nvmlDeviceGetGpuInstanceRemainingCapacity", "nvmlDeviceCreateGpuInstance",
        "nvmlDeviceCreateGpuInstanceWithPlacement", "nvmlGpuInstanceDestroy", "nvmlDeviceGetGpuInstances",
        "nvmlGpuInstanceGetComputeInstanceProfileInfo", "nvmlGpuInstanceCreateComputeInstance",
        "nvmlGpuInstanceCreateComputeInstanceWithPlacement", "nvmlComputeInstanceDestroy",
        "nvmlGpuInstanceGetComputeInstances",
    }
)  # fmt: skip
MIG_MODE_CHANGES: Final = ("immediate", "reset_required")
GI_PROFILE_FIELDS: Final = (
    "id", "isP2pSupported", "sliceCount", "instanceCount", "multiprocessorCount", "copyEngineCount",
    "decoderCount", "encoderCount", "jpegCount", "ofaCount", "memorySizeMB",
)  # fmt: skip
CI_PROFILE_FIELDS: Final = (
    "id", "sliceCount", "instanceCount", "multiprocessorCount", "sharedCopyEngineCount", "sharedDecoderCount",
    "sharedEncoderCount", "sharedJpegCount", "sharedOfaCount",
)  # fmt: skip
CI_PROFILE_COUNT: Final = 9  # NVML_COMPUTE_INSTANCE_PROFILE_COUNT
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
class Placement:
    start: int
    size: int


@dataclass(frozen=True, slots=True)
class ComputeInstanceProfileInfo:
    """One row of ``c_nvmlComputeInstanceProfileInfo_v2_t``, served for CI profile ``index`` in a GI."""

    index: int
    name: str
    values: Mapping[str, int]  # CI_PROFILE_FIELDS -> value (unknown fields read 0)
    unknown: frozenset[str] = frozenset()  # fields given as null or left out


@dataclass(frozen=True, slots=True)
class GpuInstanceProfileInfo:
    """One row of ``c_nvmlGpuInstanceProfileInfo_v2_t``, served for profile ``index``, with its placements
    and the compute-instance profiles of a GPU instance of it."""

    index: int
    name: str  # "MIG 1g.10gb", as NVML names it
    values: Mapping[str, int]  # GI_PROFILE_FIELDS -> value (missing fields read 0)
    placements: tuple[Placement, ...] | None = None  # None: unknown
    ci_profiles: tuple[ComputeInstanceProfileInfo, ...] = ()
    unknown: frozenset[str] = frozenset()  # fields given as null or left out

    @property
    def id(self) -> int:
        return self.values["id"]

    @property
    def slices(self) -> int:
        return self.values["sliceCount"]


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
    raw = obj(item, where, frozenset({"index", "name", "placements", "ci_profiles", *GI_PROFILE_FIELDS}))
    req(raw, "id", int, where)
    req(raw, "sliceCount", int, where)
    values = {k: non_negative(raw, k, where, 0) or 0 for k in GI_PROFILE_FIELDS}
    return GpuInstanceProfileInfo(
        index=non_negative(raw, "index", where) or 0,
        name=req(raw, "name", str, where),
        values=values,
        placements=_placements(raw.get("placements"), f"{where}.placements"),
        ci_profiles=_ci_profiles(raw.get("ci_profiles"), f"{where}.ci_profiles", values["sliceCount"]),
        unknown=frozenset(k for k in GI_PROFILE_FIELDS if raw.get(k) is None),
    )


def _placements(value: object, where: str) -> tuple[Placement, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise Invalid(f'{where}: expected a list of {{"start", "size"}} objects')
    found = tuple(_placement(item, f"{where}[{i}]") for i, item in enumerate(value))
    if len(set(found)) != len(found):
        raise Invalid(f"{where}: a placement is listed twice")
    return found


def _placement(value: object, where: str) -> Placement:
    raw = obj(value, where, frozenset({"start", "size"}))
    start, size = non_negative(raw, "start", where), non_negative(raw, "size", where)
    if start is None or not size:
        raise Invalid(f"{where}: start (>= 0) and size (>= 1) are required")
    return Placement(start, size)


def _ci_profiles(value: object, where: str, gi_slices: int) -> tuple[ComputeInstanceProfileInfo, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid(f"{where}: expected a list of compute-instance profile objects")
    rows = tuple(_ci_profile(item, f"{where}[{i}]", gi_slices) for i, item in enumerate(value))
    for key in ("index", "id"):
        seen = [row.index if key == "index" else row.values["id"] for row in rows]
        if len(set(seen)) != len(seen):
            raise Invalid(f"{where}: compute-instance profile {key}s must be unique, got {seen}")
    return rows


def _ci_profile(item: object, where: str, gi_slices: int) -> ComputeInstanceProfileInfo:
    raw = obj(item, where, frozenset({"index", "name", *CI_PROFILE_FIELDS}))
    profile_id = req(raw, "id", int, where)
    slices = req(raw, "sliceCount", int, where)
    if not 1 <= slices <= gi_slices:
        raise Invalid(f"{where}.sliceCount: {slices} is not within the GPU instance's 1..{gi_slices} slices")
    values = {k: non_negative(raw, k, where, 0) or 0 for k in CI_PROFILE_FIELDS}
    index = non_negative(raw, "index", where, profile_id)
    if index is None or index >= CI_PROFILE_COUNT:
        raise Invalid(f"{where}.index: {index} is not an NVML_COMPUTE_INSTANCE_PROFILE_* (0..8)")
    return ComputeInstanceProfileInfo(
        index=index,
        name=req(raw, "name", str, where),
        values=values,
        unknown=frozenset(k for k in CI_PROFILE_FIELDS if raw.get(k) is None),
    )


def mig_devices(
    value: object, where: str, gi_profiles: tuple[GpuInstanceProfileInfo, ...]
) -> tuple[MigDeviceProfile, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid(f"{where}: expected a list of MIG device objects")
    known = {row.values["id"]: row for row in gi_profiles}
    devices = tuple(_mig_device(item, f"{where}[{i}]") for i, item in enumerate(value))
    for i, dev in enumerate(devices):
        row = known.get(dev.gpu_instance.profile_id)
        if row is None:
            raise Invalid(
                f"{where}[{i}].gpu_instance.profile_id: {dev.gpu_instance.profile_id} is not "
                "the id of any entry in gpu_instance_profiles"
            )
        placement = dev.gpu_instance.placement
        if row.placements is not None and placement not in row.placements:
            raise Invalid(
                f"{where}[{i}].gpu_instance.placement: {placement.start}:{placement.size} is not one of "
                f"the placements of {row.name!r}"
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


def _seconds(raw: dict[str, Any], key: str, where: str) -> float:
    value = raw.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 60:
        raise Invalid(f"{where}.{key}: expected a number of seconds from 0 to 60, got {value!r}")
    return float(value)


def mig_section(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The MIG keys of a device object, parsed, as DeviceProfile keyword arguments."""
    gi_profiles = gpu_instance_profiles(raw.get("gpu_instance_profiles"), f"{where}.gpu_instance_profiles")
    devices = mig_devices(raw.get("mig_devices"), f"{where}.mig_devices", gi_profiles)
    max_count = non_negative(raw, "max_mig_device_count", where)
    if len(devices) > (max_count or 0):
        shown = "null" if max_count is None else max_count
        raise Invalid(f"{where}.max_mig_device_count: {shown} is fewer than the {len(devices)} mig_devices")
    change = opt(raw, "mig_mode_change", str, where) or MIG_MODE_CHANGES[0]
    if change not in MIG_MODE_CHANGES:
        raise Invalid(
            f"{where}.mig_mode_change: expected one of {', '.join(MIG_MODE_CHANGES)}, got {change!r}"
        )
    return {
        "mig_mode": mig_mode(raw.get("mig_mode"), f"{where}.mig_mode"),
        "mig_mode_change": change,
        "processes": non_negative(raw, "processes", where, 0) or 0,
        "mig_create_seconds": _seconds(raw, "mig_create_seconds", where),
        "max_mig_device_count": max_count,
        "gpu_instance_profiles": gi_profiles,
        "mig_devices": devices,
    }


MIG_KEYS: Final = frozenset(
    {
        "mig_mode", "mig_mode_change", "processes", "mig_create_seconds", "max_mig_device_count",
        "gpu_instance_profiles", "mig_devices",
    }
)  # fmt: skip
