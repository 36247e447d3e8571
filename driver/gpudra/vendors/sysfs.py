"""PCI placement facts read from sysfs, and the PCI bus-id form Kubernetes accepts.

Every function takes the sysfs root as a :class:`~pathlib.Path` (``/sys`` on a node, a ``tmp_path`` tree in
tests, a private temp dir for the mock backend) and answers ``None`` when the fact is unknown; nothing here
raises for a missing or odd file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Final

_NVML_BUS_ID = re.compile(r"^([0-9a-fA-F]{1,8}):([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-9a-fA-F])$")
_K8S_BUS_ID = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-9a-f]$")
_PCIE_ROOT = re.compile(r"^pci[0-9a-f]{4}:[0-9a-f]{2}$")
_MAX_DOMAIN: Final = 0xFFFF


def normalize_pci_bus_id(text: str) -> str | None:
    """NVML's ``00000000:1B:00.0`` (or the legacy ``0000:1B:00.0``) -> Kubernetes' ``0000:1b:00.0``.

    The domain keeps its value (``00000008:06:00.0`` -> ``0008:06:00.0``). ``None`` when the text is not a
    bus id or its domain does not fit the four hex digits Kubernetes requires.
    """
    match = _NVML_BUS_ID.match(text.strip())
    if match is None:
        return None
    domain, bus, device, function = match.groups()
    if int(domain, 16) > _MAX_DOMAIN:
        return None
    return f"{int(domain, 16):04x}:{bus.lower()}:{device.lower()}.{function.lower()}"


def is_k8s_pci_bus_id(text: str) -> bool:
    """True for the exact form ``resource.kubernetes.io/pciBusID`` accepts (``dddd:bb:dd.f``, lower case)."""
    return _K8S_BUS_ID.match(text) is not None


def pci_device_link(sysfs_root: Path, bus_id: str) -> Path:
    """``<root>/bus/pci/devices/<bus_id>``: on a real node a symlink into ``<root>/devices/pci…``."""
    return sysfs_root / "bus" / "pci" / "devices" / bus_id


def read_numa_node(sysfs_root: Path, bus_id: str) -> int | None:
    """The device's ``numa_node`` file; ``-1`` (no NUMA information), absent or unparsable -> ``None``."""
    try:
        text = (pci_device_link(sysfs_root, bus_id) / "numa_node").read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError):
        return None
    try:
        node = int(text.strip())
    except ValueError:
        return None
    return node if node >= 0 else None


def read_pcie_root(sysfs_root: Path, bus_id: str) -> str | None:
    """The PCIe root complex (``pci0000:16``) from the device link's target, ``None`` when not a symlink.

    ``<root>/bus/pci/devices/0000:1b:00.0 -> ../../../devices/pci0000:16/0000:16:02.0/0000:1b:00.0`` gives
    ``pci0000:16``: the first component under ``<root>/devices``. A target outside ``<root>/devices`` or one
    that does not end in the device itself is not trusted.
    """
    link = pci_device_link(sysfs_root, bus_id)
    try:
        target = os.readlink(link)
    except OSError:
        return None
    resolved = Path(os.path.normpath(link.parent / target))
    devices = Path(os.path.normpath(sysfs_root / "devices"))
    try:
        parts = resolved.relative_to(devices).parts
    except ValueError:
        return None
    if len(parts) < 2 or parts[-1] != bus_id or _PCIE_ROOT.match(parts[0]) is None:
        return None
    return parts[0]
