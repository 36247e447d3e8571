"""Hardware profiles: JSON descriptions of a node that the fake pynvml (``fake_nvml.py``) serves.

A profile is a built-in name (a file ``vendors/mock/profiles/<name>.json``) or the path of a user's JSON file.
Editing the profile file of a running mock is a hardware change: the mock re-reads the file when it changed
and its next discovery pass sees the new hardware - a GPU lost (``"errors": {"*": "NVML_ERROR_GPU_IS_LOST"}``)
or gone from ``devices``, another ``mig_devices`` layout, ``mig_mode`` toggled - while an edit that does not
validate keeps the old hardware, with one warning (:mod:`~gpudra.vendors.mock.hotswap`). Built-in profiles
never change.

Schema (keys not listed are errors, except comment keys starting with ``_``)::

    {
      "_source": "fixture files and entries the values come from",      # string or list of strings
      "_synthetic": ["values that were not read from hardware", ...],
      "name": "dgx-h100",                   # optional; defaults to the file name without .json
      "description": "...",                 # optional
      "driver_version": "580.105.08",       # nvmlSystemGetDriverVersion; null -> NOT_SUPPORTED
      "cuda_driver_version": 13000,         # nvmlSystemGetCudaDriverVersion(_v2); null -> NOT_SUPPORTED
      "errors": {"nvmlInit": "NVML_ERROR_LIBRARY_NOT_FOUND"},           # system-level fault injection
      "devices": [                          # enumeration order = NVML index
        {
          "index": 0,                       # optional; must equal the position when given
          "uuid": "GPU-...",                # every device value: missing or null -> NOT_SUPPORTED
          "name": "NVIDIA H100 80GB HBM3",
          "minor": 0,
          "brand": 14,                      # nvmlBrandType_t value
          "architecture": 9,                # nvmlDeviceArchitecture_t value
          "cuda_compute_capability": [9, 0],
          "memory": {"total": 85520809984, "free": 85017493504, "used": 503316480},   # bytes
          "pci": {"busId": "00000000:1B:00.0", "pciDeviceId": 590352606, "pciSubSystemId": 381751518},
          "num_gpu_cores": 16896,
          "numa_node": null,                # nvmlDeviceGetNumaNodeId (null: NOT_SUPPORTED, as on real GPUs)
          "errors": {"nvmlDeviceGetBrand": "NVML_ERROR_NO_PERMISSION", "*": "NVML_ERROR_GPU_IS_LOST"},
          "sysfs": {"numa_node": 0, "pcie_root": "pci0000:16"},
          "addressing_mode": 1,             # nvmlDeviceGetAddressingMode (0 NONE, 1 HMM, 2 ATS)
          "mig_mode": [0, 0], ...           # MIG keys: see profile_mig.py
          "fabric": {...}, "nvlink": {...}  # NVLink keys: see profile_links.py
          "events": [...], "ecc_uncorrected_volatile": 0  # health keys: see profile_events.py
          "usage": {"utilization": 0.35, "idle_watts": 70, "max_watts": 700}   # see profile_usage.py
        }
      ],
      "p2p_status": {"NVLINK": [[null, 0], [0, null]]}    # see profile_links.py
    }

``pci`` also takes ``busIdLegacy``, ``domain``, ``bus`` and ``device``; omitted, they are derived from
``busId`` exactly as NVML formats them; ``pciDeviceId``/``pciSubSystemId`` default to 0 (not given).
``errors`` maps a pynvml function name (see :data:`SYSTEM_CALLS` / :data:`DEVICE_CALLS`; ``"*"`` = every
per-device call, including ``nvmlDeviceGetHandleByIndex``) to an ``NVML_ERROR_*`` name; that call then raises
the real ``pynvml.NVMLError_*``. ``sysfs`` describes the tree the mock backend writes: ``numa_node`` (an int,
``-1`` allowed; missing/null -> no file) and ``pcie_root`` (``pciDDDD:BB``; missing/null -> the device
entry is a plain directory, not a symlink, so no root is found).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from gpudra.vendors.mock.profile_events import (
    EVENT_TYPES,
    HEALTH_KEYS,
    EventProfile,
    check_event_ids,
    health_section,
)
from gpudra.vendors.mock.profile_json import Invalid, errors, is_int, obj, opt, req, strings
from gpudra.vendors.mock.profile_links import (
    LINK_KEYS,
    FabricProfile,
    NvLinkProfile,
    links_section,
    p2p_status,
)
from gpudra.vendors.mock.profile_mig import (
    DYNAMIC_MIG_CALLS,
    MIG_CALLS,
    MIG_KEYS,
    GpuInstanceProfileInfo,
    MigDeviceProfile,
    mig_section,
)
from gpudra.vendors.mock.profile_usage import (
    DEFAULT_USAGE,
    USAGE_CALLS,
    USAGE_KEYS,
    UsageProfile,
    usage_section,
)
from gpudra.vendors.sysfs import normalize_pci_bus_id

__all__ = [
    "ALL_DEVICE_CALLS", "DEVICE_CALLS", "MIG_CALLS", "SYSTEM_CALLS", "DeviceProfile", "EventProfile",
    "FabricProfile",
    "GpuInstanceProfileInfo", "MemoryProfile", "MigDeviceProfile", "NvLinkProfile", "PciProfile", "Profile",
    "ProfileError", "SysfsProfile", "builtin_profile_names", "load_profile", "parse_profile",
]  # fmt: skip

SYSTEM_CALLS: Final = frozenset(
    {
        "nvmlInit",
        "nvmlInitWithFlags",
        "nvmlShutdown",
        "nvmlSystemGetDriverVersion",
        "nvmlSystemGetCudaDriverVersion",
        "nvmlSystemGetCudaDriverVersion_v2",
        "nvmlDeviceGetCount",
        "nvmlEventSetCreate",
        "nvmlEventSetWait_v2",
        "nvmlEventSetFree",
    }
)
DEVICE_CALLS: Final = frozenset(
    {
        "nvmlDeviceGetHandleByIndex",
        "nvmlDeviceGetUUID",
        "nvmlDeviceGetName",
        "nvmlDeviceGetMinorNumber",
        "nvmlDeviceGetMemoryInfo",
        "nvmlDeviceGetPciInfo_v3",
        "nvmlDeviceGetPciInfo",
        "nvmlDeviceGetCudaComputeCapability",
        "nvmlDeviceGetArchitecture",
        "nvmlDeviceGetBrand",
        "nvmlDeviceGetNumaNodeId",
        "nvmlDeviceGetNumGpuCores",
        "nvmlDeviceGetAddressingMode",
        "nvmlDeviceGetMigMode",
        "nvmlDeviceGetMaxMigDeviceCount",
        "nvmlDeviceGetGpuInstanceProfileInfo",
        "nvmlDeviceGetGpuFabricInfoV",
        "nvmlDeviceGetNvLinkState",
        "nvmlDeviceGetP2PStatus",
        "nvmlDeviceGetHandleByUUID",
        "nvmlDeviceIsMigDeviceHandle",
        "nvmlDeviceGetDeviceHandleFromMigDeviceHandle",
        "nvmlDeviceGetSupportedEventTypes",
        "nvmlDeviceRegisterEvents",
        "nvmlDeviceGetTotalEccErrors",
    }
    | MIG_CALLS - {"*"}
    | DYNAMIC_MIG_CALLS
    | USAGE_CALLS
)
ALL_DEVICE_CALLS: Final = "*"

_PACKAGE: Final = "gpudra.vendors.mock"
_PCIE_ROOT = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}$")
_NVML_BUS_ID = re.compile(r"^([0-9a-fA-F]{8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-9a-fA-F])$")
_TOP_KEYS: Final = frozenset(
    {"name", "description", "driver_version", "cuda_driver_version", "errors", "devices", "p2p_status"}
)
_DEVICE_KEYS: Final = frozenset(
    {
        "index", "uuid", "name", "minor", "brand", "architecture", "cuda_compute_capability", "memory", "pci",
        "num_gpu_cores", "numa_node", "errors", "sysfs", "addressing_mode",
    }
    | MIG_KEYS
    | LINK_KEYS
    | HEALTH_KEYS
    | USAGE_KEYS
)  # fmt: skip
_PCI_KEYS: Final = frozenset(
    {"busId", "busIdLegacy", "domain", "bus", "device", "pciDeviceId", "pciSubSystemId"}
)


class ProfileError(ValueError):
    """A profile cannot be found or does not follow the schema; the message names the file and the key."""


@dataclass(frozen=True, slots=True)
class PciProfile:
    """The values of ``pynvml.nvmlPciInfo_t``."""

    bus_id: str  # NVML form, 8-digit domain: "00000000:1B:00.0"
    bus_id_legacy: str  # "0000:1B:00.0"
    domain: int
    bus: int
    device: int
    pci_device_id: int = 0
    pci_subsystem_id: int = 0


@dataclass(frozen=True, slots=True)
class MemoryProfile:
    """The values of ``pynvml.c_nvmlMemory_t`` (bytes)."""

    total: int
    free: int
    used: int


@dataclass(frozen=True, slots=True)
class SysfsProfile:
    """What the device's sysfs entry holds; ``None`` = not there."""

    numa_node: int | None = None
    pcie_root: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """One GPU as NVML reports it. ``None`` values make the matching call raise NOT_SUPPORTED."""

    uuid: str | None = None
    name: str | None = None
    minor: int | None = None
    brand: int | None = None
    architecture: int | None = None
    cuda_compute_capability: tuple[int, int] | None = None
    memory: MemoryProfile | None = None
    pci: PciProfile | None = None
    num_gpu_cores: int | None = None
    numa_node: int | None = None
    errors: dict[str, int] = field(default_factory=dict)  # function name (or "*") -> NVML_ERROR_* code
    sysfs: SysfsProfile = field(default_factory=SysfsProfile)
    addressing_mode: int | None = None
    mig_mode: tuple[int, int] | None = None  # [current, pending]
    mig_mode_change: str = "immediate"  # or "reset_required" (see profile_mig.py)
    processes: int = 0  # processes running on the GPU
    mig_create_seconds: float = 0.0  # time a compute instance takes to create (the GPU instance exists)
    max_mig_device_count: int | None = None
    gpu_instance_profiles: tuple[GpuInstanceProfileInfo, ...] = ()
    mig_devices: tuple[MigDeviceProfile, ...] = ()
    fabric: FabricProfile | None = None
    nvlink: NvLinkProfile | None = None
    events: tuple[EventProfile, ...] = ()  # delivered once each by the profile swap showing them first
    event_types: tuple[str, ...] | None = EVENT_TYPES  # supported NVML event types (None: NOT_SUPPORTED)
    ecc_uncorrected_volatile: int | None = None  # volatile uncorrectable ECC count (None: no ECC)
    usage: UsageProfile = DEFAULT_USAGE  # default utilisation and power model of the fake's readings


@dataclass(frozen=True, slots=True)
class Profile:
    """A whole node: system values, fault injection and the GPUs in NVML enumeration order."""

    name: str
    devices: tuple[DeviceProfile, ...]
    driver_version: str | None = None
    cuda_driver_version: int | None = None
    errors: dict[str, int] = field(default_factory=dict)
    description: str = ""
    source: tuple[str, ...] = ()
    synthetic: tuple[str, ...] = ()
    #: NVML_P2P_CAPS_INDEX_* -> [gpu a][gpu b] -> nvmlGpuP2PStatus_t (None: NOT_SUPPORTED)
    p2p_status: dict[int, tuple[tuple[int | None, ...], ...]] = field(default_factory=dict)


def builtin_profile_names() -> list[str]:
    """Names of the profiles shipped in ``vendors/mock/profiles/``, sorted."""
    folder = resources.files(_PACKAGE) / "profiles"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


def load_profile(name_or_path: str) -> Profile:
    """Load a built-in profile by name, or a user's profile from a JSON file path; validate it fully."""
    if name_or_path in builtin_profile_names():
        text = (resources.files(_PACKAGE) / "profiles" / f"{name_or_path}.json").read_text(encoding="utf-8")
        return parse_profile(text, origin=f"built-in profile {name_or_path!r}", default_name=name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        known = ", ".join(builtin_profile_names())
        raise ProfileError(
            f"unknown profile {name_or_path!r}: not a built-in profile ({known}) and no such file"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ProfileError(f"cannot read profile file {str(path)!r}: {err}") from err
    return parse_profile(text, origin=f"profile file {str(path)!r}", default_name=path.stem)


def parse_profile(text: str, origin: str = "profile", default_name: str = "custom") -> Profile:
    """Parse and validate profile JSON text; ``origin`` prefixes every error message."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{origin}: not valid JSON: {err}") from err
    try:
        return _profile(obj(raw, "", _TOP_KEYS), default_name)
    except Invalid as err:
        raise ProfileError(f"{origin}: {err}") from None


def _profile(raw: dict[str, Any], default_name: str) -> Profile:
    devices_raw = raw.get("devices")
    if not isinstance(devices_raw, list):
        raise Invalid("devices: required, a list of GPU objects")
    name = opt(raw, "name", str, "") or default_name
    devices = tuple(_device(item, f"devices[{i}]", i) for i, item in enumerate(devices_raw))
    check_event_ids(devices)
    return Profile(
        name=name,
        devices=devices,
        driver_version=opt(raw, "driver_version", str, ""),
        cuda_driver_version=opt(raw, "cuda_driver_version", int, ""),
        errors=errors(raw.get("errors"), "errors", SYSTEM_CALLS),
        description=opt(raw, "description", str, "") or "",
        source=strings(raw.get("_source"), "_source"),
        synthetic=strings(raw.get("_synthetic"), "_synthetic"),
        p2p_status=p2p_status(raw.get("p2p_status"), "p2p_status", len(devices_raw)),
    )


def _device(item: object, where: str, position: int) -> DeviceProfile:
    raw = obj(item, where, _DEVICE_KEYS)
    index = opt(raw, "index", int, where)
    if index is not None and index != position:
        raise Invalid(f"{where}.index: is {index} but the device is at position {position}")
    cc = raw.get("cuda_compute_capability")
    if cc is not None and not (isinstance(cc, list) and len(cc) == 2 and all(is_int(x) for x in cc)):
        raise Invalid(f"{where}.cuda_compute_capability: expected [major, minor] integers, got {cc!r}")
    return DeviceProfile(
        uuid=opt(raw, "uuid", str, where),
        name=opt(raw, "name", str, where),
        minor=opt(raw, "minor", int, where),
        brand=opt(raw, "brand", int, where),
        architecture=opt(raw, "architecture", int, where),
        cuda_compute_capability=(cc[0], cc[1]) if cc is not None else None,
        memory=_memory(raw.get("memory"), f"{where}.memory"),
        pci=_pci(raw.get("pci"), f"{where}.pci"),
        num_gpu_cores=opt(raw, "num_gpu_cores", int, where),
        numa_node=opt(raw, "numa_node", int, where),
        errors=errors(raw.get("errors"), f"{where}.errors", DEVICE_CALLS | {ALL_DEVICE_CALLS}),
        sysfs=_sysfs(raw.get("sysfs"), f"{where}.sysfs"),
        addressing_mode=opt(raw, "addressing_mode", int, where),
        **mig_section(raw, where),
        **links_section(raw, where),
        **health_section(raw, where),
        **usage_section(raw, where),
    )


def _memory(value: object, where: str) -> MemoryProfile | None:
    if value is None:
        return None
    raw = obj(value, where, frozenset({"total", "free", "used"}))
    total, free, used = (req(raw, key, int, where) for key in ("total", "free", "used"))
    if min(total, free, used) < 0:
        raise Invalid(f"{where}: byte counts must not be negative")
    return MemoryProfile(total=total, free=free, used=used)


def _pci(value: object, where: str) -> PciProfile | None:
    if value is None:
        return None
    raw = obj(value, where, _PCI_KEYS)
    bus_id = req(raw, "busId", str, where)
    match = _NVML_BUS_ID.match(bus_id)
    if match is None or normalize_pci_bus_id(bus_id) is None:
        raise Invalid(f'{where}.busId: expected NVML\'s form like "00000000:1B:00.0", got {bus_id!r}')
    domain, bus, device, function = match.groups()
    legacy = f"{int(domain, 16):04X}:{bus}:{device}.{function}"
    return PciProfile(
        bus_id=bus_id,
        bus_id_legacy=opt(raw, "busIdLegacy", str, where) or legacy,
        domain=_with_default(opt(raw, "domain", int, where), int(domain, 16)),
        bus=_with_default(opt(raw, "bus", int, where), int(bus, 16)),
        device=_with_default(opt(raw, "device", int, where), int(device, 16)),
        pci_device_id=opt(raw, "pciDeviceId", int, where) or 0,
        pci_subsystem_id=opt(raw, "pciSubSystemId", int, where) or 0,
    )


def _sysfs(value: object, where: str) -> SysfsProfile:
    if value is None:
        return SysfsProfile()
    raw = obj(value, where, frozenset({"numa_node", "pcie_root"}))
    root = opt(raw, "pcie_root", str, where)
    if root is not None and _PCIE_ROOT.match(root) is None:
        raise Invalid(
            f'{where}.pcie_root: expected lower-case "pciDDDD:BB" (e.g. "pci0000:16"), got {root!r}'
        )
    return SysfsProfile(numa_node=opt(raw, "numa_node", int, where), pcie_root=root)


def _with_default(value: int | None, default: int) -> int:
    return default if value is None else value
