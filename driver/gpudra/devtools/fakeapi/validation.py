"""ResourceSlice validation with the apiserver's field paths and messages (``resource.k8s.io/v1``).

Written independently from the documented rules (see ``/work/shared/DRA-FACTS.md``): the driver's own slice
code is deliberately not used, so a bug there cannot hide here. Input is the decoded JSON object after
feature-gated fields were dropped; output is every field error found, in the apiserver's order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from gpudra.devtools.fakeapi import formats
from gpudra.devtools.fakeapi.formats import invalid_each, required, too_long, too_many
from gpudra.devtools.fakeapi.status import FieldError

MAX_DEVICES: Final = 128
MAX_DEVICES_ADVANCED: Final = 64  # any device with taints or consumesCounters
MAX_ATTRS_AND_CAPS: Final = 32
MAX_ID: Final = 32
MAX_DOMAIN: Final = 63
MAX_VALUE: Final = 64
MAX_POOL_NAME: Final = 253
MAX_COUNTER_SETS: Final = 8
MAX_COUNTERS: Final = 32
MAX_CONSUMPTIONS: Final = 2
MAX_TAINTS: Final = 16
_KEY_TRUNCATE: Final = MAX_DOMAIN + 1 + MAX_ID
_TAINT_EFFECTS: Final = ("NoExecute", "NoSchedule", "None")
_ATTRIBUTE_FIELDS: Final = ("int", "bool", "string", "version")
_NODE_ONE_OF: Final = (
    "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required"
)
_DEVICE_ONE_OF: Final = (
    "exactly one of `nodeName`, `nodeSelector`, or `allNodes` is required when `perDeviceNodeSelection` "
    "is set to true in the ResourceSlice spec"
)
_NUM: Final = r"(0|[1-9]\d*)"
_PRE: Final = r"(0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
_BUILD: Final = r"[0-9a-zA-Z-]+"
SEMVER_RE: Final = re.compile(
    rf"{_NUM}\.{_NUM}\.{_NUM}(-{_PRE}(\.{_PRE})*)?(\+{_BUILD}(\.{_BUILD})*)?", re.ASCII
)

JSON = dict[str, Any]


def _invalid(path: str, value: object, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", path, detail, value)


def _size(text: str) -> int:
    return len(text.encode())


def validate_slice(obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> list[FieldError]:
    """All field errors of a ResourceSlice create (``old`` is None) or update."""
    meta = obj.get("metadata") or {}
    errors = formats.object_name(meta.get("name", ""), meta.get("generateName", ""))
    old_spec = None if old is None else (old.get("spec") or {})
    return errors + _spec(obj.get("spec") or {}, old_spec)


def _spec(spec: JSON, old: JSON | None) -> list[FieldError]:
    errors = formats.driver_name(spec.get("driver", ""), "spec.driver")
    errors += _pool(spec.get("pool") or {})
    if old is not None:
        errors += _immutable(
            (spec.get("pool") or {}).get("name", ""),
            (old.get("pool") or {}).get("name", ""),
            "spec.pool.name",
        )
        errors += _immutable(spec.get("driver", ""), old.get("driver", ""), "spec.driver")
        errors += _immutable(spec.get("nodeName"), old.get("nodeName"), "spec.nodeName")
    errors += _node_selection(spec)
    if "sharedCounters" in spec and "devices" in spec:
        errors.append(_invalid("spec", "", "only one of `sharedCounters` or `devices` is allowed"))
    devices: list[JSON] = spec.get("devices") or []
    limit = (
        MAX_DEVICES_ADVANCED
        if any(d.get("taints") or d.get("consumesCounters") for d in devices)
        else MAX_DEVICES
    )
    old_devices = {d.get("name"): d for d in (old or {}).get("devices") or []}
    per_device = spec.get("perDeviceNodeSelection") is True
    errors += _set(
        devices, limit, "spec.devices", lambda d, p: _device(d, old_devices.get(d.get("name")), p, per_device)
    )
    errors += _set(spec.get("sharedCounters") or [], MAX_COUNTER_SETS, "spec.sharedCounters", _counter_set)
    return errors


def _immutable(new: object, old: object, path: str) -> list[FieldError]:
    return [] if new == old else [_invalid(path, new, "field is immutable")]


def _pool(pool: JSON) -> list[FieldError]:
    name: str = pool.get("name", "")
    errors: list[FieldError] = []
    if not name:
        errors.append(required("spec.pool.name"))
    else:
        if _size(name) > MAX_POOL_NAME:
            errors.append(too_long("spec.pool.name", MAX_POOL_NAME))
        for part in name.split("/"):
            errors += invalid_each("spec.pool.name", part, formats.dns_subdomain(part))
    count = pool.get("resourceSliceCount", 0)
    if count <= 0:
        errors.append(_invalid("spec.pool.resourceSliceCount", count, "must be greater than zero"))
    generation = pool.get("generation", 0)
    if generation < 0:
        errors.append(_invalid("spec.pool.generation", generation, "must be greater than or equal to zero"))
    return errors


def _node_selection(spec: JSON) -> list[FieldError]:
    errors: list[FieldError] = []
    chosen: list[str] = []
    node_name = spec.get("nodeName")
    if node_name is not None:
        if node_name:
            chosen.append("`nodeName`")
            errors += invalid_each("spec.nodeName", node_name, formats.dns_subdomain(node_name))
        else:
            errors.append(
                _invalid("spec.nodeName", node_name, "must be either unset or set to a non-empty string")
            )
    if spec.get("nodeSelector") is not None:
        chosen.append("`nodeSelector`")
        errors += _node_selector(spec["nodeSelector"], "spec.nodeSelector", single_term=True)
    for key in ("allNodes", "perDeviceNodeSelection"):
        if spec.get(key) is True:
            chosen.append(f"`{key}`")
        elif spec.get(key) is not None:
            errors.append(_invalid(f"spec.{key}", spec[key], "must be either unset or set to true"))
    if not chosen:
        errors.append(required("spec", _NODE_ONE_OF))
    elif len(chosen) > 1:
        errors.append(
            _invalid("spec", "{" + ", ".join(chosen) + "}", _NODE_ONE_OF + ", but multiple fields are set")
        )
    return errors


def _node_selector(selector: JSON, path: str, single_term: bool) -> list[FieldError]:
    terms = selector.get("nodeSelectorTerms") or []
    if not terms:
        return [required(f"{path}.nodeSelectorTerms", "must have at least one node selector term")]
    if single_term and len(terms) != 1:
        return [_invalid(f"{path}.nodeSelectorTerms", terms, "must have exactly one node selector term")]
    return []


def _set(items: list[JSON], limit: int, path: str, check: Any, key: str = "name") -> list[FieldError]:
    """``validateSet``: too many items short-circuits; then each item; then duplicate keys."""
    if len(items) > limit:
        return [too_many(path, len(items), limit)]
    errors: list[FieldError] = []
    for index, item in enumerate(items):
        errors += check(item, f"{path}[{index}]")
    seen: set[str] = set()
    for index, item in enumerate(items):
        value = item.get(key, "")
        if value in seen:
            errors.append(FieldError("FieldValueDuplicate", f"{path}[{index}]", value=value))
        seen.add(value)
    return errors


def _device(device: JSON, old: JSON | None, path: str, per_device: bool) -> list[FieldError]:
    name: str = device.get("name", "")
    errors = invalid_each(f"{path}.name", name, formats.dns_label(name))
    attributes: JSON = device.get("attributes") or {}
    capacity: JSON = device.get("capacity") or {}
    total = len(attributes) + len(capacity)
    if total > MAX_ATTRS_AND_CAPS:
        errors.append(
            _invalid(
                path,
                total,
                f"the total number of attributes and capacities must not exceed {MAX_ATTRS_AND_CAPS}",
            )
        )
    errors += _map(attributes, f"{path}.attributes", _attribute)
    if old is None or (old.get("capacity") or {}) != capacity:
        multiple = device.get("allowMultipleAllocations") is True
        errors += _map(capacity, f"{path}.capacity", lambda c, p: _capacity(c, p, multiple))
    taints: list[JSON] = device.get("taints") or []
    if old is None or (old.get("taints") or []) != taints:
        if len(taints) > MAX_TAINTS:
            errors.append(too_many(f"{path}.taints", len(taints), MAX_TAINTS))
        else:
            for index, taint in enumerate(taints):
                errors += _taint(taint, f"{path}.taints[{index}]")
    errors += _set(
        device.get("consumesCounters") or [],
        MAX_CONSUMPTIONS,
        f"{path}.consumesCounters",
        _consumption,
        key="counterSet",
    )
    return errors + _device_nodes(device, path, per_device)


def _device_nodes(device: JSON, path: str, per_device: bool) -> list[FieldError]:
    present = [key for key in ("nodeName", "nodeSelector", "allNodes") if device.get(key) is not None]
    if not per_device:
        if present:
            return [
                _invalid(
                    path,
                    None,
                    "`nodeName`, `nodeSelector` and `allNodes` can only be set if "
                    "`perDeviceNodeSelection` is set to true in the ResourceSlice spec",
                )
            ]
        return []
    errors: list[FieldError] = []
    chosen: list[str] = []
    if device.get("nodeName") is not None:
        if device["nodeName"]:
            chosen.append("`nodeName`")
            errors += invalid_each(
                f"{path}.nodeName", device["nodeName"], formats.dns_subdomain(device["nodeName"])
            )
        else:
            errors.append(_invalid(f"{path}.nodeName", "", "must not be empty"))
    if device.get("nodeSelector") is not None:
        chosen.append("`nodeSelector`")
        errors += _node_selector(device["nodeSelector"], f"{path}.nodeSelector", single_term=False)
    if device.get("allNodes") is True:
        chosen.append("`allNodes`")
    elif device.get("allNodes") is not None:
        errors.append(_invalid(f"{path}.allNodes", device["allNodes"], "must be either unset or set to true"))
    if not chosen:
        errors.append(required(path, _DEVICE_ONE_OF))
    elif len(chosen) > 1:
        errors.append(_invalid(path, "{" + ", ".join(chosen) + "}", _DEVICE_ONE_OF))
    return errors


def _map(entries: JSON, path: str, check: Any, limit: int = -1, key_check: Any = None) -> list[FieldError]:
    """``validateMap``: key errors name the map (not the key); value errors name ``map[key]``."""
    if 0 <= limit < len(entries):
        return [too_many(path, len(entries), limit)]
    errors: list[FieldError] = []
    for key, value in entries.items():
        errors += (key_check or _qualified_name)(key, path)
        errors += check(value, f"{path}[{_truncate(key, _KEY_TRUNCATE)}]")
    return errors


def _truncate(text: str, limit: int) -> str:
    limit = max(limit, 16)
    if len(text) <= limit:
        return text
    remaining = limit - 3
    return text[: (remaining + 1) // 2] + "..." + text[len(text) - remaining // 2 :]


def _qualified_name(name: str, path: str) -> list[FieldError]:
    parts = name.split("/")
    if len(parts) == 1:
        return _c_identifier(name, path)
    if len(parts) > 2:
        return [_invalid(path, name, "must not contain more than one slash")]
    domain, ident = parts
    errors = (
        formats.driver_name(domain, path) if domain else [_invalid(path, "", "the domain must not be empty")]
    )
    errors += _c_identifier(ident, path) if ident else [_invalid(path, "", "the name must not be empty")]
    return errors


def _c_identifier(ident: str, path: str) -> list[FieldError]:
    errors = [too_long(path, MAX_ID)] if _size(ident) > MAX_ID else []
    return errors + invalid_each(path, ident, formats.c_identifier(ident))


def _attribute(attribute: JSON, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    present = [key for key in _ATTRIBUTE_FIELDS if attribute.get(key) is not None]
    if "string" in present and _size(attribute["string"]) > MAX_VALUE:
        errors.append(too_long(f"{path}.string", MAX_VALUE))
    if "version" in present:
        version: str = attribute["version"]
        if not SEMVER_RE.fullmatch(version):
            errors.append(
                _invalid(f"{path}.version", version, "must be a string compatible with semver.org spec 2.0.0")
            )
        if _size(version) > MAX_VALUE:
            errors.append(too_long(f"{path}.version", MAX_VALUE))
    if not present:
        errors.append(_invalid(path, "", "exactly one value must be specified"))
    elif len(present) > 1:
        shown = {
            go: attribute.get(key) for key, go in zip(_ATTRIBUTE_FIELDS, _GO_ATTRIBUTE_FIELDS, strict=True)
        }
        errors.append(_invalid(path, shown, "exactly one value must be specified"))
    return errors


_GO_ATTRIBUTE_FIELDS: Final = ("IntValue", "BoolValue", "StringValue", "VersionValue")


def _capacity(capacity: JSON, path: str, multiple: bool) -> list[FieldError]:
    if capacity.get("requestPolicy") is not None and not multiple:
        return [
            FieldError(
                "FieldValueForbidden", f"{path}.requestPolicy", "allowMultipleAllocations must be true"
            )
        ]
    return []


def _taint(taint: JSON, path: str) -> list[FieldError]:
    key: str = taint.get("key", "")
    errors = invalid_each(f"{path}.key", key, formats.label_key(key))
    value: str = taint.get("value", "")
    if value:
        errors += invalid_each(f"{path}.value", value, formats.label_value(value))
    effect: str = taint.get("effect", "")
    if not effect:
        errors.append(required(f"{path}.effect"))
    elif effect not in _TAINT_EFFECTS:
        supported = ", ".join(f'"{e}"' for e in _TAINT_EFFECTS)
        errors.append(
            FieldError("FieldValueNotSupported", f"{path}.effect", f"supported values: {supported}", effect)
        )
    return errors


def _counter_name(name: str, path: str) -> list[FieldError]:
    return invalid_each(path, name, formats.dns_label(name))


def _counters(counters: JSON, path: str) -> list[FieldError]:
    if not counters:
        return [required(path)]
    return _map(counters, path, lambda _c, _p: [], limit=MAX_COUNTERS, key_check=_counter_name)


def _counter_set(counter_set: JSON, path: str) -> list[FieldError]:
    name: str = counter_set.get("name", "")
    errors = _counter_name(name, f"{path}.name") if name else [required(f"{path}.name")]
    return errors + _counters(counter_set.get("counters") or {}, f"{path}.counters")


def _consumption(consumption: JSON, path: str) -> list[FieldError]:
    name: str = consumption.get("counterSet", "")
    errors = _counter_name(name, f"{path}.counterSet") if name else [required(f"{path}.counterSet")]
    return errors + _counters(consumption.get("counters") or {}, f"{path}.counters")
