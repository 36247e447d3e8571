"""NVIDIA device health from NVML: the NVIDIA driver's :class:`~gpudra.vendors.base.HealthWatcher`.

One thread per :meth:`HealthWatchers.watch` runs an NVML event loop over the devices of the driver's latest
discovery (its handle map, followed as re-discovery changes it; :mod:`.health_devices`):

* **Events.** One event set; every GPU is registered for the Xid critical error and double-bit ECC event
  types it supports (MIG instances report through their GPU, with their GPU/compute instance ids).
  Single-bit ECC events are not watched: they are corrected errors, normal in small numbers, and their
  rate is what matters, which the driver reports itself as Xid 92. ``nvmlEventSetWait_v2`` waits
  :data:`WAIT_MS` at most, so a stop is seen within a second; the set is freed at the end.
* **Xids** become ``XID`` observations (value: the Xid) with the effect of :mod:`.health_xid`'s table, on
  the MIG device the event names (by its instance ids) or else the GPU; Xid 79 (fallen off the bus) is the
  GPU ``LOST``. The ignored Xids (application errors) are not reported at all.
* **Double-bit ECC events** and a **rise of the volatile uncorrectable ECC counter**
  (``nvmlDeviceGetTotalEccErrors``, read every poll, :data:`~.health_xid.DEFAULT_POLL_S` by default; the
  first read is the baseline, a GPU without ECC is not polled) become ``ECC`` observations (NoExecute), one
  per event or per rise.
* **Presence.** Every poll looks every GPU up by UUID and asks it one question (its ECC counter, else its
  PCI info). A GPU that does not answer (GPU_IS_LOST, NOT_FOUND and the other fatal errors; also an event
  wait saying GPU_IS_LOST, which polls at once) is ``LOST`` (NoExecute); when it answers again, the same
  check reports ``LOST`` with ``cleared=True``. A GPU back under another handle is registered again.

**The UNMONITORED convention.** When the watcher first sets up a device (at start, and for a device a later
discovery shows), it reports one ``UNMONITORED`` observation for it: ``cleared=True`` when it is monitored
(registered for events or its ECC counter readable: "monitored, healthy unless conditions"), else active
(NVML can tell nothing about it: its health is Unknown, never Healthy; the health store does not taint for
it). A MIG device is monitored as its GPU is. The status is reported again whenever it changes; a failure
of the loop reports every device ``UNMONITORED`` and the loop starts again after a pause.

:meth:`HealthWatchers.watch` never raises: failures are logged and reported. :meth:`HealthWatchers.halt`
(the driver closing) ends every watcher and waits for it to free its event set before NVML shuts down.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

from gpudra.model.health import ConditionKind, Effect, Observation
from gpudra.vendors.nvidia.calls import Nvml, NvmlError
from gpudra.vendors.nvidia.health_devices import Devices, GpuLost, WatchedGpu, address
from gpudra.vendors.nvidia.health_xid import DEFAULT_POLL_S, xid_rule

log = logging.getLogger(__name__)

WAIT_MS: Final = 500  # the longest event wait: how late a stop (or a poll) may be noticed
_RESTART_S: Final = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)  # pauses before the loop starts again after a failure
_WAIT_FAILURES: Final = 10  # consecutive failed waits (about 5 s) that make the loop start again
_NO_EXECUTE: Final = Effect.NO_EXECUTE
Report = Callable[[Observation], None]


class _Failed(Exception):
    """The event loop cannot go on (it starts again after a pause)."""


class HealthWatchers:
    """The NVIDIA driver's health watching (see the module docstring).

    ``handles`` returns the driver's current handle map; ``ignored_xids`` is the full ignore-list and
    ``poll_s`` the poll period in seconds.
    """

    def __init__(
        self, nvml: Nvml, handles: Callable[[], Mapping[str, Any]], *, ignored_xids: frozenset[int],
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:  # fmt: skip
        if poll_s <= 0:
            raise ValueError(f"the health poll period must be positive, got {poll_s}")
        self._nvml = nvml
        self._handles = handles
        self._ignored = ignored_xids
        self._poll_s = poll_s
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._running: set[threading.Event] = set()  # one "done" flag per running watcher

    def watch(self, report: Report, stop: threading.Event) -> None:
        """Watch until ``stop`` is set or the driver closes; never raises."""
        done = threading.Event()
        with self._lock:
            if self._closing.is_set():
                return
            self._running.add(done)
        try:
            _Watch(
                self._nvml, self._handles, report, stop=stop, closing=self._closing, ignored=self._ignored,
                poll_s=self._poll_s,
            ).run()
        finally:
            with self._lock:
                self._running.discard(done)
            done.set()

    def halt(self, timeout: float = 2 * WAIT_MS / 1000 + 1) -> None:
        """End every watcher, waiting up to ``timeout`` seconds for each (it frees its event set)."""
        with self._lock:
            self._closing.set()
            running = list(self._running)
        for done in running:
            if timeout > 0 and not done.wait(timeout):
                log.warning("an NVML health watcher did not end within %.1f s", timeout)


class _Watch:
    """One watcher's loop: sessions (an event set and the devices set up in it), started again on failure."""

    def __init__(
        self, nvml: Nvml, handles: Callable[[], Mapping[str, Any]], report: Report, *,
        stop: threading.Event, closing: threading.Event, ignored: frozenset[int], poll_s: float,
    ) -> None:  # fmt: skip
        self._nvml, self._handles, self._report = nvml, handles, report
        self._stop, self._closing = stop, closing
        self._ignored, self._poll_s = ignored, poll_s
        self._xid_bit = nvml.constant("nvmlEventTypeXidCriticalError", 0x8)
        self._dbe_bit = nvml.constant("nvmlEventTypeDoubleBitEccError", 0x2)
        self._devices = Devices(nvml, None, 0)
        self._lost: set[str] = set()  # GPUs reported LOST and not back yet (kept across sessions)
        self._reported: dict[str, bool] = {}  # device UUID -> the monitored status last reported
        self._poll_now = False
        self._wait_failures = self._lost_waits = 0

    def _halted(self) -> bool:
        return self._stop.is_set() or self._closing.is_set()

    def run(self) -> None:
        attempt = 0
        while not self._halted():
            started = time.monotonic()
            try:
                self._session()
            except Exception as err:  # never raise: say so, report every device unmonitored, start again
                pause = _RESTART_S[min(attempt, len(_RESTART_S) - 1)]
                log.warning("NVML health monitoring failed (%s); devices are unmonitored, retrying in %.0f s",
                            err, pause, exc_info=not isinstance(err, _Failed))  # fmt: skip
                self._unmonitored_all(f"health monitoring failed: {err}")
                attempt = 0 if time.monotonic() - started > _RESTART_S[-1] else attempt + 1
                self._sleep(pause)

    # -- one session --------------------------------------------------------------------------------------
    def _session(self) -> None:
        wait_fn = next((f for f in ("nvmlEventSetWait_v2", "nvmlEventSetWait") if self._nvml.has(f)), None)
        event_set = self._create_set() if wait_fn is not None else None
        try:
            self._devices = Devices(self._nvml, event_set, self._xid_bit | self._dbe_bit)
            self._reported.clear()
            self._wait_failures = 0
            self._sync()
            next_poll = time.monotonic() + self._poll_s
            while not self._halted():
                wait_ms = max(0, min(WAIT_MS, int((next_poll - time.monotonic()) * 1000)))
                if event_set is not None and wait_fn is not None:
                    self._wait(wait_fn, event_set, wait_ms)
                else:
                    self._sleep(wait_ms / 1000)
                if self._halted():
                    return
                self._sync()
                if self._poll_now or time.monotonic() >= next_poll:
                    self._poll_now = False
                    self._poll()
                    next_poll = time.monotonic() + self._poll_s
        finally:
            if event_set is not None:
                try:
                    self._nvml.call("nvmlEventSetFree", event_set)
                except NvmlError as err:
                    log.warning("nvmlEventSetFree failed: %s", err)

    def _create_set(self) -> Any | None:
        try:
            return self._nvml.call("nvmlEventSetCreate")
        except NvmlError as err:
            log.warning("cannot create an NVML event set (%s): Xid and ECC events are not watched, only the "
                        "ECC counters and the GPUs' presence", err)  # fmt: skip
            return None

    def _wait(self, wait_fn: str, event_set: Any, wait_ms: int) -> None:
        try:
            data = self._nvml.call(wait_fn, event_set, wait_ms)
        except NvmlError as err:
            if err.name == "TIMEOUT":
                self._wait_failures = self._lost_waits = 0
                return
            if err.name == "GPU_IS_LOST":  # which GPU, the presence check tells
                self._poll_now = True
                if self._lost_waits:  # said again at once: do not spin on it
                    self._sleep(WAIT_MS / 1000)
                self._lost_waits += 1
                return
            self._wait_failures += 1
            if self._wait_failures == 1:
                log.warning("waiting for NVML events failed: %s", err)
            if self._wait_failures >= _WAIT_FAILURES:
                raise _Failed(f"waiting for NVML events failed {self._wait_failures} times: {err}") from err
            self._sleep(WAIT_MS / 1000)
            return
        self._wait_failures = self._lost_waits = 0
        self._event(data)

    # -- what the handle map says is there ----------------------------------------------------------------
    def _sync(self) -> None:
        gpus, migs, removed = self._devices.update(self._handles())
        for uuid in removed:
            self._reported.pop(uuid, None)
        for gpu in gpus:
            self._setup(gpu)
        for uuid in migs:
            parent = self._devices.gpus.get(self._devices.mig_parent.get(uuid) or "")
            if parent is None:  # its GPU's events still reach it through its GPU's health
                self._status(uuid, True, "")
            elif parent not in gpus and parent.ready:
                self._status(uuid, parent.monitored, parent.why)

    def _setup(self, gpu: WatchedGpu) -> None:
        try:
            self._devices.setup(gpu)
        except GpuLost as lost:
            self._gone(gpu.uuid, f"GPU is lost: {lost.err}")
            return
        if not gpu.monitored:
            log.warning("GPU %s cannot be monitored (%s): its health is unknown", gpu.uuid, gpu.why)
        elif gpu.why:
            log.info("GPU %s is monitored in part: %s", gpu.uuid, gpu.why)
        for uuid in (gpu.uuid, *self._devices.migs_of(gpu)):
            self._status(uuid, gpu.monitored, gpu.why)

    def _status(self, uuid: str, monitored: bool, why: str) -> None:
        if self._reported.get(uuid) is monitored:
            return
        self._reported[uuid] = monitored
        if monitored:
            self._emit(uuid, ConditionKind.UNMONITORED, "monitored", "monitored through NVML", cleared=True)
        else:
            self._emit(uuid, ConditionKind.UNMONITORED, "unsupported",
                       f"NVML cannot monitor this device ({why})")  # fmt: skip

    def _unmonitored_all(self, why: str) -> None:
        if self._halted():
            return
        for uuid in sorted(set(self._devices.gpus) | set(self._devices.mig_parent)):
            self._reported.pop(uuid, None)
            self._emit(uuid, ConditionKind.UNMONITORED, "failed", why)

    # -- events -------------------------------------------------------------------------------------------
    def _event(self, data: Any) -> None:
        gpu = self._devices.gpu_of_event(data.device)
        if gpu is None:
            log.debug("an NVML event (type 0x%x) for a device not watched", int(data.eventType))
            return
        kind, gi, ci = int(data.eventType), int(data.gpuInstanceId), int(data.computeInstanceId)
        if kind & self._xid_bit:
            self._xid(gpu, int(data.eventData), gi, ci)
        elif kind & self._dbe_bit:
            for uuid, where in self._devices.targets(gpu, gi, ci):
                message = f"double-bit ECC error{where}"
                self._emit(uuid, ConditionKind.ECC, "uncorrectable", message, _NO_EXECUTE)

    def _xid(self, gpu: WatchedGpu, xid: int, gi: int, ci: int) -> None:
        if xid in self._ignored:
            log.debug("GPU %s: Xid %d ignored (an application error)", gpu.uuid, xid)
            return
        rule = xid_rule(xid)
        if rule.kind is ConditionKind.LOST:
            self._gone(gpu.uuid, f"Xid {xid}: {rule.meaning}")
            return
        for uuid, where in self._devices.targets(gpu, gi, ci):
            self._emit(uuid, rule.kind, str(xid), f"Xid {xid}: {rule.meaning}{where}", rule.effect)

    # -- polling: presence and the ECC counter ------------------------------------------------------------
    def _poll(self) -> None:
        for uuid in sorted(set(self._devices.gpus) | self._lost):
            if self._halted():
                return
            self._check(uuid)

    def _check(self, uuid: str) -> None:
        gpu = self._devices.gpus.get(uuid)
        try:
            handle = self._nvml.call("nvmlDeviceGetHandleByUUID", uuid)
        except NvmlError as err:
            if err.device_fatal or err.name == "NOT_FOUND":
                self._gone(uuid, f"GPU is lost: {err}")
                return
            if gpu is None:
                return  # nothing else to ask it with
            handle = gpu.handle
        if gpu is None:  # lost, and no discovery shows it now: it answers, so it is back
            self._back(uuid)
            return
        try:
            if uuid in self._lost and address(handle) != gpu.address:  # back under another handle
                self._devices.rebind(gpu, handle)
            if not gpu.ready:
                self._setup(gpu)
                if gpu.ready:
                    self._back(uuid)
                return
            count = self._ask(gpu, handle)
        except GpuLost as lost:
            self._gone(uuid, f"GPU is lost: {lost.err}")
            return
        self._back(uuid)
        if count is not None:
            before, gpu.ecc_count = gpu.ecc_count, count
            if before is not None and count > before:
                self._emit(uuid, ConditionKind.ECC, "uncorrectable",
                           f"{count - before} new uncorrectable ECC error(s) (volatile count {count})",
                           _NO_EXECUTE)  # fmt: skip

    def _ask(self, gpu: WatchedGpu, handle: Any) -> int | None:
        """One question that needs the GPU: its ECC count (returned), else its PCI info."""
        try:
            if gpu.ecc:
                return self._devices.read_ecc(gpu, handle)
            self._nvml.call("nvmlDeviceGetPciInfo_v3", handle)
        except NvmlError as err:
            if err.device_fatal:
                raise GpuLost(err) from err
            if gpu.ecc and err.value_absent:  # the counter went away: one way of watching less
                gpu.ecc, gpu.ecc_count, gpu.why = False, None, f"ECC counter: {err.name}"
                for uuid in (gpu.uuid, *self._devices.migs_of(gpu)):
                    self._status(uuid, gpu.monitored, gpu.why)
            else:
                log.debug("GPU %s: %s (neither lost nor a value)", gpu.uuid, err)
        return None

    def _gone(self, uuid: str, why: str) -> None:
        gpu = self._devices.gpus.get(uuid)
        if gpu is not None:
            gpu.ecc_count = None  # read anew when it is back (a reset clears the volatile counter)
        if uuid in self._lost or self._halted():
            return
        self._lost.add(uuid)
        self._emit(uuid, ConditionKind.LOST, "true", why, _NO_EXECUTE)

    def _back(self, uuid: str) -> None:
        if uuid in self._lost:
            self._lost.discard(uuid)
            self._emit(uuid, ConditionKind.LOST, "true", "the GPU answers again", _NO_EXECUTE, cleared=True)

    # -- plumbing -----------------------------------------------------------------------------------------
    def _emit(
        self, uuid: str, kind: ConditionKind, value: str, message: str, effect: Effect = Effect.NO_SCHEDULE,
        *, cleared: bool = False,
    ) -> None:  # fmt: skip
        try:
            self._report(Observation(uuid, kind, value, effect, message, time.time(), cleared))
        except Exception:
            log.exception("reporting %s of %s failed", kind.value, uuid)

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._halted():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._stop.wait(min(left, 0.25))
