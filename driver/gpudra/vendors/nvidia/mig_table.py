"""The MIG profile table of a MIG-capable GPU, with placements: what dynamic MIG may create on it.

For every GPU-instance profile index the GPU supports (``nvmlDeviceGetGpuInstanceProfileInfo``; the others
answer NOT_SUPPORTED or INVALID_ARGUMENT), the profile's id, name, compute slices, memory (``memorySizeMB``
is MiB despite its name), SMs and engines, and every placement NVML allows for it
(``nvmlDeviceGetGpuInstancePossiblePlacements``, which fills a caller-allocated array). NVML answers both with
MIG mode off too (the H100 capture in ``shared/fixtures/nvml`` was read with MIG disabled).

The table is all or nothing: a profile whose placements cannot be read, or a table with no profile, makes the
GPU's table empty with a warning, and such a GPU is never partitioned at prepare (a partial table would
publish a layout the GPU does not have).
"""

from __future__ import annotations

import ctypes
from typing import Any, Final

from gpudra.model.inventory import EngineCounts, MigPlacement, MigProfile
from gpudra.vendors.nvidia.reader import Reader, field, text

_GI_PROFILE_COUNT: Final = 18  # NVML_GPU_INSTANCE_PROFILE_COUNT in nvidia-ml-py 13
_MAX_PLACEMENTS: Final = 32  # more than any profile has (7 on A100/H100)
_MIB: Final = 1 << 20


def mig_profile_table(reader: Reader, handle: Any, where: str) -> tuple[MigProfile, ...]:
    """Every GPU-instance profile of ``handle`` with its placements; () with a warning when incomplete."""
    count = reader.nvml.constant("NVML_GPU_INSTANCE_PROFILE_COUNT", _GI_PROFILE_COUNT)
    table: list[MigProfile] = []
    for index in range(count):
        info, _ = reader.outcome(
            "nvmlDeviceGetGpuInstanceProfileInfo", handle, index, what=where,
            expected=("INVALID_ARGUMENT", "NOT_SUPPORTED"),
        )  # fmt: skip
        if info is None:
            continue
        profile = _profile(reader, handle, info, where)
        if profile is None:
            return ()
        table.append(profile)
    if not table:
        reader.warn(f"{where}: MIG-capable, but NVML lists no GPU-instance profile; MIG devices are not "
                    "created on it at prepare")  # fmt: skip
    ids = [p.gi_profile_id for p in table]
    if len(set(ids)) != len(ids):
        reader.warn(f"{where}: NVML lists a GPU-instance profile id twice ({ids}); MIG devices are not "
                    "created on it at prepare")  # fmt: skip
        return ()
    return tuple(table)


def _profile(reader: Reader, handle: Any, info: object, where: str) -> MigProfile | None:
    profile_id, slices = field(info, "id"), field(info, "sliceCount")
    name = text(getattr(info, "name", None))
    if profile_id is None or not slices or not name:
        reader.warn(f"{where}: a GPU-instance profile without id, slices or name; MIG devices are not "
                    "created on it at prepare")  # fmt: skip
        return None
    placements = _placements(reader, handle, profile_id, where)
    if not placements:
        reader.warn(f"{where}: the placements of MIG profile {name} (id {profile_id}) are unreadable; MIG "
                    "devices are not created on it at prepare")  # fmt: skip
        return None
    mib = field(info, "memorySizeMB")
    return MigProfile(
        name=name.removeprefix("MIG ").strip(), gi_profile_id=profile_id, compute_slices=slices,
        memory_bytes=mib * _MIB if mib else None, multiprocessors=field(info, "multiprocessorCount") or None,
        engines=EngineCounts(
            copy_engines=field(info, "copyEngineCount"), decoders=field(info, "decoderCount"),
            encoders=field(info, "encoderCount"), jpeg_engines=field(info, "jpegCount"),
            ofa_engines=field(info, "ofaCount"),
        ),
        placements=placements,
    )  # fmt: skip


def _placements(reader: Reader, handle: Any, profile_id: int, where: str) -> tuple[MigPlacement, ...]:
    """The placements NVML allows for ``profile_id``, read into a caller-allocated array."""
    placement_type = getattr(reader.nvml.module, "c_nvmlGpuInstancePlacement_t", None)
    if placement_type is None:
        return ()
    array = (placement_type * _MAX_PLACEMENTS)()
    count = ctypes.c_uint(_MAX_PLACEMENTS)
    _, error = reader.outcome(
        "nvmlDeviceGetGpuInstancePossiblePlacements",
        handle,
        profile_id,
        array,
        ctypes.byref(count),
        what=where,
    )
    if error is not None or not 0 < count.value <= _MAX_PLACEMENTS:
        return ()
    found = [MigPlacement(int(array[i].start), int(array[i].size)) for i in range(count.value)]
    if any(p.size <= 0 or p.start < 0 for p in found):
        return ()
    return tuple(sorted(found, key=lambda p: p.start))
