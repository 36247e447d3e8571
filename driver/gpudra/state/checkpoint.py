"""The record of which claims this node has prepared: the truth on disk between kubelet calls.

During a rolling update two plugin instances serve the kubelet at once, so nothing in memory is trusted
without checking the file: every call opens a :meth:`CheckpointStore.transaction`, which takes a short
exclusive ``flock`` on the lock file and brings the in-memory copy up to date with the file, then
:meth:`Txn.commit` appends one change line per claim changed (the format is a log, see
:mod:`gpudra.state.checkpoint_log`). The lock is never held between calls.

Validating the in-memory copy costs one ``stat``: the store keeps the file it read open, so its inode
number cannot be reused while cached; the same inode at the same size is the same file (the log only ever
grows, and a rewrite is a new inode), a larger one has new lines to read from where the cache stopped.
Appends are made durable with one ``fdatasync`` per transaction, after the lock is released, so calls in
flight overlap their syncs instead of queueing behind each other's (group commit). The log is compacted
into a fresh snapshot (atomic replace, fsynced) when it holds many more changes than claims.

The file is read line by line (:mod:`gpudra.state.checkpoint_read`). A damaged record costs that record only:
it is skipped with a loud log line, its text saved next to the checkpoint, the log compacted without it, and
the store remembers what may be missing (:attr:`CheckpointStore.damaged`, :attr:`CheckpointStore.uncertain`,
kept in the snapshot until the node reboots) so that nothing is cleaned up that a lost record may own. A file
unreadable as a whole (or larger than any real node writes) is moved aside and the store starts empty; so
does a changed boot id (the node rebooted), without the uncertainty. A path that cannot be opened (a
directory, a symlink loop, no permission) is moved aside too, and when even that fails the store raises
:class:`CheckpointUnavailable` saying what the admin should do (:mod:`gpudra.state.checkpoint_aside`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Final

from gpudra.state.checkpoint_aside import CheckpointUnavailable, move_aside, unavailable
from gpudra.state.checkpoint_file import CheckpointFile, NeedsRepair
from gpudra.state.checkpoint_format import (
    MAX_CHECKPOINT_BYTES,
    MIGRATIONS,
    NO_EXTRAS,
    SCHEMA_VERSION,
    CheckpointFormatError,
    Content,
    Migration,
    UnwritableRecord,
    decode,
    encode,
    encode_fragment,
)
from gpudra.state.checkpoint_log import Fragments, load_document
from gpudra.state.checkpoint_records import (
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    ClaimRecord,
    ClaimState,
    PreparedDevice,
)

__all__ = [
    "BOOT_ID_PATH",
    "MAX_CHECKPOINT_BYTES",
    "MIGRATIONS",
    "PREPARE_COMPLETED",
    "PREPARE_STARTED",
    "SCHEMA_VERSION",
    "CheckpointFormatError",
    "CheckpointStore",
    "CheckpointUnavailable",
    "ClaimRecord",
    "ClaimState",
    "Migration",
    "PreparedDevice",
    "Txn",
    "UnwritableRecord",
    "decode",
    "encode",
    "load_document",
    "read_boot_id",
]

log = logging.getLogger(__name__)

BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")


def read_boot_id(path: Path = BOOT_ID_PATH) -> str | None:
    """The kernel's boot id, or None when it cannot be read (then reboots are not detected)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


# ---- the edge: the file, the lock, the cache ------------------------------------------------------------


class Txn:
    """One locked read-modify-write of the checkpoint. ``claims`` is a working copy; only commit() writes."""

    def __init__(self, store: CheckpointStore, content: Content) -> None:
        self._store = store
        self._base = content
        self._open = True
        self._claims: dict[str, ClaimRecord] = dict(content.claims)
        #: The working copy, read-only: change it with put() and remove(), which note what to write.
        self.claims: Mapping[str, ClaimRecord] = MappingProxyType(self._claims)
        #: True when the stored boot id differed: the node rebooted and the prepared state was dropped.
        self.rebooted = content.rebooted
        self._touched: set[str] = set()  # claims put or removed since the last commit
        self._fragments: Fragments = {}  # each claim put: its checked JSON entry

    def get(self, uid: str) -> ClaimRecord | None:
        return self._claims.get(uid)

    def put(self, record: ClaimRecord) -> None:
        """Add or replace ``record``. Raises :class:`UnwritableRecord` (and changes nothing) when the record
        would not read back exactly as it is: fail that claim, the others are unaffected."""
        extras = self._base.extras.get(record.uid, NO_EXTRAS)
        self._fragments[record.uid] = (record, extras, encode_fragment(record, extras))
        self._claims[record.uid] = record
        self._touched.add(record.uid)

    def remove(self, uid: str) -> ClaimRecord | None:
        self._touched.add(uid)
        return self._claims.pop(uid, None)

    def commit(self) -> bool:
        """Record the working copy now if it changed. Returns whether it wrote. The write is durable when the
        transaction's block has ended."""
        if not self._open:
            raise RuntimeError("checkpoint transaction is closed")
        base = self._base.claims
        if not self._base.dirty and all(self._claims.get(u) == base.get(u) for u in self._touched):
            self._touched = set()
            return False
        self._base = self._store._file.write(self._base, self._claims, self._touched, self._fragments)
        self._touched = set()
        return True

    def _close(self) -> None:
        self._open = False


class CheckpointStore:
    """The prepared-claims checkpoint at ``path``, serialised across processes by a flock on ``lock_path``.

    The first load happens here: it raises :class:`CheckpointUnavailable` when the checkpoint or its lock
    cannot be used and cannot be moved aside. ``on_corrupt(path, why)`` is told of every file moved aside
    and every side file of damaged records (it should raise a Node Event)."""

    def __init__(
        self,
        path: Path,
        lock_path: Path,
        boot_id: str | None,
        on_corrupt: Callable[[Path, str], None] | None = None,
        *,
        schema_version: int = SCHEMA_VERSION,
        migrations: Mapping[int, Migration] = MIGRATIONS,
    ) -> None:
        self.path = path
        self.lock_path = lock_path
        self.boot_id = boot_id
        self._mutex = threading.Lock()  # this process's threads take turns before taking the flock
        self._file = CheckpointFile(path, boot_id, on_corrupt, schema_version, migrations)
        with self._mutex, self._locked(fcntl.LOCK_EX):
            self._file.load(repair=True)

    @property
    def damaged(self) -> frozenset[str]:
        """UIDs of claims whose record could not be read in this boot (their state is unknown or older than
        recorded). Only grows while the process lives."""
        return self._file.damaged

    @property
    def uncertain(self) -> bool:
        """Whether records may be missing entirely in this boot (a cut log, a file moved aside, a skipped
        line whose claim is unknown): then a file without a record may still belong to a claim."""
        return self._file.uncertain

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Txn]:
        """Exclusive lock, fresh read, a :class:`Txn`; the lock is released when the block ends, and what
        the block committed is synced to disk before this returns — unless ``durable`` is False: then the
        next durable transaction syncs it (a record that only has to outlive the process, not the node)."""
        sync_fd: int | None = None
        try:
            with self._mutex, self._locked(fcntl.LOCK_EX):
                txn = Txn(self, self._file.load(repair=True))
                try:
                    yield txn
                finally:
                    txn._close()
                    sync_fd = self._take_unsynced() if durable else None
        finally:
            if sync_fd is not None:
                try:
                    os.fdatasync(sync_fd)
                finally:
                    os.close(sync_fd)

    def snapshot(self) -> dict[str, ClaimRecord]:
        """The prepared claims as on disk now (read under a shared lock)."""
        with self._mutex:
            with self._locked(fcntl.LOCK_SH), contextlib.suppress(NeedsRepair):
                return dict(self._file.load(repair=False).claims)
            with self._locked(fcntl.LOCK_EX):
                return dict(self._file.load(repair=True).claims)

    def claim_created(self) -> frozenset[str]:
        """UUIDs of the devices recorded claims created, and the published names of the devices recorded
        claims create or are creating: never published as devices of their own (see
        :func:`gpudra.planning.offer.plan_offer`)."""
        return frozenset(
            x
            for rec in self.snapshot().values()
            for x in (*rec.applied.created_devices, *rec.applied.creating)
        )

    def close(self) -> None:
        """Let go of the open checkpoint file (the store reopens it when used again)."""
        with self._mutex:
            self._file.drop()

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        fd = self._open_lock()
        try:
            try:
                fcntl.flock(fd, how)
            except OSError as exc:
                raise unavailable(self.lock_path, exc) from exc
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _open_lock(self) -> int:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        moved = False
        for _ in range(3):
            try:
                return os.open(self.lock_path, flags, 0o644)
            except FileNotFoundError as exc:
                self._make_parent(exc)
            except OSError as exc:  # a directory or a symlink loop holds no lock: nobody can be using it
                if exc.errno not in (errno.EISDIR, errno.ELOOP) or moved:
                    raise unavailable(self.lock_path, exc) from exc
                moved = True
                aside = move_aside(self.lock_path, "unusable", exc)
                log.error("checkpoint lock %s: %s; moved it to %s", self.lock_path, exc.strerror, aside)
                self._file.tell(aside, f"the lock {self.lock_path} could not be opened ({exc.strerror})")
        raise unavailable(self.lock_path, FileNotFoundError(errno.ENOENT, "its directory keeps disappearing"))

    def _make_parent(self, exc: OSError) -> None:
        try:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise unavailable(self.lock_path, err) from exc

    def _take_unsynced(self) -> int | None:
        """A descriptor to fdatasync once the lock is released (a duplicate: the log may be swapped)."""
        file = self._file
        if not file.unsynced or file.opened is None:
            return None
        file.unsynced = False
        return os.dup(file.opened.fd)
