"""The fast check of a record before it is written agrees with the decoder: a record passes
:func:`wrong_field` exactly when it reads back from its JSON as it is — for valid records and for records
with one wrong value or container type anywhere. (Values the model's own constructors refuse cannot be built,
so they are never records: :mod:`gpudra.model.applied` checks them.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gpudra.model.applied import AppliedState, AppliedStateError, Change
from gpudra.state.checkpoint_format import NO_EXTRAS, decode_claim, encode_claim
from gpudra.state.checkpoint_records import (
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    ClaimRecord,
    PreparedDevice,
    wrong_field,
)

_text = st.text(st.characters(blacklist_characters="\x00"), max_size=6)  # a Change refuses NUL
_wrong = st.one_of(
    st.none(),
    st.integers(-3, 3),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(_text, max_size=2),
    st.binary(max_size=2),
    _text,
)
_devices = st.builds(
    PreparedDevice,
    request=_text,
    pool=_text,
    device=_text,
    cdi_device_ids=st.lists(_text, max_size=2).map(tuple),
    admin_access=st.booleans(),
    share_id=st.none() | _text,
)
_params = st.dictionaries(st.sampled_from(["gi", "path", "uuid"]), st.booleans() | st.integers(-5, 5) | _text)
_changes = st.builds(Change.from_mapping, st.sampled_from(["mig", "mock-file"]), _text, _params)
_applied = st.builds(
    AppliedState,
    st.lists(_changes, min_size=1, max_size=2).map(tuple),
    st.lists(st.text(min_size=1, max_size=4), max_size=2).map(tuple),
)
_records = st.builds(
    ClaimRecord,
    uid=st.just("uid-1"),
    namespace=_text,
    name=_text,
    state=st.sampled_from([PREPARE_STARTED, PREPARE_COMPLETED]),
    devices=st.lists(_devices, min_size=1, max_size=2).map(tuple),
    cdi_spec=st.none() | _text,
    applied=_applied,
)


def _device(r: ClaimRecord, **kw: Any) -> ClaimRecord:
    return replace(r, devices=(replace(r.devices[0], **kw), *r.devices[1:]))


def _with_applied(r: ClaimRecord, **kw: Any) -> ClaimRecord:
    a = r.applied
    return replace(
        r, applied=AppliedState(**{"changes": a.changes, "created_devices": a.created_devices, **kw})
    )


def _change(r: ClaimRecord, **kw: Any) -> ClaimRecord:
    first = r.applied.changes[0]
    changed = Change(**{"kind": first.kind, "device": first.device, "params": first.params, **kw})
    return _with_applied(r, changes=(changed, *r.applied.changes[1:]))


_MUTATIONS: dict[str, Callable[[ClaimRecord, Any], ClaimRecord]] = {
    "namespace": lambda r, v: replace(r, namespace=v),
    "name": lambda r, v: replace(r, name=v),
    "state": lambda r, v: replace(r, state=v),
    "cdi_spec": lambda r, v: replace(r, cdi_spec=v),
    "devices as a list": lambda r, v: replace(r, devices=list(r.devices)),  # type: ignore[arg-type]
    "a device": lambda r, v: replace(r, devices=(v, *r.devices[1:])),
    "request": lambda r, v: _device(r, request=v),
    "pool": lambda r, v: _device(r, pool=v),
    "device": lambda r, v: _device(r, device=v),
    "cdi ids as a list": lambda r, v: _device(r, cdi_device_ids=list(r.devices[0].cdi_device_ids)),
    "a cdi id": lambda r, v: _device(r, cdi_device_ids=(v,)),
    "admin_access": lambda r, v: _device(r, admin_access=v),
    "share_id": lambda r, v: _device(r, share_id=v),
    "applied": lambda r, v: replace(r, applied=v),
    "changes as a list": lambda r, v: _with_applied(r, changes=list(r.applied.changes)),
    "a change": lambda r, v: _with_applied(r, changes=(v,)),
    "change device": lambda r, v: _change(r, device=v),
    "change params as a list": lambda r, v: _change(r, params=list(r.applied.changes[0].params)),
    "a change param pair": lambda r, v: _change(r, params=(["gi", 1],)),
    "created as a list": lambda r, v: _with_applied(r, created_devices=list(r.applied.created_devices)),
    "a created device": lambda r, v: _with_applied(r, created_devices=(v,)),
}


def _reads_back(record: ClaimRecord) -> bool:
    try:
        raw = json.loads(json.dumps(encode_claim(record, NO_EXTRAS)))
        back, _ = decode_claim(record.uid, raw, newer=False)
    except (TypeError, ValueError, AttributeError):
        return False
    return back == record


@settings(max_examples=300, deadline=None)
@given(_records, st.sampled_from([None, *_MUTATIONS]), _wrong)
def test_the_fast_check_agrees_with_decoding(record: ClaimRecord, mutation: str | None, value: Any) -> None:
    if mutation is not None:
        try:
            record = _MUTATIONS[mutation](record, value)
        except (AppliedStateError, TypeError):  # the model refuses to build it: it is never a record
            assume(False)
    assert (wrong_field(record) is None) == _reads_back(record), (mutation, value, wrong_field(record))
