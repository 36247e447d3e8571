"""AMD discovery: sysfs + KFD topology first (no ROCm user space needed), amdsmi for names and UUIDs.

Every device's identity is resolved from scratch and cross-checked; what does not resolve is skipped with a
warning, never filled in from a neighbour (the failure mode of ROCm/k8s-gpu-dra-driver #77/#79):

* GPU: PCI function bound to amdgpu -> its single ``renderD`` minor -> the one KFD node with that
  ``drm_render_minor`` -> that node's ``domain``/``location_id`` must be the function's own PCI address, and
  its ``device_id``/``unique_id`` the function's own.
* partition (compute mode DPX/TPX/QPX/CPX): partition 0 is the PCI function itself; partitions 1..N-1 are
  ``amdgpu_xcp`` platform devices -> render minor -> KFD node -> ``location_id`` names the parent's bus and
  the partition index (function digit) -> the parent must be a partitioned GPU found here, with the same
  ``unique_id``. Partitions a GPU should have but that do not resolve are named in a warning.
* memory comes only from KFD ``mem_banks`` with a frame-buffer heap type (whole GPUs: amdsmi when KFD has
  none). A partition's bytes are its memory pool's; ``PartitionInfo.memory_shared_with`` says how many compute
  partitions draw from that pool (NPS1: all of them), so the number is never mistaken for exclusive memory.

Identity: amdsmi's UUID when amdsmi loaded and its handle for the bus id agrees with sysfs (asic serial =
``unique_id``, same device id), else ``AMD-<unique_id hex>``; partitions are ``<parent uuid>-p<index>``
(amdsmi gives every partition of a GPU the same UUID).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gpudra.model.inventory import Device, DeviceKind, Inventory, PartitionInfo, PciPlacement, Semver, Vendor
from gpudra.vendors import sysfs
from gpudra.vendors.amd import sysfs as amd_sysfs
from gpudra.vendors.amd.smi import AmdSmi, SmiDevice, SmiSnapshot
from gpudra.vendors.amd.sysfs import (
    AMD_VENDOR_ID,
    COMPUTE_MODES,
    MARKET_NAMES,
    MEMORY_POOLS,
    PARTITIONS_PER_MODE,
    XCC_COUNT,
    KfdNode,
    PciFunction,
    XcpDevice,
    memory_pool,
    partition_bus_id,
    xgmi_fabric_domain,
)
from gpudra.vendors.base import DiscoveryError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class _Gpu:
    """A resolved PCI function with everything a GPU or partition device of it needs."""

    function: PciFunction
    node: KfdNode
    uuid: str
    product_name: str
    device_id: int
    unique_id: int | None
    render: int
    compute_mode: str | None
    memory_mode: str | None
    placement: PciPlacement
    smi: SmiDevice | None

    @property
    def bus_id(self) -> str:
        return self.function.bus_id

    @property
    def partitioned(self) -> bool:
        return self.compute_mode is not None and self.compute_mode != "SPX"


@dataclass(frozen=True, slots=True)
class _Part:
    index: int
    node: KfdNode
    render: int


class AmdDiscovery:
    """One AMD discovery pass after another over sysfs/KFD and, optionally, an amdsmi module.

    ``amdsmi`` is the module from :func:`~gpudra.vendors.amd.smi.load_amdsmi` (or a ``FakeAmdSmi``), or
    ``None``; when ``amdsmi_init`` fails the backend says so once in the log and uses sysfs alone.
    """

    name = "amd"

    def __init__(self, sysfs_root: Path = Path("/sys"), amdsmi: object | None = None) -> None:
        self._root = sysfs_root
        self._smi = AmdSmi.open(amdsmi) if amdsmi is not None else None
        self._open = True

    @property
    def uses_amdsmi(self) -> bool:
        return self._smi is not None

    def discover(self) -> Inventory:
        """One full pass; skipped devices and unknown values are reported in ``Inventory.warnings``."""
        if not self._open:
            raise DiscoveryError("the AMD backend is closed")
        functions = amd_sysfs.amdgpu_functions(self._root)
        nodes = amd_sysfs.kfd_nodes(self._root)
        if nodes is None and functions:
            raise DiscoveryError(
                f"{len(functions)} PCI function(s) are bound to amdgpu but the KFD topology "
                f"({self._root}/class/kfd/kfd/topology) is missing: is the amdgpu driver loaded with KFD?"
            )
        snapshot = self._smi.snapshot() if self._smi is not None else SmiSnapshot()
        found = _Pass(self._root, nodes or (), snapshot).run(functions)
        version = snapshot.driver_version or amd_sysfs.amdgpu_module_version(self._root)
        for line in found.warnings:
            log.warning("%s", line)
        return Inventory(
            devices=found.devices,
            driver_version=Semver.loose(version) if version else None,
            warnings=found.warnings,
        )

    def close(self) -> None:
        """Shut amdsmi down once; later calls do nothing."""
        if self._open:
            self._open = False
            if self._smi is not None:
                self._smi.close()


class _Pass:
    """One discovery pass: the KFD index, the amdsmi snapshot and the warnings collected on the way."""

    def __init__(self, root: Path, nodes: tuple[KfdNode, ...], smi: SmiSnapshot) -> None:
        self.root = root
        self.smi = smi
        self.warnings: list[str] = list(smi.warnings)
        self.by_render: dict[int, list[KfdNode]] = {}
        for node in nodes:
            minor = node.prop("drm_render_minor")
            if node.is_gpu and minor is not None:
                self.by_render.setdefault(minor, []).append(node)
        self.used: set[int] = set()
        self.conflicted: set[str] = set()  # whole GPUs whose partitions show up in KFD

    def run(self, functions: tuple[str, ...]) -> Inventory:
        if not functions:
            self.warnings.append("no PCI function is bound to the amdgpu driver")
        gpus: list[_Gpu] = []
        for bus_id in functions:
            gpu = self.gpu(bus_id)
            if gpu is not None and any(g.uuid == gpu.uuid for g in gpus):
                self.warnings.append(
                    f"GPU {bus_id} skipped: identity {gpu.uuid} already taken by another GPU"
                )
            elif gpu is not None:
                gpus.append(gpu)
        parts = self.partitions(gpus, amd_sysfs.xcp_devices(self.root))
        devices: list[Device] = []
        for gpu in gpus:
            if gpu.bus_id in self.conflicted:
                self.warnings.append(f"GPU {gpu.bus_id} skipped: it has no partition mode, yet KFD nodes "
                                     "of its partitions exist")  # fmt: skip
            elif not gpu.partitioned:
                devices.append(self.gpu_device(gpu, len(devices)))
            else:
                found, count = parts[gpu.bus_id]
                devices += [
                    self.partition_device(gpu, part, len(devices) + i, count) for i, part in enumerate(found)
                ]
        self.note_unused_nodes()
        return Inventory(devices=tuple(devices), warnings=tuple(self.warnings))

    # -- GPUs -----------------------------------------------------------------------------------------
    def gpu(self, bus_id: str) -> _Gpu | None:
        fn = amd_sysfs.read_pci_function(self.root, bus_id)
        where = f"GPU {bus_id}"
        if fn.vendor_id != AMD_VENDOR_ID or fn.device_id is None:
            self.warnings.append(f"{where} skipped: vendor/device id unreadable or not AMD")
            return None
        if len(fn.drm.renders) != 1:
            self.warnings.append(
                f"{where} skipped: expected one render node under drm/, found {fn.drm.renders}"
            )
            return None
        render = fn.drm.renders[0]
        node = self.node_for(render, where)
        if node is None:
            return None
        unique = fn.unique_id if fn.unique_id is not None else (node.prop("unique_id") or None)
        problem = _identity_problem(node, bus_id, fn.device_id, unique)
        if problem is not None:
            self.warnings.append(f"{where} skipped: KFD node {node.node_id} (renderD{render}) {problem}")
            return None
        smi = self.smi_for(bus_id, fn.device_id, unique)
        uuid = _identity(smi, unique)
        if uuid is None:
            self.warnings.append(f"{where} skipped: no identity (no amdsmi UUID, no unique_id)")
            return None
        modes = self.modes(fn, smi, where)
        if modes is None:
            return None
        self.used.add(node.node_id)
        return _Gpu(
            function=fn, node=node, uuid=uuid, product_name=_product_name(fn, smi), device_id=fn.device_id,
            unique_id=unique, render=render, compute_mode=modes[0], memory_mode=modes[1], smi=smi,
            placement=PciPlacement(
                bus_id=bus_id,
                pcie_root=sysfs.read_pcie_root(self.root, bus_id),
                numa_node=sysfs.read_numa_node(self.root, bus_id),
            ),
        )  # fmt: skip

    def node_for(self, render: int, where: str) -> KfdNode | None:
        nodes = self.by_render.get(render, [])
        if len(nodes) != 1:
            ids = [n.node_id for n in nodes]
            self.warnings.append(
                f"{where} skipped: {len(nodes)} KFD GPU nodes have drm_render_minor {render} {ids}"
            )
            return None
        return nodes[0]

    def smi_for(self, bus_id: str, device_id: int, unique: int | None) -> SmiDevice | None:
        smi = self.smi.devices.get(bus_id)
        if smi is None:
            return None
        if (smi.asic_serial is not None and unique is not None and smi.asic_serial != unique) or (
            smi.device_id is not None and smi.device_id != device_id
        ):
            self.warnings.append(
                f"GPU {bus_id}: amdsmi's handle disagrees with sysfs (asic serial/device id); amdsmi not used"
            )
            return None
        return smi

    def modes(
        self, fn: PciFunction, smi: SmiDevice | None, where: str
    ) -> tuple[str | None, str | None] | None:
        compute = (fn.compute_partition or (smi.compute_partition if smi else None) or "").upper() or None
        memory = (fn.memory_partition or (smi.memory_partition if smi else None) or "").upper() or None
        if compute is not None and compute not in COMPUTE_MODES:
            self.warnings.append(f"{where} skipped: unknown compute partition mode {compute!r}")
            return None
        if memory is not None and memory not in MEMORY_POOLS:
            self.warnings.append(f"{where} skipped: unknown memory partition mode {memory!r}")
            return None
        if compute not in (None, "SPX") and memory is None:
            self.warnings.append(
                f"{where} skipped: in {compute} mode but its memory partition mode is unreadable"
            )
            return None
        return compute, memory

    def gpu_device(self, gpu: _Gpu, index: int) -> Device:
        memory = gpu.node.vram_bytes()
        if memory is None and gpu.smi is not None:
            memory = gpu.smi.vram_bytes
        info = None
        if gpu.compute_mode is not None and gpu.memory_mode is not None:
            pool, shared = memory_pool(0, 1, MEMORY_POOLS[gpu.memory_mode])
            info = PartitionInfo(gpu.compute_mode, gpu.memory_mode, 0, pool, shared)
        return _device(
            gpu, gpu.node, kind=DeviceKind.GPU, uuid=gpu.uuid, index=index, render=gpu.render, memory=memory,
            placement=gpu.placement, info=info,
        )  # fmt: skip

    # -- partitions -----------------------------------------------------------------------------------
    def partitions(self, gpus: list[_Gpu], xcps: tuple[XcpDevice, ...]) -> dict[str, tuple[list[_Part], int]]:
        """Per partitioned GPU: its resolved partitions (index order) and the partition count of its mode."""
        parted = {g.bus_id: g for g in gpus if g.partitioned}
        found = {bus: {0: _Part(0, g.node, g.render)} for bus, g in parted.items()}
        whole = {g.bus_id for g in gpus if not g.partitioned}
        unmatched = [note for xcp in xcps if (note := self.join_xcp(xcp, parted, found, whole))]
        out: dict[str, tuple[list[_Part], int]] = {}
        missing: list[str] = []
        for bus, gpu in parted.items():
            expected = _expected(gpu, parted.values(), found)
            for index in sorted(i for i in found[bus] if i >= expected):
                del found[bus][index]
                self.warnings.append(f"GPU {bus}: partition {index} is beyond the {expected} of "
                                     f"{gpu.compute_mode} mode; not published")  # fmt: skip
            missing += [
                f"GPU {bus} ({gpu.compute_mode}) partition {index} ({partition_bus_id(bus, index)}) not "
                "published: no amdgpu_xcp device resolves to it through a render node and KFD node "
                "(amdgpu out of DRM minors?)"
                for index in sorted(set(range(expected)) - set(found[bus]))
            ]
            out[bus] = ([found[bus][i] for i in sorted(found[bus])], expected)
        if missing:  # the xcp devices without a KFD node may be why
            self.warnings += missing + unmatched
        else:  # SPX GPUs' xcp devices never have KFD nodes: not worth a warning
            for note in unmatched:
                log.debug("%s", note)
        return out

    def join_xcp(
        self, xcp: XcpDevice, parted: dict[str, _Gpu], found: dict[str, dict[int, _Part]], whole: set[str]
    ) -> str | None:
        """Join one xcp device to its parent; a note when it has no render node or KFD node at all."""
        renders = xcp.drm.renders
        if len(renders) != 1 or not self.by_render.get(renders[0]):
            why = "no render node" if not renders else f"no KFD node has drm_render_minor in {list(renders)}"
            return f"{xcp.name} skipped: {why}"
        node = self.node_for(renders[0], xcp.name)
        location = node.bus_id if node is not None else None
        if node is None or location is None:
            return None
        parent = parted.get(partition_bus_id(location, 0))
        if partition_bus_id(location, 0) in whole:
            self.conflicted.add(partition_bus_id(location, 0))
        if parent is None:
            self.warnings.append(f"{xcp.name} skipped: its KFD node {node.node_id} is at {location}, "
                                 "not a partitioned GPU found here")  # fmt: skip
            return None
        index = int(location[-1], 16)
        problem = _identity_problem(node, location, parent.device_id, parent.unique_id)
        if problem is None and (index == 0 or index in found[parent.bus_id]):
            problem = f"partition {index} of {parent.bus_id} is already taken"
        if problem is not None:
            self.warnings.append(f"{xcp.name} skipped: KFD node {node.node_id} {problem}")
            return None
        self.used.add(node.node_id)
        found[parent.bus_id][index] = _Part(index, node, renders[0])
        return None

    def partition_device(self, gpu: _Gpu, part: _Part, index: int, count: int) -> Device:
        compute, memory = gpu.compute_mode or "", gpu.memory_mode or ""  # partitioned: both are known
        pool, shared = memory_pool(part.index, count, MEMORY_POOLS[memory])
        info = PartitionInfo(compute, memory, part.index, pool, shared)
        placement = PciPlacement(
            bus_id=partition_bus_id(gpu.bus_id, part.index),
            pcie_root=gpu.placement.pcie_root,
            numa_node=gpu.placement.numa_node,
        )
        uuid = f"{gpu.uuid}-p{part.index}"
        return _device(
            gpu, part.node, kind=DeviceKind.PARTITION, uuid=uuid, index=index, render=part.render,
            memory=part.node.vram_bytes(), placement=placement, info=info,
        )  # fmt: skip

    # -- bookkeeping ----------------------------------------------------------------------------------
    def note_unused_nodes(self) -> None:
        for minor, nodes in sorted(self.by_render.items()):
            for node in nodes:
                if node.node_id not in self.used:
                    self.warnings.append(f"KFD node {node.node_id} ({node.bus_id}, renderD{minor}) "
                                         "matches no device found here")  # fmt: skip


def _identity_problem(node: KfdNode, bus_id: str, device_id: int, unique: int | None) -> str | None:
    """Why ``node`` is not the device at ``bus_id`` (with that device id and unique_id), or ``None``."""
    if node.bus_id != bus_id:
        return f"reports PCI address {node.bus_id}, not {bus_id}"
    node_device = node.prop("device_id")
    if node_device is not None and node_device != device_id:
        return f"reports device id 0x{node_device:04x}, not 0x{device_id:04x}"
    node_unique = node.prop("unique_id") or None
    if node_unique is not None and unique is not None and node_unique != unique:
        return f"reports unique_id {node_unique:016x}, not {unique:016x}"
    return None


def _expected(gpu: _Gpu, gpus: Iterable[_Gpu], found: dict[str, dict[int, _Part]]) -> int:
    """How many partitions ``gpu``'s mode makes: the mode's fixed count, the XCC table for CPX, else (a CPX
    GPU of a model not in the table) the most any GPU of the same model and mode has here."""
    mode = gpu.compute_mode or "SPX"
    known = PARTITIONS_PER_MODE.get(mode) or (XCC_COUNT.get(gpu.device_id) if mode == "CPX" else None)
    if known is not None:
        return known
    siblings = [g for g in gpus if g.device_id == gpu.device_id and g.compute_mode == mode]
    return max(max(found[g.bus_id]) + 1 for g in siblings)


def _identity(smi: SmiDevice | None, unique: int | None) -> str | None:
    """amdsmi's UUID when its asic serial is known (a UUID built from serial 0 is not unique), else
    ``AMD-<unique_id>``; ``None`` when neither exists."""
    if smi is not None and smi.uuid and smi.asic_serial:
        return smi.uuid
    return f"AMD-{unique:016x}" if unique else None


def _product_name(fn: PciFunction, smi: SmiDevice | None) -> str:
    if smi is not None and smi.market_name:
        return smi.market_name
    device_id = fn.device_id or 0
    return MARKET_NAMES.get(device_id) or fn.product_name or f"AMD GPU 0x{device_id:04x}"


def _device(
    gpu: _Gpu, node: KfdNode, *, kind: DeviceKind, uuid: str, index: int, render: int, memory: int | None,
    placement: PciPlacement, info: PartitionInfo | None,
) -> Device:  # fmt: skip
    simd, per_cu = node.prop("simd_count"), node.prop("simd_per_cu")
    target = node.prop("gfx_target_version")
    return Device(
        kind=kind,
        vendor=Vendor.AMD,
        uuid=uuid,
        product_name=gpu.product_name,
        index=index,
        minor=render,
        memory_bytes=memory,
        pci=placement,
        parent_uuid=gpu.uuid if kind is DeviceKind.PARTITION else None,
        parent_pci_bus_id=gpu.bus_id if kind is DeviceKind.PARTITION else None,
        fabric_domain=xgmi_fabric_domain(node.prop("hive_id")),
        gfx_version=amd_sysfs.gfx_name(target) if target else None,
        pci_device_id=f"0x{gpu.device_id:04x}",
        compute_units=simd // per_cu if simd and per_cu and simd % per_cu == 0 else None,
        simd_units=simd or None,
        partition=info,
    )
