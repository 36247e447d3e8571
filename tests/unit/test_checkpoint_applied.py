"""The applied state in the checkpoint (schema 3): round trip, validation at the edge, version-2 files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.model.applied import NOTHING_APPLIED, AppliedState, AppliedStateError, Change
from gpudra.state.checkpoint import (
    PREPARE_COMPLETED,
    CheckpointFormatError,
    CheckpointStore,
    ClaimRecord,
    PreparedDevice,
    decode,
    encode,
)

FIRST = "claims[u].applied.changes[0]"
DEVICE = PreparedDevice("gpu", "node-a", "gpu-a", ("k8s.gpudra.io/claim=u-gpu-a",))


def _record(applied: AppliedState) -> ClaimRecord:
    return ClaimRecord("u", "ns", "c", PREPARE_COMPLETED, (DEVICE,), "/cdi/u.yaml", applied)


texts = st.text(max_size=40).filter(lambda t: "\x00" not in t)
scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), texts)
changes = st.builds(
    lambda kind, device, params: Change.from_mapping(kind, device, params),
    st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
    st.text(max_size=30).filter(lambda t: "\x00" not in t),
    st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True), scalars, max_size=4),
)
created = st.lists(st.text(min_size=1, max_size=20), max_size=2).map(tuple)
states = st.builds(AppliedState, st.tuples(changes, changes), created)


@given(states)
def test_round_trip(applied: AppliedState) -> None:
    doc = json.loads(json.dumps(encode({"u": _record(applied)}, "boot")))  # through real JSON
    assert decode(doc) == {"u": _record(applied)}


def test_nothing_applied_is_not_written() -> None:
    entry = encode({"u": _record(NOTHING_APPLIED)}, None)["claims"]["u"]
    assert "applied" not in entry


@pytest.mark.parametrize(
    ("applied", "where"),
    [
        ({"changes": [{"kind": "Bad Kind", "device": "d", "params": {}}]}, FIRST),
        ({"changes": [{"kind": "mig", "device": "d", "params": {"gi": [1]}}]}, FIRST),
        ({"changes": "mig"}, "claims[u].applied.changes"),
        ({"createdDevices": [1]}, "claims[u].applied.createdDevices"),
        ([], "claims[u].applied"),
    ],
)
def test_a_bad_applied_state_names_the_field(applied: object, where: str) -> None:
    doc = encode({"u": _record(NOTHING_APPLIED)}, None)
    doc["claims"]["u"]["applied"] = applied
    with pytest.raises(CheckpointFormatError, match=rf"^{where.replace('[', '.').replace(']', '.')}"):
        decode(doc)


def test_a_value_the_decoder_would_reject_cannot_be_built() -> None:
    with pytest.raises(AppliedStateError, match="parameter name"):
        Change.of("mig", "gpu-a", **{"not an identifier": 1})
    with pytest.raises(AppliedStateError, match="int64"):
        Change.of("mig", "gpu-a", gi=2**64)
    with pytest.raises(AppliedStateError, match="kind"):
        Change.of("MIG", "gpu-a")


def test_a_version_2_file_is_read_with_nothing_applied_and_rewritten_as_3(tmp_path: Path) -> None:
    v2 = encode({"u": _record(NOTHING_APPLIED)}, "boot")
    v2["version"] = 2
    (tmp_path / "cp.json").write_text(json.dumps(v2) + "\n")
    store = CheckpointStore(tmp_path / "cp.json", tmp_path / "cp.lock", "boot")
    assert store.snapshot() == {"u": _record(NOTHING_APPLIED)}
    with store.transaction() as txn:
        txn.put(_record(AppliedState((Change.of("mock-file", "gpu-a", path="/run/x.json"),))))
        txn.commit()
    first = json.loads((tmp_path / "cp.json").read_text().splitlines()[0])
    assert first["version"] == 3
    assert CheckpointStore(tmp_path / "cp.json", tmp_path / "cp.lock", "boot").snapshot()["u"].applied.changes
