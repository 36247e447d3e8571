"""The NVIDIA vendor driver: NVML discovery, container edits for full GPUs and MIG devices.

NVML stays initialised for the plugin's lifetime, and the driver keeps the NVML handle of every device the
last successful discovery pass found (for code that acts on a device later: MIG instances, health events).
Discovery passes are serialised (the re-discovery loop and start-up may ask at once), so the handle map
always is the latest pass's; edits read only the host's files. Prepare changes nothing on the node for
static full GPUs and pre-made MIG devices; a MIG device published for dynamic MIG is created at prepare and
destroyed at unprepare (:mod:`~gpudra.vendors.nvidia.mig_dynamic`). Device health is watched through NVML
events and polls (:mod:`~gpudra.vendors.nvidia.health`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any

from gpudra.model.applied import NOTHING_APPLIED, AppliedState
from gpudra.model.health import Observation
from gpudra.model.inventory import Inventory
from gpudra.vendors.base import ApplyError, ClaimDevice, ClaimIdentity, DeviceEdits, DiscoveryError, HostRoots
from gpudra.vendors.nvidia.calls import Nvml
from gpudra.vendors.nvidia.discovery import NvidiaDiscovery
from gpudra.vendors.nvidia.health import HealthWatchers
from gpudra.vendors.nvidia.health_xid import DEFAULT_POLL_S, ignore_list
from gpudra.vendors.nvidia.mig_dynamic import (
    MIG_INSTANCE,
    MIG_MODE,
    MigPartitioner,
    created_device,
    intended_change,
)
from gpudra.vendors.nvidia.usage import DeviceUsage, NvmlUsage

_NO_HANDLES: Mapping[str, Any] = MappingProxyType({})


class NvidiaDriver:
    """A :class:`~gpudra.vendors.base.VendorDriver` over a pynvml module (the real one or the fake).

    The constructor runs ``nvmlInit`` and raises :class:`DiscoveryError` when NVML cannot be initialised
    (library missing, driver not loaded); :meth:`close` shuts it down. Safe to use from several threads.
    Health watching (:meth:`watch_health`) ignores the Xids in ``ignored_xids`` (the whole list; None:
    NVIDIA's defaults, :data:`~gpudra.vendors.nvidia.health_xid.DEFAULT_IGNORED_XIDS`) and checks every
    GPU's presence and ECC counter every ``health_poll_s`` seconds; ValueError for a negative Xid or period.
    """

    def __init__(
        self, nvml: ModuleType | object, sysfs_root: Path = Path("/sys"), roots: HostRoots | None = None,
        *, ignored_xids: Iterable[int] | None = None, health_poll_s: float = DEFAULT_POLL_S,
    ):  # fmt: skip
        self._nvml = Nvml(nvml)
        self._health = HealthWatchers(  # first: it checks its parameters before NVML is initialised
            self._nvml, lambda: self._handles, ignored_xids=ignore_list(ignored_xids), poll_s=health_poll_s
        )
        self._nvml.init()
        self._discovery = NvidiaDiscovery(self._nvml, sysfs_root)
        self._roots = roots or HostRoots()
        self._lock = threading.Lock()  # one discovery pass at a time; close waits for it
        self._open = True
        self._handles = _NO_HANDLES  # replaced whole, never changed in place: read without the lock
        self._mig = MigPartitioner(self._nvml, self.handle)
        self._usage = NvmlUsage(self._nvml, self.handle)  # energy, power, utilisation, memory (usage.py)

    @property
    def name(self) -> str:
        return "nvml"

    def device_count(self) -> int:
        """Number of GPUs NVML sees (includes GPUs that discovery would skip)."""
        with self._lock:
            self._check_open()
            return self._discovery.device_count()

    def discover(self) -> Inventory:
        """One full discovery pass; on success its devices' handles replace the previous pass's."""
        with self._lock:
            self._check_open()
            found = self._discovery.discover()
            self._handles = found.handles
            return found.inventory

    def handle(self, uuid: str) -> Any | None:
        """The NVML handle of the GPU or MIG device ``uuid`` as the last successful discovery found it;
        ``None`` when that pass did not publish it (or the driver is closed)."""
        return self._handles.get(uuid)

    @property
    def handles(self) -> Mapping[str, Any]:
        """UUID -> NVML handle of every device the last successful discovery pass found (read-only)."""
        return self._handles

    def watch_health(self, report: Callable[[Observation], None], stop: threading.Event) -> None:
        """:class:`~gpudra.vendors.base.HealthWatcher`: NVML events and polls over the devices of the latest
        discovery until ``stop`` is set or the driver closes (:mod:`~gpudra.vendors.nvidia.health`)."""
        self._health.watch(report, stop)

    def read_usage(self, uuids: Iterable[str]) -> Mapping[str, DeviceUsage]:
        """:class:`~gpudra.vendors.base.UsageReader` over NVML (:mod:`~gpudra.vendors.nvidia.usage`)."""
        return self._usage.read(uuids) if self._open else {}

    def edits(self, claim: ClaimIdentity, device: ClaimDevice, applied: AppliedState) -> DeviceEdits:
        # Imported at the first prepare, not at start-up: the CDI model and the host readers are not
        # needed to publish, and the first slice goes out sooner without them (measured ~8 ms).
        from gpudra.vendors.nvidia.edits import nvidia_device_edits

        return nvidia_device_edits(created_device(device.device, device.name, applied.changes), self._roots)

    def intend(self, claim: ClaimIdentity, devices: Sequence[ClaimDevice]) -> AppliedState:
        changes = tuple(c for c in (intended_change(d) for d in devices) if c is not None)
        return AppliedState(changes) if changes else NOTHING_APPLIED

    def apply(
        self, claim: ClaimIdentity, devices: Sequence[ClaimDevice], intended: AppliedState
    ) -> AppliedState:
        if intended.empty and not any(d.device.mig_managed for d in devices):
            return intended
        done = self._mig.apply(devices, intended.changes)
        created = tuple(c.text("uuid") for c in done if c.kind == MIG_INSTANCE)
        return AppliedState(tuple(done), created) if done else NOTHING_APPLIED

    def undo(self, applied: AppliedState) -> None:
        unknown = sorted({c.kind for c in applied.changes} - {MIG_INSTANCE, MIG_MODE})
        if unknown:
            raise ApplyError(f"the NVIDIA driver does not know the recorded change(s) {unknown}")
        if applied.changes:
            self._mig.undo(applied.changes)

    def close(self) -> None:
        """``nvmlShutdown`` once (the handles go with it); later calls do nothing. The health watchers are
        told to end but not waited for: one may sit in an event wait of up to 0.5 s, longer than the plugin's
        SIGTERM budget (25 ms), and what it reports afterwards goes nowhere (the health store has stopped
        listening; the process is exiting)."""
        self._health.halt(timeout=0)
        with self._lock:
            if self._open:
                self._open = False
                self._handles = _NO_HANDLES
                self._nvml.shutdown()

    def _check_open(self) -> None:
        if not self._open:
            raise DiscoveryError("the NVML driver is closed")
