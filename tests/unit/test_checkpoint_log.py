"""The checkpoint as a log (schema 2): appends, incremental reads, torn lines, compaction, migration."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra.state.checkpoint import (
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    CheckpointStore,
    ClaimRecord,
    PreparedDevice,
    load_document,
)
from gpudra.state.checkpoint_format import MIGRATIONS, SCHEMA_VERSION, CheckpointFormatError, Content
from gpudra.state.checkpoint_log import (
    COMPACTION_SLACK,
    apply_changes,
    decode_log,
    encode_delete,
    encode_put,
)

BOOT = "7d0c5a7e-51a4-4f0e-8a0e-6a4f3c2b1d00"


def _claim(uid: str, state: str = PREPARE_COMPLETED, name: str | None = None) -> ClaimRecord:
    device = PreparedDevice("gpu", "node-a", f"gpu-{uid}", (f"k8s.gpudra.io/claim={uid}-gpu",))
    return ClaimRecord(uid, "default", name or f"claim-{uid}", state, (device,), f"/cdi/{uid}.yaml")  # type: ignore[arg-type]


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "checkpoint.json", tmp_path / "checkpoint.lock"


def _store(paths: tuple[Path, Path], boot: str | None = BOOT) -> CheckpointStore:
    return CheckpointStore(paths[0], paths[1], boot)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def test_each_change_is_one_appended_line_and_the_file_keeps_its_inode(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    with store.transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()  # the first write creates the snapshot
    inode = paths[0].stat().st_ino
    with store.transaction() as txn:
        txn.put(_claim("b", PREPARE_STARTED))
        txn.commit()
        txn.put(_claim("b"))
        txn.commit()
    with store.transaction() as txn:
        txn.remove("a")
        txn.commit()
    assert paths[0].stat().st_ino == inode
    lines = _lines(paths[0])
    assert lines[0]["version"] == SCHEMA_VERSION
    assert set(lines[0]["claims"]) == {"a"}
    assert [line.get("put") or ("del", line["del"]) for line in lines[1:]] == ["b", "b", ("del", "a")]
    assert lines[1]["claim"]["state"] == PREPARE_STARTED
    assert lines[2]["claim"]["state"] == PREPARE_COMPLETED
    assert _store(paths).snapshot() == {"b": _claim("b")}


def test_only_changed_claims_are_written(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    with store.transaction() as txn:
        for uid in "abc":
            txn.put(_claim(uid))
        txn.commit()
    with store.transaction() as txn:
        txn.put(_claim("b"))  # equal to what is recorded: no line
        txn.put(_claim("c", name="renamed"))
        txn.commit()
    assert [line.get("put") for line in _lines(paths[0])[1:]] == ["c"]


def test_another_instance_follows_the_appends_and_appends_after_them(paths: tuple[Path, Path]) -> None:
    writer, reader = _store(paths), _store(paths)
    with writer.transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    assert set(reader.snapshot()) == {"a"}
    for uid in ("b", "c"):
        with writer.transaction() as txn:
            txn.put(_claim(uid))
            txn.commit()
        with writer.transaction() as txn:
            txn.remove("a") if uid == "c" else None
            txn.commit()
    assert reader.snapshot() == {"b": _claim("b"), "c": _claim("c")}
    with reader.transaction() as txn:  # and the reader appends after them
        txn.put(_claim("d"))
        txn.commit()
    assert set(writer.snapshot()) == {"b", "c", "d"}


def test_an_instance_reads_only_the_lines_it_has_not_seen(paths: tuple[Path, Path]) -> None:
    """Garble bytes a reader has already read (same inode, same size), then append a change: the reader
    follows with the new line alone, while reading the whole file again would fail."""
    writer, reader = _store(paths), _store(paths)
    with writer.transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    assert set(reader.snapshot()) == {"a"}
    data = bytearray(paths[0].read_bytes())
    data[1:9] = b"GARBLED!"
    with paths[0].open("r+b") as f:
        f.write(bytes(data))
    with paths[0].open("ab") as f:
        f.write(encode_put(_claim("b")))
    assert set(reader.snapshot()) == {"a", "b"}
    with pytest.raises(CheckpointFormatError):
        decode_log(paths[0].read_bytes(), SCHEMA_VERSION, MIGRATIONS)


def test_a_torn_last_line_is_not_read_and_is_cut_by_the_next_writer(paths: tuple[Path, Path]) -> None:
    first, second = _store(paths), _store(paths)
    with first.transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    assert set(second.snapshot()) == {"a"}
    torn = encode_put(_claim("b"))[:-7]  # a crash in the middle of an append
    with paths[0].open("ab") as f:
        f.write(torn)
    assert set(second.snapshot()) == {"a"}  # incremental read: the partial line is not a change
    assert set(_store(paths).snapshot()) == {"a"}  # whole read: neither
    with second.transaction() as txn:
        txn.put(_claim("c"))
        txn.commit()
    assert torn not in paths[0].read_bytes()
    assert set(_store(paths).snapshot()) == {"a", "c"}
    assert set(first.snapshot()) == {"a", "c"}


def test_a_garbled_complete_line_costs_that_line_only(paths: tuple[Path, Path]) -> None:
    seen: list[str] = []
    store = CheckpointStore(paths[0], paths[1], BOOT, on_corrupt=lambda p, why: seen.append(why))
    with store.transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    with paths[0].open("ab") as f:
        f.write(b'{"put": 7}\n')
    assert set(store.snapshot()) == {"a"}
    assert store.uncertain  # the claim of the skipped line is unknown: it may be any
    assert seen
    [side] = paths[0].parent.glob("checkpoint.json.damaged-*")
    assert b'{"put": 7}' in side.read_bytes()
    assert b"line 2" in side.read_bytes()


def test_the_log_is_compacted_into_a_new_snapshot(paths: tuple[Path, Path]) -> None:
    store, other = _store(paths), _store(paths)
    with store.transaction() as txn:
        txn.put(_claim("held"))
        txn.commit()
    inode = paths[0].stat().st_ino
    other.snapshot()
    rounds = COMPACTION_SLACK + 2 * 2 + 2  # more changes than the slack plus twice the claims held
    for i in range(rounds):
        with store.transaction() as txn:
            txn.put(_claim("churn", name=str(i)))
            txn.commit()
    lines = _lines(paths[0])
    assert paths[0].stat().st_ino != inode
    assert len(lines) < COMPACTION_SLACK
    assert set(lines[0]["claims"]) <= {"held", "churn"}
    expected = {"held": _claim("held"), "churn": _claim("churn", name=str(rounds - 1))}
    assert other.snapshot() == expected  # the other instance follows the rewrite
    assert _store(paths).snapshot() == expected


def test_a_version_1_file_is_read_then_rewritten_as_the_current_version(paths: tuple[Path, Path]) -> None:
    v1 = {
        "version": 1,
        "bootId": BOOT,
        "claims": {
            "a": {
                "namespace": "default",
                "name": "claim-a",
                "state": PREPARE_COMPLETED,
                "cdiSpec": "/cdi/a.yaml",
                "devices": [
                    {
                        "request": "gpu",
                        "pool": "node-a",
                        "device": "gpu-a",
                        "cdiDeviceIds": ["k8s.gpudra.io/claim=a-gpu"],
                        "adminAccess": False,
                        "shareId": None,
                    }
                ],
            }
        },
    }
    paths[0].write_text(json.dumps(v1, indent=2) + "\n")  # even pretty-printed
    store = _store(paths)
    assert store.snapshot() == {"a": _claim("a")}
    with store.transaction() as txn:
        txn.put(_claim("b"))
        txn.commit()
    lines = _lines(paths[0])
    assert len(lines) == 1
    assert lines[0]["version"] == SCHEMA_VERSION == 3
    assert set(lines[0]["claims"]) == {"a", "b"}


def test_appends_after_a_reboot_reset_never_revive_old_claims(paths: tuple[Path, Path]) -> None:
    old = _store(paths, boot="boot-1")
    with old.transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    with old.transaction() as txn:
        txn.put(_claim("b"))
        txn.commit()
    new = _store(paths, boot="boot-2")
    with new.transaction() as txn:
        assert txn.rebooted
        assert txn.claims == {}
        txn.put(_claim("c"))
        txn.commit()
    assert load_document(paths[0].read_bytes())["bootId"] == "boot-2"
    assert set(_store(paths, boot="boot-2").snapshot()) == {"c"}


def test_a_newer_versions_unknown_change_is_skipped(
    paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    head = {"version": SCHEMA_VERSION + 1, "bootId": BOOT, "claims": {}}
    paths[0].write_bytes(json.dumps(head).encode() + b"\n" + b'{"pin": "a"}\n' + encode_put(_claim("b")))
    with caplog.at_level(logging.WARNING, logger="gpudra.state.checkpoint"):
        assert set(_store(paths).snapshot()) == {"b"}
    assert "unknown to this version" in caplog.text


def test_many_threads_of_one_process_lose_no_update(paths: tuple[Path, Path]) -> None:
    import threading

    store = _store(paths)

    def add(prefix: str) -> None:
        for i in range(15):
            with store.transaction() as txn:
                txn.put(_claim(f"{prefix}{i}"))
                txn.commit()

    threads = [threading.Thread(target=add, args=(p,)) for p in "wxyz"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(_store(paths).snapshot()) == 60


def test_close_releases_the_file(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    with store.transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    before = len(os.listdir("/proc/self/fd"))
    store.close()
    assert len(os.listdir("/proc/self/fd")) == before - 1
    assert set(store.snapshot()) == {"a"}


# ---- the pure log functions -------------------------------------------------------------------------

_uids = st.sampled_from(["a", "b", "c", "d"])
_changes = st.lists(st.tuples(st.booleans(), _uids, st.sampled_from(["x", "y"])), max_size=12)


@settings(max_examples=60)
@given(_changes, st.integers(min_value=0, max_value=40))
def test_applying_changes_matches_a_dict_model_and_stops_at_a_torn_line(
    changes: list[tuple[bool, str, str]], cut: int
) -> None:
    model: dict[str, ClaimRecord] = {}
    data = b""
    for put, uid, name in changes:
        if put:
            model[uid] = replace(_claim(uid), name=name)
            data += encode_put(model[uid])
        else:
            model.pop(uid, None)
            data += encode_delete(uid)
    base = Content(version=SCHEMA_VERSION, boot_id=BOOT)
    content, used = apply_changes(base, data)
    assert content.claims == model
    assert used == len(data)
    assert content.changes == len(changes)
    assert base.claims == {}  # not modified
    torn = data + encode_put(_claim("z"))[: cut % 30 + 1]
    assert apply_changes(base, torn) == (content, len(data))


def test_decode_log_reads_the_snapshot_then_the_changes() -> None:
    head = json.dumps({"version": 2, "bootId": BOOT, "claims": {}}).encode() + b"\n"
    data = head + encode_put(_claim("a")) + encode_delete("a") + encode_put(_claim("b"))
    content, used = decode_log(data, SCHEMA_VERSION, MIGRATIONS)
    assert content.claims == {"b": _claim("b")}
    assert used == len(data)
    assert content.changes == 3
    with pytest.raises(CheckpointFormatError, match="not JSON"):
        decode_log(b"{torn snapshot", SCHEMA_VERSION, MIGRATIONS)
