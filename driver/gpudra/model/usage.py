"""What a device is doing right now: the vendor-neutral usage reading the usage sampler exports.

A vendor driver answers :class:`DeviceUsage` per device UUID (see
:class:`~gpudra.vendors.base.UsageReader`). A value its library does not report for that device is ``None``,
never a guess and never the parent GPU's value copied to a MIG device or partition: NVML reports power,
energy and utilisation per GPU only, so a MIG device's reading has its memory alone.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    """One device's readings at one moment; ``None``: not reported for this device."""

    #: Energy used since the GPU's driver loaded, in joules. Only rises, except when the driver reloads.
    energy_joules: float | None = None
    power_watts: float | None = None
    #: Fraction of the last sample period in which the device was busy, 0.0 to 1.0.
    utilization: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None  # what the library counts as the device's memory

    @property
    def empty(self) -> bool:
        return (
            self.energy_joules is None
            and self.power_watts is None
            and self.utilization is None
            and self.memory_used_bytes is None
            and self.memory_total_bytes is None
        )
