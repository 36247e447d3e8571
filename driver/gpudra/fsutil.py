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
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def fsync_dir(directory: Path) -> None:
    """Make a rename or unlink inside ``directory`` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path | str, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically: temp file in the same directory, write, rename.

    ``durable`` fsyncs the temp file before the rename (never a torn file after a power cut); transient files
    skip it (see the module docstring). ``mode`` is applied exactly (the umask does not narrow it). Missing
    parent directories are created (only when missing: an ``mkdir`` per call costs time on the prepare path).
    ``path`` may be text: no :class:`~pathlib.Path` needs to be parsed on the prepare path. On any error the
    temp file is removed and the old content of ``path`` is untouched.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"atomic_write: data must be bytes, not {type(data).__name__}")
    fd, tmp = _create_temp(path)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _create_temp(path: Path | str) -> tuple[int, str]:
    """A new hidden temp file next to ``path`` (a random name: two plugin instances share directories, and
    their pids may be equal in their own pid namespaces). Cheaper than :func:`tempfile.mkstemp`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    parent, name = os.path.split(path)
    for _ in range(16):
        tmp = os.path.join(parent, f".{name}.{os.urandom(6).hex()}{TEMP_SUFFIX}")
        try:
            return os.open(tmp, flags, 0o600), tmp
        except FileExistsError:
            continue
        except FileNotFoundError:
            os.makedirs(parent, exist_ok=True)
            return os.open(tmp, flags, 0o600), tmp
    raise FileExistsError(f"no free temporary name next to {path}")


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


def pread_all(fd: int, size: int, offset: int) -> bytes:
    """``size`` bytes of ``fd`` from ``offset`` (fewer at end of file), however many reads it takes."""
    chunks = []
    while size > 0:
        chunk = os.pread(fd, size, offset)
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to ``fd`` (a write may take less than asked)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
