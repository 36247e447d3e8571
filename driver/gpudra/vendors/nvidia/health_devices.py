"""The devices an NVML health watcher watches, and how an NVML event names one of them.

Built from the driver's handle map (UUID -> NVML handle of every GPU and MIG device the last discovery pass
found) and brought up to date whenever that map changes: a GPU is registered in the watcher's event set for
the event types it supports, and its volatile uncorrectable ECC counter is read once (its baseline); a MIG
device is placed by its parent GPU and its GPU/compute instance ids, which is how NVML names it in an event
(events come on the GPU's handle, with the instance ids). Every NVML call goes through
:class:`~gpudra.vendors.nvidia.calls.Nvml`; a call saying the GPU is lost raises :class:`GpuLost`.
Used by one thread (the watcher's).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from gpudra.vendors.nvidia.calls import Nvml, NvmlError

log = logging.getLogger(__name__)

#: NVML's "no instance" id (NVML_GPU_INSTANCE_ID_ANY = NVML_COMPUTE_INSTANCE_ID_ANY).
ANY_INSTANCE: Final = 0xFFFFFFFF
_MISSING: Final = object()


class GpuLost(Exception):
    """An NVML call about a GPU said it is lost (or that NVML cannot reach it at all)."""

    def __init__(self, err: NvmlError) -> None:
        super().__init__(str(err))
        self.err = err


@dataclass(slots=True, eq=False)
class WatchedGpu:
    """A GPU being watched: its handle, what can be watched on it, its MIG devices by instance ids."""

    uuid: str
    handle: Any
    address: int | None
    ready: bool = False  # registered and baselined (False: not yet, or its handle changed)
    events: bool = False  # registered for events in the watcher's set
    ecc: bool = False  # its volatile uncorrectable ECC counter is readable
    ecc_count: int | None = None  # the counter's last value (None: read it again as a new baseline)
    why: str = ""  # what cannot be watched, for humans
    migs: dict[tuple[int, int], str] = field(default_factory=dict)  # (GI id, CI id) -> MIG UUID

    @property
    def monitored(self) -> bool:
        return self.events or self.ecc


def address(handle: Any) -> int | None:
    """The address an NVML handle holds (how handles are compared); None when it holds none."""
    try:
        value = ctypes.cast(handle, ctypes.c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        return None
    return value if isinstance(value, int) else None


class Devices:
    """What the watcher knows of the devices of the handle map it last saw (see the module docstring)."""

    def __init__(self, nvml: Nvml, event_set: Any | None, event_mask: int) -> None:
        self._nvml = nvml
        self._event_set = event_set
        self._mask = event_mask
        self._uncorrected = nvml.constant("NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
        self._volatile = nvml.constant("NVML_VOLATILE_ECC", 0)
        self.gpus: dict[str, WatchedGpu] = {}
        self.by_address: dict[int, WatchedGpu] = {}
        self.mig_parent: dict[str, str | None] = {}  # MIG UUID -> its GPU's UUID (None: unknown)
        self._seen: Mapping[str, Any] | None = None
        self._known: dict[str, int | None] = {}

    def update(self, handles: Mapping[str, Any]) -> tuple[list[WatchedGpu], list[str], list[str]]:
        """Follow a new handle map: the GPUs to (re)set up (new, or their handle changed), the MIG devices
        placed anew, and the UUIDs no longer in the map. Cheap when the map is the one last seen."""
        if handles is self._seen:
            return [], [], []
        self._seen = handles
        now = {uuid: address(handle) for uuid, handle in handles.items()}
        if now == self._known:
            return [], [], []
        removed = sorted(self._known.keys() - now.keys())
        for uuid in removed:
            self._forget(uuid)
        added = [u for u in now if self._known.get(u, _MISSING) != now[u]]
        self._known = now
        is_mig = {u: self._is_mig(u, handles[u]) for u in added}
        gpus = [self._gpu(u, handles[u]) for u in added if not is_mig[u]]
        migs = [u for u in added if is_mig[u]]
        for uuid in migs:
            self._place(uuid, handles[uuid])
        return gpus, migs, removed

    def setup(self, gpu: WatchedGpu) -> None:
        """Register ``gpu`` for events and read its ECC baseline; :class:`GpuLost` when it does not answer."""
        events_why = self._register(gpu)
        ecc_why = self._baseline(gpu)
        gpu.why = "; ".join(w for w in (events_why, ecc_why) if w)
        gpu.ready = True

    def rebind(self, gpu: WatchedGpu, handle: Any) -> None:
        """``gpu`` answers under another handle now (it came back): set it up again under that one."""
        if gpu.address is not None:
            self.by_address.pop(gpu.address, None)
        gpu.handle, gpu.address, gpu.ready, gpu.ecc_count = handle, address(handle), False, None
        if gpu.address is not None:
            self.by_address[gpu.address] = gpu

    def read_ecc(self, gpu: WatchedGpu, handle: Any) -> int:
        """The GPU's volatile uncorrectable ECC count (raises :class:`NvmlError`)."""
        return int(
            self._nvml.call("nvmlDeviceGetTotalEccErrors", handle, self._uncorrected, self._volatile)
        )

    def gpu_of_event(self, handle: Any) -> WatchedGpu | None:
        """The watched GPU an event's device handle names (by address, else by asking its UUID)."""
        found = self.by_address.get(address(handle) or 0)
        if found is not None:
            return found
        try:
            return self.gpus.get(str(self._nvml.call("nvmlDeviceGetUUID", handle)))
        except NvmlError:
            return None

    def targets(self, gpu: WatchedGpu, gi: int, ci: int) -> list[tuple[str, str]]:
        """The devices an event on ``gpu`` with instance ids ``gi``/``ci`` is about, each with a note for
        humans: the MIG device of that compute instance, every MIG device of that GPU instance when the
        compute instance is not named, else the GPU (also for an instance no published MIG device has: a
        MIG device made at prepare has its GPU's health)."""
        if gi == ANY_INSTANCE:
            return [(gpu.uuid, "")]
        if ci != ANY_INSTANCE and (gi, ci) in gpu.migs:
            return [(gpu.migs[(gi, ci)], "")]
        if ci == ANY_INSTANCE:
            found = [(uuid, f" (GPU instance {gi})") for (g, _), uuid in sorted(gpu.migs.items()) if g == gi]
            if found:
                return found
        named = f"GPU instance {gi}" + (f", compute instance {ci}" if ci != ANY_INSTANCE else "")
        return [(gpu.uuid, f" ({named}, not a published MIG device)")]

    def migs_of(self, gpu: WatchedGpu) -> list[str]:
        return sorted(u for u, parent in self.mig_parent.items() if parent == gpu.uuid)

    # -- building -------------------------------------------------------------------------------------------
    def _gpu(self, uuid: str, handle: Any) -> WatchedGpu:
        gpu = self.gpus.get(uuid)
        if gpu is None:
            gpu = self.gpus[uuid] = WatchedGpu(uuid, handle, None)
        self.rebind(gpu, handle)
        return gpu

    def _forget(self, uuid: str) -> None:
        gpu = self.gpus.pop(uuid, None)
        if gpu is not None and gpu.address is not None:
            self.by_address.pop(gpu.address, None)
        parent = self.gpus.get(self.mig_parent.pop(uuid, None) or "")
        if parent is not None:
            parent.migs = {k: u for k, u in parent.migs.items() if u != uuid}

    def _is_mig(self, uuid: str, handle: Any) -> bool:
        try:
            answer = self._nvml.call("nvmlDeviceIsMigDeviceHandle", handle)
            return bool(int(getattr(answer, "value", answer)))  # pynvml returns the c_uint itself
        except (NvmlError, TypeError, ValueError):
            return uuid.startswith("MIG-")

    def _place(self, uuid: str, handle: Any) -> None:
        """Record MIG device ``uuid`` under its GPU by its instance ids (unplaced: its events come as the
        GPU's; it still has its GPU's health)."""
        self._forget(uuid)
        parent: WatchedGpu | None = None
        try:
            gpu_handle = self._nvml.call("nvmlDeviceGetDeviceHandleFromMigDeviceHandle", handle)
            parent = self.gpu_of_event(gpu_handle)
            gi = int(self._nvml.call("nvmlDeviceGetGpuInstanceId", handle))
            ci = int(self._nvml.call("nvmlDeviceGetComputeInstanceId", handle))
        except NvmlError as err:
            log.warning("MIG device %s: cannot tell its GPU or instance ids (%s); its Xids are reported "
                        "on its GPU", uuid, err)  # fmt: skip
            self.mig_parent[uuid] = parent.uuid if parent is not None else None
            return
        self.mig_parent[uuid] = parent.uuid if parent is not None else None
        if parent is not None:
            parent.migs[(gi, ci)] = uuid

    def _register(self, gpu: WatchedGpu) -> str:
        """Register ``gpu`` for the watched event types it supports; why not, if it is not registered."""
        gpu.events = False
        if self._event_set is None:
            return "no NVML event set"
        supported = self._mask
        try:
            supported = int(self._nvml.call("nvmlDeviceGetSupportedEventTypes", gpu.handle))
        except NvmlError as err:
            if err.device_fatal:
                raise GpuLost(err) from err  # otherwise let the registration say what it supports
        mask = self._mask & supported
        if not mask:
            return "NVML events: none of the Xid and double-bit ECC events is supported"
        try:
            self._nvml.call("nvmlDeviceRegisterEvents", gpu.handle, mask, self._event_set)
        except NvmlError as err:
            if err.device_fatal:
                raise GpuLost(err) from err
            return f"NVML events: {err.name}"
        gpu.events = True
        return ""

    def _baseline(self, gpu: WatchedGpu) -> str:
        gpu.ecc, gpu.ecc_count = False, None
        try:
            gpu.ecc_count = self.read_ecc(gpu, gpu.handle)
        except NvmlError as err:
            if err.device_fatal:
                raise GpuLost(err) from err
            return f"ECC counter: {err.name}"
        gpu.ecc = True
        return ""
