"""Plumbing of the fake pynvml: init state, call log, fault injection, and the opaque handles it hands out.

Handles are real ctypes pointer types (``pynvml.c_nvmlDevice_t`` for GPUs and MIG devices,
``c_nvmlGpuInstance_t``, ``c_nvmlComputeInstance_t``) holding made-up addresses that are never dereferenced;
each maps back to what it names. The same object always gets the same handle, as with NVML.

The hardware can change under a running fake (:meth:`FakeNvmlBase.serve`: the mock's profile file was
edited), and so can its MIG instances (the fake's own MIG calls). A handle names a device, not a position: a
GPU keeps its handle while it is still there (same UUID), wherever it now is in the enumeration, and so does
a MIG device (same UUID on the same GPU); GPU and compute instances are named by their ids and their
creation serial, so the handle of a destroyed instance never names a new one with the same id. A handle of a
GPU that is gone raises GPU_IS_LOST, one of a MIG device or instance that is gone (destroyed, or MIG mode
switched off) INVALID_ARGUMENT.

The MIG state the calls change (:mod:`~gpudra.vendors.mock.fake_mig_state`) is kept in memory or in a state
file; what exists on each GPU is its :class:`~gpudra.vendors.mock.fake_mig_layout.MigView`, computed once
per change.
"""

from __future__ import annotations

import ctypes
import itertools
import threading
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, TypeVar

import pynvml

from gpudra.vendors.mock.fake_mig_layout import GiView, MigView, build_view, gpu_keys, reconcile
from gpudra.vendors.mock.fake_mig_state import GpuMigState, MigState, MigStateStore
from gpudra.vendors.mock.profile import ALL_DEVICE_CALLS, DeviceProfile, Profile
from gpudra.vendors.mock.profile_mig import MigDeviceProfile

_T = TypeVar("_T")
_HANDLE_BASE: Final = 0x6770_0000  # fake addresses; handles are never dereferenced
_HANDLE_STRIDE: Final = 0x10
_REEXPORTED: Final = ("NVML_", "NVMLError", "c_nvml", "nvmlPciInfo", "nvmlGpuFabricInfo", "nvmlEventType")

#: What a handle names: ("gpu", slot) | ("mig", slot, mig) | ("gi", slot, gi_id, serial) |
#: ("ci", slot, gi_id, ci_id, serial), where ``slot`` names a GPU for as long as it is present, ``mig`` is the
#: MIG device's UUID (its index in the GPU's list when its UUID is unknown or not unique there) and
#: ``serial`` is the instance's creation serial (0 for the profile's pre-made ones).
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


def uint_target(ref: object) -> ctypes.c_uint:
    """The ``c_uint`` behind ``ctypes.byref(count)`` or ``ctypes.pointer(count)``; TypeError otherwise (real
    NVML would write through whatever it was given)."""
    target = getattr(ref, "_obj", None)
    if target is None and isinstance(ref, ctypes._Pointer):
        target = ref.contents
    if not isinstance(target, ctypes.c_uint):
        raise TypeError(f"expected ctypes.byref(<c_uint>), got {type(ref).__name__}")
    return target


def out_array(ref: object, kind: type) -> tuple[Any, int | None]:
    """A caller-allocated array of ``kind`` to fill (a ctypes array, ``byref`` of one, or a pointer to its
    first element) and its length when known; ``(None, None)`` for NULL. TypeError for anything else: real
    NVML would write into it as ``kind[]``."""
    if ref is None:
        return None, None
    target = getattr(ref, "_obj", ref)
    if isinstance(target, ctypes.Array) and target._type_ is kind:
        return target, len(target)
    if isinstance(target, ctypes._Pointer) and target._type_ is kind:
        return target, None
    raise TypeError(f"expected an array of {kind.__name__} (or None), got {type(ref).__name__}")


class FakeNvmlBase:
    """Module-like stand-in for ``pynvml``; one instance is one simulated node (and one NVML library)."""

    NVMLError = pynvml.NVMLError

    def __init__(self, profile: Profile, state_file: Path | None = None) -> None:
        """``state_file``: where the MIG state lives across processes (see
        :mod:`~gpudra.vendors.mock.fake_mig_state`); loaded now (ProfileError when damaged), written after
        every change. Without one it lives in this object only."""
        self.profile = profile
        self.init_count = 0  # like NVML's reference count: nvmlInit increments, nvmlShutdown decrements
        self.calls: list[str] = []  # every call made, in order (for tests and debugging)
        #: Held by :meth:`serve` while the hardware changes, and by the calls a health watcher makes from
        #: its own thread (:mod:`~gpudra.vendors.mock.fake_nvml_events`), so those never see half a swap.
        self.hardware_lock = threading.RLock()
        self._addresses: dict[HandleKey, int] = {}
        self._keys: dict[int, HandleKey] = {}
        self._fresh_slots = itertools.count()
        self._slots = tuple(next(self._fresh_slots) for _ in profile.devices)  # device index -> slot
        self._index = {slot: i for i, slot in enumerate(self._slots)}
        self._store = MigStateStore(state_file)
        self._gpu_keys = gpu_keys(profile)
        self._views: dict[int, MigView] = {}  # slot -> what exists on that GPU now
        loaded = self._store.load()
        self._mig_state = reconcile(loaded, profile)
        if self._mig_state != loaded:
            self._store.save(self._mig_state)

    def serve(self, profile: Profile) -> None:
        """Show ``profile``'s hardware from the next call on, as the same library with the same handles.

        A GPU still present keeps its handle (matched by UUID: unique in both profiles, or equal at the
        same position), a lost one's handle raises GPU_IS_LOST; init state and the call log carry over, and
        so do the MIG instances the fake created on GPUs still there with MIG mode on (see
        :func:`~gpudra.vendors.mock.fake_mig_layout.reconcile`). Not atomic to calls in flight: call it
        between discovery passes (the mock does, under its lock). ``OSError`` when the state file cannot be
        written; nothing changes then.
        """
        with self.hardware_lock, self._store.lock:
            state = reconcile(self._mig_state, profile)
            if state != self._mig_state:
                self._store.save(state)
            old = [d.uuid for d in self.profile.devices]
            slots = carried_slots(old, self._slots, [d.uuid for d in profile.devices], self._fresh_slots)
            self.profile, self._slots, self._mig_state = profile, slots, state
            self._index = {slot: i for i, slot in enumerate(slots)}
            self._gpu_keys = gpu_keys(profile)
            self._views = {}  # last (see view())
            self.hardware_changed()

    def hardware_changed(self) -> None:
        """Called by :meth:`serve` once the new hardware shows (under :attr:`hardware_lock`): the NVML events
        the new profile brings are delivered here (:mod:`~gpudra.vendors.mock.fake_nvml_events`)."""

    def __getattr__(self, name: str) -> Any:
        """Re-export pynvml's constants, error classes and structure types — never its functions."""
        if name.startswith(_REEXPORTED):
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
        self.device_errors(call, self.device_of(key))
        if key[0] == "mig":
            self.mig_errors(call, self.mig_of(key))
        return key

    # -- what a handle names now ----------------------------------------------------------------------
    def gpu_handle(self, index: int) -> Any:
        """The handle of the GPU at enumeration ``index`` (which must exist)."""
        return self.handle(("gpu", self._slots[index]))

    def mig_handle(self, index: int, mig_index: int) -> Any:
        """The handle of MIG device ``mig_index`` of the GPU at ``index`` (both must exist)."""
        return self.handle(("mig", self._slots[index], self.view(index).keys[mig_index]))

    def gi_handle(self, index: int, gi: GiView) -> Any:
        return self.handle(("gi", self._slots[index], gi.id, gi.serial), pynvml.c_nvmlGpuInstance_t)

    def ci_handle(self, index: int, mig_index: int) -> Any:
        view = self.view(index)
        mig = view.migs[mig_index]
        key = (
            "ci",
            self._slots[index],
            mig.gpu_instance.id,
            mig.compute_instance.id,
            view.serials[mig_index],
        )
        return self.handle(key, pynvml.c_nvmlComputeInstance_t)

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
        return self.device_of(key), (self.mig_of(key) if key[0] == "mig" else None)

    # -- MIG layout -------------------------------------------------------------------------------------
    def view(self, index: int) -> MigView:
        """What MIG instances exist on the GPU at ``index`` now (computed once per change: the hot path)."""
        views = self._views  # before the state: a view built from a state a change replaced goes stale
        slot = self._slots[index]  # with the cache that change dropped, never into the new one
        view = views.get(slot)
        if view is None:
            device = self.profile.devices[index]
            view = views[slot] = build_view(device, self._mig_state.gpus.get(self._gpu_keys[index]))
        return view

    def mig_of(self, key: HandleKey) -> MigDeviceProfile:
        """The MIG device a ("mig", ...) key names, now; INVALID_ARGUMENT when it is gone."""
        view = self.view(self.index_of(key))
        if key[2] not in view.keys:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return view.migs[view.keys.index(key[2])]

    def gi_of(self, key: HandleKey) -> GiView:
        """The GPU instance a ("gi", ...) key names, now; INVALID_ARGUMENT when it is gone."""
        gi = self.view(self.index_of(key)).gi(key[2])
        if gi is None or gi.serial != key[3]:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return gi

    def ci_of(self, key: HandleKey) -> int:
        """The MIG device index of the compute instance a ("ci", ...) key names; INVALID_ARGUMENT if gone."""
        view = self.view(self.index_of(key))
        found = view.ci(key[2], key[3])
        if found is None or view.serials[found] != key[4]:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return found

    def gpu_state(self, index: int) -> GpuMigState:
        """The MIG changes made on the GPU at ``index`` (an empty entry when there are none)."""
        found = self._mig_state.gpus.get(self._gpu_keys[index])
        return found if found is not None else GpuMigState(basis=self.profile.devices[index].mig_mode)

    @property
    def mig_state(self) -> MigState:
        return self._mig_state

    def commit(self, index: int, gpu: GpuMigState, serial: int | None = None) -> None:
        """Make ``gpu`` the MIG state of the GPU at ``index`` (and ``serial`` the creation counter): saved
        first, so a state file that cannot be written changes nothing (the call fails with UNKNOWN)."""
        with self._store.lock:
            state = self._mig_state.with_gpu(self._gpu_keys[index], gpu)
            if serial is not None:
                state = MigState(gpus=state.gpus, serial=serial)
            try:
                self._store.save(state)
            except OSError as err:
                raise fail(pynvml.NVML_ERROR_UNKNOWN) from err
            self._mig_state, self._views = state, {}  # in this order (see view())

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
