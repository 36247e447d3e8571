"""A fake ``pynvml`` module served from a :class:`~gpudra.vendors.mock.profile.Profile`, and its sysfs tree.

:class:`FakeNvml` has the pynvml functions the NVIDIA driver calls (the MIG ones from
:mod:`~gpudra.vendors.mock.fake_nvml_mig` and :mod:`~gpudra.vendors.mock.fake_nvml_migops`, the NVLink
ones from :mod:`~gpudra.vendors.mock.fake_nvml_links`, the event sets and ECC counter a health watcher
reads from :mod:`~gpudra.vendors.mock.fake_nvml_events`, energy, power and utilisation from
:mod:`~gpudra.vendors.mock.fake_nvml_usage`, the compute mode from
:mod:`~gpudra.vendors.mock.fake_nvml_policy`),
with pynvml's signatures and return types (``str`` for names and versions, ``int`` for enums,
``pynvml.c_nvmlDevice_t`` handles, ``pynvml.nvmlPciInfo_t`` and ``pynvml.c_nvmlMemory_t`` structures, whose
``char[]`` fields such as ``busId`` read back as ``str`` because pynvml's ``_PrintableStructure`` decodes
them). Failures raise the real ``pynvml.NVMLError_*`` classes, and the real constants and error classes are
reachable as attributes, so code written against pynvml runs unchanged. It never loads libnvidia-ml.

One instance is one node's NVML for the plugin's lifetime; :meth:`FakeNvml.serve` makes it show changed
hardware (a lost GPU, another MIG layout) with the handles of the devices still present kept valid, as
:mod:`~gpudra.vendors.mock.node` does when the mock's profile file is edited. :func:`write_sysfs_tree`
writes the sysfs entries the same profile implies; the mock runs the real
:class:`~gpudra.vendors.nvidia.driver.NvidiaDriver` over both (:func:`~gpudra.vendors.mock.driver.open_mock`).
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import pynvml

from gpudra.vendors.mock.fake_nvml_base import fail, present
from gpudra.vendors.mock.fake_nvml_events import FakeEventCalls
from gpudra.vendors.mock.fake_nvml_links import FakeLinkCalls
from gpudra.vendors.mock.fake_nvml_migops import FakeMigOps
from gpudra.vendors.mock.fake_nvml_policy import FakePolicyCalls, GpuPolicyStore
from gpudra.vendors.mock.fake_nvml_usage import FakeUsageCalls
from gpudra.vendors.mock.fake_usage import UsageModel, memory_used
from gpudra.vendors.mock.profile import Profile
from gpudra.vendors.sysfs import normalize_pci_bus_id, pci_device_link


class FakeNvml(FakeMigOps, FakeLinkCalls, FakeEventCalls, FakeUsageCalls, FakePolicyCalls):
    """Module-like stand-in for ``pynvml``; one instance is one simulated node (and one NVML library).

    ``FakeNvml(profile, state_file=None)``: with a ``state_file`` the node's MIG state (instances created,
    MIG mode changes) is kept in that JSON file across processes, as real MIG instances outlive the process
    that made them (see :mod:`~gpudra.vendors.mock.fake_mig_state`). ``usage``: the model of the devices'
    energy, power, utilisation and memory in use (:mod:`~gpudra.vendors.mock.fake_nvml_usage`; default: one
    of its own, without a usage file). ``policy_file``: where the GPUs' compute modes and time-slices are kept
    across processes (:mod:`~gpudra.vendors.mock.fake_nvml_policy`; without one, in this object).
    """

    def __init__(
        self, profile: Profile, state_file: Path | None = None, usage: UsageModel | None = None,
        policy_file: Path | None = None,
    ):  # fmt: skip
        super().__init__(profile, state_file)
        self.usage = usage or UsageModel()
        self.policy = GpuPolicyStore(policy_file)

    # -- system -------------------------------------------------------------------------------------------
    def nvmlInitWithFlags(self, flags: int) -> None:
        self.init("nvmlInitWithFlags")

    def nvmlInit(self) -> None:
        self.init("nvmlInit")

    def nvmlShutdown(self) -> None:
        self.enter("nvmlShutdown")
        self.init_count -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self.enter("nvmlSystemGetDriverVersion")
        return present(self.profile.driver_version)

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self.enter("nvmlSystemGetCudaDriverVersion")
        return present(self.profile.cuda_driver_version)

    def nvmlSystemGetCudaDriverVersion_v2(self) -> int:
        self.enter("nvmlSystemGetCudaDriverVersion_v2")
        return present(self.profile.cuda_driver_version)

    def nvmlDeviceGetCount(self) -> int:
        self.enter("nvmlDeviceGetCount")
        return len(self.profile.devices)

    # -- devices ------------------------------------------------------------------------------------------
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self.enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.profile.devices):
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self.device_errors("nvmlDeviceGetHandleByIndex", self.profile.devices[index])
        return self.gpu_handle(index)

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> Any:
        """The handle of the GPU or MIG device ``uuid`` (NOT_FOUND when the node has none by that UUID)."""
        call = "nvmlDeviceGetHandleByUUID"
        self.enter(call)
        wanted = uuid.decode() if isinstance(uuid, bytes) else uuid
        with self.hardware_lock:
            devices = self.profile.devices
            for index, device in enumerate(devices):
                if device.uuid == wanted:
                    self.device_errors(call, device)
                    return self.gpu_handle(index)
            for index, device in enumerate(devices):
                for mig_index, mig in enumerate(self.view(index).migs):
                    if mig.uuid == wanted:
                        self.device_errors(call, device)
                        self.mig_errors(call, mig)
                        return self.mig_handle(index, mig_index)
        raise fail(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceIsMigDeviceHandle(self, device: Any) -> Any:
        """A ``c_uint``, 1 for a MIG device's handle: pynvml returns the ctypes value, not an int."""
        with self.hardware_lock:
            key = self.resolve("nvmlDeviceIsMigDeviceHandle", device, ("gpu", "mig"))
        return ctypes.c_uint(1 if key[0] == "mig" else 0)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, migDevice: Any) -> Any:
        with self.hardware_lock:
            key = self.resolve("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", migDevice, ("mig",))
            self.mig_of(key)  # INVALID_ARGUMENT once that MIG device is gone
            return self.handle(("gpu", key[1]))

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        gpu, mig = self.gpu_or_mig("nvmlDeviceGetUUID", handle)
        return present(mig.uuid if mig is not None else gpu.uuid)

    def nvmlDeviceGetName(self, handle: Any) -> str:
        return present(self.gpu("nvmlDeviceGetName", handle).name)

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        return present(self.gpu("nvmlDeviceGetMinorNumber", handle).minor)

    def nvmlDeviceGetBrand(self, handle: Any) -> int:
        return present(self.gpu("nvmlDeviceGetBrand", handle).brand)

    def nvmlDeviceGetArchitecture(self, device: Any) -> int:
        return present(self.gpu("nvmlDeviceGetArchitecture", device).architecture)

    def nvmlDeviceGetNumGpuCores(self, device: Any) -> int:
        return present(self.gpu("nvmlDeviceGetNumGpuCores", device).num_gpu_cores)

    def nvmlDeviceGetNumaNodeId(self, handle: Any) -> int:
        return present(self.gpu("nvmlDeviceGetNumaNodeId", handle).numa_node)

    def nvmlDeviceGetCudaComputeCapability(self, handle: Any) -> tuple[int, int]:
        return present(self.gpu("nvmlDeviceGetCudaComputeCapability", handle).cuda_compute_capability)

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        with self.hardware_lock:
            key = self.resolve("nvmlDeviceGetMemoryInfo", handle, ("gpu", "mig"))
            index = self.index_of(key)
            gpu, mig = self.profile.devices[index], (self.mig_of(key) if key[0] == "mig" else None)
            util = self.gpu_utilization(index)  # the usage model: more in use when busier
        if mig is not None:
            total = present(mig.memory_bytes)
            used = memory_used(total, 0, util)
            return pynvml.c_nvmlMemory_t(total=total, free=total - used, used=used)
        memory = present(gpu.memory)
        if version:  # the _v2 struct carries "reserved", which profiles do not describe
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        used = memory_used(memory.total, memory.used, util)
        free = max(0, memory.free - (used - memory.used))
        return pynvml.c_nvmlMemory_t(total=memory.total, free=free, used=used)

    def nvmlDeviceGetPciInfo_v3(self, handle: Any) -> Any:
        return self._pci_info("nvmlDeviceGetPciInfo_v3", handle)

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        return self._pci_info("nvmlDeviceGetPciInfo", handle)

    def _pci_info(self, call: str, handle: Any) -> Any:
        pci = present(self.gpu(call, handle).pci)
        return pynvml.nvmlPciInfo_t(
            busIdLegacy=pci.bus_id_legacy.encode(),
            domain=pci.domain,
            bus=pci.bus,
            device=pci.device,
            pciDeviceId=pci.pci_device_id,
            pciSubSystemId=pci.pci_subsystem_id,
            busId=pci.bus_id.encode(),
        )


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
