"""AMD container edits: ``/dev/kfd`` and the device's DRM render node."""

from __future__ import annotations

from gpudra.edits import DeviceEdits, EditsError, HostRoots
from gpudra.inventory import Device


def amd_device_edits(device: Device, roots: HostRoots) -> DeviceEdits:
    raise EditsError(f"device {device.uuid}: preparing AMD devices is not implemented yet")
