"""The health half of the fake pynvml: NVML event sets and the uncorrectable ECC counter.

Signatures and return types are pynvml's (``nvidia-ml-py`` 13):

* ``nvmlEventSetCreate()`` returns a ``c_nvmlEventSet_t``; ``nvmlEventSetFree(eventSet)`` ends it (a freed or
  unknown set is INVALID_ARGUMENT).
* ``nvmlDeviceRegisterEvents(handle, eventTypes, eventSet)`` registers a GPU for a mask of
  ``nvmlEventType*`` bits: NOT_SUPPORTED when the mask holds a type the GPU does not support (the profile's
  ``event_types``). A MIG device's handle is INVALID_ARGUMENT: NVML delivers a MIG instance's events on its
  GPU, with the instance ids. ``nvmlDeviceGetSupportedEventTypes(handle)`` answers the GPU's mask.
* ``nvmlEventSetWait_v2(eventSet, timeoutms)`` returns the next ``c_nvmlEventData_t`` (``device``: the GPU's
  handle, ``eventType``, ``eventData``: the Xid, ``gpuInstanceId``/``computeInstanceId``: the MIG instance
  or 0xFFFFFFFF) or raises NVML_ERROR_TIMEOUT once ``timeoutms`` passed. It wakes as soon as an event
  arrives. When a GPU registered in the set became lost (gone from the profile, or
  ``"errors": {"*": "NVML_ERROR_GPU_IS_LOST"}``), the next wait raises GPU_IS_LOST once, after the events
  that were pending; it raises it again only after the GPU answered again and was lost anew.
* ``nvmlDeviceGetTotalEccErrors(handle, errorType, counterType)`` answers the profile's
  ``ecc_uncorrected_volatile`` for (NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC); NOT_SUPPORTED
  for the other counters, and for that one too when the profile has no value (a GPU without ECC).

Where events come from: a profile swap (:meth:`~gpudra.vendors.mock.fake_nvml_base.FakeNvmlBase.serve`, the
mock's profile file edited) delivers every event of the new profile whose ``id`` no swap delivered before,
once, to the sets registered then for its type on its GPU (see :mod:`~gpudra.vendors.mock.profile_events`).
The events of the profile the fake starts with count as delivered. These calls run under the fake's
``hardware_lock``, so a watcher's thread never sees half a swap.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Final

import pynvml

from gpudra.vendors.mock.fake_nvml_base import FakeNvmlBase, fail, present
from gpudra.vendors.mock.profile import ALL_DEVICE_CALLS, DeviceProfile, Profile
from gpudra.vendors.mock.profile_events import EventProfile

_ANY_ID: Final[int] = pynvml.NVML_GPU_INSTANCE_ID_ANY
_BITS: Final[dict[str, int]] = {
    "xid": pynvml.nvmlEventTypeXidCriticalError,
    "double_bit_ecc": pynvml.nvmlEventTypeDoubleBitEccError,
    "single_bit_ecc": pynvml.nvmlEventTypeSingleBitEccError,
}
_ERROR_TYPES: Final = (pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
_COUNTER_TYPES: Final = (pynvml.NVML_VOLATILE_ECC, pynvml.NVML_AGGREGATE_ECC)
_UNCORRECTED_VOLATILE: Final = (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)


class _EventSet:
    """One event set: the GPUs registered (by handle slot) with their masks, the events not yet waited for,
    and the registered GPUs known lost."""

    __slots__ = ("lost", "lost_news", "pending", "registered")

    def __init__(self) -> None:
        self.registered: dict[int, int] = {}
        self.pending: deque[Any] = deque()
        self.lost: set[int] = set()
        self.lost_news = False


class FakeEventCalls(FakeNvmlBase):
    def __init__(self, profile: Profile, state_file: Path | None = None) -> None:
        super().__init__(profile, state_file)
        self._event_sets: dict[int, _EventSet] = {}
        self._event_serials = itertools.count(1)
        self._event_cond = threading.Condition(self.hardware_lock)
        self._delivered = {e.id for d in profile.devices for e in d.events}

    def nvmlEventSetCreate(self) -> Any:
        self.enter("nvmlEventSetCreate")
        with self._event_cond:
            serial = next(self._event_serials)
            self._event_sets[serial] = _EventSet()
            return self.handle(("es", serial), pynvml.c_nvmlEventSet_t)

    def nvmlEventSetFree(self, eventSet: Any) -> None:
        self.enter("nvmlEventSetFree")
        with self._event_cond:
            serial, _ = self._event_set(eventSet)
            del self._event_sets[serial]
            self._event_cond.notify_all()

    def nvmlDeviceGetSupportedEventTypes(self, handle: Any) -> int:
        with self.hardware_lock:
            return present(_supported(self.gpu("nvmlDeviceGetSupportedEventTypes", handle)))

    def nvmlDeviceRegisterEvents(self, handle: Any, eventTypes: int, eventSet: Any) -> None:
        with self._event_cond:
            key = self.resolve("nvmlDeviceRegisterEvents", handle, ("gpu",))
            _, events = self._event_set(eventSet)
            supported = _supported(self.device_of(key))
            if supported is None or eventTypes & ~supported:
                raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
            events.registered[key[1]] = events.registered.get(key[1], 0) | eventTypes
            events.lost.discard(key[1])

    def nvmlEventSetWait_v2(self, eventSet: Any, timeoutms: int) -> Any:
        self.enter("nvmlEventSetWait_v2")
        deadline = time.monotonic() + max(0, timeoutms) / 1000
        with self._event_cond:
            while True:
                _, events = self._event_set(eventSet)
                if events.pending:
                    return events.pending.popleft()
                if events.lost_news:
                    events.lost_news = False
                    raise fail(pynvml.NVML_ERROR_GPU_IS_LOST)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise fail(pynvml.NVML_ERROR_TIMEOUT)
                self._event_cond.wait(remaining)

    def nvmlDeviceGetTotalEccErrors(self, handle: Any, errorType: int, counterType: int) -> int:
        with self.hardware_lock:
            gpu = self.gpu("nvmlDeviceGetTotalEccErrors", handle)
            if errorType not in _ERROR_TYPES or counterType not in _COUNTER_TYPES:
                raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
            if (errorType, counterType) != _UNCORRECTED_VOLATILE:
                raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
            return present(gpu.ecc_uncorrected_volatile)

    # -- the hardware changed: deliver what the new profile brings ----------------------------------------
    def hardware_changed(self) -> None:
        super().hardware_changed()
        with self._event_cond:
            for index, device in enumerate(self.profile.devices):
                fresh = [e for e in device.events if e.id not in self._delivered]
                self._delivered.update(e.id for e in fresh)
                for events in self._event_sets.values():
                    mask = events.registered.get(self._slots[index], 0)
                    events.pending.extend(self._event_data(index, e) for e in fresh if mask & _BITS[e.type])
            for events in self._event_sets.values():
                for slot in events.registered:
                    if not self._answers(slot):
                        events.lost_news |= slot not in events.lost
                        events.lost.add(slot)
                    else:
                        events.lost.discard(slot)
            self._event_cond.notify_all()

    def _event_data(self, index: int, event: EventProfile) -> Any:
        gi = _ANY_ID if event.gpu_instance is None else event.gpu_instance
        ci = _ANY_ID if event.compute_instance is None else event.compute_instance
        return pynvml.c_nvmlEventData_t(
            device=self.gpu_handle(index), eventType=_BITS[event.type], eventData=event.value,
            gpuInstanceId=gi, computeInstanceId=ci,
        )  # fmt: skip

    def _answers(self, slot: int) -> bool:
        """Whether the GPU with handle slot ``slot`` is there and not lost."""
        index = self._index.get(slot)
        if index is None:
            return False
        lost: int = pynvml.NVML_ERROR_GPU_IS_LOST
        return self.profile.devices[index].errors.get(ALL_DEVICE_CALLS) != lost

    def _event_set(self, ref: Any) -> tuple[int, _EventSet]:
        """The live event set ``ref`` names; INVALID_ARGUMENT for anything else (freed included)."""
        try:
            address = ctypes.cast(ref, ctypes.c_void_p).value if ref is not None else None
        except ctypes.ArgumentError:
            address = None
        key = self._keys.get(address) if address is not None else None
        found = self._event_sets.get(key[1]) if key is not None and key[0] == "es" else None
        if key is None or found is None:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return key[1], found


def _supported(device: DeviceProfile) -> int | None:
    """The NVML event mask of ``device`` (None: the profile says NOT_SUPPORTED)."""
    if device.event_types is None:
        return None
    mask = 0
    for name in device.event_types:
        mask |= _BITS[name]
    return mask
