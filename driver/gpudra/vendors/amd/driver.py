"""The AMD vendor driver: sysfs/KFD discovery (amdsmi where it loads), container edits for GPUs and
partitions, health monitoring (:mod:`.health`). Prepare changes nothing on the node:
:class:`StaticDevices`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from gpudra.model.applied import AppliedState
from gpudra.model.health import Observation
from gpudra.model.inventory import Inventory
from gpudra.vendors.amd.discovery import AmdDiscovery
from gpudra.vendors.amd.health import POLL_SECONDS, RAS_POLL_SECONDS, AmdHealthMonitor
from gpudra.vendors.amd.usage import AmdUsage, DeviceUsage
from gpudra.vendors.base import ClaimDevice, ClaimIdentity, DeviceEdits, HostRoots, StaticDevices


class AmdDriver(StaticDevices):
    """A :class:`~gpudra.vendors.base.VendorDriver` and :class:`~gpudra.vendors.base.HealthWatcher` over
    sysfs and, optionally, an amdsmi module. ``health_poll_seconds``: how often :meth:`watch_health` looks at
    presence and amdsmi events; ``ras_poll_seconds``: how often it reads the RAS error counters."""

    def __init__(
        self,
        sysfs_root: Path = Path("/sys"),
        amdsmi: object | None = None,
        roots: HostRoots | None = None,
        *,
        health_poll_seconds: float = POLL_SECONDS,
        ras_poll_seconds: float = RAS_POLL_SECONDS,
    ):
        self._discovery = AmdDiscovery(sysfs_root, amdsmi)
        self._roots = roots or HostRoots()
        self._lock = threading.Lock()
        self._sysfs_root = sysfs_root
        self._latest: Inventory | None = None  # the latest discovery, for watch_health and read_usage
        self._usage = AmdUsage(sysfs_root, self._discovery._smi)  # energy, power, activity, VRAM (usage.py)
        self.health_poll_seconds = health_poll_seconds
        self.ras_poll_seconds = ras_poll_seconds

    @property
    def name(self) -> str:
        return "amd"

    @property
    def uses_amdsmi(self) -> bool:
        return self._discovery.uses_amdsmi

    def discover(self) -> Inventory:
        with self._lock:
            self._latest = self._discovery.discover()
            return self._latest

    def watch_health(self, report: Callable[[Observation], None], stop: threading.Event) -> None:
        """Watch the GPUs of the latest discovery until ``stop`` (see :mod:`gpudra.vendors.amd.health`): GPUs
        only, by their ``uuid``; a partition takes its parent's health in the health store (``parent_uuid``).
        Before the first discovery it waits for one. Never raises."""
        monitor = AmdHealthMonitor(
            self._sysfs_root, lambda: self._latest, self._lock, self._discovery._smi,
            poll_seconds=self.health_poll_seconds, ras_poll_seconds=self.ras_poll_seconds,
        )  # fmt: skip
        monitor.run(report, stop)

    def read_usage(self, uuids: Iterable[str]) -> Mapping[str, DeviceUsage]:
        """:class:`~gpudra.vendors.base.UsageReader` (:mod:`~gpudra.vendors.amd.usage`), of the devices of the
        latest discovery, under the lock that serialises amdsmi."""
        with self._lock:
            return self._usage.read(uuids, self._latest)

    def edits(self, claim: ClaimIdentity, device: ClaimDevice, applied: AppliedState) -> DeviceEdits:
        from gpudra.vendors.amd.edits import amd_device_edits  # at the first prepare, not at start-up

        return amd_device_edits(device.device, self._roots)

    def close(self) -> None:
        with self._lock:
            self._discovery.close()
