"""The ResourceSlice validation rules the driver checks before publishing (pure).

The apiserver enforces these too (``../shared/DRA-FACTS.md`` quotes its messages); checking them here turns
a value the API would reject into an omitted attribute with a warning (:mod:`gpudra.planning.slices`) or, for
a rule
only our own code can break, a ValueError — never a rejected write and a publishing loop.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Final

from gpudra.model import k8stypes
from gpudra.model.quantity import parse_quantity

_INT64_MAX: Final = 2**63 - 1
OBJECT_NAME_MAX: Final = 253
MAX_ATTRIBUTES_AND_CAPACITIES: Final = 32
MAX_VALUE_BYTES: Final = 64
_DOMAIN_MAX: Final = 63
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}", re.ASCII)
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_DNS_SUBDOMAIN: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.A)
_SEMVER_ID: Final = r"(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)"
_SEMVER: Final = re.compile(
    rf"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)(-{_SEMVER_ID}(\.{_SEMVER_ID})*)?"
    r"(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?",
    re.ASCII,
)
_BUS_ID: Final = re.compile(r"([0-9a-f]{4,8}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])", re.ASCII)
_INT64_MIN: Final = -(2**63)


# ---- API rules -----------------------------------------------------------------------------------------


def is_dns_label(text: str) -> bool:
    return _DNS_LABEL.fullmatch(text) is not None


def is_dns_subdomain(text: str) -> bool:
    return len(text) <= OBJECT_NAME_MAX and _DNS_SUBDOMAIN.fullmatch(text) is not None


def is_semver(text: str) -> bool:
    return _SEMVER.fullmatch(text) is not None


def check_qualified_name(name: str) -> None:
    """Raise ValueError unless ``name`` is a valid attribute/capacity name: ``[domain/]identifier``."""
    domain, _, ident = name.rpartition("/")
    if _IDENTIFIER.fullmatch(ident) is None:
        raise ValueError(f"attribute/capacity name {name!r}: {ident!r} is not a C identifier of <= 32 chars")
    if "/" in name and (len(domain) > _DOMAIN_MAX or not is_dns_subdomain(domain)):
        raise ValueError(f"attribute/capacity name {name!r}: domain must be a DNS subdomain of <= 63 chars")


def attribute_problem(attr: Mapping[str, object]) -> str | None:
    if len(attr) != 1:
        return "must set exactly one of int/bool/string/version"
    kind, value = next(iter(attr.items()))
    if kind == "bool":
        return None if isinstance(value, bool) else "bool value is not a bool"
    if kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool) and _INT64_MIN <= value <= _INT64_MAX
        return None if ok else "int value is not an int64"
    if kind not in ("string", "version") or not isinstance(value, str):
        return f"unknown value type {kind!r} or a value that is not a string"
    if len(value.encode()) > MAX_VALUE_BYTES:
        return f"{len(value.encode())}-byte value {value!r} exceeds the API limit of {MAX_VALUE_BYTES} bytes"
    return None if kind == "string" or is_semver(value) else f"{value!r} is not a strict semver 2.0 version"


def check_device(device: k8stypes.Device) -> None:
    """Raise ValueError when ``device`` breaks an API rule (name, attribute names and values, count)."""
    name = device.get("name", "")
    if not is_dns_label(name):
        raise ValueError(f"device name {name!r} is not a DNS label (<= 63 chars of [a-z0-9-])")
    attributes, capacity = device.get("attributes", {}), device.get("capacity", {})
    total = len(attributes) + len(capacity)
    if total > MAX_ATTRIBUTES_AND_CAPACITIES:
        raise ValueError(
            f"device {name}: {total} attributes + capacities, the API allows {MAX_ATTRIBUTES_AND_CAPACITIES}"
        )
    for key in [*attributes, *capacity]:
        check_qualified_name(key)
    for key, value in attributes.items():
        problem = attribute_problem(value)
        if problem:
            raise ValueError(f"device {name}: attribute {key}: {problem}")
    for key, cap in capacity.items():
        policy = cap.get("requestPolicy")
        if policy is not None:
            problem = request_policy_problem(cap["value"], policy, device.get("allowMultipleAllocations"))
            if problem:
                raise ValueError(f"device {name}: capacity {key}: requestPolicy: {problem}")


#: resource.k8s.io/v1 CapacityRequestPolicyDiscreteMaxOptions
MAX_VALID_VALUES: Final = 10


def request_policy_problem(
    value: str, policy: k8stypes.CapacityRequestPolicy, multiple: bool | None
) -> str | None:
    """What the apiserver would refuse in a capacity's ``requestPolicy`` (KEP-5075 validation), or None."""
    if multiple is not True:
        return "allowMultipleAllocations must be true"
    total = parse_quantity(value)
    values, valid_range = policy.get("validValues"), policy.get("validRange")
    if values and valid_range is not None:
        return "only one of validValues and validRange"
    if (values or valid_range is not None) and "default" not in policy:
        return "default is required with validValues or validRange"
    default = parse_quantity(policy["default"]) if "default" in policy else None
    if values:
        options = [parse_quantity(v) for v in values]
        if len(options) > MAX_VALID_VALUES or options != sorted(options) or any(o > total for o in options):
            return f"validValues must be <= {MAX_VALID_VALUES} ascending values <= the capacity"
        return None if default in options else "default is not one of validValues"
    if valid_range is None or default is None:
        return None
    return _range_problem(total, default, valid_range)


def _range_problem(
    total: Fraction, default: Fraction, valid: k8stypes.CapacityRequestPolicyRange
) -> str | None:
    if "min" not in valid:
        return "validRange.min is required"
    low = parse_quantity(valid["min"])
    high = parse_quantity(valid["max"]) if "max" in valid else None
    if not 0 <= low <= default <= (total if high is None else min(high, total)):
        return "0 <= min <= default <= max <= the capacity does not hold"
    if "step" in valid:
        step = parse_quantity(valid["step"])
        aligned = [(v - low) / step for v in (default, high) if v is not None]
        if step <= 0 or low + step > total or any(n.denominator != 1 for n in aligned):
            return "default and max must be min + n * step, and min + step <= the capacity"
    return None


def normalize_bus_id(bus_id: str) -> str | None:
    """``00000000:1B:00.0`` -> ``0000:1b:00.0`` (Kubernetes' form); None when it is not a PCI address."""
    match = _BUS_ID.fullmatch(bus_id.strip().lower())
    if match is None or int(match.group(1), 16) > 0xFFFF:  # a 5+ digit domain (Intel VMD) has no such form
        return None
    domain, bus, dev, fn = match.groups()
    return f"{int(domain, 16):04x}:{bus}:{dev}.{fn}"
