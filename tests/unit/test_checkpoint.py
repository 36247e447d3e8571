"""The checkpoint: format round trip, locking, cache, reboot, corruption, versions; fsutil.atomic_write."""

from __future__ import annotations

import json
import logging
import stat
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.state.checkpoint import (
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    SCHEMA_VERSION,
    CheckpointFormatError,
    CheckpointStore,
    ClaimRecord,
    ClaimState,
    PreparedDevice,
    decode,
    encode,
    load_document,
    read_boot_id,
)

BOOT = "3f1c9a52-0d4e-4c55-9f3e-2b8a41d6e7c1"


def _device(name: str = "gpu-0", **kw: Any) -> PreparedDevice:
    return PreparedDevice("gpu", "node-a", name, (f"k8s.gpudra.io/claim=uid-{name}",), **kw)


def _claim(uid: str = "uid-1", state: ClaimState = PREPARE_COMPLETED, n: int = 1) -> ClaimRecord:
    devices = tuple(_device(f"gpu-{i}") for i in range(n))
    return ClaimRecord(uid, "default", f"claim-{uid}", state, devices, f"/var/run/cdi/{uid}.yaml")


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "state" / "checkpoint.json", tmp_path / "state" / "checkpoint.lock"


def _store(paths: tuple[Path, Path], boot: str | None = BOOT, **kw: Any) -> CheckpointStore:
    return CheckpointStore(paths[0], paths[1], boot, **kw)


def _on_disk(path: Path) -> dict[str, Any]:
    """The checkpoint file as one snapshot document (its change lines applied)."""
    return load_document(path.read_bytes())


def _save(store: CheckpointStore, *records: ClaimRecord) -> None:
    with store.transaction() as txn:
        for r in records:
            txn.put(r)
        assert txn.commit()


# ---- the pure format --------------------------------------------------------------------------------

_text = st.text(min_size=1, max_size=12)
_devices = st.builds(
    PreparedDevice,
    request=_text,
    pool=_text,
    device=_text,
    cdi_device_ids=st.lists(_text, max_size=3).map(tuple),
    admin_access=st.booleans(),
    share_id=st.none() | _text,
)
_uids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,40}", fullmatch=True)  # what may name a claim's files
_records = st.builds(
    ClaimRecord,
    uid=_uids,
    namespace=_text,
    name=_text,
    state=st.sampled_from([PREPARE_STARTED, PREPARE_COMPLETED]),
    devices=st.lists(_devices, max_size=3).map(tuple),
    cdi_spec=st.none() | _text,
)


@given(st.lists(_records, max_size=4), st.none() | _text)
def test_encode_decode_round_trip(records: list[ClaimRecord], boot: str | None) -> None:
    claims = {r.uid: r for r in records}
    document = json.loads(json.dumps(encode(claims, boot)))
    assert document["version"] == SCHEMA_VERSION
    assert document["bootId"] == boot
    assert decode(document) == claims


def test_encoded_keys_are_camel_case() -> None:
    doc = encode({"u": _claim("u")}, BOOT)
    assert set(doc) == {"version", "bootId", "claims"}
    assert set(doc["claims"]["u"]) == {"namespace", "name", "state", "cdiSpec", "devices"}
    assert set(doc["claims"]["u"]["devices"][0]) == {
        "request", "pool", "device", "cdiDeviceIds", "adminAccess", "shareId"
    }


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"claims": {}},
        {"version": "1", "claims": {}},
        {"version": True, "claims": {}},
        {"version": 0, "claims": {}},
        {"version": 1, "claims": []},
        {"version": 1, "claims": {"u": {"namespace": "n", "name": "c", "state": "Done", "devices": []}}},
        {"version": 1, "claims": {"u": {"namespace": "n", "name": "c", "state": PREPARE_STARTED}}},
        {"version": 1, "claims": {"u": {"namespace": 1, "name": "c", "state": PREPARE_STARTED,
                                        "devices": []}}},
        {"version": 1, "claims": {"u": {"namespace": "n", "name": "c", "state": PREPARE_STARTED,
                                        "devices": [{"request": "r", "pool": "p", "device": "d"}]}}},
    ],
)
def test_decode_rejects_wrong_shapes(document: object) -> None:
    with pytest.raises(CheckpointFormatError):
        decode(document)


# ---- transactions -----------------------------------------------------------------------------------


def test_missing_file_is_empty_and_nothing_is_written_without_changes(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    assert store.snapshot() == {}
    with store.transaction() as txn:
        assert txn.claims == {}
        assert txn.commit() is False
    assert not paths[0].exists()
    assert paths[1].exists()  # the lock file is created on demand


def test_commit_twice_in_one_transaction(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    with store.transaction() as txn:
        txn.put(_claim(state=PREPARE_STARTED))
        assert txn.commit()
        on_disk = _on_disk(paths[0])
        assert on_disk["claims"]["uid-1"]["state"] == PREPARE_STARTED
        txn.put(_claim(state=PREPARE_COMPLETED))
        assert txn.commit()
        assert txn.commit() is False  # nothing changed since
    assert _store(paths).snapshot() == {"uid-1": _claim()}
    assert stat.S_IMODE(paths[0].stat().st_mode) == 0o600


def test_only_commit_writes(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    _save(store, _claim("a"))

    def fail_midway() -> None:
        with store.transaction() as txn:
            txn.put(_claim("b"))
            assert txn.remove("a") == _claim("a")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fail_midway()
    assert _store(paths).snapshot() == {"a": _claim("a")}


def test_remove_and_get(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    _save(store, _claim("a"), _claim("b"))
    with store.transaction() as txn:
        assert txn.get("a") == _claim("a")
        assert txn.remove("missing") is None
        txn.remove("a")
        assert txn.commit()
    assert set(store.snapshot()) == {"b"}


def test_transaction_is_closed_after_the_block(paths: tuple[Path, Path]) -> None:
    with _store(paths).transaction() as txn:
        pass
    txn.put(_claim())
    with pytest.raises(RuntimeError, match="closed"):
        txn.commit()


def test_the_working_copy_changes_only_through_put_and_remove(paths: tuple[Path, Path]) -> None:
    """put() files a record under its own UID and remove() notes the change, so commit() writes exactly
    what changed; the mapping itself cannot be written to."""
    with _store(paths).transaction() as txn:
        with pytest.raises(TypeError):
            txn.claims["other"] = _claim("uid-1")  # type: ignore[index]
        txn.put(_claim("uid-1"))
        assert dict(txn.claims) == {"uid-1": _claim("uid-1")}


# ---- the cache and other instances ------------------------------------------------------------------


def test_sees_writes_of_another_instance(paths: tuple[Path, Path]) -> None:
    first, second = _store(paths), _store(paths)
    _save(first, _claim("a"))
    assert set(second.snapshot()) == {"a"}
    _save(second, replace(_claim("a"), name="renamed"))  # same size on disk: only the inode moves
    assert first.snapshot()["a"].name == "renamed"
    with first.transaction() as txn:
        txn.remove("a")
        txn.commit()
    assert second.snapshot() == {}


# ---- locking ----------------------------------------------------------------------------------------

_TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, getattr(fcntl, sys.argv[2]) | fcntl.LOCK_NB)
except BlockingIOError:
    print("busy")
else:
    print("free")
"""


def _probe(lock: Path, how: str) -> str:
    out = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(lock), how], capture_output=True, text=True,
                         check=True)
    return out.stdout.strip()


def test_transaction_excludes_other_processes_and_releases(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    with store.transaction():
        assert _probe(paths[1], "LOCK_SH") == "busy"
        assert _probe(paths[1], "LOCK_EX") == "busy"
    assert _probe(paths[1], "LOCK_EX") == "free"  # never held between calls


def test_concurrent_read_modify_write_loses_no_update(paths: tuple[Path, Path]) -> None:
    stores = [_store(paths) for _ in range(4)]  # separate instances, like two plugin pods
    rounds = 10

    def bump(store: CheckpointStore) -> None:
        for _ in range(rounds):
            with store.transaction() as txn:
                current = txn.get("counter")
                count = int(current.name) if current else 0
                txn.put(replace(_claim("counter"), name=str(count + 1)))
                txn.commit()

    threads = [threading.Thread(target=bump, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].snapshot()["counter"].name == str(rounds * len(stores))


# ---- reboot -----------------------------------------------------------------------------------------


def test_new_boot_starts_clean(paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    _save(_store(paths, boot="boot-1"), _claim("a"))
    after = _store(paths, boot="boot-2")
    with caplog.at_level(logging.WARNING, logger="gpudra.state.checkpoint"):
        assert after.snapshot() == {}
    assert "rebooted" in caplog.text
    with after.transaction() as txn:
        assert txn.rebooted
        assert txn.claims == {}
        assert txn.commit()  # the reset itself is a change worth writing
    assert _on_disk(paths[0]) == {"version": SCHEMA_VERSION, "bootId": "boot-2", "claims": {}}
    with after.transaction() as txn:
        assert not txn.rebooted


def test_unknown_boot_id_keeps_state(paths: tuple[Path, Path]) -> None:
    _save(_store(paths, boot="boot-1"), _claim("a"))
    assert set(_store(paths, boot=None).snapshot()) == {"a"}


def test_read_boot_id(tmp_path: Path) -> None:
    source = tmp_path / "boot_id"
    source.write_text(BOOT + "\n")
    assert read_boot_id(source) == BOOT
    assert read_boot_id(tmp_path / "missing") is None
    source.write_text("")
    assert read_boot_id(source) is None


# ---- corruption -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"\xff\xfe", b"[]", b'{"version": 1, "claims": []}', b'{"version": 1}', b""],
)
def test_corrupt_file_is_moved_aside(
    paths: tuple[Path, Path], content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    paths[0].parent.mkdir(parents=True)
    paths[0].write_bytes(content)
    seen: list[tuple[Path, str]] = []
    store = _store(paths, on_corrupt=lambda p, why: seen.append((p, why)))
    with caplog.at_level(logging.ERROR, logger="gpudra.state.checkpoint"):
        assert store.snapshot() == {}
    aside = list(paths[0].parent.glob("checkpoint.json.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes() == content
    assert seen == [(aside[0], seen[0][1])]
    assert seen[0][1]
    assert "CORRUPT" in caplog.text
    assert store.uncertain  # every claim the file held may be missing
    assert _on_disk(paths[0])["claims"] == {}  # a fresh file that says so, at once
    assert _on_disk(paths[0])["damage"] == {"claims": [], "uncertain": True}
    _save(store, _claim("a"))  # and life goes on
    again = _store(paths)
    assert set(again.snapshot()) == {"a"}
    assert again.uncertain  # a restart in this boot still knows


def test_failing_corruption_callback_does_not_crash(paths: tuple[Path, Path]) -> None:
    paths[0].parent.mkdir(parents=True)
    paths[0].write_text("garbage")

    def explode(path: Path, why: str) -> None:
        raise RuntimeError("event API down")

    with _store(paths, on_corrupt=explode).transaction() as txn:
        assert txn.claims == {}


# ---- files the store leaves ---------------------------------------------------------------------------


def test_commits_leave_no_temporary_files(paths: tuple[Path, Path]) -> None:
    store = _store(paths)
    for i in range(3):
        _save(store, _claim(f"c{i}"))
    assert sorted(p.name for p in paths[0].parent.iterdir()) == ["checkpoint.json", "checkpoint.lock"]
