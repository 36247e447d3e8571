"""Crash-safe file primitives shared by the checkpoint, the CDI writer and the start-up clean-up.

A reader (another plugin instance, the container runtime's CDI cache) must only ever see the old content or
the new content of a file, never a torn write. Temporary files are hidden (leading dot) and end in ``.tmp``
so that the CDI cache, which loads every ``*.json``/``*.yaml`` in its directories, never tries to parse one.
A writer holds an ``flock`` on its temp file until the rename, so :func:`remove_stale_temps` can tell the
leftovers of a killed writer (nobody holds their lock) from a write in flight in another plugin instance.

What must survive what: a crash of the plugin process loses nothing once ``rename`` returned (the page cache
outlives the process). A crash of the node loses prepared state *by design* — the checkpoint records the
boot id and a new boot starts from a clean slate, and the CDI root is normally tmpfs. So the checkpoint is
fsynced before its rename (as the kubelet's own checkpoint manager does, so a power cut never leaves a torn
file that would read as corruption), while the transient CDI specs and claim descriptions skip fsync (as the
CDI library's own spec writer does): on the prepare path each fsync costs 0.5-1 ms here.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Final

TEMP_SUFFIX: Final = ".tmp"
#: ``.<name>.<12 hex digits>.tmp``: the temp files :func:`atomic_write` creates for ``<name>``.
TEMP_NAME: Final = re.compile(r"\.(?P<target>.+)\.[0-9a-f]{12}" + re.escape(TEMP_SUFFIX))
#: Directories :func:`make_dirs` creates above the one asked for: searchable, never group/world-writable.
PARENT_MODE: Final = 0o755


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
    parent directories are created with mode 0755 (only when missing: an ``mkdir`` per call costs time on the
    prepare path). ``path`` may be text: no :class:`~pathlib.Path` needs to be parsed on the prepare path. On
    any error the temp file is removed and the old content of ``path`` is untouched.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"atomic_write: data must be bytes, not {type(data).__name__}")
    fd, tmp = _create_temp(path)
    try:
        try:
            os.fchmod(fd, mode)
            write_all(fd, data)
            if durable:
                os.fsync(fd)
            os.replace(tmp, path)  # still locked: a clean-up never takes a temp file in flight
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    finally:
        os.close(fd)  # releases the lock


def _create_temp(path: Path | str) -> tuple[int, str]:
    """A new hidden temp file next to ``path``, locked (a random name: two plugin instances share
    directories, and their pids may be equal in their own pid namespaces). Cheaper than
    :func:`tempfile.mkstemp`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    parent, name = os.path.split(path)
    for _ in range(16):
        tmp = os.path.join(parent, f".{name}.{os.urandom(6).hex()}{TEMP_SUFFIX}")
        try:
            fd = os.open(tmp, flags, 0o600)
        except FileExistsError:
            continue
        except FileNotFoundError:
            make_dirs(Path(parent or "."), PARENT_MODE)
            fd = os.open(tmp, flags, 0o600)
        if _lock_new(fd):
            return fd, tmp
        os.close(fd)  # a clean-up took it between our open and our lock: it is removing it
    raise FileExistsError(f"no free temporary name next to {path}")


def _lock_new(fd: int) -> bool:
    """Lock a temp file just created; False when a clean-up holds it. A file system without flock
    (ENOLCK) leaves it unlocked: the clean-up's age rule still protects it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


def make_dirs(path: Path, mode: int, parent_mode: int = PARENT_MODE) -> bool:
    """Create ``path`` and its missing parents with exact modes (``mode`` for ``path``, ``parent_mode`` for
    the parents), whatever the umask. An existing directory is left as it is. Returns whether ``path`` was
    created. Raises OSError (FileExistsError when ``path`` is not a directory)."""
    try:
        os.mkdir(path, mode)
    except FileNotFoundError:
        if path.parent == path:
            raise
        make_dirs(path.parent, parent_mode, parent_mode)
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            return _existing_dir(path)
    except FileExistsError:
        return _existing_dir(path)
    os.chmod(path, mode)  # mkdir's mode was narrowed by the umask
    return True


def _existing_dir(path: Path) -> bool:
    if not path.is_dir():
        raise FileExistsError(errno.EEXIST, "it exists and is not a directory", str(path))
    return False


def check_writable(directory: Path) -> None:
    """Create and remove a file in ``directory`` (the name of a temp file of ours, so a crash in between
    leaves nothing that :func:`remove_stale_temps` would not take). Raises OSError."""
    fd, tmp = _create_temp(directory / "gpudra-write-check")
    os.close(fd)
    os.unlink(tmp)


def remove_stale_temps(directory: Path, targets: Iterable[str] = ("",), min_age_s: float = 2.0) -> int:
    """Remove the temp files of writes that were interrupted (the writer was killed): files named as
    :func:`atomic_write` names them for a target starting with one of ``targets``, that nobody holds locked
    and that were last modified ``min_age_s`` ago or longer. Returns how many went; a missing directory
    has none. Other files are never touched."""
    prefixes = tuple(targets)
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return 0
    removed = 0
    now = time.time()
    for name in names:
        match = TEMP_NAME.fullmatch(name)
        if match is not None and match["target"].startswith(prefixes):
            removed += _remove_if_abandoned(os.path.join(directory, name), now - min_age_s)
    return removed


def _remove_if_abandoned(path: str, modified_before: float) -> int:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:  # gone meanwhile, a symlink (never ours), a socket or fifo
        return 0
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_mtime > modified_before:
            return 0
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # a write in flight (another plugin instance)
        except OSError:
            pass  # no flock on this file system: the age rule decides
        try:
            os.unlink(path)
        except FileNotFoundError:
            return 0
        return 1
    finally:
        os.close(fd)


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
