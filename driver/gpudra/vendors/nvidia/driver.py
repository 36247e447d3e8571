"""The NVIDIA vendor driver: NVML discovery, container edits for full GPUs and MIG devices.

NVML stays initialised for the plugin's lifetime; discovery passes are serialised (the re-discovery loop and
start-up may ask at once), edits read only the host's files. Prepare changes nothing on the node for the
devices published today (static full GPUs and pre-made MIG devices): :class:`StaticDevices`.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import ModuleType

from gpudra.model.applied import AppliedState
from gpudra.model.inventory import Inventory
from gpudra.vendors.base import ClaimDevice, ClaimIdentity, DeviceEdits, HostRoots, StaticDevices
from gpudra.vendors.nvidia.discovery import NvmlBackend
from gpudra.vendors.nvidia.edits import nvidia_device_edits


class NvidiaDriver(StaticDevices):
    """A :class:`~gpudra.vendors.base.VendorDriver` over a pynvml module (the real one or the fake)."""

    def __init__(
        self, nvml: ModuleType | object, sysfs_root: Path = Path("/sys"), roots: HostRoots | None = None
    ):
        self._discovery = NvmlBackend(nvml, sysfs_root=sysfs_root)
        self._roots = roots or HostRoots()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "nvml"

    def device_count(self) -> int:
        with self._lock:
            return self._discovery.device_count()

    def discover(self) -> Inventory:
        with self._lock:
            return self._discovery.discover()

    def edits(self, claim: ClaimIdentity, device: ClaimDevice, applied: AppliedState) -> DeviceEdits:
        return nvidia_device_edits(device.device, self._roots)

    def close(self) -> None:
        with self._lock:
            self._discovery.close()
