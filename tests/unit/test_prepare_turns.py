"""Prepare takes the checkpoint lock twice (PrepareStarted, then PrepareCompleted) and writes the claim's
files in between without it. What another call does in that gap is decided on the second turn."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from gpudra.planning.plan import ClaimRef
from gpudra.state.cdi import CdiWriter
from gpudra.state.checkpoint import PREPARE_STARTED, CheckpointStore, load_document
from gpudra.state.prepare import Preparer
from tests.unit.preparer_rig import Claims, Rig, mock_rig


class InterleavingCdi(CdiWriter):
    """A CDI writer through which a test runs another kubelet call while a prepare writes its spec."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.during_write: list[Any] = []
        self.states_seen: list[str] = []

    def write(self, claim_uid: str, spec: Mapping[str, Any]) -> Path:
        path = super().write(claim_uid, spec)
        actions, self.during_write = self.during_write, []  # once: the action may write a spec itself
        for action in actions:
            action()
        return path


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with mock_rig(tmp_path, cdi=InterleavingCdi(tmp_path / "cdi")) as r:
        for i, dev in enumerate(list(r.node.current.offer.devices)[:3]):
            r.claims.add(f"c{i}", dev)
        yield r


def _setup(rig: Rig) -> tuple[Preparer, Claims, InterleavingCdi, CheckpointStore]:
    assert isinstance(rig.cdi, InterleavingCdi)
    return rig.preparer, rig.claims, rig.cdi, rig.store


def _ref(claims: Claims, name: str) -> ClaimRef:
    meta = claims.by_name[name]["metadata"]
    return ClaimRef(meta["namespace"], meta["name"], meta["uid"])


def test_files_are_written_between_started_and_completed(tmp_path: Path, rig: Rig) -> None:
    preparer, claims, cdi, store = _setup(rig)
    ref = _ref(claims, "c0")
    cdi.during_write.append(lambda: cdi.states_seen.append(store.snapshot()[ref.uid].state))
    result = preparer.prepare([ref])[ref.uid]
    assert result.error is None
    assert cdi.states_seen == [PREPARE_STARTED]  # recorded before the spec existed, completed after
    assert store.snapshot()[ref.uid].state == "PrepareCompleted"


def test_an_unprepare_in_the_gap_wins_and_leaves_no_file(tmp_path: Path, rig: Rig) -> None:
    preparer, claims, cdi, store = _setup(rig)
    ref = _ref(claims, "c0")
    cdi.during_write.append(lambda: preparer.unprepare([ref]))
    result = preparer.prepare([ref])[ref.uid]
    assert result.error is not None
    assert "unprepared while it was being prepared" in result.error
    assert store.snapshot() == {}
    assert not cdi.path_for(ref.uid).exists()
    assert not [p for p in tmp_path.rglob("*") if ref.uid in p.name]


def test_a_concurrent_prepare_of_the_same_claim_is_told_to_try_again(tmp_path: Path, rig: Rig) -> None:
    # Two calls applying one claim's changes at once would both create its MIG devices, and the loser's
    # clean-up would destroy the winner's: the second call is refused while the first runs.
    preparer, claims, cdi, _ = _setup(rig)
    ref = _ref(claims, "c1")
    inner: dict[str, Any] = {}
    cdi.during_write.append(lambda: inner.update(preparer.prepare([ref])))
    outer = preparer.prepare([ref])
    assert outer[ref.uid].error is None
    assert inner[ref.uid].error_kind == "in_progress"
    assert "try again" in (inner[ref.uid].error or "")
    assert preparer.prepare([ref])[ref.uid].devices == outer[ref.uid].devices  # the retry: same answer
    assert cdi.path_for(ref.uid).exists()
    document = load_document((tmp_path / "cp.json").read_bytes())
    assert document["claims"][ref.uid]["state"] == "PrepareCompleted"


def test_a_rival_for_the_device_in_the_gap_is_refused(tmp_path: Path, rig: Rig) -> None:

    preparer, claims, cdi, _ = _setup(rig)
    ref = _ref(claims, "c0")
    rival = claims.add("rival", next(iter(rig.node.current.offer.devices)))
    seen: dict[str, Any] = {}
    cdi.during_write.append(lambda: seen.update(preparer.prepare([rival])))
    assert preparer.prepare([ref])[ref.uid].error is None
    assert seen[rival.uid].error_kind == "device_in_use"  # the PrepareStarted record already holds it


def test_a_failed_file_write_leaves_no_record_and_no_file(tmp_path: Path, rig: Rig) -> None:
    preparer, claims, cdi, store = _setup(rig)
    ref, other = _ref(claims, "c0"), _ref(claims, "c1")

    def disk_full() -> None:
        raise OSError(28, "No space left on device")

    cdi.during_write.append(disk_full)
    results = preparer.prepare([ref, other])
    failed = next(r for r in results.values() if r.error is not None)
    assert failed.error_kind == "io"
    assert "No space left on device" in (failed.error or "")
    [ok_uid] = [uid for uid, r in results.items() if r.error is None]  # the neighbour is not affected
    assert set(store.snapshot()) == {ok_uid}
    failed_uid = next(uid for uid, r in results.items() if r.error is not None)
    assert not [p for p in tmp_path.rglob("*") if failed_uid in p.name]
