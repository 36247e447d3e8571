"""The AMD vendor driver: sysfs/KFD discovery (amdsmi where it loads), container edits for GPUs and
partitions. Prepare changes nothing on the node: :class:`StaticDevices`."""

from __future__ import annotations

import threading
from pathlib import Path

from gpudra.model.applied import AppliedState
from gpudra.model.inventory import Inventory
from gpudra.vendors.amd.discovery import AmdDiscovery
from gpudra.vendors.base import ClaimDevice, ClaimIdentity, DeviceEdits, HostRoots, StaticDevices


class AmdDriver(StaticDevices):
    """A :class:`~gpudra.vendors.base.VendorDriver` over sysfs and, optionally, an amdsmi module."""

    def __init__(
        self, sysfs_root: Path = Path("/sys"), amdsmi: object | None = None, roots: HostRoots | None = None
    ):
        self._discovery = AmdDiscovery(sysfs_root, amdsmi)
        self._roots = roots or HostRoots()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return "amd"

    @property
    def uses_amdsmi(self) -> bool:
        return self._discovery.uses_amdsmi

    def discover(self) -> Inventory:
        with self._lock:
            return self._discovery.discover()

    def edits(self, claim: ClaimIdentity, device: ClaimDevice, applied: AppliedState) -> DeviceEdits:
        from gpudra.vendors.amd.edits import amd_device_edits  # at the first prepare, not at start-up

        return amd_device_edits(device.device, self._roots)

    def close(self) -> None:
        with self._lock:
            self._discovery.close()
