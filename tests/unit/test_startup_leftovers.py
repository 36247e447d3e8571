"""What a killed plugin leaves behind and the next start removes (issue 13, item 6): temp files of interrupted
atomic writes and private socket directories — only ours, by name, and never one a live writer holds."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from gpudra.fsutil import atomic_write, remove_stale_temps
from gpudra.kubelet import unixbind

OLD = time.time() - 3600


def _plant(path: Path, *, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a file")
    if old:
        os.utime(path, (OLD, OLD))
    return path


def test_only_our_abandoned_temp_files_go(tmp_path: Path) -> None:
    ours = [
        _plant(tmp_path / ".k8s.gpudra.io-claim_abc.yaml.0123456789ab.tmp"),
        _plant(tmp_path / ".checkpoint.json.a1b2c3d4e5f6.tmp"),
    ]
    kept = [
        _plant(tmp_path / ".k8s.gpudra.io-claim_abc.yaml.00112233aabb.tmp", old=False),  # maybe in flight
        _plant(tmp_path / ".k8s.nvidia.com-claim_abc.yaml.0123456789ab.tmp"),  # another CDI writer's
        _plant(tmp_path / ".k8s.gpudra.io-claim_abc.yaml.0123456789AB.tmp"),  # not our hex
        _plant(tmp_path / "k8s.gpudra.io-claim_abc.yaml.0123456789ab.tmp"),  # not hidden
        _plant(tmp_path / ".checkpoint.json.0123456789.tmp"),  # too short
        _plant(tmp_path / ".checkpoint.json.tmp"),
        _plant(tmp_path / "checkpoint.json"),
    ]
    (tmp_path / ".checkpoint.json.ffffffffffff.tmp").mkdir()  # a directory is never a temp file of ours
    (tmp_path / ".checkpoint.json.eeeeeeeeeeee.tmp").symlink_to(kept[-1])
    removed = remove_stale_temps(tmp_path, ["k8s.gpudra.io-claim_", "checkpoint"])
    assert removed == 2
    assert not any(p.exists() for p in ours)
    assert all(p.exists() for p in kept)
    assert (tmp_path / ".checkpoint.json.ffffffffffff.tmp").is_dir()
    assert (tmp_path / ".checkpoint.json.eeeeeeeeeeee.tmp").is_symlink()


def test_a_temp_file_another_instance_is_writing_stays(tmp_path: Path) -> None:
    """An atomic write holds a lock on its temp file until the rename; another instance's write in flight is
    therefore never taken, however old the file looks."""
    busy = _plant(tmp_path / ".checkpoint.json.0123456789ab.tmp")
    fd = os.open(busy, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert remove_stale_temps(tmp_path) == 0
        assert busy.exists()
    finally:
        os.close(fd)  # the writer died: its lock went with it
    assert remove_stale_temps(tmp_path) == 1
    assert not busy.exists()


def test_a_missing_directory_has_no_leftovers(tmp_path: Path) -> None:
    assert remove_stale_temps(tmp_path / "missing") == 0
    assert unixbind.remove_stale(tmp_path / "missing") == 0


def test_atomic_writes_leave_nothing_the_clean_up_would_find(tmp_path: Path) -> None:
    for i in range(20):
        atomic_write(tmp_path / "f.json", str(i).encode(), durable=False)
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]
    assert remove_stale_temps(tmp_path) == 0


def _private(directory: Path, name: str, *, old: bool = True, socket_file: bool = True) -> Path:
    private = directory / name
    private.mkdir(mode=0o700)
    if socket_file:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(private / "s"))  # a socket a killed process bound, never renamed
    if old:
        os.utime(private, (OLD, OLD))
    return private


def test_abandoned_private_socket_directories_go(tmp_path: Path) -> None:
    gone = [_private(tmp_path, ".gd0ab"), _private(tmp_path, ".gd1234567890ab", socket_file=False)]
    kept = [
        _private(tmp_path, ".gd0ac", old=False),  # another instance binding right now
        _private(tmp_path, ".gdxyz"),  # not our name
        _private(tmp_path, "gd0ad"),
    ]
    other = _private(tmp_path, ".gd0ae")
    (other / "notes").write_text("someone else's")
    os.utime(other, (OLD, OLD))
    assert unixbind.remove_stale(tmp_path) == 2
    assert not any(p.exists() for p in gone)
    assert all(p.exists() for p in [*kept, other])
