"""The checkpoint or its lock cannot be opened (issue 13, item 2): what can be moved aside is, and the store
starts empty and says so; what cannot raises CheckpointUnavailable naming the path and the fix. Real files
in tmp_path; the cases that need a missing capability or an immutable file run as they would on a node
(``setpriv`` without CAP_DAC_OVERRIDE, ``chattr +i``) and are skipped, with the reason, where that fails."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.state.checkpoint import CheckpointStore, CheckpointUnavailable, ClaimRecord, PreparedDevice

BOOT = "0c5e3f2a-9b1d-4e7f-a6c8-2d4b6f8a0e1c"


def _claim(uid: str) -> ClaimRecord:
    device = PreparedDevice("gpu", "node-a", f"gpu-{uid}", (f"k8s.gpudra.io/claim={uid}-gpu",))
    return ClaimRecord(uid, "default", f"claim-{uid}", "PrepareCompleted", (device,), None)


class Seen:
    def __init__(self) -> None:
        self.events: list[tuple[Path, str]] = []

    def __call__(self, path: Path, why: str) -> None:
        self.events.append((path, why))


def _store(state: Path, seen: Seen | None = None) -> CheckpointStore:
    return CheckpointStore(state / "checkpoint.json", state / "checkpoint.lock", BOOT, on_corrupt=seen)


def _works(store: CheckpointStore) -> None:
    with store.transaction() as txn:
        txn.put(_claim("after"))
        txn.commit()
    assert set(CheckpointStore(store.path, store.lock_path, BOOT).snapshot()) == {"after"}


def _aside(state: Path, name: str) -> Path:
    [aside] = state.glob(f"{name}.unusable-*")
    return aside


# ---- moved aside, and the store recovers -------------------------------------------------------------


def test_a_checkpoint_that_is_a_directory_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").mkdir()
    (tmp_path / "checkpoint.json" / "kept").write_text("whatever an admin put here")
    seen = Seen()
    store = _store(tmp_path, seen)
    assert store.snapshot() == {}
    assert store.uncertain  # the claims it should have held may be missing
    aside = _aside(tmp_path, "checkpoint.json")
    assert (aside / "kept").read_text() == "whatever an admin put here"  # moved, never deleted
    assert seen.events == [(aside, "it could not be opened (Is a directory)")]
    _works(store)


def test_a_checkpoint_that_is_a_symlink_loop_is_moved_aside(tmp_path: Path) -> None:
    (tmp_path / "checkpoint.json").symlink_to("checkpoint.json")
    seen = Seen()
    store = _store(tmp_path, seen)
    assert store.snapshot() == {}
    assert _aside(tmp_path, "checkpoint.json").is_symlink()
    assert "symbolic links" in seen.events[0][1]
    _works(store)


def test_a_checkpoint_that_is_a_fifo_is_moved_aside_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "checkpoint.json")
    store = _store(tmp_path)
    assert store.snapshot() == {}
    assert _aside(tmp_path, "checkpoint.json").is_fifo()
    _works(store)


@pytest.mark.parametrize("make", ["directory", "symlink loop"])
def test_a_lock_that_cannot_be_opened_is_moved_aside(tmp_path: Path, make: str) -> None:
    lock = tmp_path / "checkpoint.lock"
    lock.mkdir() if make == "directory" else lock.symlink_to("checkpoint.lock")
    seen = Seen()
    store = _store(tmp_path, seen)
    assert _aside(tmp_path, "checkpoint.lock")
    assert seen.events[0][0] == _aside(tmp_path, "checkpoint.lock")
    assert not store.uncertain  # a lock holds no claims
    _works(store)
    assert lock.is_file()


def test_a_checkpoint_that_becomes_a_directory_while_serving_is_moved_aside(tmp_path: Path) -> None:
    store = _store(tmp_path)
    with store.transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    (tmp_path / "checkpoint.json").rename(tmp_path / "elsewhere")
    (tmp_path / "checkpoint.json").mkdir()
    assert store.snapshot() == {}
    assert store.uncertain
    _works(store)


# ---- cannot be moved aside: CheckpointUnavailable with the fix ----------------------------------------


def test_a_state_dir_that_is_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "state").write_text("not a directory")
    with pytest.raises(CheckpointUnavailable) as err:
        _store(tmp_path / "state")
    e = err.value
    assert e.path == tmp_path / "state" / "checkpoint.lock"
    assert "ENOTDIR" in e.reason
    assert "is a file, not a directory: move that file away" in e.fix
    assert "\n" not in str(e)
    assert str(e) == f"checkpoint {e.path} cannot be used: {e.reason} — {e.fix}"
    assert isinstance(e, OSError)  # while serving, a call fails its claims like any I/O error


def test_a_checkpoint_under_a_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    lock_dir = tmp_path / "locks"
    with pytest.raises(CheckpointUnavailable) as err:
        CheckpointStore(tmp_path / "file" / "checkpoint.json", lock_dir / "checkpoint.lock", BOOT)
    assert err.value.path == tmp_path / "file" / "checkpoint.json"
    assert "ENOTDIR" in err.value.reason


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """Paths to make immutable with chattr (undone at the end); skips when chattr cannot do it here."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        subprocess.run(["chattr", "-i", str(path)], check=False, capture_output=True)


def _chattr(immutable: list[Path], path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    out = subprocess.run(["chattr", "+i", str(path)], check=False, capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip(f"chattr +i failed here: {out.stderr.strip()}")
    immutable.append(path)


def test_an_immutable_checkpoint_is_unavailable_and_untouched(tmp_path: Path, immutable: list[Path]) -> None:
    with _store(tmp_path).transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    before = (tmp_path / "checkpoint.json").read_bytes()
    _chattr(immutable, tmp_path / "checkpoint.json")
    with pytest.raises(CheckpointUnavailable) as err:
        _store(tmp_path)
    assert "EPERM" in err.value.reason
    assert f"chattr -i -a {tmp_path / 'checkpoint.json'}" in err.value.fix
    assert (tmp_path / "checkpoint.json").read_bytes() == before
    assert not list(tmp_path.glob("*.unusable-*"))


def test_an_immutable_lock_is_unavailable(tmp_path: Path, immutable: list[Path]) -> None:
    (tmp_path / "checkpoint.lock").touch()
    _chattr(immutable, tmp_path / "checkpoint.lock")
    with pytest.raises(CheckpointUnavailable) as err:
        _store(tmp_path)
    assert err.value.path == tmp_path / "checkpoint.lock"
    assert "lsattr" in err.value.fix


# ---- without CAP_DAC_OVERRIDE (a root that cannot read what mode 000 forbids) -------------------------

_OPEN = """
import json, sys
from pathlib import Path
from gpudra.state.checkpoint import CheckpointStore, CheckpointUnavailable
state = Path(sys.argv[1])
seen = []
try:
    store = CheckpointStore(state / "checkpoint.json", state / "checkpoint.lock", "boot",
                            on_corrupt=lambda p, why: seen.append(why))
    print(json.dumps({"claims": sorted(store.snapshot()), "uncertain": store.uncertain, "seen": seen}))
except CheckpointUnavailable as e:
    print(json.dumps({"unavailable": str(e), "fix": e.fix}))
"""


def _without_dac_override(state: Path) -> dict[str, Any]:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv is not installed")
    drop = [setpriv, "--bounding-set", "-dac_override,-dac_read_search"]
    probe = subprocess.run([*drop, "true"], check=False, capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop CAP_DAC_OVERRIDE here: {probe.stderr.strip()}")
    out = subprocess.run(
        [*drop, sys.executable, "-c", _OPEN, str(state)],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def test_an_unreadable_checkpoint_is_moved_aside(tmp_path: Path) -> None:
    with _store(tmp_path).transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    content = (tmp_path / "checkpoint.json").read_bytes()
    (tmp_path / "checkpoint.json").chmod(0)
    result = _without_dac_override(tmp_path)
    assert result == {"claims": [], "uncertain": True, "seen": ["it could not be opened (Permission denied)"]}
    assert _aside(tmp_path, "checkpoint.json").read_bytes() == content  # what it held is kept


def test_an_unreadable_checkpoint_in_a_read_only_dir_is_unavailable(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with _store(state).transaction() as txn:
        txn.put(_claim("a"))
        txn.commit()
    (state / "checkpoint.json").chmod(0)
    state.chmod(0o500)
    try:
        result = _without_dac_override(state)
    finally:
        state.chmod(0o700)
    assert "Permission denied (EACCES); moving it aside failed too" in result["unavailable"]
    assert "give the plugin read and write access" in result["fix"]
