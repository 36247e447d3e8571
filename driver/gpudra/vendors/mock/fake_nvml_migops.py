"""The MIG half of the fake pynvml, changing: MIG mode, GPU and compute instances created and destroyed.

Signatures and return types are pynvml's (``nvidia-ml-py`` 13): ``nvmlDeviceSetMigMode`` returns the
activation status, the create calls a ``c_nvmlGpuInstance_t`` / ``c_nvmlComputeInstance_t`` handle, the
destroy calls ``NVML_SUCCESS``. A placement is passed as NVML takes it,
``ctypes.byref(c_nvmlGpuInstancePlacement_t(...))`` (or ``ctypes.pointer``): a structure passed by value
reaches real NVML as a bogus pointer (ctypes copies its 8 bytes into the argument register; pynvml sets no
``argtypes``) and crashes the process, so the fake refuses it with a TypeError. The
rules and the error codes, with where nvml.h says them, are in :mod:`~gpudra.vendors.mock.fake_mig_rules`;
a device's ``errors`` injects faults into every one of these calls (see
:data:`~gpudra.vendors.mock.profile_mig.DYNAMIC_MIG_CALLS`).

Each change is checked and applied under one lock and saved (to the state file, if any) before it shows, so
it survives the process that made it, as MIG instances survive on a real GPU. Two hardware knobs that are not
NVML calls let tests play the rest of the world: :meth:`FakeMigOps.set_processes` (processes running on an
instance) and :meth:`FakeMigOps.reset_gpu` (a GPU reset: a pending MIG mode takes effect, every instance
goes).
"""

from __future__ import annotations

import ctypes
import time
from typing import Any, Final

import pynvml

from gpudra.vendors.mock import fake_mig_rules as rules
from gpudra.vendors.mock.fake_mig_layout import GiView
from gpudra.vendors.mock.fake_nvml_base import byref_target
from gpudra.vendors.mock.fake_nvml_mig import FakeMigCalls
from gpudra.vendors.mock.profile_mig import Placement

_SUCCESS: Final[int] = pynvml.NVML_SUCCESS


class FakeMigOps(FakeMigCalls):
    def nvmlDeviceSetMigMode(self, device: Any, mode: int) -> int:
        """Switch MIG mode; the activation status says whether it switched (SUCCESS) or is only pending
        (IN_USE: processes run on the GPU; RESET_REQUIRED: the GPU needs a reset, Ampere)."""
        key = self.resolve("nvmlDeviceSetMigMode", device, ("gpu",))
        index = self.index_of(key)
        with self._store.lock:
            gpu, status = rules.set_mode(self.device_of(key), self.view(index), self.gpu_state(index), mode)
            self.commit(index, gpu)
        return status

    def nvmlDeviceGetGpuInstanceRemainingCapacity(self, device: Any, profileId: int) -> int:
        key = self.resolve("nvmlDeviceGetGpuInstanceRemainingCapacity", device, ("gpu",))
        return rules.remaining(self.device_of(key), self.view(self.index_of(key)), profileId)

    def nvmlDeviceCreateGpuInstance(self, device: Any, profileId: int) -> Any:
        """A GPU instance at the first free placement (the lowest start) of the profile."""
        return self._create_gi("nvmlDeviceCreateGpuInstance", device, profileId, None)

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, device: Any, profileId: int, placement: Any) -> Any:
        """A GPU instance at exactly ``placement`` (memory slices; see the module docstring for how to pass
        it). Its id is fixed by the placement, as on real GPUs (see
        :func:`~gpudra.vendors.mock.fake_mig_layout.gi_id_for`)."""
        return self._create_gi("nvmlDeviceCreateGpuInstanceWithPlacement", device, profileId,
                               _placement(placement, pynvml.c_nvmlGpuInstancePlacement_t))  # fmt: skip

    def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance: Any, profileId: int) -> Any:
        """A compute instance of CI profile ``profileId`` (the ``id`` of
        ``nvmlGpuInstanceGetComputeInstanceProfileInfo``); only the full-size one is modelled, smaller ones
        answer NOT_SUPPORTED."""
        return self._create_ci("nvmlGpuInstanceCreateComputeInstance", gpuInstance, profileId, None)

    def nvmlGpuInstanceCreateComputeInstanceWithPlacement(
        self, gpuInstance: Any, profileId: int, placement: Any
    ) -> Any:
        """As nvmlGpuInstanceCreateComputeInstance, at ``placement`` (compute slices within the GPU instance,
        by reference): only the whole GPU instance is a placement of the full-size CI."""
        return self._create_ci("nvmlGpuInstanceCreateComputeInstanceWithPlacement", gpuInstance, profileId,
                               _placement(placement, pynvml.c_nvmlComputeInstancePlacement_t))  # fmt: skip

    def nvmlComputeInstanceDestroy(self, computeInstance: Any) -> int:
        """Destroy a compute instance (and with it its MIG device); IN_USE while processes run on it."""
        key = self.resolve("nvmlComputeInstanceDestroy", computeInstance, ("ci",))
        index = self.index_of(key)
        with self._store.lock:
            self.ci_of(key)
            self.commit(index, rules.destroy_ci(self.view(index), self.gpu_state(index), key[2], key[3]))
        return _SUCCESS

    def nvmlGpuInstanceDestroy(self, gpuInstance: Any) -> int:
        """Destroy a GPU instance; IN_USE while it has compute instances or processes run on it."""
        key = self.resolve("nvmlGpuInstanceDestroy", gpuInstance, ("gi",))
        index = self.index_of(key)
        with self._store.lock:
            self.gi_of(key)
            self.commit(index, rules.destroy_gi(self.view(index), self.gpu_state(index), key[2]))
        return _SUCCESS

    # -- hardware knobs (not NVML calls) ------------------------------------------------------------------
    def set_processes(self, index: int, gpu_instance: int, compute_instance: int | None, count: int) -> None:
        """Make ``count`` processes run on a GPU instance (``compute_instance`` None) or compute instance of
        the GPU at ``index``: destroying it answers IN_USE until the count is 0 again. Saved like any
        change."""
        with self._store.lock:
            gpu = rules.set_processes(self.view(index), self.gpu_state(index), gpu_instance, compute_instance,
                                      count)  # fmt: skip
            self.commit(index, gpu)

    def reset_gpu(self, index: int) -> None:
        """A GPU reset (``nvidia-smi -r``, or a reboot) of the GPU at ``index``: a pending MIG mode takes
        effect and every MIG instance is gone, the profile's pre-made ones too."""
        with self._store.lock:
            device = self.profile.devices[index]
            self.commit(index, rules.reset(device, self.view(index), self.gpu_state(index)))

    # -- helpers ------------------------------------------------------------------------------------------
    def _create_gi(self, call: str, device: Any, profile_id: int, placement: Placement | None) -> Any:
        key = self.resolve(call, device, ("gpu",))
        index = self.index_of(key)
        with self._store.lock:
            serial = self.mig_state.serial + 1
            gpu, gi = rules.create_gi(
                self.device_of(key), self.view(index), self.gpu_state(index),
                profile_id=profile_id, placement=placement, serial=serial,
            )  # fmt: skip
            self.commit(index, gpu, serial)
            return self.gi_handle(index, GiView(gi.id, gi.profile_id, gi.placement, gi.serial))

    def _create_ci(self, call: str, gpu_instance: Any, profile_id: int, placement: Placement | None) -> Any:
        key = self.resolve(call, gpu_instance, ("gi",))
        index = self.index_of(key)
        delay = self.device_of(key).mig_create_seconds
        if delay:  # as slow as the hardware, outside the lock; its GPU instance exists (and is saved)
            time.sleep(delay)
        with self._store.lock:
            gi = self.gi_of(key)
            device, serial, used = self.device_of(key), self.mig_state.serial + 1, self._used_uuids()
            parent = device.uuid if device.uuid is not None else f"#{index}"

            def name(ci_id: int) -> str:
                return rules.new_mig_uuid(parent, gi.id, ci_id, serial, used)

            gpu, ci = rules.create_ci(
                device, self.view(index), self.gpu_state(index), gi,
                profile_id=profile_id, placement=placement, serial=serial, mig_uuid=name,
            )  # fmt: skip
            self.commit(index, gpu, serial)
            found = self.view(index).ci(ci.gi_id, ci.id)
            assert found is not None  # just created
            return self.ci_handle(index, found)

    def _used_uuids(self) -> set[str]:
        """Every MIG UUID the profile names or this node's fake created and still knows."""
        used = {m.uuid for d in self.profile.devices for m in d.mig_devices if m.uuid is not None}
        return used | {c.uuid for gpu in self.mig_state.gpus.values() for c in gpu.cis}


def _placement(ref: object, kind: type) -> Placement:
    """The placement behind ``ctypes.byref(placement)``; TypeError for a structure passed by value or of
    another type (real NVML would read garbage)."""
    if isinstance(ref, ctypes.Structure):
        raise TypeError(
            f"pass the placement as ctypes.byref({type(ref).__name__}(...)): NVML takes a pointer, and a "
            "structure passed by value reaches it as a bogus address"
        )
    target = byref_target(ref)
    if not isinstance(target, kind):
        raise TypeError(
            f"expected ctypes.byref(<{kind.__name__}>), got a reference to {type(target).__name__}"
        )
    return Placement(int(target.start), int(target.size))  # type: ignore[attr-defined]
