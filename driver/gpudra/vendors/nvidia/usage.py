"""Usage readings over NVML: energy, power, utilisation and memory in use, per GPU and MIG device.

For each device asked for (by UUID; its handle from the latest discovery, else ``nvmlDeviceGetHandleByUUID``
for a MIG device prepare created since), four calls:

* ``nvmlDeviceGetTotalEnergyConsumption``: millijoules since the driver loaded (Volta and newer);
* ``nvmlDeviceGetPowerUsage``: milliwatts now;
* ``nvmlDeviceGetUtilizationRates``: ``gpu``, the percentage of the last sample period in which a kernel ran;
* ``nvmlDeviceGetMemoryInfo``: ``used`` and ``total`` bytes (the MIG device's own memory, for a MIG
  handle).

What NVML reports per MIG device is its memory only: energy, power and utilisation answer NOT_SUPPORTED on
a MIG handle (power and energy are the parent GPU's, read on its handle), and a GPU in MIG mode has no
utilisation at all (NOT_SUPPORTED too). Those values are ``None``; nothing is copied from the parent.

:meth:`NvmlUsage.read` is this module's one translation of NVML's errors (raised by
:class:`~gpudra.vendors.nvidia.calls.Nvml` as :class:`~gpudra.vendors.nvidia.calls.NvmlError`):

* value absent (NOT_SUPPORTED, NO_PERMISSION, NOT_FOUND, a function this pynvml lacks): ``None``, and that
  call is not made again for that device for :data:`RETRY_ABSENT` readings (MIG mode may be switched off);
* device fatal (GPU_IS_LOST, UNKNOWN, ...): the device is left out of this reading (the health watcher
  reports the GPU; the next reading tries again);
* any other error: ``None`` for that value, and one warning per device, call and error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from gpudra.model.usage import DeviceUsage
from gpudra.vendors.nvidia.calls import Nvml, NvmlError

__all__ = ["RETRY_ABSENT", "DeviceUsage", "NvmlUsage"]

log = logging.getLogger(__name__)

#: Readings before a call that had no answer for a device (NOT_SUPPORTED, ...) is made for it again.
RETRY_ABSENT: Final = 60
ENERGY: Final = "nvmlDeviceGetTotalEnergyConsumption"
POWER: Final = "nvmlDeviceGetPowerUsage"
UTILIZATION: Final = "nvmlDeviceGetUtilizationRates"
MEMORY: Final = "nvmlDeviceGetMemoryInfo"


class _Lost(Exception):
    """The device cannot be read at all now."""


class NvmlUsage:
    """Reads usage through ``nvml``; ``handle(uuid)`` is the handle the latest discovery found (or None).
    Used by one thread at a time (the usage sampler); NVML itself is thread-safe."""

    def __init__(self, nvml: Nvml, handle: Callable[[str], Any | None]) -> None:
        self._nvml = nvml
        self._handle = handle
        self._round = 0
        self._absent: dict[tuple[str, str], int] = {}  # (uuid, call) -> the round it is asked again
        self._by_uuid: dict[str, Any] = {}  # handles of devices discovery did not give (created since)
        self._warned: set[tuple[str, str, str]] = set()

    def read(self, uuids: Iterable[str]) -> dict[str, DeviceUsage]:
        """The readings of the devices ``uuids`` that could be read; never raises."""
        self._round += 1
        wanted = set(uuids)
        out: dict[str, DeviceUsage] = {}
        for uuid in sorted(wanted):
            handle = self._lookup(uuid)
            if handle is None:
                continue
            try:
                out[uuid] = self._read_one(uuid, handle)
            except _Lost:
                self._by_uuid.pop(uuid, None)  # looked up again next time
        self._by_uuid = {u: h for u, h in self._by_uuid.items() if u in wanted}
        self._absent = {k: r for k, r in self._absent.items() if k[0] in wanted and r > self._round}
        return out

    def _read_one(self, uuid: str, handle: Any) -> DeviceUsage:
        energy = _count(self._value(uuid, ENERGY, handle))
        power = _count(self._value(uuid, POWER, handle))
        rates = self._value(uuid, UTILIZATION, handle)
        busy = _count(getattr(rates, "gpu", None))
        memory = self._value(uuid, MEMORY, handle)
        return DeviceUsage(
            energy_joules=None if energy is None else energy / 1000,
            power_watts=None if power is None else power / 1000,
            utilization=None if busy is None or busy > 100 else busy / 100,
            memory_used_bytes=_count(getattr(memory, "used", None)),
            memory_total_bytes=_count(getattr(memory, "total", None)),
        )

    def _value(self, uuid: str, function: str, handle: Any) -> Any | None:
        """One NVML answer under this module's error policy (see the module docstring)."""
        if self._absent.get((uuid, function), 0) > self._round:
            return None
        try:
            return self._nvml.call(function, handle)
        except NvmlError as err:
            if err.value_absent:
                self._absent[(uuid, function)] = self._round + RETRY_ABSENT
                return None
            if err.device_fatal:
                log.debug("usage of %s not read: %s", uuid, err)
                raise _Lost from err
            if (uuid, function, err.name) not in self._warned:
                self._warned.add((uuid, function, err.name))
                log.warning("usage of %s: %s failed (%s); that value is left out", uuid, function, err.name)
            return None

    def _lookup(self, uuid: str) -> Any | None:
        handle = self._handle(uuid) or self._by_uuid.get(uuid)
        if handle is not None or not uuid:
            return handle
        try:
            handle = self._nvml.call("nvmlDeviceGetHandleByUUID", uuid)
        except NvmlError:
            return None  # not on this node (any more): nothing to read
        self._by_uuid[uuid] = handle
        return handle


def _count(value: object) -> int | None:
    """A non-negative integer NVML answered; anything else is no answer."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value
