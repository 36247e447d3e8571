"""The rules of NVML's MIG-changing calls, as pure functions: a GPU's :class:`MigView` and
:class:`GpuMigState` in, the new state (and what was made) out, or the ``pynvml.NVMLError`` NVML answers.

Error codes are nvml.h's (NVIDIA/go-nvml@314e96d ``gen/nvml/nvml.h``) where it documents them:

* ``nvmlDeviceSetMigMode``: NOT_SUPPORTED without MIG; INVALID_ARGUMENT for a mode other than 0/1. The
  *activation status* (the return value) says why a mode did not switch: IN_USE when the GPU is not idle
  (processes run on it) and RESET_REQUIRED when the GPU needs a reset (Ampere); the mode is then only
  pending. Switching MIG off while GPU instances exist raises IN_USE (nvml.h does not say; chosen: nothing
  changes). A switch wipes the GPU's MIG instances (pre-made ones too).
* ``nvmlDeviceCreateGpuInstance(WithPlacement)``: NOT_SUPPORTED while MIG mode is off (nvml.h: "doesn't
  have MIG mode enabled"); INVALID_ARGUMENT for an unknown profile id or a placement not among the profile's;
  INSUFFICIENT_RESOURCES when the placement overlaps the memory slices of a GPU instance, the compute slices
  are used up, or the profile's ``instanceCount`` is reached.
* ``nvmlGpuInstanceCreateComputeInstance(WithPlacement)``: NOT_SUPPORTED for a CI profile id the GPU
  instance does not have, and for every CI smaller than its GPU instance (not modelled: only full-size
  compute instances are created); INVALID_ARGUMENT for another placement than the whole GPU instance;
  INSUFFICIENT_RESOURCES when a compute instance already uses the slices.
* ``nvmlComputeInstanceDestroy``: IN_USE while processes run on it. ``nvmlGpuInstanceDestroy``: IN_USE while
  it has compute instances or processes (nvml.h: "processes ... or compute instances are active").

Ids: a GPU instance's id is fixed by its memory-slice placement (:func:`~.fake_mig_layout.gi_id_for`); a
compute instance gets the smallest id free in its GPU instance, from 0.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import replace
from typing import Final

import pynvml

from gpudra.vendors.mock.fake_mig_layout import (
    ENABLE,
    GiView,
    MigView,
    ci_row,
    compute_slices,
    gi_id_for,
    gi_row,
    overlaps,
)
from gpudra.vendors.mock.fake_mig_state import CreatedCi, CreatedGi, GpuMigState
from gpudra.vendors.mock.fake_nvml_base import fail
from gpudra.vendors.mock.profile import DeviceProfile
from gpudra.vendors.mock.profile_mig import GpuInstanceProfileInfo, Placement

_UUID_NAMESPACE: Final = uuid.UUID("6f0e8d3c-1b4a-5c2d-9e7f-67707564726d")  # fixed: UUIDs are reproducible
_MODES: Final = (pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_ENABLE)


def set_mode(device: DeviceProfile, view: MigView, gpu: GpuMigState, mode: int) -> tuple[GpuMigState, int]:
    """``nvmlDeviceSetMigMode``: the new state and the activation status."""
    if device.mig_mode is None or view.mode is None:
        raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    if mode not in _MODES:
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    current = view.mode[0]
    if mode == current:  # nothing to switch; a pending change is taken back
        return replace(gpu, mode=(current, mode)), pynvml.NVML_SUCCESS
    if mode != ENABLE and view.gis:
        raise fail(pynvml.NVML_ERROR_IN_USE)
    if device.processes:
        return replace(gpu, mode=(current, mode)), pynvml.NVML_ERROR_IN_USE
    if device.mig_mode_change == "reset_required":
        return replace(gpu, mode=(current, mode)), pynvml.NVML_ERROR_RESET_REQUIRED
    return wiped(gpu, (mode, mode)), pynvml.NVML_SUCCESS


def reset(device: DeviceProfile, view: MigView, gpu: GpuMigState) -> GpuMigState:
    """A GPU reset: a pending MIG mode takes effect, and every MIG instance is gone."""
    if device.mig_mode is None or view.mode is None:
        return gpu
    pending = view.mode[1]
    return wiped(gpu, (pending, pending))


def wiped(gpu: GpuMigState, mode: tuple[int, int]) -> GpuMigState:
    return replace(gpu, mode=mode, wiped=True, destroyed_gis=frozenset(), destroyed_cis=frozenset(), gis=(),
                   cis=(), processes={})  # fmt: skip


def create_gi(
    device: DeviceProfile, view: MigView, gpu: GpuMigState, *, profile_id: int, placement: Placement | None,
    serial: int,
) -> tuple[GpuMigState, CreatedGi]:  # fmt: skip
    """``nvmlDeviceCreateGpuInstance(WithPlacement)``: at ``placement``, or the first one free."""
    if not view.enabled:
        raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    row = gi_row(device, profile_id)
    if row is None:
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    if row.placements is None:  # the profile does not say where it can go
        raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    if placement is not None and placement not in row.placements:
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    candidates = [placement] if placement is not None else sorted(row.placements, key=lambda p: p.start)
    free = [p for p in candidates if fits(device, row, p, view.gis)]
    if not free:
        raise fail(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
    gi = CreatedGi(gi_id_for(device, free[0], [g.id for g in view.gis]), row.id, free[0], serial)
    return replace(gpu, gis=(*gpu.gis, gi)), gi


def fits(
    device: DeviceProfile, row: GpuInstanceProfileInfo, placement: Placement, gis: Collection[GiView]
) -> bool:
    """Whether a GPU instance of ``row`` can go at ``placement`` next to ``gis``."""
    if sum(1 for g in gis if g.profile_id == row.id) >= row.values["instanceCount"]:
        return False
    if any(overlaps(g.placement, placement) for g in gis):
        return False
    used = sum(r.slices for g in gis if (r := gi_row(device, g.profile_id)) is not None)
    return used + row.slices <= compute_slices(device)


def remaining(device: DeviceProfile, view: MigView, profile_id: int) -> int:
    """``nvmlDeviceGetGpuInstanceRemainingCapacity``: how many more GPU instances of the profile fit."""
    row = gi_row(device, profile_id)
    if not view.enabled or row is None:
        raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    placed = list(view.gis)
    for placement in sorted(row.placements or (), key=lambda p: p.start):
        if fits(device, row, placement, placed):
            placed.append(GiView(-1, row.id, placement))
    return len(placed) - len(view.gis)


def create_ci(
    device: DeviceProfile, view: MigView, gpu: GpuMigState, gi: GiView, *, profile_id: int,
    placement: Placement | None, serial: int, mig_uuid: Callable[[int], str],
) -> tuple[GpuMigState, CreatedCi]:  # fmt: skip
    """``nvmlGpuInstanceCreateComputeInstance(WithPlacement)``: a full-size compute instance in ``gi``, its
    id the smallest free one from 0 (the first CI of a GI is 0, as in every NVML output seen); ``mig_uuid``
    names its MIG device from that id."""
    row = gi_row(device, gi.profile_id)
    cirow = ci_row(row, profile_id)
    if row is None or cirow is None or cirow.values["sliceCount"] != row.slices:
        raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    whole = Placement(0, row.slices)
    if placement is not None and placement != whole:
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
    taken = [view.migs[i].compute_instance for i in view.cis(gi.id)]
    if any(overlaps(c.placement, whole) for c in taken):
        raise fail(pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES)
    ids = {c.id for c in taken}
    ci_id = next(i for i in range(len(ids) + 1) if i not in ids)
    ci = CreatedCi(gi.id, ci_id, profile_id, whole, mig_uuid(ci_id), serial)
    return replace(gpu, cis=(*gpu.cis, ci)), ci


def destroy_ci(view: MigView, gpu: GpuMigState, gi_id: int, ci_id: int) -> GpuMigState:
    """``nvmlComputeInstanceDestroy`` of an existing compute instance."""
    if gpu.processes.get((gi_id, ci_id), 0):
        raise fail(pynvml.NVML_ERROR_IN_USE)
    created = [c for c in gpu.cis if (c.gi_id, c.id) != (gi_id, ci_id)]
    if len(created) < len(gpu.cis):
        return replace(gpu, cis=tuple(created))
    return replace(gpu, destroyed_cis=gpu.destroyed_cis | {(gi_id, ci_id)})


def destroy_gi(view: MigView, gpu: GpuMigState, gi_id: int) -> GpuMigState:
    """``nvmlGpuInstanceDestroy`` of an existing GPU instance."""
    if view.cis(gi_id) or gpu.processes.get((gi_id, None), 0):
        raise fail(pynvml.NVML_ERROR_IN_USE)
    created = [g for g in gpu.gis if g.id != gi_id]
    if len(created) < len(gpu.gis):
        return replace(gpu, gis=tuple(created))
    return replace(gpu, destroyed_gis=gpu.destroyed_gis | {gi_id})


def set_processes(view: MigView, gpu: GpuMigState, gi_id: int, ci_id: int | None, count: int) -> GpuMigState:
    """Make ``count`` processes run on a GPU instance (``ci_id`` None) or compute instance; LookupError when
    it does not exist, ValueError for a negative count."""
    if count < 0:
        raise ValueError(f"a process count cannot be negative, got {count}")
    if view.gi(gi_id) is None or (ci_id is not None and view.ci(gi_id, ci_id) is None):
        raise LookupError(f"no {'compute' if ci_id is not None else 'GPU'} instance {gi_id}/{ci_id} exists")
    processes = {k: n for k, n in gpu.processes.items() if k != (gi_id, ci_id)}
    if count:
        processes[(gi_id, ci_id)] = count
    return replace(gpu, processes=processes)


def new_mig_uuid(parent: str, gi_id: int, ci_id: int, serial: int, used: Collection[str]) -> str:
    """A MIG device UUID in NVML's form (``MIG-`` + a version-5 UUID, as real ones are), from the parent,
    the instance ids and the node's creation serial: reproducible, and never one this fake used before."""
    salt = 0
    while True:
        name = f"{parent}/{gi_id}/{ci_id}/{serial}" + (f"/{salt}" if salt else "")
        candidate = f"MIG-{uuid.uuid5(_UUID_NAMESPACE, name)}"
        if candidate not in used:
            return candidate
        salt += 1
