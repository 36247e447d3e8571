"""Plumbing of the fake pynvml: init state, call log, fault injection, and the opaque handles it hands out.

Handles are real ctypes pointer types (``pynvml.c_nvmlDevice_t`` for GPUs and MIG devices,
``c_nvmlGpuInstance_t``, ``c_nvmlComputeInstance_t``) holding made-up addresses that are never dereferenced;
each maps back to what it names. The same object always gets the same handle, as with NVML.

The hardware can change under a running fake (:meth:`FakeNvmlBase.serve`: the mock's profile file was
edited). A handle names a device, not a position: a GPU keeps its handle while it is still there (same
UUID), wherever it now is in the enumeration, and so does a MIG device (same UUID on the same GPU); GPU and
compute instances are named by their ids. A handle of a GPU that is gone raises GPU_IS_LOST, one of a MIG
device that is gone (destroyed, or MIG mode switched off) INVALID_ARGUMENT.
"""

from __future__ import annotations

import ctypes
import itertools
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, Final, TypeVar

import pynvml

from gpudra.vendors.mock.profile import ALL_DEVICE_CALLS, DeviceProfile, Profile
from gpudra.vendors.mock.profile_mig import MigDeviceProfile

_T = TypeVar("_T")
_HANDLE_BASE: Final = 0x6770_0000  # fake addresses; handles are never dereferenced
_HANDLE_STRIDE: Final = 0x10

#: What a handle names: ("gpu", slot) | ("mig", slot, mig) | ("gi", slot, gi_id) | ("ci", slot, gi, ci), where
#: ``slot`` names a GPU for as long as it is present and ``mig`` is the MIG device's UUID (its index in the
#: GPU's list when its UUID is unknown or not unique there).
HandleKey = tuple[Any, ...]


def fail(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)  # the constructor picks the real subclass, e.g. NVMLError_NotSupported


def present(value: _T | None) -> _T:
    """A profile value, or NOT_SUPPORTED when the profile leaves it unknown (null)."""
    if value is None:
        raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
    return value


def byref_target(ref: object) -> object:
    """The structure behind ``ctypes.byref(s)`` or ``ctypes.pointer(s)``; TypeError for anything else."""
    target = getattr(ref, "_obj", None)  # what ctypes.byref() wraps
    if target is None and isinstance(ref, ctypes._Pointer):
        target = ref.contents
    if not isinstance(target, ctypes.Structure):
        raise TypeError(f"expected ctypes.byref(<structure>), got {type(ref).__name__}")
    return target


class FakeNvmlBase:
    """Module-like stand-in for ``pynvml``; one instance is one simulated node (and one NVML library)."""

    NVMLError = pynvml.NVMLError

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.init_count = 0  # like NVML's reference count: nvmlInit increments, nvmlShutdown decrements
        self.calls: list[str] = []  # every call made, in order (for tests and debugging)
        self._addresses: dict[HandleKey, int] = {}
        self._keys: dict[int, HandleKey] = {}
        self._fresh_slots = itertools.count()
        self._slots = tuple(next(self._fresh_slots) for _ in profile.devices)  # device index -> slot
        self._index = {slot: i for i, slot in enumerate(self._slots)}
        self._mig_keys: dict[int, tuple[DeviceProfile, tuple[str | int, ...]]] = {}

    def serve(self, profile: Profile) -> None:
        """Show ``profile``'s hardware from the next call on, as the same library with the same handles.

        A GPU still present keeps its handle (matched by UUID: unique in both profiles, or equal at the
        same position), a lost one's handle raises GPU_IS_LOST; init state and the call log carry over.
        Not atomic to calls in flight: call it between discovery passes (the mock does, under its lock).
        """
        old = [d.uuid for d in self.profile.devices]
        slots = carried_slots(old, self._slots, [d.uuid for d in profile.devices], self._fresh_slots)
        self.profile, self._slots = profile, slots
        self._index = {slot: i for i, slot in enumerate(slots)}
        self._mig_keys.clear()

    def __getattr__(self, name: str) -> Any:
        """Re-export pynvml's constants, error classes and structure types — never its functions."""
        if name.startswith(("NVML_", "NVMLError", "c_nvml", "nvmlPciInfo", "nvmlGpuFabricInfo")):
            return getattr(pynvml, name)
        raise AttributeError(name)

    # -- handles ------------------------------------------------------------------------------------------
    def handle(self, key: HandleKey, kind: Any = pynvml.c_nvmlDevice_t) -> Any:
        address = self._addresses.get(key)
        if address is None:
            address = _HANDLE_BASE + len(self._addresses) * _HANDLE_STRIDE
            self._addresses[key] = address
            self._keys[address] = key
        return ctypes.cast(ctypes.c_void_p(address), kind)

    def resolve(self, call: str, handle: Any, kinds: tuple[str, ...], *, entered: bool = False) -> HandleKey:
        """Enter ``call`` on ``handle``: INVALID_ARGUMENT unless it is one of ``kinds``; injected faults."""
        if not entered:
            self.enter(call)
        try:
            address = ctypes.cast(handle, ctypes.c_void_p).value if handle is not None else None
        except ctypes.ArgumentError:
            address = None
        key = self._keys.get(address) if address is not None else None
        if key is None or key[0] not in kinds:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        device = self.device_of(key)
        self.device_errors(call, device)
        if key[0] == "mig":
            self.mig_errors(call, device.mig_devices[self.mig_index(device, key[2])])
        return key

    # -- what a handle names now ----------------------------------------------------------------------
    def gpu_handle(self, index: int) -> Any:
        """The handle of the GPU at enumeration ``index`` (which must exist)."""
        return self.handle(("gpu", self._slots[index]))

    def mig_handle(self, index: int, mig_index: int) -> Any:
        """The handle of MIG device ``mig_index`` of the GPU at ``index`` (both must exist)."""
        device = self.profile.devices[index]
        return self.handle(("mig", self._slots[index], self.mig_keys(device)[mig_index]))

    def index_of(self, key: HandleKey) -> int:
        """The enumeration index of the GPU a handle key names; GPU_IS_LOST when it is gone."""
        index = self._index.get(key[1])
        if index is None:
            raise fail(pynvml.NVML_ERROR_GPU_IS_LOST)
        return index

    def device_of(self, key: HandleKey) -> DeviceProfile:
        return self.profile.devices[self.index_of(key)]

    def gpu(self, call: str, handle: Any) -> DeviceProfile:
        return self.device_of(self.resolve(call, handle, ("gpu",)))

    def gpu_or_mig(self, call: str, handle: Any) -> tuple[DeviceProfile, MigDeviceProfile | None]:
        key = self.resolve(call, handle, ("gpu", "mig"))
        device = self.device_of(key)
        return device, (device.mig_devices[self.mig_index(device, key[2])] if key[0] == "mig" else None)

    def mig_keys(self, device: DeviceProfile) -> tuple[str | int, ...]:
        """What names each MIG device of ``device`` in a handle: its UUID when unique, else its position.
        Computed once per device profile (handle lookups are the fake's hot path)."""
        cached = self._mig_keys.get(id(device))
        if cached is None or cached[0] is not device:  # a new profile object, or an id reused
            counts = Counter(m.uuid for m in device.mig_devices)
            keys = tuple(
                m.uuid if m.uuid is not None and counts[m.uuid] == 1 else i
                for i, m in enumerate(device.mig_devices)
            )
            cached = self._mig_keys[id(device)] = (device, keys)
        return cached[1]

    def mig_index(self, device: DeviceProfile, key: str | int) -> int:
        """The index of the MIG device a handle names, now; INVALID_ARGUMENT when it is gone."""
        if mig_enabled(device):
            keys = self.mig_keys(device)
            if key in keys:
                return keys.index(key)
        raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)

    # -- faults -------------------------------------------------------------------------------------------
    def init(self, call: str) -> None:
        """Either init entry point fails when the profile injects an error into either of them."""
        self.enter(call, initialised=False)
        code = self.profile.errors.get("nvmlInit", self.profile.errors.get("nvmlInitWithFlags"))
        if code is not None:
            raise fail(code)
        self.init_count += 1

    def enter(self, call: str, *, initialised: bool = True) -> None:
        self.calls.append(call)
        code = self.profile.errors.get(call)
        if code is not None:
            raise fail(code)
        if initialised and self.init_count <= 0:
            raise fail(pynvml.NVML_ERROR_UNINITIALIZED)

    @staticmethod
    def device_errors(call: str, device: DeviceProfile) -> None:
        code = device.errors.get(call, device.errors.get(ALL_DEVICE_CALLS))
        if code is not None:
            raise fail(code)

    @staticmethod
    def mig_errors(call: str, mig: MigDeviceProfile) -> None:
        code = mig.errors.get(call, mig.errors.get(ALL_DEVICE_CALLS))
        if code is not None:
            raise fail(code)


def mig_enabled(device: DeviceProfile) -> bool:
    return device.mig_mode is not None and device.mig_mode[0] == pynvml.NVML_DEVICE_MIG_ENABLE


def carried_slots(
    old: Sequence[str | None], slots: Sequence[int], new: Sequence[str | None], fresh: Iterator[int]
) -> tuple[int, ...]:
    """The handle slot of each of the ``new`` devices (by UUID): a device still present keeps its slot (same
    UUID, unique in both lists, or the same UUID at the same position); any other gets a ``fresh`` one."""
    old_count, new_count = Counter(old), Counter(new)
    unique = {u: s for u, s in zip(old, slots, strict=True) if u is not None and old_count[u] == 1}
    out: list[int] = []
    for position, uuid in enumerate(new):
        if uuid is not None and new_count[uuid] == 1 and uuid in unique:
            out.append(unique[uuid])
        elif position < len(old) and old[position] == uuid:
            out.append(slots[position])
        else:
            out.append(next(fresh))
    return tuple(out)
