"""A fake ``pynvml`` module served from a :class:`~gpudra.backends.profile.Profile`, and the mock backend.

:class:`FakeNvml` has the pynvml functions the NVML backend calls, with pynvml's signatures and return
types (``str`` for names and versions, ``int`` for enums, ``pynvml.c_nvmlDevice_t`` handles,
``pynvml.nvmlPciInfo_t`` and ``pynvml.c_nvmlMemory_t`` structures, whose ``char[]`` fields such as ``busId``
read back as ``str`` because pynvml's ``_PrintableStructure`` decodes them). Failures
raise the real ``pynvml.NVMLError_*`` classes, and the real constants and error classes are reachable as
attributes, so code written against pynvml runs unchanged. It never loads libnvidia-ml.

:class:`MockBackend` is what ``--backend mock`` runs: the real :class:`~gpudra.backends.nvml.NvmlBackend`
over a :class:`FakeNvml` and a sysfs tree written from the same profile into a private temp dir.
"""

from __future__ import annotations

import ctypes
import os
import tempfile
from pathlib import Path
from typing import Any, Final, TypeVar

import pynvml

from gpudra.backends.nvml import NvmlBackend
from gpudra.backends.profile import ALL_DEVICE_CALLS, DeviceProfile, Profile
from gpudra.backends.sysfs import normalize_pci_bus_id, pci_device_link
from gpudra.inventory import Inventory

_T = TypeVar("_T")
_HANDLE_BASE: Final = 0x6770_0000  # fake device addresses; handles are never dereferenced
_HANDLE_STRIDE: Final = 0x100


def _fail(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # the constructor picks the real subclass, e.g. NVMLError_NotSupported


class FakeNvml:
    """Module-like stand-in for ``pynvml``; one instance is one simulated node (and one NVML library)."""

    NVMLError = pynvml.NVMLError

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.init_count = 0  # like NVML's reference count: nvmlInit increments, nvmlShutdown decrements
        self.calls: list[str] = []  # every call made, in order (for tests and debugging)

    def __getattr__(self, name: str) -> Any:
        """Re-export pynvml's constants, error classes and structure types — never its functions."""
        if name.startswith(("NVML_", "NVMLError", "c_nvml", "nvmlPciInfo")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # -- system -------------------------------------------------------------------------------------------
    def nvmlInitWithFlags(self, flags: int) -> None:
        self._init("nvmlInitWithFlags")

    def nvmlInit(self) -> None:
        self._init("nvmlInit")

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return _present(self.profile.driver_version)

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return _present(self.profile.cuda_driver_version)

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion_v2")
        return _present(self.profile.cuda_driver_version)

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.profile.devices)

    # -- devices ------------------------------------------------------------------------------------------
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.profile.devices):
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._device_errors("nvmlDeviceGetHandleByIndex", self.profile.devices[index])
        return ctypes.cast(ctypes.c_void_p(_HANDLE_BASE + index * _HANDLE_STRIDE), pynvml.c_nvmlDevice_t)

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        return _present(self._device("nvmlDeviceGetUUID", handle).uuid)

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return _present(self._device("nvmlDeviceGetName", handle).name)

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        return _present(self._device("nvmlDeviceGetMinorNumber", handle).minor)

    def nvmlDeviceGetBrand(self, handle: Any) -> int:
        return _present(self._device("nvmlDeviceGetBrand", handle).brand)

    def nvmlDeviceGetArchitecture(self, device: Any) -> int:
        return _present(self._device("nvmlDeviceGetArchitecture", device).architecture)

    def nvmlDeviceGetNumGpuCores(self, device: Any) -> int:
        return _present(self._device("nvmlDeviceGetNumGpuCores", device).num_gpu_cores)

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int:
        return _present(self._device("nvmlDeviceGetNumaNodeId", handle).numa_node)

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        return _present(self._device("nvmlDeviceGetCudaComputeCapability", handle).cuda_compute_capability)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        memory = _present(self._device("nvmlDeviceGetMemoryInfo", handle).memory)
        if version:  # the _v2 struct carries "reserved", which profiles do not describe
            raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return pynvml.c_nvmlMemory_t(total=memory.total, free=memory.free, used=memory.used)

    def nvmlDeviceGetPciInfo_v3(self, handle: Any) -> Any:
        return self._pci_info("nvmlDeviceGetPciInfo_v3", handle)

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        return self._pci_info("nvmlDeviceGetPciInfo", handle)

    # -- plumbing -----------------------------------------------------------------------------------------
    def _pci_info(self, call: str, handle: Any) -> Any:
        pci = _present(self._device(call, handle).pci)
        return pynvml.nvmlPciInfo_t(
            busIdLegacy=pci.bus_id_legacy.encode(),
            domain=pci.domain,
            bus=pci.bus,
            device=pci.device,
            pciDeviceId=pci.pci_device_id,
            pciSubSystemId=pci.pci_subsystem_id,
            busId=pci.bus_id.encode(),
        )

    def _init(self, call: str) -> None:
        """Either init entry point fails when the profile injects an error into either of them."""
        self._enter(call, initialised=False)
        code = self.profile.errors.get("nvmlInit", self.profile.errors.get("nvmlInitWithFlags"))
        if code is not None:
            raise _fail(code)
        self.init_count += 1

    def _enter(self, call: str, *, initialised: bool = True) -> None:
        self.calls.append(call)
        code = self.profile.errors.get(call)
        if code is not None:
            raise _fail(code)
        if initialised and self.init_count <= 0:
            raise _fail(pynvml.NVML_ERROR_UNINITIALIZED)

    def _device(self, call: str, handle: Any) -> DeviceProfile:
        self._enter(call)
        address = ctypes.cast(handle, ctypes.c_void_p).value if handle is not None else None
        offset = (address or 0) - _HANDLE_BASE
        index, rest = divmod(offset, _HANDLE_STRIDE)
        if address is None or rest or not 0 <= index < len(self.profile.devices):
            raise _fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        device = self.profile.devices[index]
        self._device_errors(call, device)
        return device

    @staticmethod
    def _device_errors(call: str, device: DeviceProfile) -> None:
        code = device.errors.get(call, device.errors.get(ALL_DEVICE_CALLS))
        if code is not None:
            raise _fail(code)


def _present(value: _T | None) -> _T:
    """A profile value, or NOT_SUPPORTED when the profile leaves it unknown (null)."""
    if value is None:
        raise _fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    return value


def write_sysfs_tree(root: Path, profile: Profile) -> None:
    """Write the sysfs entries a profile implies under ``root`` (``bus/pci/devices/<bdf>``, ``devices/…``).

    With a ``pcie_root`` the bus entry is a relative symlink into ``devices/<pcie_root>/<bdf>`` (as on a real
    node); without one it is a plain directory, so no root complex can be read from it.
    """
    for device in profile.devices:
        bus_id = normalize_pci_bus_id(device.pci.bus_id) if device.pci is not None else None
        if bus_id is None:
            continue
        link = pci_device_link(root, bus_id)
        link.parent.mkdir(parents=True, exist_ok=True)
        if device.sysfs.pcie_root is not None:
            target = root / "devices" / device.sysfs.pcie_root / bus_id
            target.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(target, link.parent))
        else:
            link.mkdir(exist_ok=True)
        if device.sysfs.numa_node is not None:
            (link / "numa_node").write_text(f"{device.sysfs.numa_node}\n", encoding="ascii")


class MockBackend:
    """``--backend mock``: the real NVML backend over :class:`FakeNvml` and a private sysfs tree."""

    name = "mock"

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._tmp = tempfile.TemporaryDirectory(prefix="gpudra-mock-sysfs-")
        self.sysfs_root = Path(self._tmp.name)
        try:
            write_sysfs_tree(self.sysfs_root, profile)
            self.nvml = FakeNvml(profile)
            self._backend = NvmlBackend(self.nvml, sysfs_root=self.sysfs_root)
        except BaseException:
            self._tmp.cleanup()
            raise

    def discover(self) -> Inventory:
        return self._backend.discover()

    def close(self) -> None:
        self._backend.close()
        self._tmp.cleanup()
