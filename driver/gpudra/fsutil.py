"""Crash-safe file primitives shared by the checkpoint and the CDI writer.

A reader (another plugin instance, the container runtime's CDI cache) must only ever see the old content or
the new content of a file, never a torn write. Temporary files are hidden (leading dot) and end in ``.tmp``
so that the CDI cache, which loads every ``*.json``/``*.yaml`` in its directories, never tries to parse one.

What must survive what: a crash of the plugin process loses nothing once ``rename`` returned (the page cache
outlives the process). A crash of the node loses prepared state *by design* — the checkpoint records the
boot id and a new boot starts from a clean slate, and the CDI root is normally tmpfs. So the checkpoint is
fsynced before its rename (as the kubelet's own checkpoint manager does, so a power cut never leaves a torn
file that would read as corruption), while the transient CDI specs and claim descriptions skip fsync (as the
CDI library's own spec writer does): on the prepare path each fsync costs 0.5-1 ms here.
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


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically: temp file in the same directory, write, rename.

    ``durable`` fsyncs the temp file before the rename (never a torn file after a power cut); transient files
    skip it (see the module docstring). ``mode`` is applied exactly (the umask does not narrow it). On any
    error the temp file is removed and the old content of ``path`` is untouched.
    """
    directory = path.parent
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def remove(path: Path) -> bool:
    """Unlink ``path``. Returns False when it did not exist (that is not an error)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def rename_durably(source: Path, target: Path) -> None:
    """Rename within one directory and make the rename durable."""
    os.rename(source, target)
    fsync_dir(target.parent)
