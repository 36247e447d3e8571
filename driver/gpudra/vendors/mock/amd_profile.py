"""AMD hardware profiles: compact JSON facts from which ``fake_amd_sysfs`` builds a sysfs/KFD tree and
``fake_amdsmi`` answers amdsmi calls.

A profile is a built-in name (``vendors/mock/profiles/<name>.json`` with ``"vendor": "amd"``) or a JSON file
path. Editing the profile file of a running mock is a hardware change the next discovery sees (a partition
mode switched, say); an edit that does not validate, changes the vendor or adds/removes ``amdsmi`` keeps the
old hardware, with one warning (:mod:`~gpudra.vendors.mock.hotswap`). Keys not listed are errors, except
comment keys starting with ``_``::

    {
      "vendor": "amd",                             # required: routes --profile to the AMD mock
      "_source": [...], "_synthetic": [...],       # citations; values not read from hardware
      "name": "...", "description": "...",
      "amdgpu_version": "6.10.5",                  # /sys/module/amdgpu/version; null -> no file
      "bmc_vga": "0000:c3:00.0",                   # a BMC VGA (ast) device owning card0; null -> none
      "drm_minor_limit": 64,                       # primary minors card0..card63; a device past it is absent
      "xcp_name_prefix": "amdgpu_xcp_",            # or "amdgpu_xcp." (newer kernels)
      "model": {
        "vendor_id": "0x1002", "device_id": "0x74a1", "subsystem_vendor_id": ..., "subsystem_device_id": ...,
        "product_name": "AMD Instinct MI300X OAM",     # sysfs product_name; null -> no file
        "xcc_count": 8,                                # CPX makes one partition per XCC
        "xcp_devices": 7,                              # amdgpu_xcp platform devices per GPU (0: none)
        "kfd_gpu_properties": "cpu_cores_count 0\\n...", # one GPU node (as in this mode)
        "kfd_cpu_properties": "cpu_cores_count 96\\n...",
        "kfd_mem_banks": [{"heap_type": 1, "size_in_bytes": 51539607552, ...}],   # per GPU node
        "kfd_simd_id_base_step": 40,                   # simd_id_base of GPU node n = template's + 40 n
        "available_compute_partition": "SPX, DPX, QPX, CPX", "available_memory_partition": "NPS1, NPS4"
      },
      "cpu_nodes": [{"cpu_cores_count": 96, "cpu_core_id_base": 0, "io_links_count": 33}, ...],
      "gpus": [                                    # probe order: KFD node ids, DRM minors, xcp numbers
        {"bdf": "0000:05:00.0", "unique_id": "e3aa140f9a5f9e31", "hive_id": "15188982192727901047",
         "numa_node": 0, "pcie_root": "pci0000:00", "compute_partition": "CPX", "memory_partition": "NPS4",
         "ras_features": "feature mask: 0x3fff",  # ras/features as amdgpu prints it; null -> none
         "ras": {"umc": {"ue": 0, "ce": 3, "de": 0}, "gfx": {"ue": 0, "ce": 0},   # ras/<block>_err_count
                 "sdma": "Query currently inaccessible"},                       # or the file's text as is
         "events": [{"id": "e1", "type": "gpu_reset"},                          # amdsmi events, see below
                    {"id": "t1", "type": "thermal_throttle", "partition": 3, "message": "1:2"}],
         "usage": {"utilization": 0.35, "idle_watts": 140, "max_watts": 750}}    # see profile_usage.py
      ],
      "amdsmi": {                                  # null -> amdsmi missing (the backend gets amdsmi=None)
        "market_name": "AMD Instinct MI300X", "driver_version": "6.10.5", "vram_size_mib": 196592,
        "vram_type": 4, "missing_functions": ["amdsmi_get_gpu_memory_partition"],     # an older library
        "errors": {"amdsmi_init": "AMDSMI_STATUS_DRIVER_NOT_LOADED"}                  # any call -> status
      },
      "faults": {"xcp_without_kfd": ["amdgpu_xcp_3"], "no_partition_files": ["0000:27:00.0"]}
    }

``compute_partition`` null = no partition files (a whole GPU). In the per-GPU KFD text the generator sets
``location_id``, ``domain``, ``drm_render_minor``, ``hive_id`` and ``unique_id``; for CPU nodes
``cpu_cores_count`` and ``cpu_core_id_base``.

Health (all optional; RAS values are synthetic, no capture had them). ``ras``: one
``bus/pci/devices/<bdf>/ras/<block>_err_count`` file per block (``ue: N`` / ``ce: N`` lines, ``de: N`` when
given, as newer kernels print for UMC); no ``ras`` and no ``ras_features``: no ``ras`` directory (RAS off).
Raising a counter in the profile file of a running mock is an error the health monitor sees. ``events``:
what the fake amdsmi's event API delivers (``AmdSmiEventReader.read``) to a reader subscribed to that type on
the processor of partition ``partition`` (default 0, the PCI function); types ``vmfault``,
``thermal_throttle``, ``gpu_pre_reset``, ``gpu_post_reset``, ``ring_hang`` (amdsmi's), and ``gpu_reset``
(a pre- and a post-reset event, as the kernel sends them). Each ``id`` is delivered once, across edits of the
profile: add an event with a new id to raise it again. ``message`` is one token of at most 63 characters
(amdsmi reads ``%63s``); default empty. A GPU taken out of ``gpus`` is a GPU lost from the bus.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from gpudra.vendors.amd.smi import STATUS_CODES
from gpudra.vendors.amd.sysfs import COMPUTE_MODES, MEMORY_POOLS, parse_properties
from gpudra.vendors.mock import amd_profile_health as health
from gpudra.vendors.mock.amd_profile_health import AmdEvent, RasBlocks
from gpudra.vendors.mock.profile import ProfileError
from gpudra.vendors.mock.profile_json import Invalid, strings
from gpudra.vendors.mock.profile_usage import DEFAULT_USAGE, UsageProfile, usage_profile

_PACKAGE: Final = "gpudra.vendors.mock"
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.0$")
_PCIE_ROOT = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}$")
_HEX16 = re.compile(r"^[0-9a-f]{1,16}$")
_TOP: Final = frozenset(
    {"vendor", "name", "description", "amdgpu_version", "bmc_vga", "drm_minor_limit", "xcp_name_prefix",
     "model", "cpu_nodes", "gpus", "amdsmi", "faults"}
)  # fmt: skip
_MODEL: Final = frozenset(
    {"vendor_id", "device_id", "subsystem_vendor_id", "subsystem_device_id", "product_name", "xcc_count",
     "xcp_devices", "kfd_gpu_properties", "kfd_cpu_properties", "kfd_mem_banks", "kfd_simd_id_base_step",
     "available_compute_partition", "available_memory_partition"}
)  # fmt: skip
_GPU: Final = frozenset(
    {"bdf", "unique_id", "hive_id", "numa_node", "pcie_root", "compute_partition", "memory_partition",
     "ras", "ras_features", "events", "usage"}
)  # fmt: skip
_SMI: Final = frozenset(
    {"market_name", "driver_version", "vram_size_mib", "vram_type", "missing_functions", "errors"}
)
_FAULTS: Final = frozenset({"xcp_without_kfd", "no_partition_files"})

Props = tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class AmdModel:
    vendor_id: int
    device_id: int
    subsystem_vendor_id: int | None
    subsystem_device_id: int | None
    product_name: str | None
    xcc_count: int
    xcp_devices: int
    kfd_gpu_properties: Props
    kfd_cpu_properties: Props
    kfd_mem_banks: tuple[Props, ...]
    available_compute_partition: str | None = None
    available_memory_partition: str | None = None
    kfd_simd_id_base_step: int = 0  # simd_id_base grows by this from one GPU node to the next


@dataclass(frozen=True, slots=True)
class AmdGpu:
    bdf: str  # the PCI function (partition 0 in a partitioned mode)
    unique_id: int | None
    hive_id: int = 0
    numa_node: int | None = None
    pcie_root: str | None = None
    compute_partition: str | None = None  # None: no partition files at all
    memory_partition: str | None = None
    ras: RasBlocks = ()  # block -> counters, or the file's text as is
    ras_features: str | None = None  # ras/features text ("feature mask: 0x3fff"); None: no such file
    events: tuple[AmdEvent, ...] = ()
    usage: UsageProfile = DEFAULT_USAGE  # the fake's readings: default utilisation and power model


@dataclass(frozen=True, slots=True)
class CpuNode:
    """A CPU socket's KFD node: values that replace those of ``model.kfd_cpu_properties``."""

    cpu_cores_count: int
    cpu_core_id_base: int
    overrides: Props = ()  # any other property of this node, e.g. ("io_links_count", 32)


@dataclass(frozen=True, slots=True)
class AmdSmiAnswers:
    """What the fake amdsmi answers beyond what the sysfs facts give; ``None`` -> NOT_SUPPORTED."""

    market_name: str | None = None
    driver_version: str | None = None
    vram_size_mib: int | None = None
    vram_type: int | None = None
    missing_functions: frozenset[str] = frozenset()
    errors: dict[str, int] = field(default_factory=dict)  # function name -> amdsmi status code


@dataclass(frozen=True, slots=True)
class AmdFaults:
    xcp_without_kfd: frozenset[str] = frozenset()  # xcp devices with a render node but no KFD node
    no_partition_files: frozenset[str] = frozenset()  # bus ids of GPUs written without partition files


@dataclass(frozen=True, slots=True)
class AmdProfile:
    name: str
    model: AmdModel
    cpu_nodes: tuple[CpuNode, ...]
    gpus: tuple[AmdGpu, ...]
    amdsmi: AmdSmiAnswers | None
    amdgpu_version: str | None = None
    bmc_vga: str | None = None
    drm_minor_limit: int = 64
    xcp_name_prefix: str = "amdgpu_xcp_"
    faults: AmdFaults = field(default_factory=AmdFaults)
    description: str = ""
    source: tuple[str, ...] = ()
    synthetic: tuple[str, ...] = ()


def builtin_amd_profile_names() -> list[str]:
    """Names of the built-in profiles whose JSON says ``"vendor": "amd"``, sorted."""
    folder = resources.files(_PACKAGE) / "profiles"
    names = (p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))
    return sorted(n for n in names if _vendor(_builtin_text(n)) == "amd")


def is_amd_profile(name_or_path: str) -> bool:
    """True when ``--profile name_or_path`` names an AMD profile (built-in or file); never raises."""
    text = _builtin_text(name_or_path)
    if text is None:
        try:
            text = Path(name_or_path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError):
            return False
    return _vendor(text) == "amd"


def load_amd_profile(name_or_path: str) -> AmdProfile:
    """A built-in AMD profile by name, or one from a JSON file; raises :class:`ProfileError` with the key."""
    text = _builtin_text(name_or_path)
    origin, default = f"built-in profile {name_or_path!r}", name_or_path
    if text is None:
        path = Path(name_or_path)
        origin, default = f"profile file {str(path)!r}", path.stem
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ProfileError(f"unknown AMD profile {name_or_path!r}: {err}") from err
    return parse_amd_profile(text, origin=origin, default_name=default)


def parse_amd_profile(text: str, origin: str = "profile", default_name: str = "custom") -> AmdProfile:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ProfileError(f"{origin}: not valid JSON: {err}") from err
    try:
        return _profile(_obj(raw, "", _TOP), default_name)
    except Invalid as err:
        raise ProfileError(f"{origin}: {err}") from None


def _profile(raw: dict[str, Any], default_name: str) -> AmdProfile:
    if raw.get("vendor") != "amd":
        raise Invalid('vendor: must be "amd"')
    gpus = tuple(_gpu(g, f"gpus[{i}]") for i, g in enumerate(_list(raw, "gpus")))
    if len({g.bdf for g in gpus}) != len(gpus):
        raise Invalid("gpus: bus ids must be distinct")
    ids = [e.id for g in gpus for e in g.events]
    if len(set(ids)) != len(ids):
        raise Invalid("gpus[].events: event ids must be distinct in a profile")
    smi = raw.get("amdsmi")
    return AmdProfile(
        name=_opt(raw, "name", str, "") or default_name,
        model=_model(_obj(raw.get("model"), "model", _MODEL)),
        cpu_nodes=tuple(_cpu_node(c, f"cpu_nodes[{i}]") for i, c in enumerate(_list(raw, "cpu_nodes"))),
        gpus=gpus,
        amdsmi=None if smi is None else _smi(_obj(smi, "amdsmi", _SMI)),
        amdgpu_version=_opt(raw, "amdgpu_version", str, ""),
        bmc_vga=_opt(raw, "bmc_vga", str, ""),
        drm_minor_limit=_opt(raw, "drm_minor_limit", int, "") or 64,
        xcp_name_prefix=_opt(raw, "xcp_name_prefix", str, "") or "amdgpu_xcp_",
        faults=_faults(raw.get("faults")),
        description=_opt(raw, "description", str, "") or "",
        source=strings(raw.get("_source"), "_source"),
        synthetic=strings(raw.get("_synthetic"), "_synthetic"),
    )


def _model(raw: dict[str, Any]) -> AmdModel:
    w = "model"
    banks = raw.get("kfd_mem_banks") or []
    if not isinstance(banks, list) or not all(isinstance(b, dict) for b in banks):
        raise Invalid("model.kfd_mem_banks: expected a list of objects")
    for i, bank in enumerate(banks):
        _req(bank, "heap_type", int, f"model.kfd_mem_banks[{i}]")
        _req(bank, "size_in_bytes", int, f"model.kfd_mem_banks[{i}]")
    return AmdModel(
        vendor_id=_hex(_req(raw, "vendor_id", str, w), f"{w}.vendor_id"),
        device_id=_hex(_req(raw, "device_id", str, w), f"{w}.device_id"),
        subsystem_vendor_id=_opt_hex(raw, "subsystem_vendor_id", w),
        subsystem_device_id=_opt_hex(raw, "subsystem_device_id", w),
        product_name=_opt(raw, "product_name", str, w),
        xcc_count=_req(raw, "xcc_count", int, w),
        xcp_devices=_req(raw, "xcp_devices", int, w),
        kfd_gpu_properties=_props(_req(raw, "kfd_gpu_properties", str, w), f"{w}.kfd_gpu_properties"),
        kfd_cpu_properties=_props(_req(raw, "kfd_cpu_properties", str, w), f"{w}.kfd_cpu_properties"),
        kfd_mem_banks=tuple(tuple((k, int(v)) for k, v in b.items() if not k.startswith("_")) for b in banks),
        available_compute_partition=_opt(raw, "available_compute_partition", str, w),
        available_memory_partition=_opt(raw, "available_memory_partition", str, w),
        kfd_simd_id_base_step=_opt(raw, "kfd_simd_id_base_step", int, w) or 0,
    )


def _gpu(item: object, where: str) -> AmdGpu:
    raw = _obj(item, where, _GPU)
    bdf = _req(raw, "bdf", str, where)
    if not _BDF.match(bdf):
        raise Invalid(
            f'{where}.bdf: expected a lower-case function-0 bus id like "0000:05:00.0", got {bdf!r}'
        )
    unique = _opt(raw, "unique_id", str, where)
    if unique is not None and not _HEX16.match(unique):
        raise Invalid(f"{where}.unique_id: expected hex as sysfs prints it (%016llx), got {unique!r}")
    hive = _opt(raw, "hive_id", str, where) or "0"
    if not hive.isdigit():
        raise Invalid(f"{where}.hive_id: expected the decimal string KFD prints, got {hive!r}")
    root = _opt(raw, "pcie_root", str, where)
    if root is not None and not _PCIE_ROOT.match(root):
        raise Invalid(f'{where}.pcie_root: expected "pciDDDD:BB", got {root!r}')
    compute = _choice(raw, "compute_partition", COMPUTE_MODES, where)
    memory = _choice(raw, "memory_partition", tuple(MEMORY_POOLS), where)
    if (compute is None) != (memory is None):
        raise Invalid(f"{where}: give both compute_partition and memory_partition, or neither")
    return AmdGpu(
        bdf=bdf, unique_id=int(unique, 16) if unique else None, hive_id=int(hive),
        numa_node=_opt(raw, "numa_node", int, where), pcie_root=root, compute_partition=compute,
        memory_partition=memory, ras=health.ras_blocks(raw.get("ras"), f"{where}.ras"),
        ras_features=health.ras_features(raw.get("ras_features"), f"{where}.ras_features"),
        events=health.events(raw.get("events"), f"{where}.events"),
        usage=usage_profile(raw.get("usage"), f"{where}.usage"),
    )  # fmt: skip


def _cpu_node(item: object, where: str) -> CpuNode:
    if not isinstance(item, dict):
        raise Invalid(f"{where}: expected a JSON object of KFD property values")
    others = {k: _req(item, k, int, where) for k in item if k not in ("cpu_cores_count", "cpu_core_id_base")}
    return CpuNode(
        _req(item, "cpu_cores_count", int, where), _req(item, "cpu_core_id_base", int, where),
        tuple((k, v) for k, v in others.items() if not k.startswith("_")),
    )  # fmt: skip


def _smi(raw: dict[str, Any]) -> AmdSmiAnswers:
    errors = raw.get("errors") or {}
    if not isinstance(errors, dict) or not all(v in STATUS_CODES for v in errors.values()):
        raise Invalid(f"amdsmi.errors: map function names to AMDSMI_STATUS_* names ({sorted(STATUS_CODES)})")
    return AmdSmiAnswers(
        market_name=_opt(raw, "market_name", str, "amdsmi"),
        driver_version=_opt(raw, "driver_version", str, "amdsmi"),
        vram_size_mib=_opt(raw, "vram_size_mib", int, "amdsmi"),
        vram_type=_opt(raw, "vram_type", int, "amdsmi"),
        missing_functions=frozenset(strings(raw.get("missing_functions"), "amdsmi.missing_functions")),
        errors={str(k): STATUS_CODES[v] for k, v in errors.items()},
    )


def _faults(value: object) -> AmdFaults:
    if value is None:
        return AmdFaults()
    raw = _obj(value, "faults", _FAULTS)
    return AmdFaults(
        xcp_without_kfd=frozenset(strings(raw.get("xcp_without_kfd"), "faults.xcp_without_kfd")),
        no_partition_files=frozenset(strings(raw.get("no_partition_files"), "faults.no_partition_files")),
    )


def _props(text: str, where: str) -> Props:
    parsed = parse_properties(text)
    if not parsed or len(parsed) != len([line for line in text.splitlines() if line.strip()]):
        raise Invalid(f"{where}: expected KFD properties text, one 'key integer' per line")
    return tuple(parsed.items())


def _builtin_text(name: str) -> str | None:
    if not name or "/" in name or name.endswith(".json"):
        return None
    entry = resources.files(_PACKAGE) / "profiles" / f"{name}.json"
    try:
        return entry.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _vendor(text: str | None) -> object:
    try:
        raw = json.loads(text) if text is not None else None
    except json.JSONDecodeError:
        return None
    return raw.get("vendor") if isinstance(raw, dict) else None


def _obj(value: object, where: str, allowed: frozenset[str]) -> dict[str, Any]:
    label = where or "the top level"
    if not isinstance(value, dict):
        raise Invalid(f"{label}: expected a JSON object, got {type(value).__name__}")
    unknown = sorted(k for k in value if k not in allowed and not str(k).startswith("_"))
    if unknown:
        raise Invalid(f"{label}: unknown key(s) {', '.join(map(repr, unknown))} (allowed: {sorted(allowed)})")
    return value


def _list(raw: dict[str, Any], key: str) -> list[Any]:
    value = raw.get(key)
    if not isinstance(value, list):
        raise Invalid(f"{key}: required, a list")
    return value


def _opt(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    ok = isinstance(value, int) and not isinstance(value, bool) if kind is int else isinstance(value, kind)
    if not ok:
        raise Invalid(f"{f'{where}.' if where else ''}{key}: expected {kind.__name__} or null, got {value!r}")
    return value


def _req(raw: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = _opt(raw, key, kind, where)
    if value is None:
        raise Invalid(f"{where}.{key}: required")
    return value


def _choice(raw: dict[str, Any], key: str, allowed: tuple[str, ...], where: str) -> str | None:
    value = _opt(raw, key, str, where)
    if value is not None and value not in allowed:
        raise Invalid(f"{where}.{key}: expected one of {', '.join(allowed)} or null, got {value!r}")
    return value  # type: ignore[no-any-return]


def _hex(text: str, where: str) -> int:
    try:
        return int(text, 16)
    except ValueError:
        raise Invalid(f'{where}: expected hex like "0x74a1", got {text!r}') from None


def _opt_hex(raw: dict[str, Any], key: str, where: str) -> int | None:
    value = _opt(raw, key, str, where)
    return None if value is None else _hex(value, f"{where}.{key}")
