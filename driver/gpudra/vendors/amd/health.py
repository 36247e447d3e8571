"""AMD GPU health: presence and RAS error counters from sysfs, reset and thermal events from amdsmi.

:class:`AmdHealthMonitor` is what ``AmdDriver.watch_health`` runs. It watches **GPUs only**, each under the
``uuid`` discovery gave it: an AMD partition has no health of its own here - the health store gives a
partition its parent's (it maps parents to partitions by ``parent_uuid``), so a partition's events and
counters count for its GPU. Every ``poll_seconds``:

* **presence** - the PCI device directory (``bus/pci/devices/<bdf>``) and the amdgpu binding
  (``bus/pci/drivers/amdgpu/<bdf>``) are there. Gone: LOST (``true``, NoExecute); there again: LOST
  ``cleared``. A GPU that drops out of a discovery is checked once more: absent, it is reported LOST and
  watched until it is back. When the sysfs tree itself cannot be read (the mock swaps its tree whole) nothing
  is concluded.
* **RAS** (at most every ``ras_poll_seconds``; reading a counter makes the driver query the hardware) - the
  ``ue`` (uncorrectable) count of every ``bus/pci/devices/<bdf>/ras/<block>_err_count`` (amdgpu prints
  ``ue: N`` / ``ce: N``, newer kernels ``de: N`` too; "Query currently inaccessible" while the GPU resets).
  A block's ``ue`` above its last value: ECC (``uncorrectable``, NoExecute), once per rise. The first reading
  of a block is its baseline, and a count already non-zero then is reported once as ECC too (errors since the
  driver loaded: the GPU may already be bad). Corrected (``ce``) and deferred (``de``) errors are not
  conditions. A block unreadable this time keeps its baseline; a count that went down (driver reloaded)
  becomes the new baseline silently.
* **amdsmi events**, where amdsmi loaded (:class:`~gpudra.vendors.amd.smi.SmiEventWatch`, read without
  waiting: KFD queues them per subscriber). GPU_PRE_RESET / GPU_POST_RESET: RESET (``gpu-reset``,
  NoSchedule): the driver recovered the GPU and the work on it is lost already; new pods stay off for the
  quiet period, running ones are not evicted. THERMAL_THROTTLE: THERMAL (``throttle``, NoSchedule). Not
  watched: VMFAULT (an application's bad memory access) and RING_HANG (amdsmi before 7.0 gives it the value
  5, which mainline KFD uses for MIGRATE_START; amdsmi 7.0 removed it; a hung ring ends in a reset, watched).
  An event of a partition's processor counts for its GPU; one observation per GPU and condition per poll.

**Monitored** means RAS counter files were seen (since the GPU was last found present) or amdsmi events of
the GPU are read. At its first poll each GPU is reported ``UNMONITORED`` ``cleared`` when monitored, else
``UNMONITORED`` (``no-ras-no-events``: its health stays Unknown, never Healthy unchecked); later changes of
that are reported too (amdsmi events failing, say). A poll that fails unexpectedly reports every GPU
``UNMONITORED`` (``monitor-error``) until a poll succeeds again. Nothing raises out of :meth:`run`.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gpudra.model.health import ConditionKind, Effect, Observation
from gpudra.model.inventory import DeviceKind, Inventory
from gpudra.vendors.amd.smi import AmdSmi
from gpudra.vendors.amd.smi_events import SmiEvent, SmiEventWatch
from gpudra.vendors.amd.sysfs import partition_bus_id
from gpudra.vendors.sysfs import pci_device_link

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 1.0
RAS_POLL_SECONDS: Final = 10.0
#: The amdsmi event types watched, and the condition each is.
WATCHED_EVENTS: Final[dict[str, tuple[ConditionKind, str, Effect]]] = {
    "GPU_PRE_RESET": (ConditionKind.RESET, "gpu-reset", Effect.NO_SCHEDULE),
    "GPU_POST_RESET": (ConditionKind.RESET, "gpu-reset", Effect.NO_SCHEDULE),
    "THERMAL_THROTTLE": (ConditionKind.THERMAL, "throttle", Effect.NO_SCHEDULE),
}
NOT_MONITORED: Final = "no-ras-no-events"
MONITOR_ERROR: Final = "monitor-error"
_ERR_COUNT: Final = re.compile(r"^([a-z0-9_]+)_err_count$")
_COUNT_LINE: Final = re.compile(r"^\s*(ue|ce|de)\s*:\s*(\d+)\s*$")
_DRIVER_DIRS: Final = ("bus/pci/drivers/amdgpu", "module/amdgpu/drivers/pci:amdgpu")

Report = Callable[[Observation], None]


def parse_err_count(text: str) -> dict[str, int]:
    """``ue: 0\\nce: 3\\n`` (and ``de: 1``) -> ``{"ue": 0, "ce": 3, "de": 1}``; other lines are ignored, so
    "Query currently inaccessible" gives ``{}``."""
    return {m.group(1): int(m.group(2)) for line in text.splitlines() if (m := _COUNT_LINE.match(line))}


def read_ras_ue(sysfs_root: Path, bus_id: str) -> dict[str, int | None]:
    """Uncorrectable count per RAS block of the GPU at ``bus_id`` (``None``: that block unreadable now);
    empty when the GPU has no ``ras`` directory or no ``*_err_count`` file in it."""
    folder = pci_device_link(sysfs_root, bus_id) / "ras"
    try:
        blocks = sorted((m.group(1), p) for p in folder.iterdir() if (m := _ERR_COUNT.match(p.name)))
    except OSError:
        return {}
    out: dict[str, int | None] = {}
    for block, path in blocks:
        try:
            out[block] = parse_err_count(path.read_text(encoding="utf-8")).get("ue")
        except (OSError, UnicodeDecodeError):
            out[block] = None
    return out


def gpu_present(sysfs_root: Path, bus_id: str) -> bool | None:
    """The PCI device directory of ``bus_id`` and its amdgpu binding both exist; ``None`` when the sysfs
    tree itself is not readable now (nothing can be concluded). Missing is confirmed by a second look after
    the tree was seen, so a tree replaced whole between two looks does not read as a lost GPU."""
    if _bound(sysfs_root, bus_id):
        return True
    if not (sysfs_root / "bus" / "pci" / "devices").is_dir():
        return None
    return _bound(sysfs_root, bus_id)


def _bound(sysfs_root: Path, bus_id: str) -> bool:
    return pci_device_link(sysfs_root, bus_id).is_dir() and any(
        (sysfs_root / d / bus_id).exists() for d in _DRIVER_DIRS
    )


def watched_gpus(inventory: Inventory) -> dict[str, str]:
    """GPU uuid -> PCI bus id, for every GPU of ``inventory``: whole GPUs and the parents of partitions."""
    out: dict[str, str] = {}
    for device in inventory.devices:
        if device.kind is DeviceKind.GPU and device.pci is not None:
            out.setdefault(device.uuid, device.pci.bus_id)
        elif device.kind is DeviceKind.PARTITION and device.parent_uuid and device.parent_pci_bus_id:
            out.setdefault(device.parent_uuid, device.parent_pci_bus_id)
    return out


@dataclass(slots=True)
class _Gpu:
    """What the monitor keeps of one GPU between polls."""

    uuid: str
    bus_id: str
    lost: bool = False
    has_ras: bool = False  # RAS counter files seen since the GPU was last found present
    monitored: bool | None = None  # as last reported (None: not reported yet)
    ue: dict[str, int] = field(default_factory=dict)  # baseline per RAS block
    ras_due: float = 0.0


class AmdHealthMonitor:
    """The watch loop of one AMD driver: ``latest`` gives its latest discovery (``None`` before the first),
    ``smi`` its amdsmi session (``None`` without amdsmi), used only while holding ``lock`` - the lock the
    driver holds for discovery and close."""

    def __init__(
        self,
        sysfs_root: Path,
        latest: Callable[[], Inventory | None],
        lock: threading.Lock,
        smi: AmdSmi | None,
        *,
        poll_seconds: float = POLL_SECONDS,
        ras_poll_seconds: float = RAS_POLL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._root = sysfs_root
        self._latest = latest
        self._lock = lock
        self._smi = smi
        self._poll_s = max(poll_seconds, 0.001)
        self._ras_s = max(ras_poll_seconds, 0.0)
        self._clock = clock
        self._gpus: dict[str, _Gpu] = {}
        self._inventory: Inventory | None = None
        self._current: dict[str, str] = {}  # the GPUs of that discovery: uuid -> bus id
        self._events: SmiEventWatch | None = None
        self._events_failed = smi is None
        self._event_gpus: frozenset[str] = frozenset()  # GPU bus ids whose events are read
        self._failing: str | None = None  # the last unexpected failure logged

    def run(self, report: Report, stop: threading.Event) -> None:
        """Poll until ``stop`` is set (noticed at once: the wait between polls is on it); never raises."""
        safe = _SafeReport(report)
        try:
            while not stop.is_set():
                self.poll_once(safe)
                stop.wait(self._poll_s)
        finally:
            try:
                with self._lock:
                    if self._events is not None:
                        self._events.close()
            except Exception:  # closing is best effort: nothing may escape watch_health
                log.debug("closing the amdsmi event watch failed", exc_info=True)

    def poll_once(self, report: Report) -> None:
        """One poll of every watched GPU; an unexpected failure reports them all UNMONITORED (once)."""
        try:
            self._poll(report)
        except Exception as err:
            text = f"{type(err).__name__}: {err}"
            if text != self._failing:
                self._failing = text
                log.exception("AMD health monitoring failed; the GPUs' health is Unknown until it works")
            now = self._clock()
            for gpu in self._gpus.values():
                if gpu.monitored is not False:
                    gpu.monitored = False
                    report(_obs(gpu, ConditionKind.UNMONITORED, MONITOR_ERROR, now,
                                f"AMD health monitoring failed: {text}"))  # fmt: skip
        else:
            self._failing = None

    def _poll(self, report: Report) -> None:
        inventory = self._latest()
        if inventory is None:
            return  # nothing discovered yet
        if inventory is not self._inventory:
            self._track(inventory)
        events = self._read_events()
        now = self._clock()
        for gpu in list(self._gpus.values()):
            self._check(gpu, events.get(gpu.bus_id, []), now, report)

    def _track(self, inventory: Inventory) -> None:
        """Follow a new discovery: its GPUs are watched; one that left it stays watched only while lost (the
        next poll checks it once: absent, it is reported LOST; present, it is no longer watched)."""
        self._inventory = inventory
        self._current = current = watched_gpus(inventory)
        for uuid in list(self._gpus):
            gpu = self._gpus[uuid]
            if uuid not in current and not gpu.lost and gpu_present(self._root, gpu.bus_id) is not False:
                del self._gpus[uuid]
        for uuid, bus_id in current.items():
            known = self._gpus.get(uuid)
            if known is None or known.bus_id != bus_id:
                self._gpus[uuid] = _Gpu(uuid, bus_id)
        if not self._events_failed:
            with self._lock:
                if self._events is None and self._smi is not None:
                    self._events = self._smi.watch_events(WATCHED_EVENTS)
                    self._events_failed = self._events is None
                elif self._events is not None:
                    self._events.refresh()
                if self._events is not None:
                    self._event_gpus = frozenset(partition_bus_id(b, 0) for b in self._events.bus_ids)

    def _read_events(self) -> dict[str, list[SmiEvent]]:
        """The events since the last poll, by GPU bus id (a partition's count for its GPU)."""
        if self._events is None:
            return {}
        with self._lock:
            events = self._events.read(0)
        if events is None:
            self._events, self._events_failed, self._event_gpus = None, True, frozenset()
            return {}
        out: dict[str, list[SmiEvent]] = {}
        for event in events:
            out.setdefault(partition_bus_id(event.bus_id, 0), []).append(event)
        return out

    def _check(self, gpu: _Gpu, events: list[SmiEvent], now: float, report: Report) -> None:
        present = gpu_present(self._root, gpu.bus_id)
        if present is None:
            return  # the tree is not readable now: nothing to conclude
        if not present:
            if not gpu.lost:
                gpu.lost, gpu.has_ras, gpu.ue, gpu.ras_due = True, False, {}, 0.0
                why = f"AMD GPU {gpu.bus_id} is gone from the PCI bus or no longer bound to amdgpu"
                report(_obs(gpu, ConditionKind.LOST, "true", now, why, effect=Effect.NO_EXECUTE))
            return
        if gpu.lost:
            gpu.lost = False
            report(_obs(gpu, ConditionKind.LOST, "true", now, f"AMD GPU {gpu.bus_id} is back", cleared=True))
            if gpu.uuid not in self._current:
                del self._gpus[gpu.uuid]  # watched only while lost; the next discovery decides again
                return
        rises = self._ras(gpu, now)
        self._monitored(gpu, now, report)
        if rises:
            total = sum(new for _, new, _ in rises)
            blocks = ", ".join(f"{block} {'+' if old else ''}{new}" for block, new, old in rises)
            report(_obs(gpu, ConditionKind.ECC, "uncorrectable", now, f"AMD GPU {gpu.bus_id}: {total} "
                        f"uncorrectable RAS error(s) ({blocks})", effect=Effect.NO_EXECUTE))  # fmt: skip
        seen: dict[tuple[ConditionKind, str, Effect], list[str]] = {}
        for event in events:
            if event.kind in WATCHED_EVENTS:
                seen.setdefault(WATCHED_EVENTS[event.kind], []).append(event.kind)
        for (kind, value, effect), kinds in seen.items():
            what = ", ".join(sorted(set(kinds)))
            report(_obs(gpu, kind, value, now, f"AMD GPU {gpu.bus_id}: amdsmi event {what}"
                        f"{f' ({len(kinds)}x)' if len(kinds) > 1 else ''}", effect=effect))  # fmt: skip

    def _ras(self, gpu: _Gpu, now: float) -> list[tuple[str, int, bool]]:
        """Read the GPU's RAS counters when due: (block, errors, had a baseline) for each that rose."""
        if now < gpu.ras_due:
            return []
        gpu.ras_due = now + self._ras_s
        counts = read_ras_ue(self._root, gpu.bus_id)
        if counts and gpu_present(self._root, gpu.bus_id) is not True:
            return []  # the tree changed while it was read: next time
        rises: list[tuple[str, int, bool]] = []
        for block, ue in counts.items():
            gpu.has_ras = True
            if ue is None:
                continue  # unreadable now: the baseline stays
            base = gpu.ue.get(block)
            if (base is None and ue > 0) or (base is not None and ue > base):
                rises.append((block, ue - (base or 0), base is not None))
            gpu.ue[block] = ue
        return rises

    def _monitored(self, gpu: _Gpu, now: float, report: Report) -> None:
        monitored = gpu.has_ras or gpu.bus_id in self._event_gpus
        if monitored is gpu.monitored:
            return
        gpu.monitored = monitored
        if monitored:
            report(_obs(gpu, ConditionKind.UNMONITORED, "", now, f"AMD GPU {gpu.bus_id} is monitored",
                        cleared=True))  # fmt: skip
        else:
            why = f"AMD GPU {gpu.bus_id}: no RAS error counters in sysfs and no amdsmi events: not monitored"
            report(_obs(gpu, ConditionKind.UNMONITORED, NOT_MONITORED, now, why))


def _obs(
    gpu: _Gpu, kind: ConditionKind, value: str, at: float, message: str, *,
    effect: Effect = Effect.NO_SCHEDULE, cleared: bool = False,
) -> Observation:  # fmt: skip
    return Observation(gpu.uuid, kind, value, effect, message, at, cleared)


class _SafeReport:
    """``report`` that never raises into the loop (a failing callback is logged once per cause)."""

    def __init__(self, report: Report) -> None:
        self._report = report
        self._failed: str | None = None

    def __call__(self, obs: Observation) -> None:
        try:
            self._report(obs)
        except Exception as err:
            text = f"{type(err).__name__}: {err}"
            if text != self._failed:
                self._failed = text
                log.exception("reporting AMD device health failed (%s); the observation is lost", text)
