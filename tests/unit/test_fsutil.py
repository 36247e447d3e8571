"""fsutil: atomic replace (temp file, rename), and whole reads and writes on raw descriptors."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from gpudra.fsutil import atomic_write, pread_all, write_all


def test_atomic_write_replaces_with_the_exact_mode_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "f.yaml"
    atomic_write(target, b"one")
    atomic_write(target, b"two", mode=0o640, durable=False)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f.yaml"]


def test_atomic_write_creates_missing_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "f.json"
    atomic_write(target, b"{}")
    assert target.read_bytes() == b"{}"


def test_a_failed_rename_removes_the_temp_file_and_keeps_the_target(tmp_path: Path) -> None:
    target = tmp_path / "busy"
    target.mkdir()
    (target / "inside").write_text("kept")  # a non-empty directory: the rename onto it fails
    with pytest.raises(IsADirectoryError):
        atomic_write(target, b"new")
    assert [p.name for p in tmp_path.iterdir()] == ["busy"]
    assert (target / "inside").read_text() == "kept"


def test_data_that_is_not_bytes_is_refused_before_any_file_exists(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write(target, b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes")  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_pread_all_reads_from_an_offset_and_stops_at_the_end(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert pread_all(fd, 4, 3) == b"3456"
        assert pread_all(fd, 100, 7) == b"789"
        assert pread_all(fd, 5, 20) == b""
    finally:
        os.close(fd)


def test_write_all_writes_everything_through_short_writes() -> None:
    """A pipe takes at most its buffer (64 KiB) per write: 1 MiB needs many writes."""
    data = os.urandom(1 << 20)
    read_fd, write_fd = os.pipe()
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_fd, 1 << 16):
            received.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        write_all(write_fd, data)
    finally:
        os.close(write_fd)
        reader.join()
        os.close(read_fd)
    assert bytes(received) == data
