"""amdsmi's event API, the event half of the translation layer of :mod:`gpudra.vendors.amd.smi` (same rules:
the only code calling these functions, failures translated here, never raised).

The wrapper's ``AmdSmiEventReader(handle, types)`` runs ``amdsmi_init_gpu_event_notification`` (opens
``/dev/kfd`` and asks KFD for the processor's SMI event fd) and ``amdsmi_set_gpu_event_notification_mask``
(bit ``type - 1`` per type). Its ``read(timeout_ms, num_elem)`` calls ``amdsmi_get_gpu_event_notification``,
which polls the fds of *every* subscribed processor and returns ``[{"processor_handle": <pointer int>,
"event": "<type name>", "message": "<first token of the kernel's text>"}]``, or raises NO_DATA when nothing
came within the timeout; ``stop()`` ends the subscription (ROCm/amdsmi ``py-interface/amdsmi_interface.py``,
``src/amd_smi/amd_smi.cc``, ``rocm_smi/src/rocm_smi.cc``). KFD queues reset and thermal events (sent with
pid 0) for every subscriber, so reading without waiting at each poll loses none.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from gpudra.vendors.amd.smi import STATUS_CODES, _describe, _text
from gpudra.vendors.sysfs import normalize_pci_bus_id

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SmiEvent:
    """One event amdsmi delivered: the processor's bus id as amdsmi reports it (a partition's in the
    function digit), the ``AmdSmiEvtNotificationType`` member name (``GPU_PRE_RESET``, ...) and the kernel's
    message."""

    bus_id: str
    kind: str
    message: str


#: Statuses of an event read that mean "no event now", not a failure.
_NO_EVENT: Final = frozenset(
    STATUS_CODES[f"AMDSMI_STATUS_{name}"] for name in ("NO_DATA", "RETRY", "TIMEOUT", "INTERRUPT", "BUSY")
)
_EVENT_BATCH: Final = 64  # events asked for per read
_EVENT_READS: Final = 8  # reads per call at most, while they come back full


class SmiEventWatch:
    """amdsmi event notification on every processor handle (one ``AmdSmiEventReader`` each; a partition is a
    processor of its own), over the amdsmi ``module`` whose errors are ``errors`` while ``is_open``. Not
    thread-safe: the caller serialises it with the other calls of its :class:`~gpudra.vendors.amd.smi.AmdSmi`.
    Once amdsmi is shut down every method does nothing and :meth:`read` answers ``None``."""

    def __init__(
        self, module: Any, errors: tuple[type[BaseException], ...], is_open: Callable[[], bool], reader: Any,
        types: list[Any],
    ) -> None:  # fmt: skip
        self._m = module
        self._errors = errors
        self._is_open = is_open
        self._reader = reader
        self._types = types
        self._subscribed: dict[int, tuple[Any, str]] = {}  # handle pointer -> (its reader, its bus id)
        self._warned: set[tuple[str, str]] = set()
        self._closed = False

    @property
    def bus_ids(self) -> frozenset[str]:
        """The bus ids (amdsmi's) of the processors whose events are read."""
        return frozenset(bus for _, bus in self._subscribed.values())

    def refresh(self) -> None:
        """Subscribe the processor handles amdsmi lists and this watch has not subscribed yet; drop those it
        no longer lists. A handle that cannot be subscribed is left out, with one warning per cause."""
        if self._closed or not self._is_open():
            return
        handles, err = self._attempt(getattr(self._m, "amdsmi_get_processor_handles", None))
        if err is not None or not isinstance(handles, list | tuple):
            self._warn("amdsmi_get_processor_handles", err, "no processor is watched for events")
            return
        listed: set[int] = set()
        for handle in handles:
            key = _pointer(handle)
            if key is None or key in listed:
                continue
            listed.add(key)
            if key in self._subscribed:
                continue
            raw, err = self._attempt(getattr(self._m, "amdsmi_get_gpu_device_bdf", None), handle)
            bus = normalize_pci_bus_id(raw) if isinstance(raw, str) else None
            if bus is None:
                self._warn("amdsmi_get_gpu_device_bdf", err, "a processor without a bus id is not watched")
                continue
            reader, err = self._attempt(self._reader, handle, self._types)
            if err is not None:
                self._warn("AmdSmiEventReader", err, f"events of {bus} (and others alike) are not watched")
                continue
            self._subscribed[key] = (reader, bus)
        for key in set(self._subscribed) - listed:
            self._attempt(getattr(self._subscribed.pop(key)[0], "stop", None))

    def read(self, timeout_ms: int = 0) -> list[SmiEvent] | None:
        """The events that arrived since the last read (waiting up to ``timeout_ms`` for one when none is
        there). ``None`` when events cannot be read any more (amdsmi shut down, or a failure other than "no
        event", logged once; the watch is then closed)."""
        if self._closed or not self._is_open():
            return None
        if not self._subscribed:
            return []
        reader = next(iter(self._subscribed.values()))[0]  # one read polls every subscribed processor
        events: list[SmiEvent] = []
        for _ in range(_EVENT_READS):
            batch, err = self._attempt(getattr(reader, "read", None), timeout_ms, _EVENT_BATCH)
            if err is not None:
                if getattr(err, "err_code", None) in _NO_EVENT:
                    break
                log.warning("amdsmi event notification failed (%s); AMD health monitoring no longer reads "
                            "amdsmi events", _describe(err))  # fmt: skip
                self.close()
                return None
            items = batch if isinstance(batch, list) else []
            events += [event for item in items if (event := self._event(item)) is not None]
            if len(items) < _EVENT_BATCH:
                break
            timeout_ms = 0
        return events

    def close(self) -> None:
        """Stop every subscription (while amdsmi is open); later calls do nothing."""
        if not self._closed:
            self._closed = True
            subscribed, self._subscribed = self._subscribed, {}
            if self._is_open():
                for reader, _ in subscribed.values():
                    self._attempt(getattr(reader, "stop", None))

    def _event(self, item: object) -> SmiEvent | None:
        if not isinstance(item, dict):
            return None
        subscribed = self._subscribed.get(_pointer(item.get("processor_handle")) or -1)
        kind = item.get("event")
        if subscribed is None or not isinstance(kind, str):
            log.debug("amdsmi event %r names no processor watched here; ignored", item)
            return None
        return SmiEvent(bus_id=subscribed[1], kind=kind, message=_text(item.get("message")) or "")

    def _attempt(self, fn: Any, *args: object) -> tuple[Any, BaseException | None]:
        """``fn(*args)`` and no error, or ``None`` and the error; ``(None, None)`` when ``fn`` is missing."""
        if not callable(fn):
            return None, None
        try:
            return fn(*args), None
        except self._errors as err:  # AmdSmiLibraryException (and its Retry/Timeout subclasses)
            return None, err
        except Exception as err:  # a wrapper that does not match its library can raise anything
            return None, err

    def _warn(self, call: str, err: BaseException | None, consequence: str) -> None:
        cause = _describe(err) if err is not None else "unexpected answer"
        if (call, cause) not in self._warned:
            self._warned.add((call, cause))
            log.warning("amdsmi %s failed (%s): %s", call, cause, consequence)


def _pointer(handle: object) -> int | None:
    """A processor handle's pointer value: ``c_void_p.value`` of a handle, or the int an event carries."""
    value = getattr(handle, "value", handle)
    return value if isinstance(value, int) and not isinstance(value, bool) else None
