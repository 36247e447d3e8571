"""FakeNvml speaks pynvml: same function signatures, real return types, the real NVMLError classes."""

from __future__ import annotations

import ctypes
import inspect
from pathlib import Path

import pynvml
import pytest

from gpudra.backends.fake_nvml import FakeNvml, MockBackend, write_sysfs_tree
from gpudra.backends.profile import DEVICE_CALLS, SYSTEM_CALLS, load_profile
from gpudra.backends.sysfs import read_numa_node, read_pcie_root

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
    assert not hasattr(nvml, "nvmlDeviceGetMigMode")
    assert not hasattr(nvml, "nvmlDeviceGetPowerUsage")


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


def test_mock_backend_cleans_its_tree() -> None:
    backend = MockBackend(load_profile("h100"))
    root = backend.sysfs_root
    assert (root / "bus/pci/devices/0000:00:06.0").is_symlink()
    assert len(backend.discover().devices) == 1
    backend.close()
    backend.close()
    assert not root.exists()
    assert backend.nvml.init_count == 0
