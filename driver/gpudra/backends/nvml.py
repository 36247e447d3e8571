"""NVIDIA discovery through pynvml (the real module, or :class:`~gpudra.backends.fake_nvml.FakeNvml`).

The backend is handed the module object and calls only pynvml functions on it. All NVML errors pass through
one translation layer, :class:`NvmlCalls`:

* NOT_SUPPORTED, FUNCTION_NOT_FOUND, NOT_FOUND, NO_PERMISSION (or a function this pynvml lacks): that one
  value is unknown (``None``); the attribute is omitted, never defaulted.
* GPU_IS_LOST, UNKNOWN and other errors that mean the GPU itself is broken: the device is skipped, with a
  line in ``Inventory.warnings`` and the log; the other GPUs are kept.
* any other error: the value is unknown and a warning says why.

A GPU whose UUID, name or PCI bus id cannot be read is skipped: it is never published with a made-up identity.
Importing this module never loads libnvidia-ml; only :class:`NvmlBackend` (through ``nvmlInit``) does.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import ModuleType
from typing import Any, Final, cast

from gpudra.backends import sysfs
from gpudra.backends.base import DiscoveryError
from gpudra.inventory import Device, DeviceKind, Inventory, PciPlacement, Semver, Vendor

log = logging.getLogger(__name__)

MOCK_HINT: Final = "To run without GPUs, use `--backend mock --profile dgx-h100`."

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

_ABSENT_ERRORS: Final = ("NOT_SUPPORTED", "FUNCTION_NOT_FOUND", "NOT_FOUND", "NO_PERMISSION")
_DEVICE_FATAL_ERRORS: Final = (
    "GPU_IS_LOST", "UNKNOWN", "RESET_REQUIRED", "GPU_NOT_FOUND", "UNINITIALIZED", "DRIVER_NOT_LOADED",
    "LIB_RM_VERSION_MISMATCH",
)  # fmt: skip


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


class DeviceFailure(Exception):
    """NVML reported that a GPU itself is lost or broken; discovery skips that GPU."""


class NvmlCalls:
    """The translation layer: pynvml is called only through :meth:`value`, :meth:`init`, :meth:`shutdown`."""

    def __init__(self, nvml: ModuleType | object) -> None:
        self._nvml = cast(Any, nvml)
        self._error_class: type[Exception] = self._nvml.NVMLError
        self._absent = self._codes(_ABSENT_ERRORS)
        self._fatal = self._codes(_DEVICE_FATAL_ERRORS)
        self.warnings: list[str] = []

    def _codes(self, names: tuple[str, ...]) -> frozenset[int]:
        known = (getattr(self._nvml, f"NVML_ERROR_{name}", None) for name in names)
        return frozenset(code for code in known if isinstance(code, int))

    def has(self, function: str) -> bool:
        return callable(getattr(self._nvml, function, None))

    def value(self, function: str, *args: Any, what: str = "") -> Any:
        """Call ``function``; ``None`` for an unknown value; :class:`DeviceFailure` for a broken GPU."""
        fn = getattr(self._nvml, function, None)
        if not callable(fn):
            return None  # this pynvml has no such function: same as NVML_ERROR_FUNCTION_NOT_FOUND
        try:
            return fn(*args)
        except self._error_class as err:
            code = getattr(err, "value", None)
            if code in self._absent:
                return None
            if code in self._fatal:
                raise DeviceFailure(f"{function}: {_describe(err)}") from err
            self.warnings.append(f"{what or function}: {function} failed ({_describe(err)}); value omitted")
            return None

    def init(self) -> None:
        try:
            self._nvml.nvmlInit()
        except self._error_class as err:
            code = getattr(err, "value", None)
            if code == getattr(self._nvml, "NVML_ERROR_LIBRARY_NOT_FOUND", None):
                raise DiscoveryError(
                    "cannot load the NVIDIA Management Library (libnvidia-ml.so.1): is the NVIDIA driver "
                    f"installed and its library visible to this process? {MOCK_HINT}"
                ) from err
            raise DiscoveryError(f"NVML initialisation failed: {_describe(err)}. {MOCK_HINT}") from err

    def shutdown(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except self._error_class as err:
            log.warning("nvmlShutdown failed: %s", _describe(err))


def _describe(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"


def _text(value: object) -> str | None:
    """pynvml 13 gives ``str`` (its structures decode ``char[]`` fields); raw ctypes would give ``bytes``."""
    if isinstance(value, bytes):
        value = value.decode("ascii", errors="replace")
    if isinstance(value, str):
        value = value.strip("\x00").strip()
        return value or None
    return None


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _name(table: dict[int, str], enum: object) -> str | None:
    code = _int(enum)
    return table.get(code) if code is not None else None


class NvmlBackend:
    """A :class:`~gpudra.backends.base.HardwareBackend` over a pynvml module; the constructor runs nvmlInit.

    Raises :class:`DiscoveryError` when NVML cannot be initialised (library missing, driver not loaded).
    """

    name = "nvml"

    def __init__(self, nvml: ModuleType | object, sysfs_root: Path = Path("/sys")) -> None:
        self._calls = NvmlCalls(nvml)
        self._sysfs_root = sysfs_root
        self._calls.init()
        self._open = True

    def device_count(self) -> int:
        """Number of GPUs NVML sees (includes GPUs that discovery would skip)."""
        self._check_open()
        try:
            count = _int(self._calls.value("nvmlDeviceGetCount"))
        except DeviceFailure as err:
            raise DiscoveryError(f"NVML cannot count the GPUs: {err}") from err
        if count is None:
            raise DiscoveryError("NVML cannot count the GPUs (nvmlDeviceGetCount gave no answer)")
        return count

    def discover(self) -> Inventory:
        """One full discovery pass; per-GPU problems end up in ``Inventory.warnings``."""
        count = self.device_count()
        self._calls.warnings = []
        devices: list[Device] = []
        seen: set[str] = set()
        for index in range(count):
            try:
                device = self._device(index)
            except DeviceFailure as err:
                self._calls.warnings.append(f"GPU index {index} skipped: {err}")
                continue
            if device.uuid in seen:
                self._calls.warnings.append(f"GPU index {index} skipped: duplicate UUID {device.uuid}")
                continue
            seen.add(device.uuid)
            devices.append(device)
        driver, cuda = self._system_versions()
        warnings = tuple(self._calls.warnings)
        for line in warnings:
            log.warning("%s", line)
        return Inventory(
            devices=tuple(devices), driver_version=driver, cuda_driver_version=cuda, warnings=warnings
        )

    def close(self) -> None:
        """``nvmlShutdown`` once; later calls do nothing."""
        if self._open:
            self._open = False
            self._calls.shutdown()

    def _check_open(self) -> None:
        if not self._open:
            raise DiscoveryError("the NVML backend is closed")

    def _system_versions(self) -> tuple[Semver | None, Semver | None]:
        try:
            text = _text(self._calls.value("nvmlSystemGetDriverVersion", what="driver version"))
            code = _int(self._calls.value("nvmlSystemGetCudaDriverVersion", what="CUDA version"))
            if code is None:
                code = _int(self._calls.value("nvmlSystemGetCudaDriverVersion_v2", what="CUDA version"))
        except DeviceFailure as err:
            self._calls.warnings.append(f"driver versions unknown: {err}")
            return None, None
        return (driver_version(text) if text else None), (cuda_version(code) if code is not None else None)

    def _device(self, index: int) -> Device:
        call = self._calls.value
        where = f"GPU index {index}"
        handle = call("nvmlDeviceGetHandleByIndex", index, what=where)
        if handle is None:
            raise DeviceFailure("no handle (nvmlDeviceGetHandleByIndex gave no answer)")
        uuid = _text(call("nvmlDeviceGetUUID", handle, what=where))
        if uuid is None:
            raise DeviceFailure("UUID unreadable; not publishing a GPU without its identity")
        where = f"GPU {uuid}"
        bus_id = self._bus_id(handle, where)
        name = _text(call("nvmlDeviceGetName", handle, what=where))
        if name is None:
            raise DeviceFailure(f"{uuid}: product name unreadable")
        capability = self._capability(handle, where)
        cores = _int(call("nvmlDeviceGetNumGpuCores", handle, what=where))
        return Device(
            kind=DeviceKind.GPU,
            vendor=Vendor.NVIDIA,
            uuid=uuid,
            product_name=name,
            index=index,
            minor=_int(call("nvmlDeviceGetMinorNumber", handle, what=where)),
            brand=_name(BRAND_NAMES, call("nvmlDeviceGetBrand", handle, what=where)),
            architecture=_name(ARCHITECTURE_NAMES, call("nvmlDeviceGetArchitecture", handle, what=where)),
            memory_bytes=self._memory(handle, where),
            multiprocessors=multiprocessors(cores, capability) if cores and capability else None,
            cuda_compute_capability=compute_capability(*capability) if capability else None,
            pci=self._placement(handle, bus_id, where),
        )

    def _bus_id(self, handle: Any, where: str) -> str:
        function = "nvmlDeviceGetPciInfo_v3"
        if not self._calls.has(function):
            function = "nvmlDeviceGetPciInfo"
        info = self._calls.value(function, handle, what=where)
        raw = _text(getattr(info, "busId", None)) or _text(getattr(info, "busIdLegacy", None))
        bus_id = sysfs.normalize_pci_bus_id(raw) if raw else None
        if bus_id is None:
            raise DeviceFailure(f"{where}: PCI bus id unreadable or not representable ({raw!r})")
        return bus_id

    def _capability(self, handle: Any, where: str) -> tuple[int, int] | None:
        value = self._calls.value("nvmlDeviceGetCudaComputeCapability", handle, what=where)
        if isinstance(value, tuple) and len(value) == 2:
            major, minor = _int(value[0]), _int(value[1])
            if major is not None and minor is not None:
                return major, minor
        return None

    def _memory(self, handle: Any, where: str) -> int | None:
        info = self._calls.value("nvmlDeviceGetMemoryInfo", handle, what=where)
        total = _int(getattr(info, "total", None))
        return total if total is not None and total > 0 else None

    def _placement(self, handle: Any, bus_id: str, where: str) -> PciPlacement:
        numa = _int(self._calls.value("nvmlDeviceGetNumaNodeId", handle, what=where))
        if numa is None or numa < 0:
            numa = sysfs.read_numa_node(self._sysfs_root, bus_id)
        return PciPlacement(
            bus_id=bus_id, pcie_root=sysfs.read_pcie_root(self._sysfs_root, bus_id), numa_node=numa
        )
