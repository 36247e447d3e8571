"""A fake ``amdsmi`` module served from an :class:`~gpudra.vendors.mock.amd_profile.AmdProfile`, and the AMD
mock.

:class:`FakeAmdSmi` has the functions :class:`~gpudra.vendors.amd.smi.AmdSmi` calls, with the Python
wrapper's shapes (ROCm/amdsmi ``py-interface/amdsmi_interface.py``): ``amdsmi_init(flag)``, a list of
processor handles (one per partition, amdsmi's bus id ``0000:05:00.<partition>``), ``dict`` answers whose
ids are hex strings and whose unknowns are ``"N/A"``, VRAM in MiB, partition modes as strings, and failures as
``AmdSmiLibraryException(status)``. Every partition handle of a GPU reports the GPU's UUID, built the way
``amdsmi_uuid_gen`` does (asic serial = the GPU's ``unique_id``, device id, function byte 0xff). Functions in
the profile's ``missing_functions`` do not exist (an older library); it never loads ``libamd_smi.so``.

One instance is one node's library for the plugin's lifetime; :meth:`FakeAmdSmi.serve` makes it answer for
changed hardware (another partition mode, say) as :mod:`~gpudra.vendors.mock.node` does when the mock's
profile file is edited: a processor still present (same amdsmi bus id) keeps its handle, a handle of one that
is gone raises NOT_FOUND. The mock runs the real :class:`~gpudra.vendors.amd.driver.AmdDriver` over this fake
(or no amdsmi at all when the profile says ``"amdsmi": null``) and the tree of
:mod:`~gpudra.vendors.mock.fake_amd_sysfs`.

Events: ``AmdSmiEventReader(processor_handle, [AmdSmiEvtNotificationType...])`` subscribes a processor (the
wrapper's ``amdsmi_init_gpu_event_notification`` + ``amdsmi_set_gpu_event_notification_mask``, bit
``type-1``); ``read(timeout_ms, num_elem)`` returns up to ``num_elem`` of the profile's ``events`` whose
processor is subscribed to their type, from every subscribed processor whichever reader reads (KFD's event fds
are polled together), as ``{"processor_handle": c_void_p, "event": "<type name>", "message": ...}``, and
raises NO_DATA when there is none (at once: the timeout is not waited). Each event id is delivered once for
the life of the fake, across :meth:`FakeAmdSmi.serve`; unlike KFD, an event raised before anything subscribed
waits for a subscriber instead of being dropped. The enum is that of the Python wrapper ``gpudra[amd]`` pins
(amdsmi 7.x): a profile's ``ring_hang`` event is KFD's event 5, which amdsmi before 7.0 named RING_HANG and
7.x names MIGRATE_START, so it arrives under that name. An event's ``processor_handle`` is a new ``c_void_p``
of the processor's pointer, as the wrapper builds it. tests/unit/vendors/test_fake_amdsmi_api.py checks every
name, signature, enum value and dict key here against the real package's source.

Usage (the model of :mod:`~gpudra.vendors.mock.fake_usage`): ``amdsmi_get_energy_count`` (an accumulator of
:data:`ENERGY_RESOLUTION_UJ` microjoule steps) and ``amdsmi_get_power_info`` (``socket_power`` and
``current_socket_power`` in watts, ``average_socket_power`` N/A as on MI300X) answer on a GPU's primary
processor (partition 0) with the whole GPU's figures, NOT_SUPPORTED on its other partitions;
``amdsmi_get_gpu_activity`` (``gfx_activity`` percent) and ``amdsmi_get_gpu_vram_usage`` (MiB; a partition's
share of the VRAM) answer per processor. Model keys: a GPU's amdsmi UUID and bus id; a partition's
``<uuid>-p<index>`` and bus id first, then its GPU's.
"""

from __future__ import annotations

import ctypes
import threading
import time
from collections.abc import Iterable, Iterator
from enum import IntEnum
from types import TracebackType
from typing import Any, Final, TypeVar

from gpudra.vendors.amd.smi import STATUS_CODES
from gpudra.vendors.amd.sysfs import gfx_name
from gpudra.vendors.mock.amd_profile import AmdProfile, AmdSmiAnswers
from gpudra.vendors.mock.fake_amd_sysfs import FakeDrmDevice, amd_layout, partitions_in
from gpudra.vendors.mock.fake_usage import FakeReading, UsageModel, memory_used

_NOT_SUPPORTED: Final = STATUS_CODES["AMDSMI_STATUS_NOT_SUPPORTED"]
_NOT_INIT: Final = STATUS_CODES["AMDSMI_STATUS_NOT_INIT"]
_NOT_FOUND: Final = STATUS_CODES["AMDSMI_STATUS_NOT_FOUND"]
_NO_DATA: Final = STATUS_CODES["AMDSMI_STATUS_NO_DATA"]
_INVAL: Final = STATUS_CODES["AMDSMI_STATUS_INVAL"]
_INIT_ERROR: Final = STATUS_CODES["AMDSMI_STATUS_INIT_ERROR"]
_NA: Final = "N/A"
#: Microjoules per step of the fake's energy accumulator (what MI300X reports).
ENERGY_RESOLUTION_UJ: Final = 15.259
_T = TypeVar("_T")


def amdsmi_uuid(asic_serial: int, device_id: int) -> str:
    """The UUID amdsmi derives from a GPU's asic serial and device id (function byte fixed at 0xff)."""
    time_low = ((asic_serial >> 56) & 0xFF) << 24 | 0xFF << 16 | (device_id & 0xFFFF)
    clock_low, node_hi = (asic_serial >> 48) & 0xFF, (asic_serial >> 32) & 0xFFFF
    return f"{time_low:08x}-0000-1000-80{clock_low:02x}-{node_hi:04x}{asic_serial & 0xFFFFFFFF:08x}"


class AmdSmiException(Exception):
    """Base of the fake's errors, like ``amdsmi.AmdSmiException``."""


class AmdSmiLibraryException(AmdSmiException):
    """A non-success ``amdsmi_status_t``; ``err_code`` is the status value."""

    def __init__(self, err_code: int) -> None:
        code = abs(err_code)
        super().__init__(code)
        self.err_code = code
        self.err_info = next((n for n, v in STATUS_CODES.items() if v == code), "AMDSMI_STATUS_UNKNOWN_ERROR")

    def get_error_code(self) -> int:
        return self.err_code

    def get_error_info(self, detailed: bool = True) -> str:
        return self.err_info  # the wrapper's short form (its text before " - "): the fake has no long one

    def __str__(self) -> str:
        return f"Error code:\n\t{self.err_code} | {self.err_info}"


class AmdSmiParameterException(AmdSmiException):
    """A handle or flag of the wrong type: ``receivedValue`` was given where ``expectedType`` is wanted."""

    def __init__(self, receivedValue: object, expectedType: object, msg: str | None = None) -> None:
        super().__init__(msg)
        self.err_code = None
        self.actualType = type(receivedValue)
        self.expectedType = expectedType
        wanted = f"Invalid parameter:\nActual type: {self.actualType}\nExpected type: {expectedType}"
        self.err_msg = msg or wanted

    def __str__(self) -> str:
        return self.err_msg


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1
    INIT_AMD_GPUS = 2
    INIT_AMD_APUS = 3
    INIT_NON_AMD_CPUS = 4
    INIT_NON_AMD_GPUS = 8


class AmdSmiEvtNotificationType(IntEnum):
    NONE = 0
    VMFAULT = 1
    THERMAL_THROTTLE = 2
    GPU_PRE_RESET = 3
    GPU_POST_RESET = 4
    MIGRATE_START = 5  # RING_HANG before amdsmi 7.0


_EvtType = AmdSmiEvtNotificationType  # for annotations inside FakeAmdSmi, whose attribute shadows the name
#: The amdsmi events a profile event type raises.
_EVENT_TYPES: Final[dict[str, tuple[AmdSmiEvtNotificationType, ...]]] = {
    "vmfault": (AmdSmiEvtNotificationType.VMFAULT,),
    "thermal_throttle": (AmdSmiEvtNotificationType.THERMAL_THROTTLE,),
    "gpu_pre_reset": (AmdSmiEvtNotificationType.GPU_PRE_RESET,),
    "gpu_post_reset": (AmdSmiEvtNotificationType.GPU_POST_RESET,),
    "ring_hang": (AmdSmiEvtNotificationType.MIGRATE_START,),  # KFD's event 5
    "gpu_reset": (AmdSmiEvtNotificationType.GPU_PRE_RESET, AmdSmiEvtNotificationType.GPU_POST_RESET),
}


class FakeProcessorHandle:
    """Opaque, like the wrapper's ``amdsmi_processor_handle`` (a ``c_void_p``: ``value`` is the pointer, the
    number events carry); only this fake can read it."""

    __slots__ = ("_device", "_owner", "value")

    def __init__(self, owner: FakeAmdSmi, device: FakeDrmDevice, value: int) -> None:
        self._owner = owner
        self._device: FakeDrmDevice | None = device  # None: the processor is gone
        self.value = value


class FakeEventReader:
    """``amdsmi.AmdSmiEventReader``: subscribes one processor to some event types at construction."""

    def __init__(self, processor_handle: object, event_types: object) -> None:
        if not isinstance(processor_handle, FakeProcessorHandle):
            raise AmdSmiParameterException(processor_handle, FakeProcessorHandle)
        if not isinstance(event_types, Iterable):
            raise AmdSmiParameterException(event_types, Iterable)
        types = list(event_types)
        for event_type in types:
            if not isinstance(event_type, AmdSmiEvtNotificationType):
                raise AmdSmiParameterException(event_type, AmdSmiEvtNotificationType)
        mask = 0
        for event_type in types:
            if event_type != AmdSmiEvtNotificationType.NONE:
                mask |= 1 << (int(event_type) - 1)
        self.processor_handle = processor_handle
        self._owner = processor_handle._owner
        self._owner._event_subscribe(processor_handle, mask)

    def read(self, timestamp: int, num_elem: int = 10) -> list[dict[str, Any]]:
        """Up to ``num_elem`` events of every subscribed processor (``timestamp``: the timeout in ms)."""
        return self._owner._event_read(num_elem)

    def stop(self) -> None:
        self._owner._event_stop(self.processor_handle)

    def __enter__(self) -> FakeEventReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class FakeAmdSmi:
    """Module-like stand-in for ``amdsmi``; one instance is one simulated node and library."""

    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiParameterException = AmdSmiParameterException
    AmdSmiInitFlags = AmdSmiInitFlags
    AmdSmiEvtNotificationType = AmdSmiEvtNotificationType
    AmdSmiEventReader = FakeEventReader

    def __init__(self, profile: AmdProfile, usage: UsageModel | None = None) -> None:
        self.usage = usage or UsageModel()  # energy, power, activity and VRAM in use (fake_usage)
        self.init_count = 0
        self.calls: list[str] = []
        self._handles: list[FakeProcessorHandle] = []
        self._pointers = 0x5A5A0000  # handle pointer values (any distinct numbers do)
        self._lock = threading.Lock()  # event state: the health thread reads while the hardware changes
        self._masks: dict[int, int] = {}  # subscribed handle pointer -> event mask
        self.delivered: set[tuple[str, int]] = set()  # (event id, n-th amdsmi event of it)
        self.serve(profile)

    def serve(self, profile: AmdProfile) -> None:
        """Answer for ``profile``'s hardware from the next call on: one handle per processor (partition)
        with a KFD node; a processor still present (same bus id) keeps its handle, others' handles go stale.
        Init state and the call log carry over. Call it between discovery passes (the mock does)."""
        with self._lock:
            old = {h._device.bus_id: h for h in self._handles if h._device is not None}
            handles: list[FakeProcessorHandle] = []
            for device in (d for d in amd_layout(profile) if d.kfd_node is not None):
                handle = old.pop(device.bus_id, None)
                if handle is None:
                    self._pointers += 0x40
                    handle = FakeProcessorHandle(self, device, self._pointers)
                handle._device = device
                handles.append(handle)
            for gone in old.values():
                gone._device = None
            self.profile, self.answers = profile, profile.amdsmi or AmdSmiAnswers()
            self._handles = handles

    def __getattribute__(self, name: str) -> Any:
        hideable = name.startswith("amdsmi_") or name == "AmdSmiEventReader"
        if hideable and name in object.__getattribute__(self, "answers").missing_functions:
            raise AttributeError(f"module 'amdsmi' has no attribute {name!r}")
        return object.__getattribute__(self, name)

    def amdsmi_init(self, flag: object = AmdSmiInitFlags.INIT_AMD_GPUS) -> None:
        if not isinstance(flag, AmdSmiInitFlags):
            raise AmdSmiParameterException(flag, AmdSmiInitFlags)
        self._enter("amdsmi_init", initialised=False)
        self.init_count += 1

    def amdsmi_shut_down(self) -> None:
        self._enter("amdsmi_shut_down")
        self.init_count -= 1

    def amdsmi_get_processor_handles(self) -> list[FakeProcessorHandle]:
        self._enter("amdsmi_get_processor_handles")
        return list(self._handles)

    def amdsmi_get_gpu_device_bdf(self, processor_handle: object) -> str:
        return self._device("amdsmi_get_gpu_device_bdf", processor_handle).bus_id

    def amdsmi_get_gpu_device_uuid(self, processor_handle: object) -> str:
        device = self._device("amdsmi_get_gpu_device_uuid", processor_handle)
        return amdsmi_uuid(device.gpu.unique_id or 0, self.profile.model.device_id)

    def amdsmi_get_gpu_asic_info(self, processor_handle: object) -> dict[str, Any]:
        device = self._device("amdsmi_get_gpu_asic_info", processor_handle)
        model, props = self.profile.model, dict(self.profile.model.kfd_gpu_properties)
        simd, per_cu = props.get("simd_count"), props.get("simd_per_cu")
        target = props.get("gfx_target_version")
        unique = device.gpu.unique_id
        return {
            "market_name": self.answers.market_name or _NA,
            "vendor_id": hex(model.vendor_id),
            "vendor_name": _NA,
            "subvendor_id": _hex4(model.subsystem_vendor_id),
            "subsystem_id": _hex4(model.subsystem_device_id),
            "device_id": hex(model.device_id),
            "rev_id": _NA,
            "asic_serial": f"0x{unique:016X}" if unique else _NA,
            "oam_id": _NA,
            "num_compute_units": simd // per_cu if simd and per_cu else _NA,
            "target_graphics_version": (target and gfx_name(target)) or _NA,
        }

    def amdsmi_get_gpu_vram_info(self, processor_handle: object) -> dict[str, Any]:
        self._device("amdsmi_get_gpu_vram_info", processor_handle)
        size = _present(self.answers.vram_size_mib)
        vram_type = self.answers.vram_type if self.answers.vram_type is not None else 0
        return {"vram_type": vram_type, "vram_vendor": _NA, "vram_size": size, "vram_bit_width": _NA,
                "vram_max_bandwidth": _NA}  # fmt: skip

    def amdsmi_get_gpu_driver_info(self, processor_handle: object) -> dict[str, Any]:
        self._device("amdsmi_get_gpu_driver_info", processor_handle)
        version = _present(self.answers.driver_version)
        return {"driver_name": "amdgpu", "driver_version": version, "driver_date": _NA}

    def amdsmi_get_gpu_compute_partition(self, processor_handle: object) -> str:
        gpu = self._device("amdsmi_get_gpu_compute_partition", processor_handle).gpu
        return _present(None if gpu.bdf in self.profile.faults.no_partition_files else gpu.compute_partition)

    def amdsmi_get_gpu_memory_partition(self, processor_handle: object) -> str:
        gpu = self._device("amdsmi_get_gpu_memory_partition", processor_handle).gpu
        return _present(None if gpu.bdf in self.profile.faults.no_partition_files else gpu.memory_partition)

    def amdsmi_get_energy_count(self, processor_handle: object) -> dict[str, Any]:
        reading = self._gpu_reading("amdsmi_get_energy_count", processor_handle)
        steps = int(reading.energy_joules * 1e6 / ENERGY_RESOLUTION_UJ)
        return {"energy_accumulator": steps, "counter_resolution": ENERGY_RESOLUTION_UJ,
                "timestamp": time.monotonic_ns()}  # fmt: skip

    def amdsmi_get_power_info(self, processor_handle: object) -> dict[str, Any]:
        reading = self._gpu_reading("amdsmi_get_power_info", processor_handle)
        watts = round(reading.power_watts)
        limit = round(self._device("amdsmi_get_power_info", processor_handle).gpu.usage.max_watts)
        return {"socket_power": watts, "current_socket_power": watts, "average_socket_power": _NA,
                "gfx_voltage": _NA, "soc_voltage": _NA, "mem_voltage": _NA, "power_limit": limit}  # fmt: skip

    def amdsmi_get_gpu_activity(self, processor_handle: object) -> dict[str, Any]:
        device = self._device("amdsmi_get_gpu_activity", processor_handle)
        util = self.usage.utilization(self.usage_keys(device), device.gpu.usage)
        return {"gfx_activity": round(util * 100), "umc_activity": round(util * 50), "mm_activity": _NA}

    def amdsmi_get_gpu_vram_usage(self, processor_handle: object) -> dict[str, Any]:
        device = self._device("amdsmi_get_gpu_vram_usage", processor_handle)
        parts = partitions_in(device.gpu, self.profile.model.xcc_count)
        total = _present(self.answers.vram_size_mib) // parts
        util = self.usage.utilization(self.usage_keys(device), device.gpu.usage)
        return {"vram_total": total, "vram_used": memory_used(total, 0, util)}

    def usage_keys(self, device: FakeDrmDevice) -> tuple[str, ...]:
        """The usage model keys of a processor: a partition's own first, then its GPU's."""
        gpu_uuid = amdsmi_uuid(device.gpu.unique_id or 0, self.profile.model.device_id)
        if partitions_in(device.gpu, self.profile.model.xcc_count) <= 1:
            return gpu_uuid, device.gpu.bdf
        return f"{gpu_uuid}-p{device.slot}", device.bus_id, gpu_uuid, device.gpu.bdf

    def _gpu_reading(self, call: str, handle: object) -> FakeReading:
        """The whole GPU's reading, on its primary processor only (NOT_SUPPORTED on the others)."""
        device = self._device(call, handle)
        if device.slot != 0:
            raise AmdSmiLibraryException(_NOT_SUPPORTED)
        gpu_uuid = amdsmi_uuid(device.gpu.unique_id or 0, self.profile.model.device_id)
        return self.usage.reading((gpu_uuid, device.gpu.bdf), device.gpu.usage)

    def _event_subscribe(self, handle: FakeProcessorHandle, mask: int) -> None:
        self._device("amdsmi_init_gpu_event_notification", handle)
        with self._lock:
            self._masks[handle.value] = 0
        self._device("amdsmi_set_gpu_event_notification_mask", handle)
        with self._lock:
            if handle.value not in self._masks:
                raise AmdSmiLibraryException(_INIT_ERROR)
            self._masks[handle.value] = mask

    def _event_read(self, num_elem: int) -> list[dict[str, Any]]:
        self._enter("amdsmi_get_gpu_event_notification")
        if num_elem <= 0:
            raise AmdSmiLibraryException(_INVAL)
        out: list[dict[str, Any]] = []
        with self._lock:
            for key, handle, kind, message in self._pending():
                if len(out) >= num_elem:
                    break
                self.delivered.add(key)
                pointer = ctypes.c_void_p(handle.value)  # a new handle object, as the wrapper makes
                out.append({"processor_handle": pointer, "event": kind.name, "message": message})
        if not out:
            raise AmdSmiLibraryException(_NO_DATA)
        return out

    def _pending(self) -> Iterator[tuple[tuple[str, int], FakeProcessorHandle, _EvtType, str]]:
        """The profile's events not delivered yet whose processor is subscribed to their type, in order."""
        by_bus = {h._device.bus_id: h for h in self._handles if h._device is not None}
        for gpu in self.profile.gpus:
            for event in gpu.events:
                handle = by_bus.get(f"{gpu.bdf[:-1]}{event.partition:x}")
                mask = 0 if handle is None else self._masks.get(handle.value, 0)
                for n, kind in enumerate(_EVENT_TYPES[event.type]):
                    if handle is not None and (event.id, n) not in self.delivered and mask >> (kind - 1) & 1:
                        yield (event.id, n), handle, kind, event.message

    def _event_stop(self, handle: FakeProcessorHandle) -> None:
        self._enter("amdsmi_stop_gpu_event_notification")
        with self._lock:
            if self._masks.pop(handle.value, None) is None:
                raise AmdSmiLibraryException(_INVAL)  # rsmi: this device has no event fd

    def _enter(self, call: str, *, initialised: bool = True) -> None:
        self.calls.append(call)
        code = self.answers.errors.get(call)
        if code is not None:
            raise AmdSmiLibraryException(code)
        if initialised and self.init_count <= 0:
            raise AmdSmiLibraryException(_NOT_INIT)

    def _device(self, call: str, handle: object) -> FakeDrmDevice:
        if not isinstance(handle, FakeProcessorHandle) or handle._owner is not self:
            message = f"{call}: not a processor handle of this library"
            raise AmdSmiParameterException(handle, FakeProcessorHandle, message)
        self._enter(call)
        if handle._device is None:
            raise AmdSmiLibraryException(_NOT_FOUND)
        return handle._device


def _hex4(value: int | None) -> str:
    """An id as the wrapper prints it (``0x`` and at least four digits), or N/A."""
    return f"0x{value:04x}" if value else _NA


def _present(value: _T | None) -> _T:
    """A profile value, or NOT_SUPPORTED when the profile leaves it unknown (null)."""
    if value is None:
        raise AmdSmiLibraryException(_NOT_SUPPORTED)
    return value
