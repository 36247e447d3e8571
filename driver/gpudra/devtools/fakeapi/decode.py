"""Request-body decoding: JSON type checks and Quantity canonicalisation, as the apiserver's decoder does.

The apiserver decodes a body into Go structs before anything else: a value of the wrong JSON type or an
unparseable quantity is a 400 BadRequest (``<Kind> in version "v1" cannot be handled as a <Kind>: ...``),
``null`` means "unset", and every ``resource.Quantity`` is stored in its canonical form. Only the fields the
stand-in knows are checked; other fields pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any, Final

from gpudra.devtools.fakeapi import quantity
from gpudra.devtools.fakeapi.status import ApiError, bad_request

__all__ = ["QUANTITY", "RESOURCE_SLICE", "decode_body", "normalize", "prune_empty"]

QUANTITY: Final = "quantity"
_GO_TYPES: Final[dict[object, str]] = {
    str: "string",
    int: "int64",
    bool: "bool",
    dict: "object",
    list: "array",
}
_JSON_TYPES: Final[dict[type, str]] = {
    str: "string",
    int: "number",
    float: "number",
    bool: "bool",
    dict: "object",
    list: "array",
}

_QTY: Final = {"value": QUANTITY}
_POLICY: Final = {
    "default": QUANTITY,
    "validValues": [QUANTITY],
    "validRange": {"min": QUANTITY, "max": QUANTITY, "step": QUANTITY},
}
_DEVICE: Final = {
    "name": str,
    "attributes": {"*": {"int": int, "bool": bool, "string": str, "version": str}},
    "capacity": {"*": {"value": QUANTITY, "requestPolicy": _POLICY}},
    "taints": [{"key": str, "value": str, "effect": str, "timeAdded": str}],
    "consumesCounters": [{"counterSet": str, "counters": {"*": _QTY}}],
    "allowMultipleAllocations": bool,
    "nodeName": str,
    "nodeSelector": dict,
    "allNodes": bool,
}
RESOURCE_SLICE: Final = {
    "metadata": dict,
    "spec": {
        "driver": str,
        "pool": {"name": str, "generation": int, "resourceSliceCount": int},
        "nodeName": str,
        "nodeSelector": dict,
        "allNodes": bool,
        "perDeviceNodeSelection": bool,
        "devices": [_DEVICE],
        "sharedCounters": [{"name": str, "counters": {"*": _QTY}}],
    },
}


def decode_body(raw: bytes, kind: str) -> dict[str, Any]:
    """Parse a request body that must be a JSON object."""
    try:
        body = json.loads(raw or b"null")
    except ValueError as err:
        raise _cannot_handle(kind, f"json: {err}") from err
    if not isinstance(body, dict):
        raise _cannot_handle(kind, f"json: cannot unmarshal {_json_type(body)} into Go value of type {kind}")
    return body


def normalize(obj: dict[str, Any], schema: dict[str, Any], kind: str) -> None:
    """Check types against ``schema`` in place, drop ``null`` fields, canonicalise quantities."""
    _walk_object(obj, schema, kind, "")


def prune_empty(obj: dict[str, Any], schema: dict[str, Any]) -> None:
    """Drop empty lists and maps, in place: the apiserver's JSON omits them (``omitempty``)."""
    for key in list(obj):
        expected = schema.get(key, schema.get("*"))
        value = obj[key]
        if isinstance(expected, list) and isinstance(value, list):
            for item in value:
                if isinstance(item, dict) and isinstance(expected[0], dict):
                    prune_empty(item, expected[0])
        elif isinstance(expected, dict) and isinstance(value, dict):
            prune_empty(value, expected)
        is_map = isinstance(expected, dict) and "*" in expected
        if (isinstance(expected, list) or is_map) and not value:
            del obj[key]


def _walk_object(obj: dict[str, Any], schema: dict[str, Any], kind: str, path: str) -> None:
    for key in list(obj):
        expected = schema.get(key, schema.get("*"))
        if expected is None:
            continue
        if obj[key] is None:
            del obj[key]
            continue
        obj[key] = _walk(obj[key], expected, kind, f"{path}.{key}" if key in schema else path)


def _walk(value: Any, expected: Any, kind: str, path: str) -> Any:
    if expected == QUANTITY:
        return _quantity(value, kind)
    if isinstance(expected, dict):
        _expect(value, dict, kind, path)
        _walk_object(value, expected, kind, path)
        return value
    if isinstance(expected, list):
        _expect(value, list, kind, path)
        return [_walk(item, expected[0], kind, path) for item in value if item is not None]
    _expect(value, expected, kind, path)
    return value


def _expect(value: Any, expected: Any, kind: str, path: str) -> None:
    ok = isinstance(value, expected)
    if expected is int and ok:
        ok = not isinstance(value, bool) and -(2**63) <= value < 2**63
    if not ok:
        detail = (
            f"json: cannot unmarshal {_json_type(value)} into Go struct field {kind}{path} "
            f"of type {_GO_TYPES.get(expected, 'object')}"
        )
        raise _cannot_handle(kind, detail)


def _quantity(value: Any, kind: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _cannot_handle(kind, quantity.FORMAT_WRONG)
    try:
        return quantity.canonical(value if isinstance(value, str) else json.dumps(value))
    except quantity.QuantityError as err:
        raise _cannot_handle(kind, str(err)) from err


def _json_type(value: object) -> str:
    return "null" if value is None else _JSON_TYPES.get(type(value), "value")


def _cannot_handle(kind: str, detail: str) -> ApiError:
    return bad_request(f'{kind} in version "v1" cannot be handled as a {kind}: {detail}')
