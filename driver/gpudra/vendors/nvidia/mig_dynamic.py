"""Dynamic MIG: create a claim's MIG device at exactly its allocated placement, and destroy it again.

Prepare (:meth:`MigPartitioner.apply`), per MIG device published to be created
(``Device.created_at_prepare``), holding that GPU's lock so two prepares on one GPU never race:

1. MIG mode on, if it is off: ``nvmlDeviceSetMigMode``. Hopper and later switch at once when the GPU is idle;
   a GPU that needs a reset for it (Ampere: the activation status is RESET_REQUIRED and the mode stays
   pending) fails the claim, and the pending change is taken back so that no later reset surprises anyone;
2. the GPU instance at the placement (``nvmlDeviceCreateGpuInstanceWithPlacement``), then its one full-size
   compute instance (``nvmlGpuInstanceGetComputeInstanceProfileInfo`` for the GI's slice count,
   ``nvmlGpuInstanceCreateComputeInstance``);
3. the new MIG device's UUID, from the MIG device handles of the GPU whose instance ids match.

What was created is returned as an :class:`~gpudra.model.applied.Change` of kind :data:`MIG_INSTANCE` per
device: what was intended (parent, profile, placement; recorded before anything is created) plus the ids
the hardware gave. Undo finds the GPU instance by profile and placement - never by id alone, so a roll-back of
a creation cut short before its ids were recorded finds it too, and an id reused by someone else's instance
is never destroyed - destroys its compute instances, then it. A device already gone is success.

A full GPU allocated on a GPU that is in MIG mode (dynamic MIG left it there) gets MIG mode switched off,
which NVML refuses while any MIG device exists or processes run; the claim then fails and says so. MIG mode
changes are recorded as :data:`MIG_MODE` changes; undo puts the previous mode back when the GPU has no MIG
device and is still in the mode gpudra set (a failure there is logged: the next claim switches the mode it
needs). Only a whole GPU published as a partitionable device (``Device.mig_managed``) has its mode switched.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Final

from gpudra.model.applied import Change
from gpudra.model.inventory import Device, DeviceKind
from gpudra.vendors.base import ApplyError, ClaimDevice
from gpudra.vendors.nvidia.calls import Nvml, NvmlError

log = logging.getLogger(__name__)

#: A MIG device created for a claim. Params: ``parent`` (GPU UUID), ``profile`` (name), ``profileId``,
#: ``start``, ``size``, ``slices``, ``index`` (the parent's), ``creates`` (True); once created also
#: ``giId``, ``ciId``, ``ciProfileId``, ``uuid``.
MIG_INSTANCE: Final = "nvidia.mig-instance"
#: MIG mode switched for a claim. Params: ``parent``, ``enabled`` (the mode set), ``previous``.
MIG_MODE: Final = "nvidia.mig-mode"

_ENABLE: Final = 1
_DISABLE: Final = 0
#: NVML compute-instance profile index by slice count (NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE = 0, ...).
_CI_INDEX_BY_SLICES: Final = {1: 0, 2: 1, 3: 2, 4: 3, 7: 4, 8: 5, 6: 6}
_CI_PROFILE_COUNT: Final = 8
_MAX_INSTANCES: Final = 8
_WHY: Final = {
    "INSUFFICIENT_RESOURCES": "the placement overlaps a MIG device that exists, or the GPU has no compute "
    "slices or instances of this profile left",
    "IN_USE": "processes are using the GPU",
    "NO_PERMISSION": "the plugin is not privileged (creating MIG devices needs root / CAP_SYS_ADMIN)",
    "NOT_SUPPORTED": "the GPU is not in MIG mode, or it or its driver does not support this",
    "INVALID_STATE": "MIG mode is not enabled on the GPU",
    "INVALID_ARGUMENT": "the GPU does not allow this profile at this placement",
    "GPU_IS_LOST": "the GPU is lost (fallen off the bus)",
}


def intended_change(device: ClaimDevice) -> Change | None:
    """What prepare will create for ``device``: a :data:`MIG_INSTANCE` change, or None for a device that
    exists as it is."""
    dev, mig = device.device, device.device.mig
    if not dev.created_at_prepare or mig is None or not dev.parent_uuid or not mig.gi_slices:
        return None
    return Change.of(
        MIG_INSTANCE, device.name, parent=dev.parent_uuid, profile=mig.profile, profileId=mig.gi_profile_id,
        start=mig.placement_start, size=mig.placement_size, slices=mig.gi_slices, creates=True,
        index=dev.index,
    )  # fmt: skip


def existing_instances(devices: Sequence[Device]) -> tuple[Change, ...]:
    """:data:`MIG_INSTANCE` changes describing MIG devices that exist (by UUID, ids and placement), for
    :meth:`MigPartitioner.undo` to destroy them (``--mig-destroy-unowned``)."""
    changes = []
    for dev in devices:
        mig = dev.mig
        if mig is None or mig.gi_id is None or mig.ci_id is None or not dev.parent_uuid or not dev.uuid:
            continue
        changes.append(Change.of(
            MIG_INSTANCE, "", parent=dev.parent_uuid, profile=mig.profile, profileId=mig.gi_profile_id,
            start=mig.placement_start, size=mig.placement_size, uuid=dev.uuid, giId=mig.gi_id, ciId=mig.ci_id,
        ))  # fmt: skip
    return tuple(changes)


def created_device(device: Device, name: str, changes: Sequence[Change]) -> Device:
    """``device`` as created for the claim (UUID and instance ids from its :data:`MIG_INSTANCE` change);
    ``device`` itself when it is not created at prepare or its change holds no ids yet."""
    if not device.created_at_prepare or device.mig is None:
        return device
    for change in changes:
        if change.kind == MIG_INSTANCE and change.device == name and change.get("uuid") is not None:
            mig = replace(device.mig, gi_id=change.integer("giId"), ci_id=change.integer("ciId"),
                          ci_profile_id=change.integer("ciProfileId"), ci_placement_start=0)  # fmt: skip
            return replace(device, uuid=change.text("uuid"), mig=mig)
    return device


class MigPartitioner:
    """Creates and destroys MIG devices through ``nvml``; ``handle`` gives a GPU's handle by UUID."""

    def __init__(self, nvml: Nvml, handle: Callable[[str], Any | None]) -> None:
        self._nvml = nvml
        self._handle = handle
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def lock(self, gpu_uuid: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(gpu_uuid, threading.Lock())

    # ---- prepare -----------------------------------------------------------------------------------

    def apply(self, devices: Sequence[ClaimDevice], intended: Sequence[Change]) -> list[Change]:
        """Make ``intended`` (and switch MIG mode off for full GPUs in MIG mode); on failure undo what this
        call did and raise :class:`ApplyError`."""
        done: list[Change] = []
        try:
            for device in devices:
                if device.device.kind is DeviceKind.GPU and device.device.mig_managed:
                    done.extend(self._whole_gpu(device.device))
            for change in intended:
                if change.kind == MIG_INSTANCE:
                    self._create(change, done)
        except ApplyError:
            self.undo(done, quiet=True)  # undo takes them in reverse order itself
            raise
        return done

    def _whole_gpu(self, gpu: Device) -> list[Change]:
        with self.lock(gpu.uuid):
            handle = self._gpu(gpu.uuid, f"GPU {gpu.uuid}")
            if not self._mig_enabled(handle, gpu.uuid):
                return []
            where = f"GPU {gpu.uuid}: a full GPU was allocated but the GPU is in MIG mode; switching it off"
            if self._instances(handle):
                raise ApplyError(f"{where} is not possible while MIG devices exist on it")
            return [self._set_mode(handle, gpu.uuid, _DISABLE, where, gpu.index)]

    def _create(self, change: Change, done: list[Change]) -> None:
        """Create ``change``'s MIG device, appending to ``done`` each change as soon as it is made (a MIG mode
        switched on stays there for the caller's roll-back when the creation after it fails)."""
        parent = change.text("parent")
        where = _where(change)
        with self.lock(parent):
            handle = self._gpu(parent, where)
            if not self._mig_enabled(handle, parent):
                done.append(self._set_mode(handle, parent, _ENABLE, where, change.get("index")))
            # pynvml passes the placement on as it is, and NVML takes a pointer to it: byref, never by value
            placement = self._nvml.module.c_nvmlGpuInstancePlacement_t(
                change.integer("start"), change.integer("size")
            )
            gi = self._call(where, "creating the GPU instance", "nvmlDeviceCreateGpuInstanceWithPlacement",
                            handle, change.integer("profileId"), ctypes.byref(placement))  # fmt: skip
            try:
                done.append(self._finish(handle, gi, change, where))
            except ApplyError:
                self._destroy_gi(gi, where, quiet=True)
                raise

    def _finish(self, handle: Any, gi: Any, change: Change, where: str) -> Change:
        gi_id = int(self._call(where, "reading the GPU instance", "nvmlGpuInstanceGetInfo", gi).id)
        index = _CI_INDEX_BY_SLICES.get(change.integer("slices"))
        if index is None:
            raise ApplyError(f"{where}: no compute-instance profile spans {change.integer('slices')} slices")
        info = self._call(where, "reading the compute-instance profile",
                          "nvmlGpuInstanceGetComputeInstanceProfileInfo", gi, index, 0)  # fmt: skip
        ci = self._call(
            where, "creating the compute instance", "nvmlGpuInstanceCreateComputeInstance", gi, info.id
        )
        ci_id = int(self._call(where, "reading the compute instance", "nvmlComputeInstanceGetInfo", ci).id)
        uuid = self._mig_uuid(handle, gi_id, ci_id, where)
        params = dict(change.params) | {
            "giId": gi_id,
            "ciId": ci_id,
            "ciProfileId": int(info.id),
            "uuid": uuid,
        }
        return Change.from_mapping(MIG_INSTANCE, change.device, params)

    def _mig_uuid(self, handle: Any, gi_id: int, ci_id: int, where: str) -> str:
        count = self._call(where, "counting MIG devices", "nvmlDeviceGetMaxMigDeviceCount", handle)
        for index in range(int(count)):
            try:
                mig = self._nvml.call("nvmlDeviceGetMigDeviceHandleByIndex", handle, index)
                ids = (self._nvml.call("nvmlDeviceGetGpuInstanceId", mig),
                       self._nvml.call("nvmlDeviceGetComputeInstanceId", mig))  # fmt: skip
            except NvmlError:
                continue
            if ids == (gi_id, ci_id):
                return str(self._call(where, "reading the MIG device's UUID", "nvmlDeviceGetUUID", mig))
        raise ApplyError(f"{where}: created GPU instance {gi_id} / compute instance {ci_id}, but NVML lists "
                         "no MIG device for them")  # fmt: skip

    # ---- undo --------------------------------------------------------------------------------------

    def undo(self, changes: Sequence[Change], *, quiet: bool = False) -> None:
        """Destroy the MIG devices of ``changes`` and put MIG modes back (in reverse order). Idempotent."""
        failures: list[str] = []
        for change in reversed(changes):
            try:
                if change.kind == MIG_INSTANCE:
                    self._remove(change)
                elif change.kind == MIG_MODE:
                    self._restore_mode(change)
            except ApplyError as e:
                failures.append(str(e))
        if failures and not quiet:
            raise ApplyError("; ".join(failures))
        for failure in failures:
            log.error("rolling back: %s", failure)

    def _remove(self, change: Change) -> None:
        parent, where = change.text("parent"), _where(change)
        with self.lock(parent):
            handle = self._handle(parent)
            if handle is None:
                log.warning("%s: the GPU is gone, and its MIG devices with it", where)
                return
            gi = self._find_gi(handle, change.integer("profileId"), change.integer("start"), where)
            if gi is not None and self._ours(handle, gi, change, where):
                self._destroy_gi(gi, where, quiet=False)

    def _ours(self, handle: Any, gi: Any, change: Change, where: str) -> bool:
        """Whether the GPU instance at the recorded placement is the one the claim created: with its UUID
        recorded, a MIG device there with another UUID is someone else's (ours is gone) and is left alone."""
        uuid = change.get("uuid")
        if not isinstance(uuid, str):
            return True  # cut short before its ids were recorded: what sits at its placement is its doing
        gi_id = int(self._call(where, "reading a GPU instance", "nvmlGpuInstanceGetInfo", gi).id)
        found = self._uuids_in(handle, gi_id)
        if found and uuid not in found:
            log.warning("%s: the MIG device there is %s, not the %s this claim created: left alone",
                        where, ", ".join(sorted(found)), uuid)  # fmt: skip
            return False
        return True

    def _uuids_in(self, handle: Any, gi_id: int) -> set[str]:
        found: set[str] = set()
        count = self._call("", "counting MIG devices", "nvmlDeviceGetMaxMigDeviceCount", handle)
        for index in range(int(count)):
            try:
                mig = self._nvml.call("nvmlDeviceGetMigDeviceHandleByIndex", handle, index)
                if self._nvml.call("nvmlDeviceGetGpuInstanceId", mig) == gi_id:
                    found.add(str(self._nvml.call("nvmlDeviceGetUUID", mig)))
            except NvmlError:
                continue
        return found

    def _find_gi(self, handle: Any, profile_id: int, start: int, where: str) -> Any | None:
        array = (self._nvml.module.c_nvmlGpuInstance_t * _MAX_INSTANCES)()
        count = ctypes.c_uint(_MAX_INSTANCES)
        try:
            self._nvml.call("nvmlDeviceGetGpuInstances", handle, profile_id, array, ctypes.byref(count))
        except NvmlError as e:
            if e.name in ("INVALID_STATE", "NOT_SUPPORTED", "NOT_FOUND"):
                return None  # MIG mode is off: no instance exists
            raise ApplyError(f"{where}: listing GPU instances failed: {_reason(e)}") from e
        for gi in array[: count.value]:
            info = self._call(where, "reading a GPU instance", "nvmlGpuInstanceGetInfo", gi)
            if int(info.placement.start) == start:
                return gi
        return None

    def _destroy_gi(self, gi: Any, where: str, *, quiet: bool) -> None:
        try:
            for ci in self._compute_instances(gi):
                self._nvml.call("nvmlComputeInstanceDestroy", ci)
            self._nvml.call("nvmlGpuInstanceDestroy", gi)
        except NvmlError as e:
            if e.name in ("NOT_FOUND", "INVALID_ARGUMENT"):
                return  # gone already
            message = f"{where}: destroying the MIG device failed: {_reason(e)}"
            if not quiet:
                raise ApplyError(message) from e
            log.error("%s", message)

    def _compute_instances(self, gi: Any) -> list[Any]:
        found: list[Any] = []
        for index in range(_CI_PROFILE_COUNT):
            try:
                info = self._nvml.call("nvmlGpuInstanceGetComputeInstanceProfileInfo", gi, index, 0)
            except NvmlError:
                continue  # a compute-instance size this GPU instance does not have
            array = (self._nvml.module.c_nvmlComputeInstance_t * _MAX_INSTANCES)()
            count = ctypes.c_uint(_MAX_INSTANCES)
            self._nvml.call("nvmlGpuInstanceGetComputeInstances", gi, info.id, array, ctypes.byref(count))
            found.extend(array[: count.value])
        return found

    # ---- MIG mode ----------------------------------------------------------------------------------

    def _restore_mode(self, change: Change) -> None:
        parent, previous = change.text("parent"), change.get("previous")
        with self.lock(parent):
            handle = self._handle(parent)
            if handle is None or not isinstance(previous, bool):
                return
            try:
                if self._mig_enabled(handle, parent) != change.get("enabled") or self._instances(handle):
                    return  # someone else changed it since, or MIG devices still use it
                self._set_mode(handle, parent, _ENABLE if previous else _DISABLE, f"GPU {parent}", None)
            except ApplyError as e:
                log.warning(
                    "GPU %s: MIG mode not put back (the next claim switches what it needs): %s", parent, e
                )

    def _mig_enabled(self, handle: Any, parent: str) -> bool:
        current, _ = self._call(f"GPU {parent}", "reading MIG mode", "nvmlDeviceGetMigMode", handle)
        return int(current) == self._nvml.constant("NVML_DEVICE_MIG_ENABLE", _ENABLE)

    def _set_mode(self, handle: Any, parent: str, mode: int, where: str, index: object) -> Change:
        verb = "enabling" if mode == _ENABLE else "disabling"
        gpu = index if isinstance(index, int) else "<index>"
        status = self._call(where, f"{verb} MIG mode", "nvmlDeviceSetMigMode", handle, mode)
        if status != self._nvml.constant("NVML_SUCCESS", 0) or self._mig_enabled(handle, parent) != bool(
            mode
        ):
            self._undo_pending(handle, 1 - mode)
            if status == self._nvml.constant("NVML_ERROR_IN_USE", 19):  # the activation status: not idle
                raise ApplyError(
                    f"{where}: {verb} MIG mode failed: {_WHY['IN_USE']} (NVML activation status IN_USE); "
                    "MIG mode switches only while no process uses the GPU: stop them (`nvidia-smi` lists "
                    "them); the kubelet retries the claim"
                )
            raise ApplyError(
                f"{where}: {verb} MIG mode needs a GPU reset on this GPU (Ampere, or a VM without reset); "
                f"gpudra does not reset GPUs. An admin can switch it once (`nvidia-smi -i {gpu} -mig "
                f"{mode}`, then reset the GPU or reboot), or run this node with --mig-management static"
            )
        return Change.of(MIG_MODE, "", parent=parent, enabled=bool(mode), previous=not mode)

    def _undo_pending(self, handle: Any, mode: int) -> None:
        try:
            self._nvml.call("nvmlDeviceSetMigMode", handle, mode)
        except NvmlError as e:
            log.warning("could not take back a pending MIG mode change: %s", e)

    # ---- helpers -----------------------------------------------------------------------------------

    def _instances(self, handle: Any) -> bool:
        count = self._call("", "counting MIG devices", "nvmlDeviceGetMaxMigDeviceCount", handle)
        for index in range(int(count)):
            try:
                self._nvml.call("nvmlDeviceGetMigDeviceHandleByIndex", handle, index)
                return True
            except NvmlError:
                continue
        return False

    def _gpu(self, uuid: str, where: str) -> Any:
        handle = self._handle(uuid)
        if handle is None:
            raise ApplyError(f"{where}: the GPU is not on this node any more (not in the last discovery)")
        return handle

    def _call(self, where: str, doing: str, function: str, *args: Any) -> Any:
        try:
            return self._nvml.call(function, *args)
        except NvmlError as e:
            raise ApplyError(f"{where}: {doing} failed: {_reason(e)}") from e


def _where(change: Change) -> str:
    start, size = change.integer("start"), change.integer("size")
    return (f"GPU {change.text('parent')} MIG {change.text('profile')} at memory slices "
            f"{start}-{start + size - 1}")  # fmt: skip


def _reason(error: NvmlError) -> str:
    why = _WHY.get(error.name)
    return f"{why} (NVML {error.name}: {error.message})" if why else f"NVML {error.name}: {error.message}"
