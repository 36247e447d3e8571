"""Dynamic MIG on the fake pynvml: MIG mode switching and GPU/compute instances created and destroyed with
NVML's rules, called exactly as pynvml callers do (caller-allocated ctypes arrays, ``byref`` counts and
placements). Profile values are the H100 capture's and the fixture's A100/GB200 tables
(shared/fixtures/hardware/nvidia-gpus.json)."""

from __future__ import annotations

import ctypes
import re
from typing import Any

import pynvml
import pytest

from gpudra.vendors.mock.fake_nvml import FakeNvml
from gpudra.vendors.mock.profile import load_profile
from gpudra.vendors.nvidia.driver import NvidiaDriver

from .helpers import variant

GI_1G, GI_1G_20, GI_2G, GI_3G, GI_4G, GI_7G = 19, 15, 14, 9, 5, 0  # H100 GI profile ids
MIB = 1 << 20
MIG_UUID = re.compile(r"^MIG-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _open(name: str = "h100", *, enable: bool = True) -> tuple[FakeNvml, Any]:
    nvml = FakeNvml(load_profile(name))
    nvml.nvmlInit()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    if enable:
        assert nvml.nvmlDeviceSetMigMode(gpu, pynvml.NVML_DEVICE_MIG_ENABLE) == pynvml.NVML_SUCCESS
    return nvml, gpu


def _gi(nvml: FakeNvml, gpu: Any, profile_id: int, start: int, size: int) -> Any:
    placement = pynvml.c_nvmlGpuInstancePlacement_t(start, size)
    return nvml.nvmlDeviceCreateGpuInstanceWithPlacement(gpu, profile_id, ctypes.byref(placement))


def _full_ci(nvml: FakeNvml, gi: Any, index: int) -> Any:
    info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, index, 0)
    return nvml.nvmlGpuInstanceCreateComputeInstance(gi, info.id)


def _placements(nvml: FakeNvml, gpu: Any, profile_id: int) -> list[tuple[int, int]]:
    array = (pynvml.c_nvmlGpuInstancePlacement_t * 8)()
    count = ctypes.c_uint(8)
    assert nvml.nvmlDeviceGetGpuInstancePossiblePlacements(gpu, profile_id, array, ctypes.byref(count)) == 0
    return [(array[i].start, array[i].size) for i in range(count.value)]


def _gi_placements(nvml: FakeNvml, gpu: Any, profile_id: int) -> list[tuple[int, int, int]]:
    array = (pynvml.c_nvmlGpuInstance_t * 7)()
    count = ctypes.c_uint()
    nvml.nvmlDeviceGetGpuInstances(gpu, profile_id, array, ctypes.byref(count))
    infos = [nvml.nvmlGpuInstanceGetInfo(array[i]) for i in range(count.value)]
    return [(i.id, i.placement.start, i.placement.size) for i in infos]


def test_placements_are_listed_like_nvml() -> None:
    nvml, gpu = _open(enable=False)  # NVML lists them with MIG off too
    count = ctypes.c_uint(0)
    nvml.nvmlDeviceGetGpuInstancePossiblePlacements(gpu, GI_3G, None, ctypes.byref(count))
    assert count.value == 2  # a NULL array gets the count only
    short = (pynvml.c_nvmlGpuInstancePlacement_t * 1)()
    count = ctypes.c_uint(1)
    with pytest.raises(pynvml.NVMLError_InsufficientSize):
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(gpu, GI_3G, short, ctypes.byref(count))
    assert count.value == 2
    assert _placements(nvml, gpu, GI_3G) == [(0, 4), (4, 4)]
    assert _placements(nvml, gpu, GI_1G) == [(i, 1) for i in range(7)]
    assert _placements(nvml, gpu, GI_1G_20) == [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert _placements(nvml, gpu, GI_7G) == [(0, 8)]
    with pytest.raises(pynvml.NVMLError_NotSupported):  # no such profile id on an H100
        nvml.nvmlDeviceGetGpuInstancePossiblePlacements(gpu, 33, None, ctypes.byref(count))


def test_two_3g_fit_and_a_third_does_not() -> None:
    nvml, gpu = _open()
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(gpu, GI_3G) == 2
    first, second = _gi(nvml, gpu, GI_3G, 0, 4), _gi(nvml, gpu, GI_3G, 4, 4)
    assert isinstance(first, pynvml.c_nvmlGpuInstance_t)
    info = nvml.nvmlGpuInstanceGetInfo(second)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (2, GI_3G, 4, 4)
    assert nvml.nvmlGpuInstanceGetInfo(first).id == 1  # GI ids follow the memory-slice tree
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(gpu, GI_3G) == 0
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstance(gpu, GI_3G)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):  # 1 compute slice left, no memory
        nvml.nvmlDeviceCreateGpuInstance(gpu, GI_1G)
    assert _gi_placements(nvml, gpu, GI_3G) == [(1, 0, 4), (2, 4, 4)]


def test_seven_1g_fit_and_an_eighth_does_not() -> None:
    nvml, gpu = _open()
    created = [nvml.nvmlDeviceCreateGpuInstance(gpu, GI_1G) for _ in range(7)]  # first free placement each
    assert [nvml.nvmlGpuInstanceGetInfo(g).placement.start for g in created] == list(range(7))
    assert [nvml.nvmlGpuInstanceGetInfo(g).id for g in created] == list(range(7, 14))
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        nvml.nvmlDeviceCreateGpuInstance(gpu, GI_1G)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):  # taken
        _gi(nvml, gpu, GI_1G, 3, 1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # not a 1g.10gb placement
        _gi(nvml, gpu, GI_1G, 7, 1)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(gpu, GI_1G) == 0


def test_overlapping_placements_and_the_whole_gpu_fail() -> None:
    nvml, gpu = _open()
    _gi(nvml, gpu, GI_2G, 0, 2)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        _gi(nvml, gpu, GI_1G, 1, 1)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        _gi(nvml, gpu, GI_3G, 0, 4)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        _gi(nvml, gpu, GI_7G, 0, 8)
    assert nvml.nvmlGpuInstanceGetInfo(_gi(nvml, gpu, GI_3G, 4, 4)).id == 2
    with pytest.raises(pynvml.NVMLError_InsufficientResources):  # the 4g.40gb placement is 0:4
        _gi(nvml, gpu, GI_4G, 0, 4)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        _gi(nvml, gpu, GI_4G, 4, 4)  # not a 4g.40gb placement
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        _gi(nvml, gpu, 77, 0, 1)  # no such profile


def test_the_whole_gpu_fits_only_an_empty_gpu() -> None:
    nvml, gpu = _open()
    gi = _gi(nvml, gpu, GI_7G, 0, 8)
    info = nvml.nvmlGpuInstanceGetInfo(gi)
    assert (info.id, info.placement.start, info.placement.size) == (0, 0, 8)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(gpu, GI_1G) == 0
    nvml.nvmlGpuInstanceDestroy(gi)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(gpu, GI_1G) == 7


def test_a_created_mig_device_is_seen_like_any_other() -> None:
    nvml, gpu = _open()
    gi = _gi(nvml, gpu, GI_3G, 4, 4)
    ci = _full_ci(nvml, gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)
    ci_info = nvml.nvmlComputeInstanceGetInfo(ci)
    assert (ci_info.id, ci_info.profileId, ci_info.placement.start, ci_info.placement.size) == (0, 2, 0, 3)
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(gpu) == 7
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    uuid = nvml.nvmlDeviceGetUUID(mig)
    assert MIG_UUID.match(uuid)
    assert (nvml.nvmlDeviceGetGpuInstanceId(mig), nvml.nvmlDeviceGetComputeInstanceId(mig)) == (2, 0)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 1)
    attributes = nvml.nvmlDeviceGetAttributes(mig)
    engines = (attributes.sharedCopyEngineCount, attributes.sharedDecoderCount, attributes.sharedJpegCount)
    slices = (attributes.gpuInstanceSliceCount, attributes.computeInstanceSliceCount)
    assert (attributes.multiprocessorCount, engines, slices, attributes.memorySizeMB) == (
        60,
        (3, 3, 3),
        (3, 3),
        40448,
    )
    assert nvml.nvmlDeviceGetMemoryInfo(mig).total == 40448 * MIB
    by_id = nvml.nvmlDeviceGetGpuInstanceById(gpu, 2)
    assert nvml.nvmlGpuInstanceGetInfo(by_id).placement.start == 4
    same = nvml.nvmlGpuInstanceGetComputeInstanceById(by_id, 0)
    assert nvml.nvmlComputeInstanceGetInfo(same).placement.size == 3
    array = (pynvml.c_nvmlComputeInstance_t * 1)()
    count = ctypes.c_uint()
    nvml.nvmlGpuInstanceGetComputeInstances(gi, 2, array, ctypes.byref(count))
    assert count.value == 1
    assert nvml.nvmlComputeInstanceGetInfo(array[0]).id == 0


def test_the_real_driver_discovers_a_created_mig_device(open_nvml: Any) -> None:
    driver, nvml = open_nvml(load_profile("h100"))
    assert isinstance(driver, NvidiaDriver)
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetMigMode(gpu, 1)
    _full_ci(nvml, _gi(nvml, gpu, GI_2G, 2, 2), pynvml.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE)
    migs = [d for d in driver.discover().devices if d.mig is not None]
    assert len(migs) == 1
    assert migs[0].mig is not None
    assert (migs[0].mig.profile, migs[0].mig.placement_start, migs[0].mig.gi_id) == ("2g.20gb", 2, 4)
    assert migs[0].memory_bytes == 20096 * MIB
    assert migs[0].uuid == nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0))


def test_destroy_order_and_what_is_gone_after() -> None:
    nvml, gpu = _open()
    gi = _gi(nvml, gpu, GI_1G, 0, 1)
    ci = _full_ci(nvml, gi, 0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    first_uuid = nvml.nvmlDeviceGetUUID(mig)
    with pytest.raises(pynvml.NVMLError_InUse):  # a compute instance is left
        nvml.nvmlGpuInstanceDestroy(gi)
    nvml.set_processes(0, 7, 0, 1)
    with pytest.raises(pynvml.NVMLError_InUse):  # a process runs on it
        nvml.nvmlComputeInstanceDestroy(ci)
    nvml.set_processes(0, 7, 0, 0)
    assert nvml.nvmlComputeInstanceDestroy(ci) == pynvml.NVML_SUCCESS
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # the MIG device went with it
        nvml.nvmlDeviceGetUUID(mig)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    nvml.set_processes(0, 7, None, 2)
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.nvmlGpuInstanceDestroy(gi)
    nvml.set_processes(0, 7, None, 0)
    assert nvml.nvmlGpuInstanceDestroy(gi) == pynvml.NVML_SUCCESS
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # a destroyed instance's handle is invalid
        nvml.nvmlGpuInstanceGetInfo(gi)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetGpuInstanceById(gpu, 7)
    again = _gi(nvml, gpu, GI_1G, 0, 1)  # same placement, same id: a new instance all the same
    _full_ci(nvml, again, 0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlGpuInstanceGetInfo(gi)
    assert nvml.nvmlGpuInstanceGetInfo(again).id == 7
    assert nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)) != first_uuid


def test_compute_instance_profiles_of_a_gpu_instance() -> None:
    nvml, gpu = _open()
    gi = _gi(nvml, gpu, GI_3G, 0, 4)
    info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
        gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE, 0
    )
    assert isinstance(info, pynvml.c_nvmlComputeInstanceProfileInfo_v2_t)
    assert (info.id, info.sliceCount, info.instanceCount, info.multiprocessorCount, info.name) == (
        2, 3, 1, 60, "MIG 3g.40gb",
    )  # fmt: skip
    with pytest.raises(pynvml.NVMLError_NotSupported):  # larger than the GPU instance
        nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE, 0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # past NVML_COMPUTE_INSTANCE_PROFILE_COUNT
        nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, 9, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # no such CI profile id in this GI
        nvml.nvmlGpuInstanceCreateComputeInstance(gi, 4)
    ci = nvml.nvmlGpuInstanceCreateComputeInstance(gi, 2)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):  # the compute slices are taken
        nvml.nvmlGpuInstanceCreateComputeInstance(gi, 2)
    assert nvml.nvmlComputeInstanceGetInfo(ci).id == 0


def test_smaller_compute_instances_are_listed_but_not_created() -> None:
    nvml, gpu = _open("dgx-a100", enable=False)
    nvml.nvmlDeviceSetMigMode(gpu, 1)
    nvml.reset_gpu(0)
    gi = _gi(nvml, gpu, GI_7G, 0, 8)
    small = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(
        gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE, 0
    )
    assert (small.name, small.sliceCount, small.instanceCount, small.multiprocessorCount) == (
        "MIG 1c.7g.40gb", 1, 7, 14,
    )  # fmt: skip
    with pytest.raises(pynvml.NVMLError_NotSupported):  # not modelled
        nvml.nvmlGpuInstanceCreateComputeInstance(gi, small.id)
    full = _full_ci(nvml, gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE)
    assert nvml.nvmlComputeInstanceGetInfo(full).placement.size == 7
    attributes = nvml.nvmlDeviceGetAttributes(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0))
    assert (attributes.multiprocessorCount, attributes.sharedDecoderCount, attributes.memorySizeMB) == (
        98,
        5,
        40192,
    )


def test_hopper_switches_mig_mode_at_once() -> None:
    nvml, gpu = _open(enable=False)
    assert nvml.nvmlDeviceGetMigMode(gpu) == [0, 0]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(gpu) == 0  # as the capture, with MIG off
    with pytest.raises(pynvml.NVMLError_NotSupported):  # nvml.h: MIG mode not enabled
        _gi(nvml, gpu, GI_1G, 0, 1)
    assert nvml.nvmlDeviceSetMigMode(gpu, 1) == pynvml.NVML_SUCCESS
    assert nvml.nvmlDeviceGetMigMode(gpu) == [1, 1]
    assert nvml.nvmlDeviceGetMaxMigDeviceCount(gpu) == 7
    gi = _gi(nvml, gpu, GI_1G, 0, 1)
    with pytest.raises(pynvml.NVMLError_InUse):  # a GPU instance exists
        nvml.nvmlDeviceSetMigMode(gpu, 0)
    nvml.nvmlGpuInstanceDestroy(gi)
    assert nvml.nvmlDeviceSetMigMode(gpu, 0) == pynvml.NVML_SUCCESS
    assert nvml.nvmlDeviceGetMigMode(gpu) == [0, 0]
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceSetMigMode(gpu, 2)


def test_ampere_needs_a_reset() -> None:
    nvml, gpu = _open("dgx-a100", enable=False)
    assert nvml.nvmlDeviceSetMigMode(gpu, 1) == pynvml.NVML_ERROR_RESET_REQUIRED
    assert nvml.nvmlDeviceGetMigMode(gpu) == [0, 1]  # pending only
    with pytest.raises(pynvml.NVMLError_NotSupported):  # still off
        nvml.nvmlDeviceCreateGpuInstance(gpu, GI_1G)
    assert nvml.nvmlDeviceSetMigMode(gpu, 0) == pynvml.NVML_SUCCESS  # the pending change taken back
    assert nvml.nvmlDeviceGetMigMode(gpu) == [0, 0]
    nvml.nvmlDeviceSetMigMode(gpu, 1)
    nvml.reset_gpu(0)
    assert nvml.nvmlDeviceGetMigMode(gpu) == [1, 1]
    assert nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceCreateGpuInstance(gpu, GI_1G)).placement.size == 1
    assert nvml.nvmlDeviceGetMigMode(nvml.nvmlDeviceGetHandleByIndex(1)) == [0, 0]  # its own GPU only


def test_processes_keep_the_mode_pending() -> None:
    profile = variant("h100", lambda d: d["devices"][0].update(processes=2))
    nvml = FakeNvml(profile)
    nvml.nvmlInit()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceSetMigMode(gpu, 1) == pynvml.NVML_ERROR_IN_USE  # nvml.h: the activation status
    assert nvml.nvmlDeviceGetMigMode(gpu) == [0, 1]


def test_a_gpu_without_mig_refuses() -> None:
    nvml = FakeNvml(load_profile("pcie-l4-x2"))
    nvml.nvmlInit()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceSetMigMode(gpu, 1)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceCreateGpuInstance(gpu, GI_1G)


def test_injected_faults() -> None:
    def edit(data: dict[str, Any]) -> None:
        data["devices"][0]["errors"]["nvmlDeviceCreateGpuInstanceWithPlacement"] = "NVML_ERROR_NO_PERMISSION"

    nvml = FakeNvml(variant("h100", edit))
    nvml.nvmlInit()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetMigMode(gpu, 1)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        _gi(nvml, gpu, GI_1G, 0, 1)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(gpu, GI_1G) == 7  # nothing was created
    assert nvml.nvmlGpuInstanceGetInfo(nvml.nvmlDeviceCreateGpuInstance(gpu, GI_1G)).id == 7


def test_a_placement_passed_by_value_is_refused() -> None:
    nvml, gpu = _open()
    placement = pynvml.c_nvmlGpuInstancePlacement_t(0, 1)
    with pytest.raises(TypeError, match="byref"):  # real NVML would read 0x100000000 as the pointer
        nvml.nvmlDeviceCreateGpuInstanceWithPlacement(gpu, GI_1G, placement)
    with pytest.raises(TypeError):  # a placement of the wrong type
        nvml.nvmlDeviceCreateGpuInstanceWithPlacement(gpu, GI_1G, ctypes.byref(pynvml.c_nvmlMemory_t()))
    gi = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(gpu, GI_1G, ctypes.pointer(placement))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # a full-size CI spans the GPU instance
        nvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(
            gi, 0, ctypes.byref(pynvml.c_nvmlComputeInstancePlacement_t(0, 2))
        )
    ci = nvml.nvmlGpuInstanceCreateComputeInstanceWithPlacement(
        gi, 0, ctypes.byref(pynvml.c_nvmlComputeInstancePlacement_t(0, 1))
    )
    assert nvml.nvmlComputeInstanceGetInfo(ci).placement.size == 1


def test_premade_instances_take_their_slices_and_can_go() -> None:
    nvml = FakeNvml(load_profile("h100-mig-mixed"))  # GPU 0: 3g@4 (GI 2), 2g@0 (GI 3), 2g@2 (GI 4)
    nvml.nvmlInit()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    premade = nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0))
    with pytest.raises(pynvml.NVMLError_InsufficientResources):  # every memory slice is used
        _gi(nvml, gpu, GI_1G, 6, 1)
    gi = nvml.nvmlDeviceGetGpuInstanceById(gpu, 2)
    with pytest.raises(pynvml.NVMLError_InUse):
        nvml.nvmlGpuInstanceDestroy(gi)
    nvml.nvmlComputeInstanceDestroy(nvml.nvmlGpuInstanceGetComputeInstanceById(gi, 0))
    nvml.nvmlGpuInstanceDestroy(gi)
    assert _gi_placements(nvml, gpu, GI_3G) == []
    _full_ci(nvml, _gi(nvml, gpu, GI_1G, 4, 1), 0)
    uuids = [nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)) for i in range(3)]
    assert uuids[:2] == [
        "MIG-0d100000-0000-5000-8000-000000000003",
        "MIG-0d100000-0000-5000-8000-000000000004",
    ]
    assert premade not in uuids
    assert nvml.nvmlDeviceGetGpuInstanceId(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 2)) == 11


def test_gb200_rows_with_unknown_values() -> None:
    nvml, gpu = _open("gb200-nvl72-tray")
    gi = _gi(nvml, gpu, GI_3G, 0, 4)  # the placement is known, the engines are not
    with pytest.raises(pynvml.NVMLError_NotSupported):  # no compute-instance profile is known for it
        nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE, 0)
    nvml.nvmlGpuInstanceDestroy(gi)
    _full_ci(nvml, _gi(nvml, gpu, GI_1G, 0, 1), 0)
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    assert nvml.nvmlDeviceGetMemoryInfo(mig).total == 22528 * MIB
    assert nvml.nvmlDeviceGetAttributes(mig).multiprocessorCount == 18


def test_list_calls_need_room_for_every_instance() -> None:
    nvml, gpu = _open()
    count = ctypes.c_uint()
    with pytest.raises(ValueError, match="too short"):  # NVML would write past its end
        nvml.nvmlDeviceGetGpuInstances(gpu, GI_1G, (pynvml.c_nvmlGpuInstance_t * 2)(), ctypes.byref(count))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetGpuInstances(gpu, GI_1G, None, ctypes.byref(count))
    nvml.nvmlDeviceSetMigMode(gpu, 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # MIG off: no instance can exist
        nvml.nvmlDeviceGetGpuInstances(gpu, GI_1G, (pynvml.c_nvmlGpuInstance_t * 7)(), ctypes.byref(count))


def test_instance_count_limits_a_profile_on_its_own() -> None:
    nvml, gpu = _open()
    _gi(nvml, gpu, 20, 0, 1)  # 1g.10gb+me: instanceCount 1 (the one media-extension set)
    assert nvml.nvmlDeviceGetGpuInstanceRemainingCapacity(gpu, 20) == 0
    with pytest.raises(pynvml.NVMLError_InsufficientResources):  # placement 1 is free all the same
        _gi(nvml, gpu, 20, 1, 1)
    assert nvml.nvmlGpuInstanceGetInfo(_gi(nvml, gpu, GI_1G, 1, 1)).id == 8


def test_compute_slices_run_out_before_memory_slices() -> None:
    def eighth_placement(data: dict[str, Any]) -> None:  # synthetic: a 1g.10gb that could sit at 7
        row = data["devices"][0]["gpu_instance_profiles"][0]
        row.update(instanceCount=8, placements=[*row["placements"], {"start": 7, "size": 1}])

    nvml = FakeNvml(variant("h100", eighth_placement))
    nvml.nvmlInit()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    nvml.nvmlDeviceSetMigMode(gpu, 1)
    for start in range(7):
        _gi(nvml, gpu, GI_1G, start, 1)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):  # memory slice 7 is free, no SM slice is
        _gi(nvml, gpu, GI_1G, 7, 1)
