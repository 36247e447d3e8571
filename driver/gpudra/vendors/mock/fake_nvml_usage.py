"""The fake pynvml's usage calls: energy, power, utilisation and memory in use, from the usage model.

What they answer follows NVML, over :mod:`~gpudra.vendors.mock.fake_usage`'s model:

* ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since the fake started), ``nvmlDeviceGetPowerUsage``
  (milliwatts) and ``nvmlDeviceGetUtilizationRates`` (``c_nvmlUtilization_t``: ``gpu`` percent busy, and
  ``memory``, the memory controller, modelled as half of it) for a GPU;
* NOT_SUPPORTED for each of them on a MIG device's handle (NVML reports them per GPU), and for utilisation
  on a GPU whose MIG mode is on (NVML reports no utilisation then; nvidia-smi shows N/A);
* ``nvmlDeviceGetMemoryInfo`` (in :mod:`~gpudra.vendors.mock.fake_nvml`) takes ``used`` from the model: a
  GPU's profile ``memory.used`` at idle, more as it gets busy; a MIG device's share of it per its own size.

A device's model keys are its UUID and its PCI bus id (``0000:1b:00.0``): a test names it by either.
"""

from __future__ import annotations

from typing import Any

import pynvml

from gpudra.vendors.mock.fake_nvml_base import FakeNvmlBase, fail
from gpudra.vendors.mock.fake_usage import FakeReading, UsageModel
from gpudra.vendors.sysfs import normalize_pci_bus_id


class FakeUsageCalls(FakeNvmlBase):
    usage: UsageModel  # set by FakeNvml's constructor

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        return round(self._reading("nvmlDeviceGetTotalEnergyConsumption", handle).energy_joules * 1000)

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        return round(self._reading("nvmlDeviceGetPowerUsage", handle).power_watts * 1000)

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        call = "nvmlDeviceGetUtilizationRates"
        with self.hardware_lock:
            index = self._gpu_index(call, handle)
            if self.view(index).enabled:
                raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
            util = self.usage.utilization(self.usage_keys(index), self.profile.devices[index].usage)
        return pynvml.c_nvmlUtilization_t(gpu=round(util * 100), memory=round(util * 50))

    def usage_keys(self, index: int) -> tuple[str, ...]:
        """The model keys of the GPU at ``index``: its UUID, then its bus id (either may be unknown)."""
        device = self.profile.devices[index]
        bus_id = normalize_pci_bus_id(device.pci.bus_id) if device.pci is not None else None
        keys = tuple(k for k in (device.uuid, bus_id) if k)
        return keys or (f"gpu-index-{index}",)

    def gpu_utilization(self, index: int) -> float:
        """The utilisation the model gives the GPU at ``index`` now (for its memory in use)."""
        return self.usage.utilization(self.usage_keys(index), self.profile.devices[index].usage)

    def _reading(self, call: str, handle: Any) -> FakeReading:
        with self.hardware_lock:
            index = self._gpu_index(call, handle)
            return self.usage.reading(self.usage_keys(index), self.profile.devices[index].usage)

    def _gpu_index(self, call: str, handle: Any) -> int:
        """The GPU a usage call is for; NOT_SUPPORTED for a MIG device's handle (after its own checks)."""
        key = self.resolve(call, handle, ("gpu", "mig"))
        if key[0] == "mig":
            self.mig_of(key)  # INVALID_ARGUMENT once it is gone, as for any call
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.index_of(key)
