"""The MIG half of the fake pynvml: MIG mode, MIG device handles, GPU and compute instances.

Signatures and return types are pynvml's (``nvidia-ml-py`` 13): lists for the MIG mode, ``c_nvmlDevice_t`` for
MIG device handles, ``c_nvmlGpuInstance_t`` / ``c_nvmlComputeInstance_t`` for instances, and the real
``c_nvmlGpuInstanceProfileInfo_v2_t``, ``c_nvmlGpuInstanceInfo_t``, ``c_nvmlComputeInstanceInfo_t`` and
``c_nvmlDeviceAttributes`` structures. Calls on a MIG device's handle also suffer its parent's injected
faults; a MIG device's own ``errors`` apply to it alone.
"""

from __future__ import annotations

from typing import Any

import pynvml

from gpudra.vendors.mock.fake_nvml_base import FakeNvmlBase, fail, mig_enabled, present
from gpudra.vendors.mock.profile import DeviceProfile
from gpudra.vendors.mock.profile_mig import MigDeviceProfile


class FakeMigCalls(FakeNvmlBase):
    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        current, pending = present(self.gpu("nvmlDeviceGetMigMode", device).mig_mode)
        return [current, pending]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        return present(self.gpu("nvmlDeviceGetMaxMigDeviceCount", device).max_mig_device_count)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        call = "nvmlDeviceGetMigDeviceHandleByIndex"
        key = self.resolve(call, device, ("gpu",))
        profile = self.device_of(key)
        if not 0 <= index < (profile.max_mig_device_count or 0):
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if not mig_enabled(profile) or index >= len(profile.mig_devices):
            raise fail(pynvml.NVML_ERROR_NOT_FOUND)
        self.mig_errors(call, profile.mig_devices[index])
        return self.mig_handle(self.index_of(key), index)

    def nvmlDeviceGetGpuInstanceId(self, device: Any) -> int:
        return self._mig("nvmlDeviceGetGpuInstanceId", device).gpu_instance.id

    def nvmlDeviceGetComputeInstanceId(self, device: Any) -> int:
        return self._mig("nvmlDeviceGetComputeInstanceId", device).compute_instance.id

    def nvmlDeviceGetAttributes(self, device: Any) -> Any:
        _, mig = self.gpu_or_mig("nvmlDeviceGetAttributes", device)
        if mig is None:  # NVML answers this for MIG device handles only
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.c_nvmlDeviceAttributes(**present(mig.attributes))

    def nvmlDeviceGetGpuInstanceProfileInfo(self, device: Any, profile: int, version: int = 2) -> Any:
        gpu = self.gpu("nvmlDeviceGetGpuInstanceProfileInfo", device)
        row = next((r for r in gpu.gpu_instance_profiles if r.index == profile), None)
        if version == 2:
            info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()  # sets the struct version
        elif version == 1:
            info = pynvml.c_nvmlGpuInstanceProfileInfo_t()
        else:
            raise fail(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)  # what pynvml raises for other versions
        if row is None:
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        for name, value in row.values.items():
            setattr(info, name, value)
        if version == 2:
            info.name = row.name.encode()
        return info

    def nvmlDeviceGetGpuInstanceById(self, device: Any, gpuInstanceId: int) -> Any:
        call = "nvmlDeviceGetGpuInstanceById"
        key = self.resolve(call, device, ("gpu",))
        profile = self.device_of(key)
        if not mig_enabled(profile):
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        mig = _first_in(profile, gpuInstanceId)
        self.mig_errors(call, mig)
        return self.handle(("gi", key[1], gpuInstanceId), pynvml.c_nvmlGpuInstance_t)

    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> Any:
        key = self.resolve("nvmlGpuInstanceGetInfo", gpuInstance, ("gi",))
        mig = _first_in(self.device_of(key), key[2])
        self.mig_errors("nvmlGpuInstanceGetInfo", mig)
        gi = mig.gpu_instance
        return pynvml.c_nvmlGpuInstanceInfo_t(
            device=self.handle(("gpu", key[1])), id=gi.id, profileId=gi.profile_id,
            placement=pynvml.c_nvmlGpuInstancePlacement_t(gi.placement.start, gi.placement.size),
        )  # fmt: skip

    def nvmlGpuInstanceGetComputeInstanceById(self, gpuInstance: Any, computeInstanceId: int) -> Any:
        call = "nvmlGpuInstanceGetComputeInstanceById"
        key = self.resolve(call, gpuInstance, ("gi",))
        mig = _in_gi(self.device_of(key), key[2], computeInstanceId)
        self.mig_errors(call, mig)
        return self.handle(("ci", key[1], key[2], computeInstanceId), pynvml.c_nvmlComputeInstance_t)

    def nvmlComputeInstanceGetInfo(self, computeInstance: Any) -> Any:
        key = self.resolve("nvmlComputeInstanceGetInfo", computeInstance, ("ci",))
        mig = _in_gi(self.device_of(key), key[2], key[3])
        self.mig_errors("nvmlComputeInstanceGetInfo", mig)
        ci = mig.compute_instance
        return pynvml.c_nvmlComputeInstanceInfo_t(
            device=self.handle(("gpu", key[1])),
            gpuInstance=self.handle(("gi", key[1], key[2]), pynvml.c_nvmlGpuInstance_t),
            id=ci.id, profileId=ci.profile_id,
            placement=pynvml.c_nvmlComputeInstancePlacement_t(ci.placement.start, ci.placement.size),
        )  # fmt: skip

    def _mig(self, call: str, device: Any) -> MigDeviceProfile:
        _, mig = self.gpu_or_mig(call, device)
        if mig is None:  # instance ids exist only for MIG device handles
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mig


def _first_in(profile: DeviceProfile, gi_id: int) -> MigDeviceProfile:
    mig = next((m for m in profile.mig_devices if m.gpu_instance.id == gi_id), None)
    if mig is None:
        raise fail(pynvml.NVML_ERROR_NOT_FOUND)
    return mig


def _in_gi(profile: DeviceProfile, gi_id: int, ci_id: int) -> MigDeviceProfile:
    ids = (gi_id, ci_id)
    mig = next((m for m in profile.mig_devices if (m.gpu_instance.id, m.compute_instance.id) == ids), None)
    if mig is None:
        raise fail(pynvml.NVML_ERROR_NOT_FOUND)
    return mig
