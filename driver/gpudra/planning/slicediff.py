"""Does a ResourceSlice in the API still say what we published? (pure)

The publisher asks this for every slice on every watch event. Only what gpudra owns is compared: the spec,
our label, our owner reference. Capacities compare by value (the apiserver returns quantities in canonical
form), and server-set metadata, other people's labels and fields we do not set are ignored, so server
defaulting can never cause an endless rewrite loop.
"""

from __future__ import annotations

from collections.abc import Mapping

from gpudra.model import k8stypes
from gpudra.model.quantity import quantities_equal


def _owned_equal(desired: object, actual: object) -> bool:
    """Equal in all ``desired`` sets: keys only ``actual`` has are ignored, a missing key equals an empty
    list/map (the apiserver omits empty fields), scalars agree in type too (True is not 1)."""
    if isinstance(desired, Mapping | list) and not desired and actual is None:
        return True
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(_owned_equal(v, actual.get(k)) for k, v in desired.items())
    if isinstance(desired, list):
        if not isinstance(actual, list) or len(actual) != len(desired):
            return False
        return all(map(_owned_equal, desired, actual))
    return type(desired) is type(actual) and desired == actual


def _quantity_equal(want: object, have: object) -> bool:
    try:
        return isinstance(want, str) and isinstance(have, str) and quantities_equal(want, have)
    except ValueError:
        return False


def _map_equal(desired: object, actual: object, capacity: bool) -> bool:
    """Attribute and capacity maps are wholly ours: an extra or a missing key is a difference."""
    want, have = desired or {}, actual or {}
    if not isinstance(want, Mapping) or not isinstance(have, Mapping) or want.keys() != have.keys():
        return False
    for key, value in want.items():
        other = have[key]
        if not isinstance(value, Mapping) or not isinstance(other, Mapping):
            return False
        if capacity:
            rest = {k: v for k, v in value.items() if k != "value"}
            if not _quantity_equal(value.get("value"), other.get("value")) or not _owned_equal(rest, other):
                return False
        elif value.keys() != other.keys() or not _owned_equal(value, other):
            return False
    return True


#: Device lists that are wholly ours: one the API holds that we no longer want (a taint of a device that
#: healed) is a difference, not a field we do not set.
_OWNED_LISTS = ("taints", "consumesCounters")


def _device_equal(desired: Mapping[str, object], actual: object) -> bool:
    if not isinstance(actual, Mapping):
        return False
    rest = {k: v for k, v in desired.items() if k not in ("attributes", "capacity", *_OWNED_LISTS)}
    return (
        _map_equal(desired.get("attributes"), actual.get("attributes"), capacity=False)
        and _map_equal(desired.get("capacity"), actual.get("capacity"), capacity=True)
        and all(_owned_equal(desired.get(k) or [], actual.get(k) or []) for k in _OWNED_LISTS)
        and _owned_equal(rest, actual)
    )


def _spec_equal(desired: Mapping[str, object], actual: Mapping[str, object]) -> bool:
    want, have = desired.get("devices") or [], actual.get("devices") or []
    if not isinstance(want, list) or not isinstance(have, list) or len(want) != len(have):
        return False
    rest = {k: v for k, v in desired.items() if k != "devices"}
    return all(map(_device_equal, want, have)) and _owned_equal(rest, actual)


def slice_content_equal(desired: k8stypes.ResourceSlice, actual: k8stypes.ResourceSlice) -> bool:
    """True when ``actual`` (as read from the API) already holds everything ``desired`` says.

    Compared: the name, our labels, our owner references and all we set in ``spec`` (driver, nodeName,
    pool, devices in order). Capacities compare numerically ("1048576000" equals the canonical
    "1048576k"). Ignored: server-set metadata (uid, resourceVersion, managedFields, ...), labels and owner
    references we did not set, and fields we do not set that the server may default.
    """
    want_meta, have_meta = desired.get("metadata", {}), actual.get("metadata", {})
    if "name" in want_meta and want_meta["name"] != have_meta.get("name"):
        return False
    if not _owned_equal(want_meta.get("labels", {}), have_meta.get("labels", {})):
        return False
    have_refs = have_meta.get("ownerReferences", [])
    for ref in want_meta.get("ownerReferences", []):
        if not any(_owned_equal(ref, have) for have in have_refs):
            return False
    return _spec_equal(desired.get("spec", {}), actual.get("spec", {}))


def _missing_keys(sent: Mapping[str, object], kept: object, path: str) -> list[str]:
    if not isinstance(kept, Mapping):
        return [path] if sent else []
    out = []
    for key, value in sent.items():
        if key not in kept:
            if value not in ({}, [], None):
                out.append(f"{path}.{key}")
        elif isinstance(value, Mapping):
            out.extend(_missing_keys(value, kept[key], f"{path}.{key}"))
    return out


def dropped_fields(sent: k8stypes.ResourceSlice, kept: k8stypes.ResourceSlice) -> list[str]:
    """Paths present in what we wrote but absent from what the API server stored, e.g.
    ``spec.devices[gpu-0].taints`` when the DRADeviceTaints gate is off. Devices are named, not indexed."""
    sent_spec: Mapping[str, object] = sent.get("spec", {})
    kept_spec: Mapping[str, object] = kept.get("spec", {})
    out = _missing_keys({k: v for k, v in sent_spec.items() if k != "devices"}, kept_spec, "spec")
    raw = kept_spec.get("devices")
    kept_devices = {d.get("name"): d for d in raw if isinstance(d, Mapping)} if isinstance(raw, list) else {}
    for dev in sent.get("spec", {}).get("devices", []):
        name = dev.get("name", "")
        out.extend(_missing_keys(dev, kept_devices.get(name), f"spec.devices[{name}]"))
    return out
