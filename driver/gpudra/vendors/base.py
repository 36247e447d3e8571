"""The seam between gpudra and GPU hardware: what every vendor driver must answer, one protocol per concern.

A vendor driver is one object per process that opens its library once, keeps it (and its device handles)
open for the plugin's lifetime, and may be called from several threads at once (the re-discovery loop, the
kubelet's prepare and unprepare calls). The layers above see only these protocols and the vendor-neutral
model (:mod:`gpudra.model.inventory`, :mod:`gpudra.model.applied`, :mod:`gpudra.model.cdi`):

- :class:`Discoverer` — what the node has, again and again (hardware changes while the plugin runs);
- :class:`DeviceEditor` — what a container needs to use one prepared device (CDI container edits);
- :class:`ClaimApplier` — what a claim changes on the node at prepare (nothing for a static device; a MIG
  instance, a GPU setting shared with other claims, an MPS daemon) and how to undo exactly that, after a
  crash too;
- :class:`UsageReader` — what each device is doing now (energy, power, utilisation, memory in use), for the
  usage metrics.

:class:`VendorDriver` is all of them plus a name and ``close``. The edit and error types every vendor returns
live here as well, so vendor folders never import the layers that call them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from gpudra.model.applied import NOTHING_APPLIED, AppliedState
from gpudra.model.health import Observation
from gpudra.model.inventory import Inventory
from gpudra.model.usage import DeviceUsage
from gpudra.planning.plan import DeviceToPrepare

if TYPE_CHECKING:  # the CDI model is needed at the first prepare, not to discover and publish
    from gpudra.model.cdi import ContainerEdits


class DiscoveryError(Exception):
    """The driver cannot discover at all (library missing, no GPUs, init failed). Message is for humans."""


class EditsError(Exception):
    """The node cannot give a container this device (a host device node is missing, wrong vendor, ...)."""


class ApplyError(Exception):
    """A claim's changes could not be applied or undone. The message goes to that claim only."""


class ClaimIdentity(Protocol):
    """Anything naming a claim (``planning.plan.ClaimRef``, ``state.checkpoint.ClaimRecord``)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def uid(self) -> str: ...


@dataclass(frozen=True, slots=True)
class HostRoots:
    """Where the host's files are as this process sees them (configurable so tests build fake trees)."""

    dev: Path = Path("/dev")
    proc: Path = Path("/proc")
    #: NVIDIA driver root as this process sees it: "/" for a host-installed driver, "/run/nvidia/driver"
    #: with the GPU operator, or where a DaemonSet mounts the host's root (e.g. "/driver-root").
    driver: Path = Path("/")
    #: The same driver root as the container runtime on the host sees it (what CDI mounts must name); None
    #: when it is the same path as ``driver``.
    host_driver: Path | None = None
    #: Directories holding other vendors' CDI specs (the NVIDIA Container Toolkit's ``nvidia.com/gpu``).
    cdi_dirs: tuple[Path, ...] = (Path("/etc/cdi"), Path("/var/run/cdi"))
    #: AMD: give the container the host render node's group via CDI ``additionalGids`` (cdiVersion 0.7.0).
    additional_gids: bool = True


@dataclass(frozen=True, slots=True)
class WatchOptions:
    """How health is watched (``--ignored-xids``, ``--health-poll-interval``): NVIDIA Xids applications
    cause (None: NVIDIA's defaults), and seconds between polls of presence and error counters."""

    ignored_xids: tuple[int, ...] | None = None
    poll_s: float = 5.0


@dataclass(frozen=True, slots=True)
class DeviceEdits:
    """A device's container edits, plus CDI devices of other specs the runtime must apply too."""

    edits: ContainerEdits
    extra_cdi_ids: tuple[str, ...] = ()


#: One device of a claim as prepare hands it to the vendor driver: its published ``name``, the ``request`` it
#: was allocated for (``gpu``, or ``gpu/h100`` for a prioritized list), the ``device``, the decoded opaque
#: ``configs`` that apply to it, and its sharing (``admin_access``, ``share_id``).
ClaimDevice = DeviceToPrepare


class Discoverer(Protocol):
    def discover(self) -> Inventory:
        """One full discovery pass. Per-device failures are skipped and named in ``Inventory.warnings``;
        :class:`DiscoveryError` only when nothing can be discovered at all."""
        ...


class DeviceEditor(Protocol):
    def edits(self, claim: ClaimIdentity, device: ClaimDevice, applied: AppliedState) -> DeviceEdits:
        """The CDI edits that give a container ``device`` of ``claim``, given what prepare applied for the
        claim; raises :class:`EditsError` when the node cannot give it."""
        ...


class ClaimApplier(Protocol):
    """Prepare's changes on the node. Several claims may hold one GPU (shares, ``adminAccess``), so a change
    of a whole GPU (a time-slice interval, a compute mode) is shared: :meth:`settle` and :meth:`undo` see the
    applied states of the other claims recorded in the checkpoint (applied, or intended while they prepare),
    read under the checkpoint's lock, so a setting is checked against them and put back by its last user."""

    def intend(self, claim: ClaimIdentity, devices: Sequence[ClaimDevice]) -> AppliedState:
        """What :meth:`apply` will change, decided without changing anything (recorded before it runs, so
        a crash in the middle can be rolled back). Raises :class:`ApplyError` for a claim it cannot serve."""
        ...

    def settle(self, intended: AppliedState, others: Iterable[AppliedState]) -> AppliedState:
        """``intended`` made consistent with what the other claims recorded now hold (a shared setting's
        original value taken over from them), under the checkpoint lock before it is recorded; raises
        :class:`ApplyError` when it contradicts them (another time-slice interval on the same GPU). Returns
        ``intended`` itself when nothing of it is shared."""
        ...

    def apply(
        self, claim: ClaimIdentity, devices: Sequence[ClaimDevice], intended: AppliedState
    ) -> AppliedState:
        """Make the changes and return what was really done (ids the hardware assigned included). On
        failure, raise :class:`ApplyError` having undone whatever part only this claim holds; the caller
        then undoes ``intended`` with the other claims' states (:meth:`undo`), which puts back shared
        settings only where no other claim holds them."""
        ...

    def undo(self, applied: AppliedState, others: Iterable[AppliedState] = ()) -> None:
        """Reverse ``applied`` (as recorded, or as intended when apply may have been cut short): idempotent,
        a change already gone is success. A shared setting another claim of ``others`` still holds stays.
        Raises :class:`ApplyError` for what could not be undone."""
        ...

    def reconcile(self, held: Sequence[AppliedState], pending: Sequence[AppliedState]) -> None:
        """At start, with every claim's recorded state (``held``: completed prepares; ``pending``: prepares
        that have not completed, which roll-back or their own call will settle): bring back what a completed
        claim holds and is gone (an MPS daemon that died with its node's restart of it), and end what no
        claim holds (a daemon whose claim was lost). Never raises: what it cannot do is logged."""
        ...


class HealthWatcher(Protocol):
    def watch_health(self, report: Callable[[Observation], None], stop: threading.Event) -> None:
        """Monitor the devices of the latest discovery until ``stop`` is set, calling ``report`` for each
        condition seen (and for each cleared on evidence); runs in a thread of its own and never raises
        (a failure to monitor is reported as an ``UNMONITORED`` observation per device). Devices it cannot
        watch at all are reported ``UNMONITORED`` once, so that their health is Unknown, never Healthy."""
        ...


class UsageReader(Protocol):
    def read_usage(self, uuids: Iterable[str]) -> Mapping[str, DeviceUsage]:
        """What each device of ``uuids`` (GPUs, MIG devices, partitions, by the UUID discovery gave them,
        and the parent GPUs of MIG devices and partitions) reports now: energy, power, utilisation and memory
        used, each ``None`` where the library does not report it for that device. A device that cannot be
        read at all (lost, unknown) is left out. Never raises; called from the usage sampler's thread only,
        never on the prepare path (:mod:`gpudra.runtime.usage`)."""
        ...


class VendorDriver(Discoverer, DeviceEditor, ClaimApplier, HealthWatcher, UsageReader, Protocol):
    @property
    def name(self) -> str:
        """``nvml``, ``amd`` or ``mock`` (logs and metrics)."""
        ...

    def close(self) -> None:
        """Release the vendor library; safe to call twice."""
        ...


class StaticDevices:
    """:class:`ClaimApplier` for devices that exist as they are: prepare changes nothing on the node."""

    def intend(self, claim: ClaimIdentity, devices: Sequence[ClaimDevice]) -> AppliedState:
        return NOTHING_APPLIED

    def settle(self, intended: AppliedState, others: Iterable[AppliedState]) -> AppliedState:
        return intended

    def apply(
        self, claim: ClaimIdentity, devices: Sequence[ClaimDevice], intended: AppliedState
    ) -> AppliedState:
        return intended

    def undo(self, applied: AppliedState, others: Iterable[AppliedState] = ()) -> None:
        if not applied.empty:
            raise ApplyError(f"this driver changes nothing at prepare, yet a claim recorded {applied}")

    def reconcile(self, held: Sequence[AppliedState], pending: Sequence[AppliedState]) -> None:
        return None
