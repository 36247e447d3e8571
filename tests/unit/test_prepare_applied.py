"""The applied state through prepare and unprepare, over the mock driver (whose change is a file per device).

What the driver intends is recorded with PrepareStarted, what it did with PrepareCompleted, and unprepare
undoes exactly the record — also the record of a prepare that a crash cut short.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpudra.model.applied import AppliedState, Change
from gpudra.state.checkpoint import PREPARE_STARTED, ClaimRecord, PreparedDevice, load_document
from gpudra.vendors.mock.driver import FILE_CHANGE
from tests.unit.preparer_rig import Rig, mock_rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with mock_rig(tmp_path) as r:
        yield r


def _first_device(rig: Rig) -> str:
    return next(iter(rig.node.current.offer.devices))


def test_the_record_holds_what_was_applied_and_unprepare_undoes_it(tmp_path: Path, rig: Rig) -> None:
    device = _first_device(rig)
    ref = rig.claims.add("c", device)
    assert rig.preparer.prepare([ref])[ref.uid].error is None
    record = rig.store.snapshot()[ref.uid]
    [change] = record.applied.changes
    assert (change.kind, change.device) == (FILE_CHANGE, device)
    path = Path(change.text("path"))
    assert path.parent == tmp_path / "claims"
    assert json.loads(path.read_text())["claim"]["uid"] == ref.uid
    on_disk = load_document((tmp_path / "cp.json").read_bytes())["claims"][ref.uid]["applied"]
    assert on_disk == {"changes": [{"kind": FILE_CHANGE, "device": device, "params": {"path": str(path)}}]}
    spec = json.loads(rig.cdi.path_for(ref.uid).read_text())
    mounts = spec["devices"][0]["containerEdits"]["mounts"]
    assert str(path) in [m["hostPath"] for m in mounts]  # the edits come from the applied state

    assert rig.preparer.unprepare([ref]) == {ref.uid: None}
    assert not path.exists()
    assert rig.store.snapshot() == {}


def test_a_prepare_cut_short_by_a_crash_is_undone_by_unprepare(tmp_path: Path, rig: Rig) -> None:
    device = _first_device(rig)
    uid = "c0000000-0000-4000-8000-000000000001"
    left = tmp_path / "claims" / f"{uid}-{device}.json"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_text("{}")  # apply ran, the process died before PrepareCompleted
    applied = AppliedState((Change.of(FILE_CHANGE, device, path=str(left)),))
    ids = (f"k8s.gpudra.io/claim={uid}-{device}",)
    devices = (PreparedDevice("r", "node", device, ids),)
    started = ClaimRecord(uid, "ns", "c", PREPARE_STARTED, devices, None, applied)
    with rig.store.transaction() as txn:
        txn.put(started)
        txn.commit()
    from gpudra.planning.plan import ClaimRef

    assert rig.preparer.unprepare([ClaimRef("ns", "c", uid)]) == {uid: None}
    assert not left.exists()
    assert rig.store.snapshot() == {}


def test_a_failed_apply_fails_that_claim_only_and_leaves_nothing(tmp_path: Path, rig: Rig) -> None:
    devices = list(rig.node.current.offer.devices)
    ok, bad = rig.claims.add("ok", devices[0]), rig.claims.add("bad", devices[1])
    # The description of the "bad" claim cannot be written: a directory squats on its file name.
    (tmp_path / "claims" / f"{bad.uid}-{devices[1]}.json").mkdir(parents=True)
    results = rig.preparer.prepare([ok, bad])
    assert results[ok.uid].error is None
    error = results[bad.uid].error
    assert error is not None
    assert error.startswith("cannot prepare devices: cannot write the mock device description")
    assert set(rig.store.snapshot()) == {ok.uid}
    assert not rig.cdi.path_for(bad.uid).exists()
    assert (tmp_path / "claims" / f"{bad.uid}-{devices[1]}.json").is_dir()  # not ours: left alone


def test_claim_created_devices_come_from_the_records(rig: Rig) -> None:
    device = _first_device(rig)
    applied = AppliedState(created_devices=("MIG-made-1",))
    devices = (PreparedDevice("r", "node", device, ()),)
    record = ClaimRecord("u1", "ns", "c", "PrepareCompleted", devices, None, applied)
    with rig.store.transaction() as txn:
        txn.put(record)
        txn.commit()
    assert rig.preparer.claim_created_devices() == frozenset({"MIG-made-1"})
