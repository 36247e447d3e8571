"""amdgpu/KFD conventions, and readers for their sysfs facts (which need no ROCm user space).

Every function takes the sysfs root (``/sys`` on a node, a ``tmp_path`` tree in tests, a private temp dir for
the mock backend) and answers ``None`` / empty for what is missing or unreadable; nothing here raises for an
odd file. Paths read (relative to the root):

* ``bus/pci/drivers/amdgpu/<bdf>`` (or ``module/amdgpu/drivers/pci:amdgpu/<bdf>``): PCI functions bound to
  amdgpu; in each, ``vendor``, ``device``, ``product_name``, ``unique_id`` (``%016llx``),
  ``current_compute_partition``, ``current_memory_partition`` and the ``drm/`` listing (``cardN``,
  ``renderDN``).
* ``devices/platform/amdgpu_xcp_N`` (also ``amdgpu_xcp.N``): the extra DRM devices of partitions 1..7.
* ``class/kfd/kfd/topology/nodes/N/properties`` and ``mem_banks/M/properties``.
* ``module/amdgpu/version``: the DKMS module version (absent for the in-tree driver).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gpudra.vendors.sysfs import pci_device_link

AMD_VENDOR_ID: Final = 0x1002
#: KFD heap types of device-local memory (HSA_HEAPTYPE_FRAME_BUFFER_PUBLIC / _PRIVATE); 0 is system memory,
#: 3-7 are GDS/LDS/scratch/SVM/MMIO apertures. Only these count as VRAM.
FRAME_BUFFER_HEAP_TYPES: Final = frozenset({1, 2})

#: Compute partition modes (``current_compute_partition``) and memory modes with their pool counts.
COMPUTE_MODES: Final = ("SPX", "DPX", "TPX", "QPX", "CPX")
#: Partitions per compute mode; CPX has one per XCC (see :data:`XCC_COUNT`).
PARTITIONS_PER_MODE: Final[dict[str, int]] = {"SPX": 1, "DPX": 2, "TPX": 3, "QPX": 4}
MEMORY_POOLS: Final[dict[str, int]] = {"NPS1": 1, "NPS2": 2, "NPS4": 4, "NPS8": 8}
#: XCCs per GPU by PCI device id (fixtures amd-gpus.json: MI300X and MI325X have 8; CPX = 8 partitions).
XCC_COUNT: Final[dict[int, int]] = {0x74A1: 8, 0x74A5: 8}
#: Market names by PCI device id (fixtures amd-gpus.json, as rocminfo/amdsmi print them): the name used when
#: amdsmi is not there, so productName does not change with amdsmi's presence.
MARKET_NAMES: Final[dict[int, str]] = {
    0x74A1: "AMD Instinct MI300X", 0x7408: "AMD Instinct MI250X", 0x740C: "AMD Instinct MI250X/MI250",
    0x740F: "AMD Instinct MI210", 0x7448: "AMD Radeon PRO W7900", 0x744A: "AMD Radeon PRO W7900 Dual Slot",
}  # fmt: skip
_BDF = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")
_XCP = re.compile(r"^amdgpu_xcp[._](\d+)$")
_CARD = re.compile(r"^card(\d+)$")
_RENDER = re.compile(r"^renderD(\d+)$")
_DRIVER_DIRS: Final = ("bus/pci/drivers/amdgpu", "module/amdgpu/drivers/pci:amdgpu")
_KFD_NODES: Final = "class/kfd/kfd/topology/nodes"


@dataclass(frozen=True, slots=True)
class DrmMinors:
    """The DRM nodes of one device: ``cardN`` and ``renderDN`` entries of its ``drm/`` directory."""

    cards: tuple[int, ...] = ()
    renders: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class PciFunction:
    """One PCI function bound to amdgpu, as its sysfs directory describes it."""

    bus_id: str
    vendor_id: int | None
    device_id: int | None
    product_name: str | None
    unique_id: int | None
    compute_partition: str | None  # "SPX" | "DPX" | "TPX" | "QPX" | "CPX"; None = no such file
    memory_partition: str | None  # "NPS1" | "NPS2" | "NPS4" | "NPS8"; None = no such file
    drm: DrmMinors


@dataclass(frozen=True, slots=True)
class XcpDevice:
    """An ``amdgpu_xcp`` platform device: the DRM nodes of one compute partition (1..7) of some GPU."""

    name: str
    drm: DrmMinors


@dataclass(frozen=True, slots=True)
class MemBank:
    heap_type: int | None
    size_in_bytes: int | None


@dataclass(frozen=True, slots=True)
class KfdNode:
    """One KFD topology node: ``properties`` parsed to integers, and its memory banks."""

    node_id: int
    properties: dict[str, int] = field(default_factory=dict)
    mem_banks: tuple[MemBank, ...] = ()

    def prop(self, key: str) -> int | None:
        return self.properties.get(key)

    @property
    def is_gpu(self) -> bool:
        return (self.prop("simd_count") or 0) > 0

    @property
    def bus_id(self) -> str | None:
        """The PCI address KFD reports: ``domain`` + ``location_id`` (= ``bus << 8 | devfn``)."""
        domain, location = self.prop("domain"), self.prop("location_id")
        if domain is None or location is None or not 0 <= domain <= 0xFFFF or not 0 <= location <= 0xFFFF:
            return None
        bus, devfn = location >> 8, location & 0xFF
        return f"{domain:04x}:{bus:02x}:{devfn >> 3:02x}.{devfn & 0x7:x}"

    def vram_bytes(self) -> int | None:
        """Total of the frame-buffer banks; ``None`` when the node has none (never a guess)."""
        sizes = [
            bank.size_in_bytes
            for bank in self.mem_banks
            if bank.heap_type in FRAME_BUFFER_HEAP_TYPES and bank.size_in_bytes
        ]
        return sum(sizes) if sizes else None


def xgmi_fabric_domain(hive_id: int | None) -> str | None:
    """``xgmi-<hive id, 16 hex digits>``; ``None`` for hive 0 (not in an XGMI hive)."""
    return f"xgmi-{hive_id:016x}" if hive_id else None


def partition_bus_id(parent_bus_id: str, index: int) -> str:
    """amdsmi's convention: partition ``index`` of ``0000:05:00.0`` is ``0000:05:00.<index>``."""
    return f"{parent_bus_id[:-1]}{index:x}"


def memory_pool(index: int, partitions: int, pools: int) -> tuple[int | None, int | None]:
    """(memory partition the compute partition allocates from, compute partitions drawing from that pool).

    CPX (8) x NPS4: partitions 0-1 -> pool 0, 2-3 -> pool 1, ...; each pool shared by 2. NPS1: pool 0, shared
    by all. A partition spanning several pools (fewer partitions than pools) has no single pool: (None, 1).
    """
    if partitions <= 0 or pools <= 0 or not 0 <= index < partitions:
        return None, None
    if partitions % pools == 0:
        per_pool = partitions // pools
        return index // per_pool, per_pool
    if pools % partitions == 0:
        return None, 1
    return None, None


def parse_properties(text: str) -> dict[str, int]:
    """KFD ``properties`` text (``key value`` lines) -> {key: int}; lines that do not parse are dropped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1], 10)
            except ValueError:
                continue
    return out


def gfx_name(target_version: int) -> str | None:
    """KFD ``gfx_target_version`` -> LLVM target: 90402 -> gfx942, 90010 -> gfx90a, 110000 -> gfx1100."""
    if target_version <= 0:
        return None
    major, minor, stepping = target_version // 10000, (target_version // 100) % 100, target_version % 100
    if minor > 0xF or stepping > 0xF:
        return None
    return f"gfx{major}{minor:x}{stepping:x}"


def amdgpu_functions(sysfs_root: Path) -> tuple[str, ...]:
    """Bus ids (``0000:05:00.0``) of the PCI functions bound to amdgpu, sorted; empty when none."""
    for relative in _DRIVER_DIRS:
        try:
            names = [p.name for p in (sysfs_root / relative).iterdir()]
        except OSError:
            continue
        return tuple(sorted(n for n in names if _BDF.match(n)))
    return ()


def read_pci_function(sysfs_root: Path, bus_id: str) -> PciFunction:
    """What amdgpu's sysfs directory of ``bus_id`` says (through ``bus/pci/devices/<bdf>``)."""
    base = pci_device_link(sysfs_root, bus_id)
    unique = _text(base / "unique_id")
    return PciFunction(
        bus_id=bus_id,
        vendor_id=_hex(_text(base / "vendor")),
        device_id=_hex(_text(base / "device")),
        product_name=_text(base / "product_name") or None,
        unique_id=_hex(unique) if unique else None,
        compute_partition=_text(base / "current_compute_partition") or None,
        memory_partition=_text(base / "current_memory_partition") or None,
        drm=read_drm_minors(base / "drm"),
    )


def read_drm_minors(drm_dir: Path) -> DrmMinors:
    """``cardN`` / ``renderDN`` entries of a device's ``drm`` directory."""
    try:
        names = [p.name for p in drm_dir.iterdir()]
    except OSError:
        return DrmMinors()
    cards = sorted(int(m.group(1)) for n in names if (m := _CARD.match(n)))
    renders = sorted(int(m.group(1)) for n in names if (m := _RENDER.match(n)))
    return DrmMinors(cards=tuple(cards), renders=tuple(renders))


def xcp_devices(sysfs_root: Path) -> tuple[XcpDevice, ...]:
    """The ``amdgpu_xcp_N`` / ``amdgpu_xcp.N`` platform devices, in N order."""
    platform = sysfs_root / "devices" / "platform"
    try:
        entries = [(int(m.group(1)), p) for p in platform.iterdir() if (m := _XCP.match(p.name))]
    except OSError:
        return ()
    return tuple(XcpDevice(name=p.name, drm=read_drm_minors(p / "drm")) for _, p in sorted(entries))


def kfd_nodes(sysfs_root: Path) -> tuple[KfdNode, ...] | None:
    """All KFD topology nodes (CPU and GPU), by node id; ``None`` when the topology is not there at all."""
    folder = sysfs_root / _KFD_NODES
    try:
        entries = [(int(p.name), p) for p in folder.iterdir() if p.name.isdigit()]
    except OSError:
        return None
    nodes = []
    for node_id, path in sorted(entries):
        text = _text(path / "properties", strip=False)
        if text is None:
            continue
        nodes.append(KfdNode(node_id=node_id, properties=parse_properties(text), mem_banks=_banks(path)))
    return tuple(nodes)


def amdgpu_module_version(sysfs_root: Path) -> str | None:
    """``/sys/module/amdgpu/version`` (DKMS builds only)."""
    return _text(sysfs_root / "module" / "amdgpu" / "version") or None


def _banks(node_dir: Path) -> tuple[MemBank, ...]:
    try:
        entries = sorted((int(p.name), p) for p in (node_dir / "mem_banks").iterdir() if p.name.isdigit())
    except OSError:
        return ()
    banks = []
    for _, path in entries:
        props = parse_properties(_text(path / "properties", strip=False) or "")
        banks.append(MemBank(heap_type=props.get("heap_type"), size_in_bytes=props.get("size_in_bytes")))
    return tuple(banks)


def _text(path: Path, *, strip: bool = True) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    return text.strip() if strip else text


def _hex(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None
