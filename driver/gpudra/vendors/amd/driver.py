"""The AMD vendor driver: sysfs/KFD discovery (amdsmi where it loads), container edits for GPUs and
partitions, health monitoring (:mod:`.health`). Prepare changes nothing on the node:
:class:`StaticDevices`.

Sharing: several claims may share an AMD GPU or partition by memory (a ``shareID`` and a consumed
``memory`` in each allocation, which the scheduler keeps within the device). ROCm has no per-process VRAM
limit, and its compute limit, CU masking, is chosen inside the process (per HIP stream, or the
``HSA_CU_MASK`` variable the runtime reads from the process's own environment), so the process can lift it:
nothing enforces a share on the node and nothing is recorded. A share larger than the device is refused, and
so is a sharing setting only NVIDIA has (MPS, a time-slice interval): :mod:`gpudra.planning.sharing_plan`."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from gpudra.model.applied import NOTHING_APPLIED, AppliedState
from gpudra.model.health import Observation
from gpudra.model.inventory import Inventory
from gpudra.planning.sharing_plan import SharingError, plan_sharing
from gpudra.vendors.amd.discovery import AmdDiscovery
from gpudra.vendors.amd.health import POLL_SECONDS, RAS_POLL_SECONDS, AmdHealthMonitor
from gpudra.vendors.amd.usage import AmdUsage, DeviceUsage
from gpudra.vendors.base import ApplyError, ClaimDevice, ClaimIdentity, DeviceEdits, HostRoots, StaticDevices


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

    def intend(self, claim: ClaimIdentity, devices: Sequence[ClaimDevice]) -> AppliedState:
        """Nothing to change; the claim's sharing is checked (see the module)."""
        try:
            plan_sharing(devices)
        except SharingError as e:
            raise ApplyError(str(e)) from e
        return NOTHING_APPLIED

    def edits(self, claim: ClaimIdentity, device: ClaimDevice, applied: AppliedState) -> DeviceEdits:
        from gpudra.vendors.amd.edits import amd_device_edits  # at the first prepare, not at start-up

        return amd_device_edits(device.device, self._roots)

    def close(self) -> None:
        with self._lock:
            self._discovery.close()
