"""What MIG instances exist on a fake GPU now: its profile's pre-made ones and those the fake's calls created.

:func:`build_view` merges a GPU's profile with its :class:`~gpudra.vendors.mock.fake_mig_state.GpuMigState`
into a :class:`MigView`: the MIG mode, the GPU instances (pre-made ones still there, then created ones) and
the MIG devices in ``nvmlDeviceGetMigDeviceHandleByIndex`` order - the profile's pre-made ones first, then the
created compute instances in creation order. Nothing exists while the current MIG mode is off.

:func:`reconcile` fits a saved state to a (new) profile, as the hardware would: a GPU gone takes its entry
with it; a profile edit that changes a GPU's ``mig_mode`` is a reconfiguration (the fake's mode change and
its wipe of the pre-made instances are forgotten, the profile's mode holds), while an edit that leaves
``mig_mode`` as it was keeps them; a GPU whose MIG mode is then off keeps no instance (as after the reset
that turned it off); a created instance that clashes with the new profile's pre-made ones (same id,
overlapping slices) or whose profile row or placement is gone is dropped.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Final

import pynvml

from gpudra.vendors.mock.fake_mig_state import CreatedCi, CreatedGi, GpuMigState, InstanceKey, MigState
from gpudra.vendors.mock.profile import DeviceProfile, Profile
from gpudra.vendors.mock.profile_mig import (
    ComputeInstanceProfileInfo,
    GpuInstanceProfileInfo,
    InstanceProfile,
    MigDeviceProfile,
    Placement,
)

MIB: Final = 1 << 20
ENABLE: Final = pynvml.NVML_DEVICE_MIG_ENABLE
_CI_ATTRIBUTES: Final = {
    "multiprocessorCount": "multiprocessorCount", "sharedCopyEngineCount": "sharedCopyEngineCount",
    "sharedDecoderCount": "sharedDecoderCount", "sharedEncoderCount": "sharedEncoderCount",
    "sharedJpegCount": "sharedJpegCount", "sharedOfaCount": "sharedOfaCount",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class GiView:
    """A GPU instance that exists. ``serial`` is 0 for a pre-made one, its creation number otherwise: a
    handle of an earlier instance with the same id does not name this one."""

    id: int
    profile_id: int
    placement: Placement
    serial: int = 0


@dataclass(frozen=True, slots=True)
class MigView:
    """A GPU's MIG layout now (see the module docstring)."""

    mode: tuple[int, int] | None
    max_count: int | None  # nvmlDeviceGetMaxMigDeviceCount (None: NOT_SUPPORTED)
    gis: tuple[GiView, ...] = ()
    migs: tuple[MigDeviceProfile, ...] = ()  # one per compute instance, in MIG device index order
    serials: tuple[int, ...] = ()  # per MIG device: its compute instance's serial (0: pre-made)
    keys: tuple[str | int, ...] = ()  # per MIG device: what names it in a handle (UUID, else position)

    @property
    def enabled(self) -> bool:
        return self.mode is not None and self.mode[0] == ENABLE

    def gi(self, gi_id: int) -> GiView | None:
        return next((g for g in self.gis if g.id == gi_id), None)

    def cis(self, gi_id: int) -> list[int]:
        """The MIG device indices of the compute instances in GPU instance ``gi_id``."""
        return [i for i, m in enumerate(self.migs) if m.gpu_instance.id == gi_id]

    def ci(self, gi_id: int, ci_id: int) -> int | None:
        ids = (gi_id, ci_id)
        return next((i for i, m in enumerate(self.migs) if (m.gpu_instance.id, m.compute_instance.id) == ids),
                    None)  # fmt: skip


def gpu_keys(profile: Profile) -> tuple[str, ...]:
    """The state key of each GPU: its UUID when known and unique in the profile, else ``#<index>``."""
    counts = Counter(d.uuid for d in profile.devices)
    return tuple(
        d.uuid if d.uuid is not None and counts[d.uuid] == 1 else f"#{i}"
        for i, d in enumerate(profile.devices)
    )


def gi_row(device: DeviceProfile, profile_id: int) -> GpuInstanceProfileInfo | None:
    return next((r for r in device.gpu_instance_profiles if r.id == profile_id), None)


def ci_row(row: GpuInstanceProfileInfo | None, profile_id: int) -> ComputeInstanceProfileInfo | None:
    return next((c for c in row.ci_profiles if c.values["id"] == profile_id), None) if row else None


def compute_slices(device: DeviceProfile) -> int:
    """The GPU's compute slices: the largest GPU-instance profile's slice count (7 on A100/H100)."""
    return max((r.slices for r in device.gpu_instance_profiles), default=0)


def memory_slices(device: DeviceProfile) -> int:
    """The GPU's memory slices: the end of the furthest placement (8 on A100/H100)."""
    ends = [p.start + p.size for r in device.gpu_instance_profiles for p in r.placements or ()]
    return max(ends, default=0)


def overlaps(a: Placement, b: Placement) -> bool:
    return a.start < b.start + b.size and b.start < a.start + a.size


def current_mode(device: DeviceProfile, gpu: GpuMigState | None) -> tuple[int, int] | None:
    return gpu.mode if gpu is not None and gpu.mode is not None else device.mig_mode


def build_view(device: DeviceProfile, gpu: GpuMigState | None) -> MigView:
    mode = current_mode(device, gpu)
    max_count = _max_count(device, mode)
    if mode is None or mode[0] != ENABLE:
        return MigView(mode, max_count)
    state = gpu if gpu is not None else GpuMigState(basis=device.mig_mode)
    premade_gis, premade_migs = premade(device, state)
    gis = (*premade_gis, *(GiView(g.id, g.profile_id, g.placement, g.serial) for g in state.gis))
    by_id = {g.id: g for g in gis}
    created = [created_mig(device, by_id[c.gi_id], c) for c in state.cis if c.gi_id in by_id]
    migs = (*premade_migs, *created)
    serials = (0,) * len(premade_migs) + tuple(c.serial for c in state.cis if c.gi_id in by_id)
    return MigView(mode, max_count, gis, migs, serials, _handle_keys(migs))


def _max_count(device: DeviceProfile, mode: tuple[int, int] | None) -> int | None:
    """NVML answers 0 with MIG off (as the H100 capture did), the most MIG devices with it on: the profile's
    value for the profile's own mode, else (the fake switched the mode) the GPU's compute slices."""
    if device.mig_mode is None or mode is None or (mode[0] == ENABLE) == (device.mig_mode[0] == ENABLE):
        return device.max_mig_device_count
    if mode[0] != ENABLE:
        return 0
    return device.max_mig_device_count or compute_slices(device)


def premade(
    device: DeviceProfile, gpu: GpuMigState
) -> tuple[tuple[GiView, ...], tuple[MigDeviceProfile, ...]]:
    """The profile's MIG instances still there: its GPU instances (by id) and MIG devices."""
    if gpu.wiped:
        return (), ()
    gis: dict[int, GiView] = {}
    for mig in device.mig_devices:
        gi = mig.gpu_instance
        if gi.id not in gpu.destroyed_gis and gi.id not in gis:
            gis[gi.id] = GiView(gi.id, gi.profile_id, gi.placement)
    migs = tuple(
        m for m in device.mig_devices
        if m.gpu_instance.id in gis and (m.gpu_instance.id, m.compute_instance.id) not in gpu.destroyed_cis
    )  # fmt: skip
    return tuple(gis.values()), migs


def created_mig(device: DeviceProfile, gi: GiView, ci: CreatedCi) -> MigDeviceProfile:
    """The MIG device of a created compute instance: memory and attributes from its profile rows (unknown
    where a value it needs is unknown: NOT_SUPPORTED)."""
    row = gi_row(device, gi.profile_id)
    cirow = ci_row(row, ci.profile_id)
    memory = None
    attributes = None
    if row is not None and "memorySizeMB" not in row.unknown:
        memory = row.values["memorySizeMB"] * MIB
        if cirow is not None and not cirow.unknown & set(_CI_ATTRIBUTES):
            attributes = {name: cirow.values[src] for name, src in _CI_ATTRIBUTES.items()} | {
                "gpuInstanceSliceCount": row.slices,
                "computeInstanceSliceCount": cirow.values["sliceCount"],
                "memorySizeMB": row.values["memorySizeMB"],
            }
    return MigDeviceProfile(
        uuid=ci.uuid,
        gpu_instance=InstanceProfile(gi.id, gi.profile_id, gi.placement),
        compute_instance=InstanceProfile(ci.id, ci.profile_id, ci.placement),
        memory_bytes=memory,
        attributes=attributes,
    )


def _handle_keys(migs: Sequence[MigDeviceProfile]) -> tuple[str | int, ...]:
    counts = Counter(m.uuid for m in migs)
    return tuple(m.uuid if m.uuid is not None and counts[m.uuid] == 1 else i for i, m in enumerate(migs))


def gi_id_for(device: DeviceProfile, placement: Placement, taken: Iterable[int]) -> int:
    """The id NVML gives a new GPU instance. GI ids follow the memory-slice tree (what the MIG guide's
    ``nvidia-smi mig -lgi`` output and real ``-cgi`` runs show, and what the 15 ``gi0``..``gi14`` minors
    per GPU in ``/proc/driver/nvidia-caps/mig-minors`` number): 0 for the whole GPU, 1-2 for halves, 3-6 for
    quarters, 7-14 for eighths, so an instance's id is fixed by its placement (3g@4:4 -> 2, 1g@0:1 -> 7).
    Where that id is taken or the layout is not such a tree, the smallest id >= 1 no instance holds."""
    used = set(taken)
    total, size, start = memory_slices(device), placement.size, placement.start
    if total and total % size == 0 and start % size == 0:
        nodes = total // size
        if nodes & (nodes - 1) == 0 and nodes - 1 + start // size not in used:
            return nodes - 1 + start // size
    return next(i for i in range(1, len(used) + 2) if i not in used)


# -- fitting a saved state to a profile -------------------------------------------------------------------
def reconcile(state: MigState, profile: Profile) -> MigState:
    """``state`` as it can exist on ``profile``'s hardware (see the module docstring)."""
    devices = dict(zip(gpu_keys(profile), profile.devices, strict=True))
    gpus: dict[str, GpuMigState] = {}
    for key, gpu in state.gpus.items():
        device = devices.get(key)
        if device is None or device.mig_mode is None:
            continue
        kept = _reconcile_gpu(gpu, device)
        if not kept.is_empty():
            gpus[key] = kept
    return MigState(gpus=gpus, serial=state.serial)


def _reconcile_gpu(gpu: GpuMigState, device: DeviceProfile) -> GpuMigState:
    if gpu.basis != device.mig_mode:  # the profile's mode was edited: the fake's changes are void
        gpu = replace(gpu, basis=device.mig_mode, mode=None, wiped=False)
    mode = current_mode(device, gpu)
    if mode is None or mode[0] != ENABLE:
        return GpuMigState(basis=gpu.basis, mode=gpu.mode, wiped=gpu.wiped)
    premade_ids = {m.gpu_instance.id for m in device.mig_devices}
    premade_cis = {(m.gpu_instance.id, m.compute_instance.id) for m in device.mig_devices}
    gpu = replace(
        gpu, destroyed_gis=gpu.destroyed_gis & premade_ids, destroyed_cis=gpu.destroyed_cis & premade_cis
    )
    live_gis, live_migs = premade(device, gpu)
    gis = _kept_gis(device, gpu.gis, list(live_gis))
    all_gis = [*live_gis, *(GiView(g.id, g.profile_id, g.placement) for g in gis)]
    cis = _kept_cis(device, gpu.cis, all_gis, live_migs)
    alive: set[InstanceKey] = {(g.id, None) for g in all_gis}
    alive |= {(m.gpu_instance.id, m.compute_instance.id) for m in live_migs}
    alive |= {(c.gi_id, c.id) for c in cis}
    processes = {k: n for k, n in gpu.processes.items() if k in alive}
    return replace(gpu, gis=tuple(gis), cis=tuple(cis), processes=processes)


def _kept_gis(device: DeviceProfile, created: Sequence[CreatedGi], live: list[GiView]) -> list[CreatedGi]:
    kept: list[CreatedGi] = []
    for gi in created:
        row = gi_row(device, gi.profile_id)
        fits = row is not None and (row.placements is None or gi.placement in row.placements)
        if fits and not any(g.id == gi.id or overlaps(g.placement, gi.placement) for g in live):
            kept.append(gi)
            live.append(GiView(gi.id, gi.profile_id, gi.placement, gi.serial))
    return kept


def _kept_cis(
    device: DeviceProfile,
    created: Sequence[CreatedCi],
    gis: Sequence[GiView],
    live: Sequence[MigDeviceProfile],
) -> list[CreatedCi]:
    taken = [(m.gpu_instance.id, m.compute_instance.id, m.compute_instance.placement) for m in live]
    kept: list[CreatedCi] = []
    for ci in created:
        gi = next((g for g in gis if g.id == ci.gi_id), None)
        if gi is None or ci_row(gi_row(device, gi.profile_id), ci.profile_id) is None:
            continue
        if any(g == ci.gi_id and (c == ci.id or overlaps(p, ci.placement)) for g, c, p in taken):
            continue
        kept.append(ci)
        taken.append((ci.gi_id, ci.id, ci.placement))
    return kept
