"""Random shapes for the sharing config tests: a good config of each shape and the path of each of its fields.

tests/unit/test_sharing_config.py puts random JSON at those paths to check that the decoder never fails with
anything but a ConfigFieldError naming the field; tests/unit/test_sharing_policy.py to check that the
admission policy and the decoder agree.
"""

from __future__ import annotations

import json
from typing import Any

from tests.unit.sharing_cases import MIG_UUID, gpu, mig, mps

FULL = (
    gpu(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Short"}}),
    mps(
        defaultActiveThreadPercentage=20,
        defaultPinnedDeviceMemoryLimit="2Gi",
        defaultPerDevicePinnedMemoryLimit={"0": "1Gi", MIG_UUID: 1048576},
    ),
    mig(sharing={"strategy": "MPS", "mpsConfig": {"defaultActiveThreadPercentage": 100}}),
)
PER_DEVICE_FIELD = "defaultPerDevicePinnedMemoryLimit"


def field_paths(value: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """The path of every value inside ``value`` (keys from the root), depth first."""
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            out += field_paths(inner, (*prefix, key))
    return out


#: (config, path of one of its fields), apiVersion and kind left out (the claim's JSON check reads those).
PLACES = [
    (params, path) for params in FULL for path in field_paths(params) if path[0] not in ("apiVersion", "kind")
]


def get(params: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = params
    for key in path:
        value = value[key]
    return value


def put(params: dict[str, Any], path: tuple[str, ...], value: object) -> dict[str, Any]:
    """A copy of ``params`` with ``value`` at ``path``."""
    copy: dict[str, Any] = json.loads(json.dumps(params))
    get(copy, path[:-1])[path[-1]] = value
    return copy


def dotted(path: tuple[str, ...]) -> str:
    """A field path as messages write it: ``sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit[0]``."""
    if PER_DEVICE_FIELD in path[:-1]:
        i = path.index(PER_DEVICE_FIELD)
        return ".".join(path[: i + 1]) + "".join(f"[{k}]" for k in path[i + 1 :])
    return ".".join(path)


#: (config, path of one of its objects with fields), where an unknown field can go.
OBJECTS = [
    (params, path)
    for params in FULL
    for path in [(), *field_paths(params)]
    if isinstance(get(params, path), dict) and (not path or path[-1] != PER_DEVICE_FIELD)
]
