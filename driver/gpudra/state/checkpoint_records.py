"""A claim record as the checkpoint holds it, and whether one would read back exactly as it is (pure).

The decoder (:mod:`gpudra.state.checkpoint_format`) accepts exact types only: strings where it reads
strings, a boolean ``adminAccess``, ``null`` or a string for ``shareId``, tuples where the record holds
tuples. A record that breaks one of these would be written and then refused at the next start-up, so
:func:`wrong_field` refuses it before it is written. Checking the types directly costs a tenth of encoding,
decoding and comparing; ``tests/unit/test_checkpoint_records.py`` holds the two equivalent over generated
records with a wrong type in any field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from gpudra.model.applied import NOTHING_APPLIED, AppliedState, Change

ClaimState = Literal["PrepareStarted", "PrepareCompleted"]
PREPARE_STARTED: Final = "PrepareStarted"
PREPARE_COMPLETED: Final = "PrepareCompleted"
_STATES: Final = (PREPARE_STARTED, PREPARE_COMPLETED)


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    request: str
    pool: str
    device: str
    cdi_device_ids: tuple[str, ...]
    admin_access: bool = False
    share_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    uid: str
    namespace: str
    name: str
    state: ClaimState
    devices: tuple[PreparedDevice, ...]
    cdi_spec: str | None  # path of the claim's CDI spec file
    applied: AppliedState = NOTHING_APPLIED  # what the vendor driver changed on the node for the claim


def _wrong_device(d: object) -> str | None:
    if type(d) is not PreparedDevice:
        return f"expected a PreparedDevice, got {type(d).__name__}"
    for name in ("request", "pool", "device"):
        if type(getattr(d, name)) is not str:
            return f"{name} {getattr(d, name)!r} is not a string"
    if type(d.cdi_device_ids) is not tuple or any(type(i) is not str for i in d.cdi_device_ids):
        return f"cdi_device_ids {d.cdi_device_ids!r} is not a tuple of strings"
    if type(d.admin_access) is not bool:
        return f"admin_access {d.admin_access!r} is not a boolean"
    if d.share_id is not None and type(d.share_id) is not str:
        return f"share_id {d.share_id!r} is not a string"
    return None


def _wrong_applied(applied: object) -> str | None:
    if type(applied) is not AppliedState:
        return f"expected an AppliedState, got {type(applied).__name__}"
    if type(applied.changes) is not tuple or any(type(c) is not Change for c in applied.changes):
        return f"changes {applied.changes!r} is not a tuple of Change"
    for c in applied.changes:  # the rest of a Change is checked when it is built
        if type(c.device) is not str:
            return f"change {c.kind}: device {c.device!r} is not a string"
        if type(c.params) is not tuple or any(type(p) is not tuple for p in c.params):
            return f"change {c.kind}: params {c.params!r} is not a tuple of pairs"
    created = applied.created_devices
    if type(created) is not tuple or any(type(u) is not str for u in created):
        return f"created_devices {created!r} is not a tuple of strings"
    return None


def wrong_field(record: ClaimRecord) -> str | None:
    """What in ``record`` the decoder would not read back as it is, or None. Equivalent to decoding the
    encoded record and comparing (a test holds the two together), at a tenth of the cost."""
    for name in ("namespace", "name"):
        if type(getattr(record, name)) is not str:
            return f"{name} {getattr(record, name)!r} is not a string"
    if record.state not in (_STATES) or type(record.state) is not str:
        return f"state {record.state!r} is not {PREPARE_STARTED} or {PREPARE_COMPLETED}"
    if record.cdi_spec is not None and type(record.cdi_spec) is not str:
        return f"cdi_spec {record.cdi_spec!r} is not a string"
    if type(record.devices) is not tuple:
        return f"devices {record.devices!r} is not a tuple"
    for i, d in enumerate(record.devices):
        wrong = _wrong_device(d)
        if wrong is not None:
            return f"devices[{i}]: {wrong}"
    wrong = _wrong_applied(record.applied)
    return None if wrong is None else f"applied: {wrong}"
