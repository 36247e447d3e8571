"""Crash-safe file primitives shared by the checkpoint and the CDI writer.

A reader (another plugin instance, the container runtime's CDI cache) must only ever see the old content or
the new content of a file, never a torn write, and a rename must survive a power cut. Temporary files are
hidden (leading dot) and end in ``.tmp`` so that the CDI cache, which loads every ``*.json``/``*.yaml`` in its
directories, never tries to parse one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically: temp file in the same directory, fsync, rename, fsync dir.

    ``mode`` is applied exactly (the umask does not narrow it). On any error the temp file is removed and the
    old content of ``path`` is untouched.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    fsync_dir(directory)


def remove_durably(path: Path) -> bool:
    """Unlink ``path`` and fsync its directory. Returns False when it did not exist (that is not an error)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    fsync_dir(path.parent)
    return True


def rename_durably(source: Path, target: Path) -> None:
    """Rename within one directory and make the rename durable."""
    os.rename(source, target)
    fsync_dir(target.parent)
