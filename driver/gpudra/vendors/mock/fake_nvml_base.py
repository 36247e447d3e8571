"""Plumbing of the fake pynvml: init state, call log, fault injection, and the opaque handles it hands out.

Handles are real ctypes pointer types (``pynvml.c_nvmlDevice_t`` for GPUs and MIG devices,
``c_nvmlGpuInstance_t``, ``c_nvmlComputeInstance_t``) holding made-up addresses that are never dereferenced;
each maps back to what it names. The same object always gets the same handle, as with NVML.
"""

from __future__ import annotations

import ctypes
from typing import Any, Final, TypeVar

import pynvml

from gpudra.vendors.mock.profile import ALL_DEVICE_CALLS, DeviceProfile, Profile
from gpudra.vendors.mock.profile_mig import MigDeviceProfile

_T = TypeVar("_T")
_HANDLE_BASE: Final = 0x6770_0000  # fake addresses; handles are never dereferenced
_HANDLE_STRIDE: Final = 0x10

#: What a handle names: ("gpu", index) | ("mig", index, mig) | ("gi", index, gi_id) | ("ci", index, gi, ci)
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
        self.device_errors(call, self.profile.devices[key[1]])
        if key[0] == "mig":
            self.mig_errors(call, self.profile.devices[key[1]].mig_devices[key[2]])
        return key

    def gpu(self, call: str, handle: Any) -> DeviceProfile:
        return self.profile.devices[self.resolve(call, handle, ("gpu",))[1]]

    def gpu_or_mig(self, call: str, handle: Any) -> tuple[DeviceProfile, MigDeviceProfile | None]:
        key = self.resolve(call, handle, ("gpu", "mig"))
        device = self.profile.devices[key[1]]
        return device, (device.mig_devices[key[2]] if key[0] == "mig" else None)

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
