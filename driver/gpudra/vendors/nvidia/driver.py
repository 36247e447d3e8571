"""The NVIDIA vendor driver: NVML discovery, container edits for full GPUs and MIG devices.

NVML stays initialised for the plugin's lifetime, and the driver keeps the NVML handle of every device the
last successful discovery pass found (for code that acts on a device later: MIG instances, health events).
Discovery passes are serialised (the re-discovery loop and start-up may ask at once), so the handle map
always is the latest pass's; edits read only the host's files. Prepare changes nothing on the node for
static full GPUs and pre-made MIG devices; a MIG device published for dynamic MIG is created at prepare and
destroyed at unprepare (:mod:`~gpudra.vendors.nvidia.mig_dynamic`). Sharing (time-slicing, MPS, fractional
shares enforced with MPS) sets whole-GPU settings and runs a claim's MPS daemon
(:mod:`~gpudra.vendors.nvidia.sharing`), after the MIG device it may serve exists. Device health is watched
through NVML events and polls (:mod:`~gpudra.vendors.nvidia.health`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any, Final

from gpudra.model.applied import NOTHING_APPLIED, AppliedState, Change
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
from gpudra.vendors.nvidia.sharing_options import SharingOptions
from gpudra.vendors.nvidia.usage import DeviceUsage, NvmlUsage

if TYPE_CHECKING:  # imported at the first claim (or start-up's reconcile), after the first publish
    from gpudra.vendors.nvidia.sharing import GpuSharing

_NO_HANDLES: Mapping[str, Any] = MappingProxyType({})
_MIG_KINDS: Final = frozenset({MIG_INSTANCE, MIG_MODE})


class NvidiaDriver:
    """A :class:`~gpudra.vendors.base.VendorDriver` over a pynvml module (the real one or the fake).

    The constructor runs ``nvmlInit`` and raises :class:`DiscoveryError` when NVML cannot be initialised
    (library missing, driver not loaded); :meth:`close` shuts it down. Safe to use from several threads.
    Health watching (:meth:`watch_health`) ignores the Xids in ``ignored_xids`` (the whole list; None:
    NVIDIA's defaults, :data:`~gpudra.vendors.nvidia.health_xid.DEFAULT_IGNORED_XIDS`) and checks every
    GPU's presence and ECC counter every ``health_poll_s`` seconds; ValueError for a negative Xid or period.
    ``sharing``: how time-slices are set and where MPS daemons run (default: nvidia-smi under the driver
    root, and no MPS).
    """

    def __init__(
        self, nvml: ModuleType | object, sysfs_root: Path = Path("/sys"), roots: HostRoots | None = None,
        *, ignored_xids: Iterable[int] | None = None, health_poll_s: float = DEFAULT_POLL_S,
        sharing: SharingOptions | None = None,
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
        self._sharing_options = sharing or SharingOptions()
        self._sharing_made: GpuSharing | None = None
        self._sharing_lock = threading.Lock()
        self._usage = NvmlUsage(self._nvml, self.handle)  # energy, power, utilisation, memory (usage.py)

    @property
    def name(self) -> str:
        return "nvml"

    @property
    def _sharing(self) -> GpuSharing:
        """Time-slices, compute modes and MPS daemons (:mod:`~gpudra.vendors.nvidia.sharing`), made at first
        use: the first ResourceSlice does not wait for those modules."""
        with self._sharing_lock:
            if self._sharing_made is None:
                from gpudra.vendors.nvidia.sharing import gpu_sharing

                options = self._sharing_options
                self._sharing_made = gpu_sharing(self._nvml, self.handle, self._roots.driver, options)
            return self._sharing_made

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
        from gpudra.vendors.nvidia.sharing import mps_edits

        dev = created_device(device.device, device.name, applied.changes)
        edits = nvidia_device_edits(dev, self._roots)
        mps = mps_edits(device.name, applied)
        return edits if mps is None else DeviceEdits(edits.edits.merge(mps), edits.extra_cdi_ids)

    def intend(self, claim: ClaimIdentity, devices: Sequence[ClaimDevice]) -> AppliedState:
        mig = tuple(c for c in (intended_change(d) for d in devices) if c is not None)
        changes = mig + self._sharing.intend(claim, devices)
        return AppliedState(changes) if changes else NOTHING_APPLIED

    def settle(self, intended: AppliedState, others: Iterable[AppliedState]) -> AppliedState:
        if all(c.kind in _MIG_KINDS for c in intended.changes):
            return intended
        settled = self._sharing.settle(intended.changes, others)
        return intended if settled == intended.changes else AppliedState(settled, intended.created_devices)

    def apply(
        self, claim: ClaimIdentity, devices: Sequence[ClaimDevice], intended: AppliedState
    ) -> AppliedState:
        if intended.empty and not any(d.device.mig_managed for d in devices):
            return intended
        mig, sharing = _split(intended.changes)
        done = self._mig.apply(devices, mig)
        try:
            shared = self._sharing.apply(devices, sharing, done) if sharing else []
        except ApplyError:
            self._mig.undo(done, quiet=True)
            raise
        created = tuple(c.text("uuid") for c in done if c.kind == MIG_INSTANCE)
        changes = tuple(done) + tuple(shared)
        return AppliedState(changes, created) if changes else NOTHING_APPLIED

    def undo(self, applied: AppliedState, others: Iterable[AppliedState] = ()) -> None:
        mig, sharing = _split(applied.changes)
        if sharing:
            from gpudra.vendors.nvidia.sharing import KINDS

            unknown = sorted({c.kind for c in sharing} - set(KINDS))
            if unknown:
                raise ApplyError(f"the NVIDIA driver does not know the recorded change(s) {unknown}")
        failures = self._sharing.undo(sharing, others) if sharing else []
        if mig:  # after the daemon that may serve a MIG device is gone
            try:
                self._mig.undo(mig)
            except ApplyError as e:
                failures.append(str(e))
        if failures:
            raise ApplyError("; ".join(failures))

    def reconcile(self, held: Sequence[AppliedState], pending: Sequence[AppliedState]) -> None:
        """At start: the MPS daemons of prepared claims run, and none else (see
        :meth:`~gpudra.vendors.nvidia.sharing.GpuSharing.reconcile`)."""
        if self._sharing_options.mps.root is not None:
            self._sharing.reconcile(held, pending)

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


def _split(changes: Sequence[Change]) -> tuple[tuple[Change, ...], tuple[Change, ...]]:
    """The MIG changes, and the others (sharing's)."""
    mig = tuple(c for c in changes if c.kind in _MIG_KINDS)
    return mig, tuple(c for c in changes if c.kind not in _MIG_KINDS)
