"""The one narrow seam between gpudra and GPU hardware."""

from __future__ import annotations

from typing import Protocol

from gpudra.model.inventory import Inventory


class DiscoveryError(Exception):
    """The backend cannot discover at all (library missing, no GPUs, init failed). Message is for humans."""


class HardwareBackend(Protocol):
    """What the driver needs from hardware. Implementations: NVML (real or fake pynvml), AMD (later)."""

    name: str

    def discover(self) -> Inventory:
        """Enumerate devices. Per-device failures are skipped and reported in ``Inventory.warnings``."""
        ...

    def close(self) -> None:
        """Release the vendor library (nvmlShutdown); safe to call twice."""
        ...
