"""NVIDIA discovery through pynvml (the real module, or :class:`~gpudra.vendors.mock.fake_nvml.FakeNvml`).

Every pynvml call goes through the call layer :class:`~gpudra.vendors.nvidia.calls.Nvml`; each pass reads
through its own :class:`~gpudra.vendors.nvidia.reader.Reader`, where what each NVML error means is documented.
Every call stands alone: an unsupported call omits its one value; a lost GPU is skipped and the rest are kept.
A GPU whose UUID, name or PCI bus id cannot be read is skipped: it is never published with a made-up identity.
MIG devices come from :mod:`~gpudra.vendors.nvidia.mig`, fabric domains from
:mod:`~gpudra.vendors.nvidia.topology`; NUMA node and PCIe root from sysfs (:mod:`~gpudra.vendors.sysfs`).
Importing this module never loads libnvidia-ml; only ``nvmlInit`` does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from gpudra.model.inventory import Device, DeviceKind, Inventory, MigProfile, PciPlacement, Semver, Vendor
from gpudra.vendors import sysfs
from gpudra.vendors.base import DiscoveryError
from gpudra.vendors.nvidia import mig as nvml_mig
from gpudra.vendors.nvidia import topology as nvml_topology
from gpudra.vendors.nvidia.calls import MOCK_HINT, Nvml, NvmlError
from gpudra.vendors.nvidia.mig_table import mig_profile_table
from gpudra.vendors.nvidia.reader import DeviceFailure, Reader, integer, text

__all__ = [
    "MOCK_HINT", "Discovered", "NvidiaDiscovery", "compute_capability", "cuda_version", "driver_version",
    "multiprocessors",
]  # fmt: skip

log = logging.getLogger(__name__)

#: nvmlDeviceArchitecture_t -> name; the spelling go-nvlib uses (so selectors match NVIDIA's own driver).
ARCHITECTURE_NAMES: Final[dict[int, str]] = {
    2: "Kepler", 3: "Maxwell", 4: "Pascal", 5: "Volta", 6: "Turing", 7: "Ampere", 8: "Ada Lovelace",
    9: "Hopper", 10: "Blackwell", 13: "Rubin",
}  # fmt: skip
#: nvmlBrandType_t -> name, as go-nvlib spells them. BRAND_UNKNOWN (0) and newer values are omitted.
BRAND_NAMES: Final[dict[int, str]] = {
    1: "Quadro", 2: "Tesla", 3: "NVS", 4: "Grid", 5: "GeForce", 6: "Titan", 7: "NvidiaVApps", 8: "NvidiaVPC",
    9: "NvidiaVCS", 10: "NvidiaVWS", 11: "NvidiaCloudGaming", 12: "QuadroRTX", 13: "NvidiaRTX", 14: "Nvidia",
    15: "GeForceRTX", 16: "TitanRTX",
}  # fmt: skip
#: CUDA cores per SM by compute capability (the CUDA samples' table). NVML reports cores, not SMs, for a
#: full GPU; a capability missing here leaves the SM count unknown rather than guessed.
CORES_PER_SM: Final[dict[tuple[int, int], int]] = {
    (6, 0): 64, (6, 1): 128, (6, 2): 128, (7, 0): 64, (7, 2): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128,
    (8, 7): 128, (8, 9): 128, (9, 0): 128,
}  # fmt: skip


def driver_version(text: str) -> Semver | None:
    """``580.159.04`` -> 580.159.4 (strict semver: leading zeros dropped); ``None`` if not numeric."""
    return Semver.loose(text)


def cuda_version(code: int) -> Semver | None:
    """NVML's CUDA version integer (``major * 1000 + minor * 10``): 13000 -> 13.0.0, 12040 -> 12.4.0."""
    if code <= 0:
        return None
    return Semver(code // 1000, (code % 1000) // 10, 0)


def compute_capability(major: int, minor: int) -> Semver | None:
    """(9, 0) -> 9.0.0."""
    return Semver(major, minor, 0) if major >= 0 and minor >= 0 else None


def multiprocessors(cores: int, capability: tuple[int, int]) -> int | None:
    """SM count from NVML's core count, when the capability's cores-per-SM is known and divides it."""
    per_sm = CORES_PER_SM.get(capability)
    if per_sm is None or cores <= 0 or cores % per_sm:
        return None
    return cores // per_sm


#: nvmlDeviceAddressingMode_t -> name (NVML_DEVICE_ADDRESSING_MODE_NONE / _HMM / _ATS).
ADDRESSING_MODES: Final[dict[int, str]] = {0: "None", 1: "HMM", 2: "ATS"}


def _name(table: dict[int, str], enum: object) -> str | None:
    code = integer(enum)
    return table.get(code) if code is not None else None


@dataclass(frozen=True, slots=True)
class Discovered:
    """What one discovery pass found: the inventory, and the NVML handle of each of its devices by UUID."""

    inventory: Inventory
    handles: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class _Found:
    """One GPU as discovered, with what the node-wide topology pass still needs."""

    device: Device
    handle: Any
    fabric: nvml_topology.FabricReading
    migs: tuple[tuple[Device, Any], ...] = ()  # each MIG device with its handle


class NvidiaDiscovery:
    """Discovery passes over an initialised :class:`~gpudra.vendors.nvidia.calls.Nvml`.

    Each pass has its own :class:`~gpudra.vendors.nvidia.reader.Reader` (and warnings), so passes may run from
    several threads at once. The one thing kept between passes is each GPU's MIG profile table (by UUID): a
    GPU's table never changes, and reading it costs some 25 NVML calls per GPU. Initialising and shutting
    NVML down is the caller's (:class:`~gpudra.vendors.nvidia.driver.NvidiaDriver`).
    """

    def __init__(self, nvml: Nvml, sysfs_root: Path = Path("/sys")) -> None:
        self._nvml = nvml
        self._sysfs_root = sysfs_root
        self._mig_tables: dict[str, tuple[MigProfile, ...]] = {}  # complete tables only

    def device_count(self) -> int:
        """Number of GPUs NVML sees (includes GPUs that discovery would skip)."""
        try:
            count = integer(self._nvml.call("nvmlDeviceGetCount"))
        except NvmlError as err:
            raise DiscoveryError(f"NVML cannot count the GPUs: {err}") from err
        if count is None:
            raise DiscoveryError("NVML cannot count the GPUs (nvmlDeviceGetCount gave no answer)")
        return count

    def discover(self) -> Discovered:
        """One full discovery pass; per-GPU problems end up in ``Inventory.warnings``."""
        return _Pass(Reader(self._nvml), self._sysfs_root, self._mig_tables).run(self.device_count())


class _Pass:
    """One discovery pass: its reader (which holds the pass's warnings) and the sysfs tree it reads."""

    def __init__(
        self, reader: Reader, sysfs_root: Path, mig_tables: dict[str, tuple[MigProfile, ...]]
    ) -> None:
        self._reader = reader
        self._sysfs_root = sysfs_root
        self._mig_tables = mig_tables

    def run(self, count: int) -> Discovered:
        found: list[_Found] = []
        seen: set[str] = set()
        for index in range(count):
            try:
                gpu = self._gpu(index)
            except DeviceFailure as err:
                self._reader.warn(f"GPU index {index} skipped: {err}")
                continue
            if gpu.device.uuid in seen:
                self._reader.warn(f"GPU index {index} skipped: duplicate UUID {gpu.device.uuid}")
                continue
            seen.add(gpu.device.uuid)
            found.append(gpu)
        devices = self._with_fabric_domains(found)
        driver, cuda = self._system_versions()
        warnings = self._reader.warnings
        for line in warnings:
            log.warning("%s", line)
        inventory = Inventory(
            devices=devices, driver_version=driver, cuda_driver_version=cuda, warnings=warnings,
            fabric_pending=any(g.fabric.pending for g in found),
        )  # fmt: skip
        return Discovered(inventory, _handles(found))

    def _with_fabric_domains(self, found: list[_Found]) -> tuple[Device, ...]:
        """Clique domains as read; node-local NVLink islands for full GPUs with active links and no clique.

        A GPU whose registration is pending gets no domain yet; MIG devices never get one (no P2P on MIG).
        """
        candidates = [
            (g.device.uuid, g.handle) for g in found
            if g.fabric.domain is None and not g.fabric.pending and not g.device.mig_enabled
            and (g.device.nvlink_links or 0) > 0
        ]  # fmt: skip
        local = nvml_topology.nvlink_islands(self._reader, candidates) if len(candidates) > 1 else {}
        devices: list[Device] = []
        for g in found:
            domain = g.fabric.domain or local.get(g.device.uuid)
            devices.append(dataclasses.replace(g.device, fabric_domain=domain))
            devices.extend(mig for mig, _ in g.migs)
        return tuple(devices)

    def _system_versions(self) -> tuple[Semver | None, Semver | None]:
        value = self._reader.value
        try:
            version = text(value("nvmlSystemGetDriverVersion", what="driver version"))
            code = integer(value("nvmlSystemGetCudaDriverVersion", what="CUDA version"))
            if code is None:
                code = integer(value("nvmlSystemGetCudaDriverVersion_v2", what="CUDA version"))
        except DeviceFailure as err:
            self._reader.warn(f"driver versions unknown: {err}")
            return None, None
        cuda = cuda_version(code) if code is not None else None
        return (driver_version(version) if version else None), cuda

    def _gpu(self, index: int) -> _Found:
        call = self._reader.value
        where = f"GPU index {index}"
        handle = call("nvmlDeviceGetHandleByIndex", index, what=where)
        if handle is None:
            raise DeviceFailure("no handle (nvmlDeviceGetHandleByIndex gave no answer)")
        uuid = text(call("nvmlDeviceGetUUID", handle, what=where))
        if uuid is None:
            raise DeviceFailure("UUID unreadable; not publishing a GPU without its identity")
        where = f"GPU {uuid}"
        bus_id = self._bus_id(handle, where)
        name = text(call("nvmlDeviceGetName", handle, what=where))
        if name is None:
            raise DeviceFailure(f"{uuid}: product name unreadable")
        capability = self._capability(handle, where)
        cores = integer(call("nvmlDeviceGetNumGpuCores", handle, what=where))
        capable, enabled = nvml_mig.mig_mode(self._reader, handle, where)
        device = Device(
            kind=DeviceKind.GPU,
            vendor=Vendor.NVIDIA,
            uuid=uuid,
            product_name=name,
            index=index,
            minor=integer(call("nvmlDeviceGetMinorNumber", handle, what=where)),
            brand=_name(BRAND_NAMES, call("nvmlDeviceGetBrand", handle, what=where)),
            architecture=_name(ARCHITECTURE_NAMES, call("nvmlDeviceGetArchitecture", handle, what=where)),
            memory_bytes=self._memory(handle, where),
            multiprocessors=multiprocessors(cores, capability) if cores and capability else None,
            cuda_compute_capability=compute_capability(*capability) if capability else None,
            pci=self._placement(bus_id),
            mig_capable=capable,
            mig_enabled=enabled,
            mig_profiles=self._mig_table(handle, uuid, where) if capable else (),
            addressing_mode=_name(ADDRESSING_MODES, call("nvmlDeviceGetAddressingMode", handle, what=where)),
            nvlink_links=nvml_topology.active_links(self._reader, handle, where),
        )
        fabric = nvml_topology.read_fabric(self._reader, handle, where)
        migs = nvml_mig.mig_devices(self._reader, handle, device, where) if enabled else []
        return _Found(device, handle, fabric, tuple(migs))

    def _mig_table(self, handle: Any, uuid: str, where: str) -> tuple[MigProfile, ...]:
        table = self._mig_tables.get(uuid)
        if table is None:
            table = mig_profile_table(self._reader, handle, where)
            if table:
                self._mig_tables[uuid] = table
        return table

    def _bus_id(self, handle: Any, where: str) -> str:
        function = "nvmlDeviceGetPciInfo_v3"
        if not self._reader.nvml.has(function):
            function = "nvmlDeviceGetPciInfo"
        info = self._reader.value(function, handle, what=where)
        raw = text(getattr(info, "busId", None)) or text(getattr(info, "busIdLegacy", None))
        bus_id = sysfs.normalize_pci_bus_id(raw) if raw else None
        if bus_id is None:
            raise DeviceFailure(f"{where}: PCI bus id unreadable or not representable ({raw!r})")
        return bus_id

    def _capability(self, handle: Any, where: str) -> tuple[int, int] | None:
        value = self._reader.value("nvmlDeviceGetCudaComputeCapability", handle, what=where)
        if isinstance(value, tuple) and len(value) == 2:
            major, minor = integer(value[0]), integer(value[1])
            if major is not None and minor is not None:
                return major, minor
        return None

    def _memory(self, handle: Any, where: str) -> int | None:
        """Frame-buffer bytes; NOT_SUPPORTED on unified-memory parts (GB10), which then publish no memory."""
        info = self._reader.value("nvmlDeviceGetMemoryInfo", handle, what=where)
        total = integer(getattr(info, "total", None))
        return total if total is not None and total > 0 else None

    def _placement(self, bus_id: str) -> PciPlacement:
        """NUMA node and PCIe root from sysfs only.

        ``nvmlDeviceGetNumaNodeId`` is not used: it is NOT_SUPPORTED on most VMs and on Grace systems it
        names the GPU's own memory node (GB200: 2, 10, 18, 26), not the node the device is attached to
        (sysfs: 0, 1), which is what ``resource.kubernetes.io/numaNode`` aligns with CPUs and NICs.
        """
        return PciPlacement(
            bus_id=bus_id,
            pcie_root=sysfs.read_pcie_root(self._sysfs_root, bus_id),
            numa_node=sysfs.read_numa_node(self._sysfs_root, bus_id),
        )


def _handles(found: list[_Found]) -> Mapping[str, Any]:
    """UUID -> NVML handle of every GPU and MIG device found (read-only)."""
    handles: dict[str, Any] = {}
    for g in found:
        handles[g.device.uuid] = g.handle
        handles.update((mig.uuid, mig_handle) for mig, mig_handle in g.migs)
    return MappingProxyType(handles)
