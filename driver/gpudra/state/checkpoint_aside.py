"""The files around the checkpoint: what makes it unusable (and what the admin should do), moving a file
aside, and the side file that keeps the text of damaged records.

Nothing the plugin cannot read is deleted: an unusable path is renamed to ``<name>.unusable-<time>``, a file
unreadable as a whole to ``<name>.corrupt-<time>``, and the raw text of each damaged record is copied to
``<name>.damaged-<time>`` before the log is compacted without it.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from gpudra.fsutil import rename_durably, write_all
from gpudra.state.checkpoint_format import Damage


class CheckpointUnavailable(OSError):
    """The checkpoint or its lock cannot be opened, and could not be moved aside: the plugin cannot keep a
    record of its claims. ``reason`` says what is wrong with ``path``, ``fix`` what the admin should do.

    An :class:`OSError`, so a call that meets it while serving fails its claims like any I/O error."""

    def __init__(self, path: Path, reason: str, fix: str, code: int | None = None) -> None:
        super().__init__(code or 0, reason)
        self.path = path
        self.reason = reason
        self.fix = fix

    def __str__(self) -> str:
        return f"checkpoint {self.path} cannot be used: {self.reason} — {self.fix}"


#: What the admin should do, by errno ({path} and {parent} are filled in).
_FIXES: Final = {
    errno.EACCES: "give the plugin read and write access to {path} and its directory (check their owner and "
    "mode; the plugin runs as root and needs CAP_DAC_OVERRIDE for files it does not own)",
    errno.EPERM: "the file is probably immutable or append-only: check `lsattr {path}` and clear the flags "
    "with `chattr -i -a {path}`",
    errno.EROFS: "{parent} is on a read-only file system: make the state directory a writable hostPath",
    errno.ENOTDIR: "a component of {parent} is a file, not a directory: move that file away",
    errno.EISDIR: "{path} is a directory: move it away",
    errno.ELOOP: "{path} is a loop of symbolic links: remove the link",
    errno.ENOSPC: "free space on the file system of {parent}",
    errno.EDQUOT: "raise the disk quota for {parent}",
    errno.EIO: "the disk reports I/O errors (see dmesg): repair it, or move {path} away",
    errno.ENOLCK: "the file system of {parent} does not support flock: use a local one",
}


def _fix(code: int | None, path: Path) -> str:
    return _FIXES.get(code or 0, "check {path} and its directory").format(path=path, parent=path.parent)


def unavailable(path: Path, exc: OSError, also: str = "") -> CheckpointUnavailable:
    """The error for ``path`` failing with ``exc``; ``also`` adds why it could not be moved aside."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno:
        reason = f"{reason} ({errno.errorcode.get(exc.errno, exc.errno)})"
    if also:
        reason = f"{reason}; {also}"
    return CheckpointUnavailable(path, reason, _fix(exc.errno, path), exc.errno)


#: Errors opening a path that moving the path aside cures (what is found there is not a file we can use).
MOVABLE: Final = frozenset({errno.EACCES, errno.EPERM, errno.EISDIR, errno.ELOOP, errno.ENXIO, errno.ENODEV})


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def move_aside(path: Path, kind: str, why: OSError | None = None) -> Path:
    """Rename ``path`` to ``<name>.<kind>-<time>`` next to it. Raises :class:`CheckpointUnavailable` when
    that fails (for ``why``, the error that made the move necessary, when there is one)."""
    aside = path.with_name(f"{path.name}.{kind}-{stamp()}")
    try:
        rename_durably(path, aside)
    except OSError as exc:
        if why is None:
            raise unavailable(path, exc, "it cannot be moved aside") from exc
        raise unavailable(path, why, f"moving it aside failed too: {exc.strerror or exc}") from exc
    return aside


def save_damage(path: Path, damage: Iterable[Damage]) -> Path:
    """The side file ``<name>.damaged-<time>`` with each damaged record's text after a ``#`` line saying
    where it was and why it was skipped. Raises OSError."""
    aside = path.with_name(f"{path.name}.damaged-{stamp()}")
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        for d in damage:
            write_all(fd, f"# {d.where}: {d.why}\n".encode(errors="replace") + d.raw + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return aside
