"""The health sections of a hardware profile: the NVML events a GPU delivers, the event types it supports
and its uncorrectable ECC counter.

Schema, inside a device::

    "event_types": ["xid", "double_bit_ecc", "single_bit_ecc"],
                                  # nvmlDeviceGetSupportedEventTypes; missing: these three (what data-centre
                                  # GPUs support); []: none; null: NOT_SUPPORTED. nvmlDeviceRegisterEvents
                                  # answers NOT_SUPPORTED for a type not in the list
    "ecc_uncorrected_volatile": 0,  # nvmlDeviceGetTotalEccErrors(handle, NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                    # NVML_VOLATILE_ECC); missing/null -> NOT_SUPPORTED (no ECC)
    "events": [
      {"id": "e1", "type": "xid", "value": 79},       # an Xid critical error event (value: the Xid)
      {"id": "e2", "type": "double_bit_ecc"},         # a double-bit ECC error event
      {"id": "e3", "type": "xid", "value": 94, "gpu_instance": 2, "compute_instance": 0}
    ]                                                  # attributed to a MIG device's GPU/compute instance

An event is delivered once, to the event sets registered for its type on that GPU, by the profile swap that
first shows its ``id`` (:meth:`~gpudra.vendors.mock.fake_nvml_base.FakeNvmlBase.serve`: the mock's profile
file was edited); the events of the profile a fake starts with happened before anyone listened. Ids are
unique in a profile. An event with ``gpu_instance`` (and optionally ``compute_instance``) carries those ids,
as NVML does for an Xid attributable to a MIG instance; without them it carries NVML's "any" id
(0xFFFFFFFF). The instance ids are not checked against the GPU's MIG devices: an event may name an instance
the node does not know.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from gpudra.vendors.mock.profile_json import Invalid, is_int, non_negative, obj, opt

#: The event types a profile names, in the order of their NVML bits.
EVENT_TYPES: Final = ("single_bit_ecc", "double_bit_ecc", "xid")
HEALTH_KEYS: Final = frozenset({"events", "event_types", "ecc_uncorrected_volatile"})
_EVENT_KEYS: Final = frozenset({"id", "type", "value", "gpu_instance", "compute_instance"})


@dataclass(frozen=True, slots=True)
class EventProfile:
    """One NVML event a GPU delivers (see the module docstring)."""

    id: str
    type: str  # one of EVENT_TYPES
    value: int = 0  # the Xid of an "xid" event (NVML's eventData)
    gpu_instance: int | None = None  # None: NVML_GPU_INSTANCE_ID_ANY
    compute_instance: int | None = None  # None: NVML_COMPUTE_INSTANCE_ID_ANY


class _WithEvents(Protocol):
    @property
    def events(self) -> tuple[EventProfile, ...]: ...


def health_section(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The ``DeviceProfile`` fields of a device's health keys."""
    return {
        "events": _events(raw.get("events"), f"{where}.events"),
        "event_types": _event_types(raw, where),
        "ecc_uncorrected_volatile": non_negative(raw, "ecc_uncorrected_volatile", where),
    }


def check_event_ids(devices: Sequence[_WithEvents]) -> None:
    """Every event id of the profile is unique (it names the event across profile swaps)."""
    seen: dict[str, str] = {}
    for i, device in enumerate(devices):
        for j, event in enumerate(device.events):
            where = f"devices[{i}].events[{j}].id"
            if event.id in seen:
                raise Invalid(f"{where}: {event.id!r} is also the id of {seen[event.id].removesuffix('.id')}")
            seen[event.id] = where


def _event_types(raw: dict[str, Any], where: str) -> tuple[str, ...] | None:
    if "event_types" not in raw:
        return EVENT_TYPES
    value = raw["event_types"]
    if value is None:
        return None
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise Invalid(f"{where}.event_types: expected a list of event type names or null, got {value!r}")
    unknown = sorted(set(value) - set(EVENT_TYPES))
    if unknown:
        known = ", ".join(EVENT_TYPES)
        raise Invalid(f"{where}.event_types: unknown event type(s) {unknown} (known: {known})")
    return tuple(t for t in EVENT_TYPES if t in value)


def _events(value: object, where: str) -> tuple[EventProfile, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid(f"{where}: expected a list of event objects, got {type(value).__name__}")
    return tuple(_event(item, f"{where}[{i}]") for i, item in enumerate(value))


def _event(item: object, where: str) -> EventProfile:
    raw = obj(item, where, _EVENT_KEYS)
    event_id = opt(raw, "id", str, where)
    if not event_id:
        raise Invalid(f"{where}.id: required, a non-empty string naming the event")
    kind = opt(raw, "type", str, where)
    if kind not in EVENT_TYPES:
        raise Invalid(f"{where}.type: expected one of {', '.join(EVENT_TYPES)}, got {raw.get('type')!r}")
    xid = raw.get("value")
    if kind == "xid" and not (isinstance(xid, int) and is_int(xid) and xid >= 0):
        raise Invalid(f"{where}.value: an xid event needs the Xid, a non-negative integer, got {xid!r}")
    if kind != "xid" and xid is not None:
        raise Invalid(f"{where}.value: only an xid event has a value")
    gi = non_negative(raw, "gpu_instance", where)
    ci = non_negative(raw, "compute_instance", where)
    if ci is not None and gi is None:
        raise Invalid(f"{where}.compute_instance: needs gpu_instance (the GPU instance holding it)")
    return EventProfile(event_id, kind, xid if isinstance(xid, int) else 0, gi, ci)
