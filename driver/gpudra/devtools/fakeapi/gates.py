"""Feature-gate emulation: fields of a disabled feature are silently dropped on write, as the apiserver does.

A field survives with its gate off only when the object being updated already used the feature ("ratcheting"),
exactly like the apiserver's ``dropDisabledFields``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["DEFAULT_GATES", "FeatureGates", "drop_disabled_fields"]

DRA_DEVICE_TAINTS: Final = "DRADeviceTaints"
DRA_PARTITIONABLE_DEVICES: Final = "DRAPartitionableDevices"
DRA_CONSUMABLE_CAPACITY: Final = "DRAConsumableCapacity"

#: Defaults of Kubernetes 1.34: all three alpha, off.
DEFAULT_GATES: Final[Mapping[str, bool]] = {
    DRA_DEVICE_TAINTS: False,
    DRA_PARTITIONABLE_DEVICES: False,
    DRA_CONSUMABLE_CAPACITY: False,
}

JSON = dict[str, Any]


class FeatureGates:
    """Known gates with their defaults, overridden by the caller's values (unknown names are rejected)."""

    def __init__(self, overrides: Mapping[str, bool] | None = None) -> None:
        unknown = set(overrides or {}) - set(DEFAULT_GATES)
        if unknown:
            raise ValueError(
                f"unknown feature gate(s): {', '.join(sorted(unknown))}; known: {', '.join(DEFAULT_GATES)}"
            )
        self._gates = {**DEFAULT_GATES, **(overrides or {})}

    def enabled(self, name: str) -> bool:
        return self._gates[name]

    def as_dict(self) -> dict[str, bool]:
        return dict(self._gates)


def _devices(slice_obj: JSON | None) -> list[JSON]:
    if slice_obj is None:
        return []
    return list((slice_obj.get("spec") or {}).get("devices") or [])


def _taints_in_use(slice_obj: JSON | None) -> bool:
    return any(d.get("taints") for d in _devices(slice_obj))


def _partitionable_in_use(slice_obj: JSON | None) -> bool:
    if slice_obj is None:
        return False
    spec = slice_obj.get("spec") or {}
    if spec.get("sharedCounters") or spec.get("perDeviceNodeSelection") is not None:
        return True
    keys = ("nodeName", "nodeSelector", "allNodes")
    return any(
        d.get("consumesCounters") or any(d.get(k) is not None for k in keys) for d in _devices(slice_obj)
    )


def _consumable_in_use(slice_obj: JSON | None) -> bool:
    for device in _devices(slice_obj):
        if device.get("allowMultipleAllocations") is not None:
            return True
        if any(c.get("requestPolicy") is not None for c in (device.get("capacity") or {}).values()):
            return True
    return False


def drop_disabled_fields(new: JSON, old: JSON | None, gates: FeatureGates) -> None:
    """Remove, in place, the ResourceSlice fields of disabled features unless ``old`` already used them."""
    spec = new.get("spec") or {}
    devices = _devices(new)
    if not (gates.enabled(DRA_DEVICE_TAINTS) or _taints_in_use(old)):
        for device in devices:
            device.pop("taints", None)
    if not (gates.enabled(DRA_PARTITIONABLE_DEVICES) or _partitionable_in_use(old)):
        spec.pop("sharedCounters", None)
        spec.pop("perDeviceNodeSelection", None)
        for device in devices:
            for key in ("consumesCounters", "nodeName", "nodeSelector", "allNodes"):
                device.pop(key, None)
    if not (gates.enabled(DRA_CONSUMABLE_CAPACITY) or _consumable_in_use(old)):
        for device in devices:
            device.pop("allowMultipleAllocations", None)
            for capacity in (device.get("capacity") or {}).values():
                capacity.pop("requestPolicy", None)
