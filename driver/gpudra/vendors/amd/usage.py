"""Usage readings of AMD GPUs and partitions: amdsmi where it loaded, else amdgpu's sysfs files.

**amdsmi** (every call through :class:`~gpudra.vendors.amd.smi.AmdSmi`, the one translation of its errors:
no answer or a failure is ``None``, failures are counted into the next discovery's warnings):

* ``amdsmi_get_energy_count``: ``energy_accumulator`` (``power`` in wrappers before 6.4) times
  ``counter_resolution`` microjoules;
* ``amdsmi_get_power_info``: ``socket_power``, else ``current_socket_power`` (MI300), else
  ``average_socket_power``, in watts;
* ``amdsmi_get_gpu_activity``: ``gfx_activity``, percent busy;
* ``amdsmi_get_gpu_vram_usage``: ``vram_used`` and ``vram_total``, MiB.

A whole GPU gets all four from its processor handle. A partitioned GPU is read twice: energy and power on its
primary processor (partition 0, the PCI function), which are socket-wide, for the GPU (the partitions'
``parent_uuid``); activity and VRAM in use on each partition's own handle, for that partition, as amdsmi
answers them there. A partition never gets the GPU's energy or power.

**sysfs**, without amdsmi (``bus/pci/devices/<bdf>/``: ``hwmon/hwmon*/energy1_input`` microjoules, where
the ASIC has it; ``power1_average``, else ``power1_input``, microwatts; ``gpu_busy_percent``;
``mem_info_vram_used`` and ``_total`` bytes): amdgpu's files are per PCI function, so per GPU; a
partition's GPU gets them and the partition nothing. An unreadable or malformed file is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gpudra.model.inventory import DeviceKind, Inventory
from gpudra.model.usage import DeviceUsage
from gpudra.vendors.amd.smi import AmdSmi, quiet_stdout
from gpudra.vendors.amd.sysfs import partition_bus_id
from gpudra.vendors.sysfs import pci_device_link

__all__ = ["AmdUsage", "DeviceUsage"]

_MIB: Final = 1 << 20
_POWER_KEYS: Final = ("socket_power", "current_socket_power", "average_socket_power")


@dataclass(frozen=True, slots=True)
class _Target:
    """Where one device's readings come from: its GPU's PCI function, and its amdsmi processor's bus id."""

    function: str
    processor: str
    whole: bool  # a GPU's figures (energy, power; all four for an unpartitioned GPU or from sysfs)
    own: bool  # the processor's own activity and VRAM (an unpartitioned GPU, a partition)


class AmdUsage:
    """Reads usage over ``smi`` (None: sysfs under ``sysfs_root``); the caller serialises calls with the
    other amdsmi calls (the AMD driver's lock)."""

    def __init__(self, sysfs_root: Path, smi: AmdSmi | None) -> None:
        self._root = sysfs_root
        self._smi = smi

    def read(self, uuids: Iterable[str], inventory: Inventory | None) -> dict[str, DeviceUsage]:
        """The readings of the devices ``uuids`` of ``inventory`` that gave any; never raises."""
        targets = _targets(inventory, set(uuids))
        if self._smi is None:
            found = {u: _sysfs(self._root, t.function) for u, t in targets.items() if t.whole}
        else:
            with quiet_stdout():
                found = self._smi_read(self._smi, targets)
        return {uuid: usage for uuid, usage in found.items() if not usage.empty}

    @staticmethod
    def _smi_read(smi: AmdSmi, targets: dict[str, _Target]) -> dict[str, DeviceUsage]:
        processors = smi.processors()
        out: dict[str, DeviceUsage] = {}
        for uuid, target in targets.items():
            handle = processors.get(target.processor)
            if handle is None:
                continue
            whole, own = target.whole, target.own
            vram = smi.answer("amdsmi_get_gpu_vram_usage", handle) if own else None
            out[uuid] = DeviceUsage(
                energy_joules=_energy(smi.answer("amdsmi_get_energy_count", handle)) if whole else None,
                power_watts=_power(smi.answer("amdsmi_get_power_info", handle)) if whole else None,
                utilization=_percent(_get(smi.answer("amdsmi_get_gpu_activity", handle), "gfx_activity"))
                if own else None,
                memory_used_bytes=_mib(_get(vram, "vram_used")),
                memory_total_bytes=_mib(_get(vram, "vram_total")),
            )  # fmt: skip
        return out


def _targets(inventory: Inventory | None, wanted: set[str]) -> dict[str, _Target]:
    """What to read for each wanted device of the inventory, and for each wanted parent of partitions."""
    out: dict[str, _Target] = {}
    for device in inventory.devices if inventory is not None else ():
        if device.kind is DeviceKind.GPU and device.pci is not None and device.uuid in wanted:
            bus = device.pci.bus_id
            out[device.uuid] = _Target(bus, bus, whole=True, own=True)
        elif device.kind is DeviceKind.PARTITION and device.partition and device.parent_pci_bus_id:
            parent_bus = device.parent_pci_bus_id
            if device.uuid in wanted:
                processor = partition_bus_id(parent_bus, device.partition.index)
                out[device.uuid] = _Target(parent_bus, processor, whole=False, own=True)
            if device.parent_uuid in wanted:
                out[device.parent_uuid] = _Target(parent_bus, parent_bus, whole=True, own=False)
    return out


def _sysfs(root: Path, bus_id: str) -> DeviceUsage:
    base = pci_device_link(root, bus_id)
    hwmon = _hwmon(base)
    energy = _int_file(hwmon / "energy1_input") if hwmon is not None else None
    power = None
    if hwmon is not None:
        power = _int_file(hwmon / "power1_average")
        power = power if power is not None else _int_file(hwmon / "power1_input")
    busy = _int_file(base / "gpu_busy_percent")
    return DeviceUsage(
        energy_joules=None if energy is None else energy / 1e6,
        power_watts=None if power is None else power / 1e6,
        utilization=_percent(busy),
        memory_used_bytes=_int_file(base / "mem_info_vram_used"),
        memory_total_bytes=_int_file(base / "mem_info_vram_total"),
    )


def _hwmon(base: Path) -> Path | None:
    try:
        found = sorted(p for p in (base / "hwmon").iterdir() if p.name.startswith("hwmon"))
    except OSError:
        return None
    return found[0] if found else None


def _int_file(path: Path) -> int | None:
    try:
        value = int(path.read_text(encoding="ascii").strip())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if value >= 0 else None


def _get(answer: object, key: str) -> object:
    return answer.get(key) if isinstance(answer, dict) else None


def _number(value: object) -> float | None:
    """A finite, non-negative number amdsmi answered ("N/A" and the like are no answer)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if not math.isfinite(value) or value < 0:
        return None
    return float(value)


def _energy(answer: object) -> float | None:
    steps = _number(_get(answer, "energy_accumulator"))
    steps = steps if steps is not None else _number(_get(answer, "power"))
    resolution = _number(_get(answer, "counter_resolution"))
    return None if steps is None or not resolution else steps * resolution / 1e6


def _power(answer: object) -> float | None:
    return next((w for key in _POWER_KEYS if (w := _number(_get(answer, key))) is not None), None)


def _percent(value: object) -> float | None:
    number = _number(value)
    return None if number is None or number > 100 else number / 100


def _mib(value: object) -> int | None:
    number = _number(value)
    return None if number is None else int(number * _MIB)
