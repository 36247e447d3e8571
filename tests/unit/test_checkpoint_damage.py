"""A damaged record costs that record only (issue 13, item 3): garbled or undecodable change lines, a bad
snapshot entry, a log cut in the middle; what was lost is said, saved and remembered; a record the decoder
would reject is never written."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest

from gpudra.state.checkpoint import (
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    CheckpointStore,
    ClaimRecord,
    PreparedDevice,
    UnwritableRecord,
    load_document,
)
from gpudra.state.checkpoint_format import MAX_CHANGE_BYTES, encode

BOOT = "5b0a3c1e-2f4d-4a6b-8c9d-0e1f2a3b4c5d"
LOGGER = "gpudra.state.checkpoint"


def _claim(uid: str, state: str = PREPARE_COMPLETED, share: object = None) -> ClaimRecord:
    device = PreparedDevice("gpu", "node-a", f"gpu-{uid}", (f"k8s.gpudra.io/claim={uid}-gpu",))
    device = replace(device, share_id=share)  # type: ignore[arg-type]
    return ClaimRecord(uid, "default", f"claim-{uid}", state, (device,), f"/cdi/{uid}.yaml")  # type: ignore[arg-type]


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "checkpoint.json", tmp_path / "checkpoint.lock"


def _store(paths: tuple[Path, Path], seen: list[tuple[Path, str]] | None = None) -> CheckpointStore:
    on_corrupt = None if seen is None else lambda p, why: seen.append((p, why))
    return CheckpointStore(paths[0], paths[1], BOOT, on_corrupt=on_corrupt)


def _log_of(paths: tuple[Path, Path], *records: ClaimRecord) -> list[bytes]:
    """A checkpoint of an empty snapshot and one change line per record; its lines."""
    paths[0].write_text(json.dumps({"version": 3, "bootId": BOOT, "claims": {}}) + "\n")
    store = _store(paths)
    for r in records:
        with store.transaction() as txn:
            txn.put(r)
            txn.commit()
    store.close()
    lines = paths[0].read_bytes().splitlines(keepends=True)
    assert len(lines) == 1 + len(records)
    return lines


def _side_files(paths: tuple[Path, Path]) -> list[Path]:
    return sorted(paths[0].parent.glob("checkpoint.json.damaged-*"))


def test_a_garbled_change_line_costs_that_claim_only(
    paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    lines = _log_of(paths, _claim("a"), _claim("b"), _claim("c"))
    garbled = lines[2][:40] + b"\x00\x17garbage\n"  # claim b's line, half overwritten
    paths[0].write_bytes(b"".join([*lines[:2], garbled, *lines[3:]]))
    seen: list[tuple[Path, str]] = []
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        store = _store(paths, seen)
    assert set(store.snapshot()) == {"a", "c"}  # the other lines still apply
    assert store.damaged == {"b"}  # its claim is named from the start of the line
    assert store.uncertain  # a line that is not JSON may hide a cut: records may be missing
    assert "line 3" in caplog.text
    assert "not JSON" in caplog.text
    [side] = _side_files(paths)
    assert garbled in side.read_bytes()  # nothing is silently lost
    assert seen == [(side, seen[0][1])]
    assert "claims b" in seen[0][1]
    assert not list(paths[0].parent.glob("*.corrupt-*"))  # not the whole file


def test_an_undecodable_value_costs_that_claim_only(paths: tuple[Path, Path]) -> None:
    """A numeric shareId, as today's code wrote it (the campaign's case): that record is skipped."""
    lines = _log_of(paths, _claim("a"), _claim("b"))
    bad = json.loads(lines[2])
    bad["claim"]["devices"][0]["shareId"] = 7
    paths[0].write_bytes(b"".join([*lines[:2], json.dumps(bad).encode() + b"\n"]))
    store = _store(paths)
    assert set(store.snapshot()) == {"a"}
    assert store.damaged == {"b"}
    assert not store.uncertain  # the line was read whole: nothing else is missing


def test_a_skipped_line_keeps_the_claims_record_from_before_it(paths: tuple[Path, Path]) -> None:
    lines = _log_of(paths, _claim("a", PREPARE_STARTED), _claim("a"))
    bad = json.loads(lines[2])
    bad["claim"]["state"] = 3
    paths[0].write_bytes(b"".join([*lines[:2], json.dumps(bad).encode() + b"\n"]))
    store = _store(paths)
    assert store.snapshot()["a"].state == PREPARE_STARTED  # older than recorded, and said so:
    assert store.damaged == {"a"}


def test_a_bad_snapshot_entry_costs_that_claim_only(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    with store.transaction() as txn:
        for uid in "abc":
            txn.put(_claim(uid))
        txn.commit()
    store.close()
    doc = json.loads(paths[0].read_bytes())
    doc["claims"]["b"]["devices"] = "gpu-0"
    paths[0].write_text(json.dumps(doc) + "\n")
    again = _store(paths)
    assert set(again.snapshot()) == {"a", "c"}
    assert again.damaged == {"b"}
    [side] = _side_files(paths)
    assert b'"gpu-0"' in side.read_bytes()


def test_a_cut_in_the_middle_of_the_log_says_claims_may_be_missing(
    paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Bytes lost mid-log join two lines into one: that line is skipped, the rest applies, and it is said."""
    lines = _log_of(paths, _claim("a"), _claim("b"), _claim("c"), _claim("d"))
    cut = lines[2][:30] + lines[3][50:]
    paths[0].write_bytes(b"".join([*lines[:2], cut, *lines[4:]]))
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        store = _store(paths)
    assert set(store.snapshot()) == {"a", "d"}
    assert store.uncertain
    assert store.damaged == {"b"}
    assert "claims may be missing" in caplog.text


def test_a_cut_that_leaves_valid_json_is_caught_by_the_change_numbers(paths: tuple[Path, Path]) -> None:
    """Two lines of the same shape cut at the same column splice into a valid line: claim b with claim c's
    device. The jump in the change numbers after it gives it away, and b is named as suspect."""
    lines = _log_of(paths, _claim("a"), _claim("b"), _claim("c"), _claim("d"))
    half = len(lines[2]) // 2
    spliced = lines[2][:half] + lines[3][half:]
    assert json.loads(spliced)["claim"]["devices"][0]["device"] == "gpu-c"
    paths[0].write_bytes(b"".join([*lines[:2], spliced, *lines[4:]]))
    store = _store(paths)
    assert set(store.snapshot()) == {"a", "b", "d"}
    assert store.uncertain
    assert store.damaged == {"b"}


def test_whole_lines_cut_from_the_middle_are_detected(
    paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    """Lines lost at line boundaries would turn a completed claim into a half-finished one silently; the
    change numbers show the gap."""
    lines = _log_of(paths, _claim("a", PREPARE_STARTED), _claim("b"), _claim("a"), _claim("c"))
    paths[0].write_bytes(b"".join([lines[0], lines[1], lines[2], lines[4]]))  # a's completion is gone
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        store = _store(paths)
    claims = store.snapshot()
    assert claims["a"].state == PREPARE_STARTED
    assert set(claims) == {"a", "b", "c"}
    assert store.uncertain  # ... and the store knows a completed claim may read as half-finished
    assert "the log was cut: changes 3..3 are missing" in caplog.text
    assert "older than recorded" in caplog.text


def test_a_line_over_the_limit_is_skipped_without_holding_it(paths: tuple[Path, Path]) -> None:
    lines = _log_of(paths, _claim("a"), _claim("b"))
    huge = b'{"put":"big","claim":"' + b"x" * (MAX_CHANGE_BYTES + 10) + b'"}\n'
    paths[0].write_bytes(b"".join([lines[0], lines[1], huge, lines[2]]))
    store = _store(paths)
    assert set(store.snapshot()) == {"a", "b"}
    assert store.damaged == {"big"}
    [side] = _side_files(paths)
    assert len(side.read_bytes()) < 8192  # its start only


def test_damage_is_compacted_away_and_remembered_until_the_node_reboots(paths: tuple[Path, Path]) -> None:
    lines = _log_of(paths, _claim("a"), _claim("b"))
    paths[0].write_bytes(b"".join([lines[0], b'{"put": 7}\n', *lines[1:]]))
    first = _store(paths)
    assert first.uncertain
    on_disk = load_document(paths[0].read_bytes())  # compacted at once: the file reads clean
    assert set(on_disk["claims"]) == {"a", "b"}
    assert on_disk["damage"] == {"claims": [], "uncertain": True}
    first.close()
    restarted = _store(paths)  # a restart in the same boot still knows
    assert restarted.uncertain
    assert len(_side_files(paths)) == 1  # and does not save the same damage again
    rebooted = CheckpointStore(paths[0], paths[1], "another-boot")
    assert not rebooted.uncertain
    assert rebooted.snapshot() == {}


def test_another_instance_reading_a_damaged_append_skips_that_line(paths: tuple[Path, Path]) -> None:
    writer, reader = _store(paths), _store(paths)
    with writer.transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    assert set(reader.snapshot()) == {"a"}
    with paths[0].open("ab") as f:  # what a broken writer could append
        f.write(b'{"put":"b","n":1,"claim":{"devices":7}}\n')
    with writer.transaction() as txn:
        txn.put(_claim("c"))
        txn.commit()
    assert set(reader.snapshot()) == {"a", "c"}
    assert reader.damaged == {"b"}
    assert set(writer.snapshot()) == {"a", "c"}


def test_a_file_that_is_garbage_as_a_whole_is_still_moved_aside(paths: tuple[Path, Path]) -> None:
    paths[0].write_bytes(b"\x00" * 300 + b"\n" + b'{"put":"a"}\n')
    store = _store(paths)
    assert store.snapshot() == {}
    assert store.uncertain
    assert len(list(paths[0].parent.glob("checkpoint.json.corrupt-*"))) == 1


# ---- never write what the decoder rejects ------------------------------------------------------------


def test_a_record_the_decoder_would_reject_is_refused_and_the_others_are_written(
    paths: tuple[Path, Path],
) -> None:
    store = _store(paths)
    with store.transaction() as txn:
        txn.put(_claim("a"))
        with pytest.raises(UnwritableRecord, match=r"claim bad: .*share_id 7 is not a string") as err:
            txn.put(_claim("bad", share=7))
        assert err.value.uid == "bad"
        assert "bad" not in txn.claims  # the working copy is unchanged
        txn.put(_claim("c", share="s-1"))
        txn.commit()
    assert set(_store(paths).snapshot()) == {"a", "c"}
    assert load_document(paths[0].read_bytes())["claims"]["c"]["devices"][0]["shareId"] == "s-1"


@pytest.mark.parametrize(
    "bad",
    [
        replace(_claim("x"), name=None),  # type: ignore[arg-type]
        replace(_claim("x"), state="Done"),  # type: ignore[arg-type]
        replace(_claim("x"), devices=list(_claim("x").devices)),  # type: ignore[arg-type]
        replace(_claim("x"), cdi_spec=Path("/cdi/x.yaml")),  # type: ignore[arg-type]
        replace(_claim("x"), devices=(replace(_claim("x").devices[0], admin_access=1),)),  # type: ignore[arg-type]
        replace(_claim("x"), uid=""),
    ],
)
def test_every_shape_the_decoder_rejects_is_refused_before_writing(
    paths: tuple[Path, Path], bad: ClaimRecord
) -> None:
    store = _store(paths)
    with store.transaction() as txn, pytest.raises(UnwritableRecord):
        txn.put(bad)
    assert not paths[0].exists()


def test_a_key_that_is_no_uid_costs_that_claim_only(tmp_path: Path) -> None:
    """Checkpoint keys name files (the CDI spec, device metadata): ``../x`` must never be read as a claim."""
    good = encode({"u-good": _bad_key_record("u-good")}, BOOT)
    good["claims"]["../../etc/cron.d/x"] = good["claims"]["u-good"]
    (tmp_path / "cp.json").write_text(json.dumps(good) + "\n")
    store = CheckpointStore(tmp_path / "cp.json", tmp_path / "cp.lock", BOOT)
    assert set(store.snapshot()) == {"u-good"}
    assert "../../etc/cron.d/x" in store.damaged


def _bad_key_record(uid: str) -> ClaimRecord:
    return ClaimRecord(uid, "ns", "c", "PrepareCompleted", (), None)
