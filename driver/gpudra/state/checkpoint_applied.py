"""The applied state of one claim record in the checkpoint, as JSON (pure): see :mod:`gpudra.model.applied`.

``{"changes": [{"kind", "device", "params": {name: scalar}}], "createdDevices": [uuid, ...]}``; either key
is left out when empty, and a record that applied nothing has no ``applied`` at all. Decoding validates
everything through the model's own constructors, so a record is read back exactly as it was written or
refused with the path of the bad field.
"""

from __future__ import annotations

from typing import Any

from gpudra.model.applied import NOTHING_APPLIED, AppliedState, AppliedStateError, Change


class AppliedFormatError(ValueError):
    """An ``applied`` entry this code cannot read; the message starts with the field's path."""


def _need(entry: dict[str, Any], key: str, kind: type, where: str) -> Any:
    value = entry.get(key)
    if value is None:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise AppliedFormatError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def decode_applied(raw: object, where: str) -> AppliedState:
    if raw is None:
        return NOTHING_APPLIED
    if not isinstance(raw, dict):
        raise AppliedFormatError(f"{where}: expected an object")
    changes = []
    for i, c in enumerate(_need(raw, "changes", list, where) or []):
        at = f"{where}.changes[{i}]"
        if not isinstance(c, dict):
            raise AppliedFormatError(f"{at}: expected an object")
        params = _need(c, "params", dict, at) or {}
        kind, device = _need(c, "kind", str, at), _need(c, "device", str, at)
        if kind is None or device is None:
            raise AppliedFormatError(f"{at}: kind and device are required")
        try:
            changes.append(Change.from_mapping(kind, device, params))
        except AppliedStateError as e:
            raise AppliedFormatError(f"{at}: {e}") from e
    created = _need(raw, "createdDevices", list, where) or []
    if not all(isinstance(u, str) for u in created):
        raise AppliedFormatError(f"{where}.createdDevices: expected strings")
    try:
        return AppliedState(tuple(changes), tuple(created))
    except AppliedStateError as e:
        raise AppliedFormatError(f"{where}: {e}") from e


def encode_applied(applied: AppliedState) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if applied.changes:
        out["changes"] = [
            {"kind": c.kind, "device": c.device, "params": dict(c.params)} for c in applied.changes
        ]
    if applied.created_devices:
        out["createdDevices"] = list(applied.created_devices)
    return out
