"""Build the sysfs + KFD tree of an :class:`~gpudra.vendors.mock.amd_profile.AmdProfile` (no tree is
committed).

The layout follows the kernel's rules as the fixtures describe them (shared/fixtures/hardware/README.md,
amd-systems.json ``_notes``): GPUs probe in profile order; each reserves ``1 + xcp_devices`` DRM minors
(the PCI function is partition 0, ``amdgpu_xcp_N`` platform devices are partitions 1..7, numbered by one
global counter) in every compute mode; a BMC VGA device owns ``card0``; a device whose primary minor would be
``>= drm_minor_limit`` is not created at all - no platform device, render node or KFD node. KFD nodes: CPU
sockets first, then one per existing partition (SPX: one per GPU; the xcp devices then have no KFD node).
A GPU's ``ras`` / ``ras_features`` become its ``ras/`` directory (``<block>_err_count``, ``features``).
:func:`write_usage_files` writes what amdgpu reports of a GPU's usage (``gpu_busy_percent``,
``mem_info_vram_used``/``_total``, ``hwmon/hwmonN/energy1_input`` in microjoules and ``power1_average`` in
microwatts), each time the mock samples, from the usage model (:mod:`~gpudra.vendors.mock.fake_usage`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gpudra.fsutil import atomic_write
from gpudra.vendors.amd.sysfs import FRAME_BUFFER_HEAP_TYPES, MEMORY_POOLS, PARTITIONS_PER_MODE
from gpudra.vendors.mock.amd_profile import AmdGpu, AmdProfile, Props
from gpudra.vendors.mock.fake_usage import UsageModel, memory_used
from gpudra.vendors.sysfs import pci_device_link

RENDER_MINOR_BASE: Final = 128
_KFD: Final = "class/kfd/kfd/topology"
_GPU_ID_BASE: Final = 40001  # KFD gpu_id values are synthetic (fixtures: "SYNTHETIC")
_BMC_VGA_IDS: Final = ("0x1a03", "0x2000")  # ASPEED graphics; synthetic like the BMC bus id


@dataclass(frozen=True, slots=True)
class FakeDrmDevice:
    """One DRM device the layout creates: a GPU's PCI function (``slot`` 0) or one of its xcp devices."""

    gpu: AmdGpu
    gpu_index: int  # probe order
    slot: int  # partition index when the GPU is partitioned
    card: int
    render: int
    xcp_name: str | None  # None for the PCI function
    kfd_node: int | None  # None: no KFD node (SPX xcp devices, faults)

    @property
    def bus_id(self) -> str:
        """amdsmi's bus id of this partition: the parent's with the partition index as function."""
        return f"{self.gpu.bdf[:-1]}{self.slot:x}"


def partitions_in(gpu: AmdGpu, xcc_count: int) -> int:
    """Compute partitions the GPU's mode makes: SPX 1, DPX 2, TPX 3, QPX 4, CPX one per XCC."""
    mode = gpu.compute_partition or "SPX"
    return PARTITIONS_PER_MODE.get(mode, xcc_count)


def amd_layout(profile: AmdProfile) -> tuple[FakeDrmDevice, ...]:
    """Every DRM device the profile's node has, in probe order, with its minors and KFD node id."""
    per_gpu = 1 + profile.model.xcp_devices
    card_base = 1 if profile.bmc_vga else 0
    next_node, next_xcp = len(profile.cpu_nodes), 0
    devices: list[FakeDrmDevice] = []
    for k, gpu in enumerate(profile.gpus):
        count = partitions_in(gpu, profile.model.xcc_count)
        for slot in range(per_gpu):
            card = card_base + k * per_gpu + slot
            if slot > 0 and card >= profile.drm_minor_limit:
                continue  # amdgpu skips the xcp device: out of DRM minors
            name = None
            if slot > 0:
                name, next_xcp = f"{profile.xcp_name_prefix}{next_xcp}", next_xcp + 1
            node = None
            if slot < count and name not in profile.faults.xcp_without_kfd:
                node, next_node = next_node, next_node + 1
            render = RENDER_MINOR_BASE + k * per_gpu + slot
            devices.append(FakeDrmDevice(gpu, k, slot, card, render, name, node))
    return tuple(devices)


def write_amd_sysfs(root: Path, profile: AmdProfile) -> tuple[FakeDrmDevice, ...]:
    """Write the tree under ``root`` (``bus/pci``, ``devices``, ``module/amdgpu``, ``class/kfd``)."""
    layout = amd_layout(profile)
    drivers = root / "bus" / "pci" / "drivers"
    (drivers / "amdgpu").mkdir(parents=True, exist_ok=True)
    module = root / "module" / "amdgpu"
    (module / "drivers").mkdir(parents=True, exist_ok=True)
    _link(module / "drivers" / "pci:amdgpu", drivers / "amdgpu")
    if profile.amdgpu_version is not None:
        _write(module / "version", profile.amdgpu_version)
    for gpu in profile.gpus:
        _write_function(root, profile, gpu)
    if profile.bmc_vga is not None:
        vga = _device_dir(root, profile.bmc_vga, None, "ast")
        _write(vga / "vendor", _BMC_VGA_IDS[0])
        _write(vga / "device", _BMC_VGA_IDS[1])
        (vga / "drm" / "card0").mkdir(parents=True)
    for device in layout:
        if device.xcp_name is None:
            base = pci_device_link(root, device.gpu.bdf)
        else:
            base = root / "devices" / "platform" / device.xcp_name
        (base / "drm" / f"card{device.card}").mkdir(parents=True)
        (base / "drm" / f"renderD{device.render}").mkdir(parents=True)
    _write_kfd(root / _KFD, profile, layout)
    return layout


def write_usage_files(root: Path, profile: AmdProfile, usage: UsageModel) -> None:
    """The whole GPU's usage files of every GPU (amdgpu's are per PCI function, so per GPU, partitioned or
    not), replaced atomically; model keys ``AMD-<unique_id>`` (the UUID gpudra gives it without amdsmi) and
    the bus id. A GPU whose directory is gone (a profile swap in progress) is skipped."""
    for k, gpu in enumerate(profile.gpus):
        base = pci_device_link(root, gpu.bdf)
        if not base.is_dir():
            continue
        keys = (f"AMD-{gpu.unique_id:016x}", gpu.bdf) if gpu.unique_id else (gpu.bdf,)
        reading = usage.reading(keys, gpu.usage)
        total = vram_bytes(profile, gpu)
        files = {
            "gpu_busy_percent": round(reading.utilization * 100),
            "mem_info_vram_total": total,
            "mem_info_vram_used": memory_used(total, 0, reading.utilization),
            f"hwmon/hwmon{k + 2}/energy1_input": round(reading.energy_joules * 1e6),
            f"hwmon/hwmon{k + 2}/power1_average": round(reading.power_watts * 1e6),
        }
        for name, value in files.items():
            atomic_write(base / name, f"{value}\n".encode(), durable=False)


def vram_bytes(profile: AmdProfile, gpu: AmdGpu) -> int:
    """The GPU's VRAM: its KFD frame-buffer banks (one memory pool's) times the pools of its memory mode."""
    banks = (dict(b) for b in profile.model.kfd_mem_banks)
    pool = sum(b.get("size_in_bytes", 0) for b in banks if b.get("heap_type") in FRAME_BUFFER_HEAP_TYPES)
    return pool * MEMORY_POOLS.get(gpu.memory_partition or "NPS1", 1)


def _write_function(root: Path, profile: AmdProfile, gpu: AmdGpu) -> None:
    model = profile.model
    base = _device_dir(root, gpu.bdf, gpu.pcie_root, "amdgpu")
    _write(base / "vendor", f"0x{model.vendor_id:04x}")
    _write(base / "device", f"0x{model.device_id:04x}")
    optional = {
        "subsystem_vendor": None
        if model.subsystem_vendor_id is None
        else f"0x{model.subsystem_vendor_id:04x}",
        "subsystem_device": None
        if model.subsystem_device_id is None
        else f"0x{model.subsystem_device_id:04x}",
        "numa_node": None if gpu.numa_node is None else str(gpu.numa_node),
        "product_name": model.product_name,
        "unique_id": None if gpu.unique_id is None else f"{gpu.unique_id:016x}",
    }
    if gpu.compute_partition is not None and gpu.bdf not in profile.faults.no_partition_files:
        optional |= {
            "current_compute_partition": gpu.compute_partition,
            "available_compute_partition": model.available_compute_partition,
            "current_memory_partition": gpu.memory_partition,
            "available_memory_partition": model.available_memory_partition,
        }
    for name, text in optional.items():
        if text is not None:
            _write(base / name, text)
    _write_ras(base / "ras", gpu)


def _write_ras(folder: Path, gpu: AmdGpu) -> None:
    """amdgpu's RAS group: ``features`` and one ``<block>_err_count`` per RAS block (none: RAS off)."""
    if gpu.ras_features is not None:
        _write(folder / "features", gpu.ras_features)
    for block, counts in gpu.ras:
        text = counts if isinstance(counts, str) else counts.text()
        _write(folder / f"{block}_err_count", text, newline=isinstance(counts, str))


def _device_dir(root: Path, bus_id: str, pcie_root: str | None, driver: str) -> Path:
    """The device's directory; with a root complex it lives under ``devices/`` and ``bus/pci`` links to it."""
    link = pci_device_link(root, bus_id)
    link.parent.mkdir(parents=True, exist_ok=True)
    if pcie_root is None:
        link.mkdir()
        target = link
    else:
        target = root / "devices" / pcie_root / bus_id
        target.mkdir(parents=True)
        _link(link, target)
    bound = root / "bus" / "pci" / "drivers" / driver
    bound.mkdir(parents=True, exist_ok=True)
    _link(bound / bus_id, target)
    _link(target / "driver", bound)
    return target


def _write_kfd(topology: Path, profile: AmdProfile, layout: tuple[FakeDrmDevice, ...]) -> None:
    _write(topology / "generation_id", "1")
    nodes = topology / "nodes"
    for node_id, cpu in enumerate(profile.cpu_nodes):
        values = dict(cpu.overrides) | {
            "cpu_cores_count": cpu.cpu_cores_count, "cpu_core_id_base": cpu.cpu_core_id_base
        }  # fmt: skip
        _write_properties(nodes / str(node_id) / "properties", profile.model.kfd_cpu_properties, values)
        _write(nodes / str(node_id) / "gpu_id", "0")
    gpu_nodes = [d for d in layout if d.kfd_node is not None]
    simd_base = dict(profile.model.kfd_gpu_properties).get("simd_id_base", 0)
    for ordinal, device in enumerate(gpu_nodes):
        folder = nodes / str(device.kfd_node)
        domain, bus, dev = (int(part, 16) for part in device.gpu.bdf[:-2].split(":"))
        values = {
            "location_id": (bus << 8) | (dev << 3) | device.slot,
            "domain": domain,
            "drm_render_minor": device.render,
            "hive_id": device.gpu.hive_id,
            "unique_id": device.gpu.unique_id or 0,
            "simd_id_base": simd_base + ordinal * profile.model.kfd_simd_id_base_step,
        }
        _write_properties(folder / "properties", profile.model.kfd_gpu_properties, values)
        _write(folder / "gpu_id", str(_GPU_ID_BASE + ordinal))
        for index, bank in enumerate(profile.model.kfd_mem_banks):
            _write_properties(folder / "mem_banks" / str(index) / "properties", bank, {})


def _write_properties(path: Path, template: Props, values: dict[str, int]) -> None:
    _write(path, "".join(f"{key} {values.get(key, value)}\n" for key, value in template), newline=False)


def _write(path: Path, text: str, *, newline: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{text}\n" if newline else text, encoding="utf-8")


def _link(link: Path, target: Path) -> None:
    link.symlink_to(os.path.relpath(target, link.parent))
