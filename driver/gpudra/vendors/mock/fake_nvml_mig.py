"""The MIG half of the fake pynvml, reading: MIG mode, MIG device handles, GPU and compute instances,
profiles, placements. The calls that change MIG state are in :mod:`~gpudra.vendors.mock.fake_nvml_migops`.

Signatures and return types are pynvml's (``nvidia-ml-py`` 13): lists for the MIG mode, ``c_nvmlDevice_t``
for MIG device handles, ``c_nvmlGpuInstance_t`` / ``c_nvmlComputeInstance_t`` for instances, and the real
``c_nvmlGpuInstanceProfileInfo_v2_t``, ``c_nvmlComputeInstanceProfileInfo_v2_t``,
``c_nvmlGpuInstanceInfo_t``, ``c_nvmlComputeInstanceInfo_t`` and ``c_nvmlDeviceAttributes`` structures. The
calls that fill caller-allocated arrays take what pynvml passes on to NVML: a ctypes array (or None) and
``ctypes.byref(c_uint)``. Everything
reads the GPU's :class:`~gpudra.vendors.mock.fake_mig_layout.MigView`: the profile's pre-made MIG instances
and those created since, alike. Calls on a MIG device's handle also suffer its parent's injected faults; a
MIG device's own ``errors`` apply to it alone (and to the GPU-instance calls of its GPU instance).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import pynvml

from gpudra.vendors.mock.fake_mig_layout import GiView, ci_row, gi_row
from gpudra.vendors.mock.fake_nvml_base import FakeNvmlBase, fail, out_array, present, uint_target
from gpudra.vendors.mock.profile_mig import CI_PROFILE_COUNT, MigDeviceProfile

_SUCCESS: Final[int] = pynvml.NVML_SUCCESS


class FakeMigCalls(FakeNvmlBase):
    def nvmlDeviceGetMigMode(self, device: Any) -> list[int]:
        key = self.resolve("nvmlDeviceGetMigMode", device, ("gpu",))
        current, pending = present(self.view(self.index_of(key)).mode)
        return [current, pending]

    def nvmlDeviceGetMaxMigDeviceCount(self, device: Any) -> int:
        key = self.resolve("nvmlDeviceGetMaxMigDeviceCount", device, ("gpu",))
        return present(self.view(self.index_of(key)).max_count)

    def nvmlDeviceGetMigDeviceHandleByIndex(self, device: Any, index: int) -> Any:
        call = "nvmlDeviceGetMigDeviceHandleByIndex"
        gpu = self.index_of(self.resolve(call, device, ("gpu",)))
        view = self.view(gpu)
        if not 0 <= index < (view.max_count or 0):
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if index >= len(view.migs):
            raise fail(pynvml.NVML_ERROR_NOT_FOUND)
        self.mig_errors(call, view.migs[index])
        return self.mig_handle(gpu, index)

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
        return _filled(info, row.values, row.name, version)

    def nvmlDeviceGetGpuInstancePossiblePlacements(
        self, device: Any, profileId: int, placementsRef: Any, countRef: Any
    ) -> int:
        """NVML lists a profile's placements whether MIG is on or not (NOT_SUPPORTED for a GPU without MIG
        or a profile id it does not have). A NULL array gets the count only; an array whose ``count`` (or
        length) is too small gets INSUFFICIENT_SIZE with the count needed written."""
        gpu = self.gpu("nvmlDeviceGetGpuInstancePossiblePlacements", device)
        count = uint_target(countRef)
        array, length = out_array(placementsRef, pynvml.c_nvmlGpuInstancePlacement_t)
        row = gi_row(gpu, profileId)
        if gpu.mig_mode is None or row is None or row.placements is None:
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        room = count.value if length is None else min(count.value, length)
        count.value = len(row.placements)
        if array is None:
            return _SUCCESS
        if room < len(row.placements):
            raise fail(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for i, placement in enumerate(row.placements):
            array[i] = pynvml.c_nvmlGpuInstancePlacement_t(placement.start, placement.size)
        return _SUCCESS

    def nvmlDeviceGetGpuInstances(
        self, device: Any, profileId: int, gpuInstancesRef: Any, countRef: Any
    ) -> int:
        """The existing GPU instances of a profile: NOT_SUPPORTED while MIG is off, INVALID_ARGUMENT for an
        unknown profile id or a NULL array. NVML fills up to the profile's ``instanceCount`` entries, so a
        shorter array is a caller bug (it would overflow): ValueError."""
        key = self.resolve("nvmlDeviceGetGpuInstances", device, ("gpu",))
        index = self.index_of(key)
        count = uint_target(countRef)
        array, length = out_array(gpuInstancesRef, pynvml.c_nvmlGpuInstance_t)
        view, row = self.view(index), gi_row(self.device_of(key), profileId)
        if not view.enabled:
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if row is None or array is None:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        _fits(length, row.values["instanceCount"], "GPU instances")
        found = [g for g in view.gis if g.profile_id == profileId]
        for i, gi in enumerate(found):
            array[i] = self.gi_handle(index, gi)
        count.value = len(found)
        return _SUCCESS

    def nvmlDeviceGetGpuInstanceById(self, device: Any, gpuInstanceId: int) -> Any:
        call = "nvmlDeviceGetGpuInstanceById"
        index = self.index_of(self.resolve(call, device, ("gpu",)))
        view = self.view(index)
        if not view.enabled:
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        gi = view.gi(gpuInstanceId)
        if gi is None:
            raise fail(pynvml.NVML_ERROR_NOT_FOUND)
        self._gi_errors(call, index, gi)
        return self.gi_handle(index, gi)

    def nvmlGpuInstanceGetInfo(self, gpuInstance: Any) -> Any:
        key = self.resolve("nvmlGpuInstanceGetInfo", gpuInstance, ("gi",))
        gi = self.gi_of(key)
        self._gi_errors("nvmlGpuInstanceGetInfo", self.index_of(key), gi)
        return pynvml.c_nvmlGpuInstanceInfo_t(
            device=self.handle(("gpu", key[1])), id=gi.id, profileId=gi.profile_id,
            placement=pynvml.c_nvmlGpuInstancePlacement_t(gi.placement.start, gi.placement.size),
        )  # fmt: skip

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(
        self, device: Any, profile: int, engProfile: int, version: int = 2
    ) -> Any:
        """``profile`` is an NVML_COMPUTE_INSTANCE_PROFILE_* index: INVALID_ARGUMENT past the last one (or for
        an engine profile other than SHARED), NOT_SUPPORTED for one the GPU instance's profile row does not
        list (its CIs are at most as large as the GI)."""
        key = self.resolve("nvmlGpuInstanceGetComputeInstanceProfileInfo", device, ("gi",))
        gi = self.gi_of(key)
        if version == 2:
            info = pynvml.c_nvmlComputeInstanceProfileInfo_v2_t()  # sets the struct version
        elif version == 1:
            info = pynvml.c_nvmlComputeInstanceProfileInfo_t()
        else:
            raise fail(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)  # what pynvml raises for other versions
        if (
            not 0 <= profile < CI_PROFILE_COUNT
            or engProfile != pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
        ):
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        row = gi_row(self.device_of(key), gi.profile_id)
        found = next((c for c in row.ci_profiles if c.index == profile), None) if row else None
        if found is None:
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return _filled(info, found.values, found.name, version)

    def nvmlGpuInstanceGetComputeInstances(
        self, gpuInstance: Any, profileId: int, computeInstancesRef: Any, countRef: Any
    ) -> int:
        """The compute instances of a CI profile in a GPU instance: NOT_SUPPORTED for a CI profile id it does
        not have, INVALID_ARGUMENT for a NULL array; a shorter array than the CI profile's
        ``instanceCount`` is a caller bug (ValueError), as for nvmlDeviceGetGpuInstances."""
        key = self.resolve("nvmlGpuInstanceGetComputeInstances", gpuInstance, ("gi",))
        gi, index = self.gi_of(key), self.index_of(key)
        count = uint_target(countRef)
        array, length = out_array(computeInstancesRef, pynvml.c_nvmlComputeInstance_t)
        cirow = ci_row(gi_row(self.device_of(key), gi.profile_id), profileId)
        if cirow is None:
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if array is None:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        _fits(length, cirow.values["instanceCount"], "compute instances")
        view = self.view(index)
        found = [i for i in view.cis(gi.id) if view.migs[i].compute_instance.profile_id == profileId]
        for slot, mig_index in enumerate(found):
            array[slot] = self.ci_handle(index, mig_index)
        count.value = len(found)
        return _SUCCESS

    def nvmlGpuInstanceGetComputeInstanceById(self, gpuInstance: Any, computeInstanceId: int) -> Any:
        call = "nvmlGpuInstanceGetComputeInstanceById"
        key = self.resolve(call, gpuInstance, ("gi",))
        gi, index = self.gi_of(key), self.index_of(key)
        found = self.view(index).ci(gi.id, computeInstanceId)
        if found is None:
            raise fail(pynvml.NVML_ERROR_NOT_FOUND)
        self.mig_errors(call, self.view(index).migs[found])
        return self.ci_handle(index, found)

    def nvmlComputeInstanceGetInfo(self, computeInstance: Any) -> Any:
        key = self.resolve("nvmlComputeInstanceGetInfo", computeInstance, ("ci",))
        index = self.index_of(key)
        view = self.view(index)
        found = self.ci_of(key)
        mig = view.migs[found]
        self.mig_errors("nvmlComputeInstanceGetInfo", mig)
        gi = view.gi(mig.gpu_instance.id)
        ci = mig.compute_instance
        return pynvml.c_nvmlComputeInstanceInfo_t(
            device=self.handle(("gpu", key[1])),
            gpuInstance=self.gi_handle(index, gi) if gi is not None else None,
            id=ci.id, profileId=ci.profile_id,
            placement=pynvml.c_nvmlComputeInstancePlacement_t(ci.placement.start, ci.placement.size),
        )  # fmt: skip

    def _mig(self, call: str, device: Any) -> MigDeviceProfile:
        _, mig = self.gpu_or_mig(call, device)
        if mig is None:  # instance ids exist only for MIG device handles
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mig

    def _gi_errors(self, call: str, index: int, gi: GiView) -> None:
        """A GPU-instance call suffers the injected faults of the first MIG device in that GPU instance."""
        view = self.view(index)
        first = next(iter(view.cis(gi.id)), None)
        if first is not None:
            self.mig_errors(call, view.migs[first])


def _fits(length: int | None, needed: int, what: str) -> None:
    if length is not None and length < needed:
        raise ValueError(
            f"an array of {length} {what} is too short: NVML writes up to the profile's instanceCount "
            f"({needed}), past its end"
        )


def _filled(info: Any, values: Mapping[str, int], name: str, version: int) -> Any:
    """A profile-info structure with a profile row's values (and, in version 2, its name)."""
    for field_name, value in values.items():
        setattr(info, field_name, value)
    if version == 2:
        info.name = name.encode()
    return info
