"""FakeNvml speaks pynvml: same function signatures, real return types, the real NVMLError classes."""

from __future__ import annotations

import ctypes
import inspect
import tempfile
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpudra.vendors.mock.driver import open_fake_hardware, open_mock
from gpudra.vendors.mock.fake_nvml import FakeNvml, write_sysfs_tree
from gpudra.vendors.mock.node import FakeNode
from gpudra.vendors.mock.profile import DEVICE_CALLS, SYSTEM_CALLS, load_profile
from gpudra.vendors.sysfs import read_numa_node, read_pcie_root

from .helpers import variant


@pytest.mark.parametrize("name", sorted(SYSTEM_CALLS | DEVICE_CALLS))
def test_signature_matches_real_pynvml(name: str) -> None:
    real = inspect.signature(getattr(pynvml, name))
    fake = inspect.signature(getattr(FakeNvml(load_profile("h100")), name))
    assert [(p.name, p.default) for p in fake.parameters.values()] == [
        (p.name, p.default) for p in real.parameters.values()
    ]


def test_return_types_are_pynvml_types() -> None:
    nvml = FakeNvml(load_profile("h100"))
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    assert isinstance(handle, pynvml.c_nvmlDevice_t)
    pci = nvml.nvmlDeviceGetPciInfo_v3(handle)
    assert isinstance(pci, pynvml.nvmlPciInfo_t)
    # pynvml's _PrintableStructure decodes char[] fields on read, as it does for a real NVML answer
    assert pci.busId == "00000000:00:06.0"
    assert pci.busIdLegacy == "0000:00:06.0"
    assert (pci.domain, pci.bus, pci.device, pci.pciDeviceId) == (0, 0, 6, 0x233010DE)
    memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    assert isinstance(memory, pynvml.c_nvmlMemory_t)
    assert (memory.total, memory.free, memory.used) == (85520809984, 85017493504, 503316480)
    assert nvml.nvmlDeviceGetUUID(handle) == "GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63"
    assert nvml.nvmlSystemGetDriverVersion() == "580.159.04"
    assert nvml.nvmlDeviceGetCudaComputeCapability(handle) == (9, 0)
    assert (nvml.nvmlDeviceGetArchitecture(handle), nvml.nvmlDeviceGetBrand(handle)) == (9, 14)


def test_errors_are_the_real_pynvml_classes() -> None:
    nvml = FakeNvml(load_profile("h100"))
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.nvmlInit()
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # as in the capture
        nvml.nvmlDeviceGetNumaNodeId(handle)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetUUID(ctypes.cast(ctypes.c_void_p(0x1234), pynvml.c_nvmlDevice_t))
    assert nvml.NVMLError is pynvml.NVMLError
    assert nvml.NVML_ERROR_GPU_IS_LOST == pynvml.NVML_ERROR_GPU_IS_LOST
    assert nvml.NVMLError_GpuIsLost is pynvml.NVMLError_GpuIsLost


def test_fake_never_exposes_real_pynvml_functions() -> None:
    nvml = FakeNvml(load_profile("h100"))
    assert not hasattr(nvml, "nvmlDeviceGetNvLinkRemotePciInfo")  # not used by the backend, so not faked
    assert not hasattr(nvml, "nvmlDeviceGetTemperature")


def test_mig_calls_return_pynvml_types() -> None:
    nvml = FakeNvml(load_profile("h100-mig-mixed"))
    nvml.nvmlInit()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    assert nvml.nvmlDeviceGetMigMode(gpu) == [1, 1]
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)
    assert isinstance(mig, pynvml.c_nvmlDevice_t)
    assert nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0).contents is not None  # same handle every time
    assert (
        ctypes.cast(mig, ctypes.c_void_p).value
        == ctypes.cast(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0), ctypes.c_void_p).value
    )
    assert nvml.nvmlDeviceGetUUID(mig) == "MIG-0d100000-0000-5000-8000-000000000002"
    attributes = nvml.nvmlDeviceGetAttributes(mig)
    assert isinstance(attributes, pynvml.c_nvmlDeviceAttributes)
    counts = (attributes.multiprocessorCount, attributes.sharedCopyEngineCount, attributes.memorySizeMB)
    assert counts == (60, 3, 40448)
    gi = nvml.nvmlDeviceGetGpuInstanceById(gpu, nvml.nvmlDeviceGetGpuInstanceId(mig))
    assert isinstance(gi, pynvml.c_nvmlGpuInstance_t)
    info = nvml.nvmlGpuInstanceGetInfo(gi)
    assert isinstance(info, pynvml.c_nvmlGpuInstanceInfo_t)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (2, 9, 4, 4)
    ci = nvml.nvmlGpuInstanceGetComputeInstanceById(gi, nvml.nvmlDeviceGetComputeInstanceId(mig))
    assert isinstance(ci, pynvml.c_nvmlComputeInstance_t)
    ci_info = nvml.nvmlComputeInstanceGetInfo(ci)
    assert (ci_info.profileId, ci_info.placement.start, ci_info.placement.size) == (2, 0, 3)
    row = nvml.nvmlDeviceGetGpuInstanceProfileInfo(gpu, pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1)
    assert isinstance(row, pynvml.c_nvmlGpuInstanceProfileInfo_v2_t)
    assert (row.id, row.name, row.ofaCount) == (20, "MIG 1g.10gb+me", 1)
    assert nvml.nvmlDeviceGetGpuInstanceProfileInfo(gpu, 0, version=1).id == 19


def test_mig_calls_refuse_like_nvml() -> None:
    nvml = FakeNvml(load_profile("h100-mig-mixed"))
    nvml.nvmlInit()
    gpu, full = nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlDeviceGetHandleByIndex(1)
    with pytest.raises(pynvml.NVMLError_NotFound):  # an empty MIG slot
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 3)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # past max_mig_device_count
        nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 7)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # only MIG device handles have attributes
        nvml.nvmlDeviceGetAttributes(gpu)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetGpuInstanceId(full)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # MIG is off on GPU 1
        nvml.nvmlDeviceGetGpuInstanceById(full, 2)
    with pytest.raises(pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetGpuInstanceById(gpu, 9)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # profile index 5 (8_SLICE) is not an H100 profile
        nvml.nvmlDeviceGetGpuInstanceProfileInfo(gpu, 5)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # a GPU instance handle is not a device handle
        nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetGpuInstanceById(gpu, 2))


def test_link_calls() -> None:
    nvml = FakeNvml(load_profile("dgx-h100"))
    nvml.nvmlInit()
    a, b = nvml.nvmlDeviceGetHandleByIndex(0), nvml.nvmlDeviceGetHandleByIndex(1)
    assert nvml.nvmlDeviceGetNvLinkState(a, 17) == 1
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetNvLinkState(a, 18)
    assert nvml.nvmlDeviceGetP2PStatus(a, b, pynvml.NVML_P2P_CAPS_INDEX_NVLINK) == pynvml.NVML_P2P_STATUS_OK
    with pytest.raises(pynvml.NVMLError_NotSupported):  # the profile describes NVLINK only
        nvml.nvmlDeviceGetP2PStatus(a, b, pynvml.NVML_P2P_CAPS_INDEX_READ)
    assert nvml.calls.count("nvmlDeviceGetP2PStatus") == 2
    with pytest.raises(pynvml.NVMLError_NotSupported):  # the fixtures disagree on H100: not served
        nvml.nvmlDeviceGetAddressingMode(a)
    h100 = FakeNvml(load_profile("h100"))
    h100.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotSupported):  # as every link in the capture
        h100.nvmlDeviceGetNvLinkState(h100.nvmlDeviceGetHandleByIndex(0), 0)


def test_injected_faults() -> None:
    def edit(data: dict[str, object]) -> None:
        devices = data["devices"]
        assert isinstance(devices, list)
        devices[5]["errors"] = {"*": "NVML_ERROR_GPU_IS_LOST"}
        devices[6]["errors"] = {"nvmlDeviceGetBrand": "NVML_ERROR_NO_PERMISSION"}

    nvml = FakeNvml(variant("dgx-h100", edit))
    nvml.nvmlInit()
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetHandleByIndex(5)
    with pytest.raises(pynvml.NVMLError_NoPermission):
        nvml.nvmlDeviceGetBrand(nvml.nvmlDeviceGetHandleByIndex(6))
    assert nvml.nvmlDeviceGetBrand(nvml.nvmlDeviceGetHandleByIndex(7)) == 14


def test_shutdown_without_init_is_uninitialized() -> None:
    nvml = FakeNvml(load_profile("h100"))
    nvml.nvmlInit()
    nvml.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        nvml.nvmlShutdown()


def test_sysfs_tree_from_profile(tmp_path: Path) -> None:
    write_sysfs_tree(tmp_path, load_profile("dgx-h100"))
    assert read_numa_node(tmp_path, "0000:1b:00.0") == 0
    assert read_numa_node(tmp_path, "0000:df:00.0") == 1
    assert read_pcie_root(tmp_path, "0000:1b:00.0") is None  # not in the fixtures, so not invented


def test_sysfs_tree_with_root_and_minus_one(tmp_path: Path) -> None:
    profile = variant("h100", lambda d: d["devices"][0]["sysfs"].update(numa_node=-1))
    write_sysfs_tree(tmp_path, profile)
    link = tmp_path / "bus/pci/devices/0000:00:06.0"
    assert link.is_symlink()
    assert (link / "numa_node").read_text() == "-1\n"
    assert read_numa_node(tmp_path, "0000:00:06.0") is None
    assert read_pcie_root(tmp_path, "0000:00:06.0") == "pci0000:00"


def test_open_mock_cleans_its_tree(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the mock's private tree goes
    driver = open_mock(load_profile("h100"))
    assert len(driver.discover().devices) == 1
    assert list(tmp_path.iterdir())
    driver.close()
    driver.close()
    assert list(tmp_path.iterdir()) == []


def test_fake_hardware_tree_and_shutdown(tmp_path: Path) -> None:
    driver = open_fake_hardware(load_profile("h100"), tmp_path)
    assert (tmp_path / "sys/bus/pci/devices/0000:00:06.0").is_symlink()
    assert len(driver.discover().devices) == 1
    driver.close()
    node = FakeNode(load_profile("h100"), tmp_path / "node")
    assert node.nvml is not None
    assert node.nvml.init_count == 1
    node.close()
    assert node.nvml.init_count == 0


def address(handle: Any) -> int | None:
    value: int | None = ctypes.cast(handle, ctypes.c_void_p).value
    return value


def without_gpu_3(data: dict[str, Any]) -> None:
    del data["devices"][3]
    for index, device in enumerate(data["devices"]):
        device["index"] = index
    data["p2p_status"] = {
        k: [r[:3] + r[4:] for i, r in enumerate(m) if i != 3] for k, m in data["p2p_status"].items()
    }


def test_serve_keeps_the_handles_of_gpus_still_there() -> None:
    nvml = FakeNvml(load_profile("dgx-h100"))
    nvml.nvmlInit()
    handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(8)]
    names = [nvml.nvmlDeviceGetUUID(h) for h in handles]
    nvml.serve(variant("dgx-h100", without_gpu_3))
    assert nvml.nvmlDeviceGetCount() == 7
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        nvml.nvmlDeviceGetUUID(handles[3])
    assert [nvml.nvmlDeviceGetUUID(h) for h in handles[4:]] == names[4:]  # now at indices 3..6
    assert address(nvml.nvmlDeviceGetHandleByIndex(3)) == address(handles[4])
    assert nvml.nvmlDeviceGetP2PStatus(handles[2], handles[4], pynvml.NVML_P2P_CAPS_INDEX_NVLINK) == 0
    nvml.serve(load_profile("dgx-h100"))  # back: GPU 3 is a new device with a new handle
    assert nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(3)) == names[3]
    assert address(nvml.nvmlDeviceGetHandleByIndex(3)) not in {address(h) for h in handles}
    assert nvml.init_count == 1


def test_serve_keeps_the_handles_of_mig_devices_still_there() -> None:
    nvml = FakeNvml(load_profile("h100-mig-mixed"))
    nvml.nvmlInit()
    gpu = nvml.nvmlDeviceGetHandleByIndex(0)
    migs = [nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, i) for i in range(3)]
    names = [nvml.nvmlDeviceGetUUID(m) for m in migs]
    nvml.serve(variant("h100-mig-mixed", lambda d: d["devices"][0]["mig_devices"].pop(0)))  # GI 2 destroyed
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetUUID(migs[0])
    assert [nvml.nvmlDeviceGetUUID(m) for m in migs[1:]] == names[1:]
    assert address(nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, 0)) == address(migs[1])
    nvml.serve(variant("h100-mig-mixed", lambda d: d["devices"][0].update(mig_mode=[0, 0], mig_devices=[])))
    with pytest.raises(pynvml.NVMLError_InvalidArgument):  # MIG mode off: no MIG device left
        nvml.nvmlDeviceGetUUID(migs[1])
    assert nvml.nvmlDeviceGetMigMode(gpu) == [0, 0]
