"""The record of which claims this node has prepared: the truth on disk between kubelet calls.

During a rolling update two plugin instances serve the kubelet at once, so nothing in memory is trusted
without checking the file: every call opens a :meth:`CheckpointStore.transaction`, which takes a short
exclusive ``flock`` on the lock file and brings the in-memory copy up to date with the file, then
:meth:`Txn.commit` appends one change line per claim changed (the format is a log, see
:mod:`gpudra.state.checkpoint_format`). The lock is never held between calls.

Validating the in-memory copy costs one ``stat``: the store keeps the file it read open, so its inode
number cannot be reused while cached; the same inode at the same size is the same file (the log only ever
grows, and a rewrite is a new inode), a larger one has new lines to read from where the cache stopped.
Appends are made durable with one ``fdatasync`` per transaction, after the lock is released, so calls in
flight overlap their syncs instead of queueing behind each other's (group commit). The log is compacted
into a fresh snapshot (atomic replace, fsynced) when it holds many more changes than claims.

The file format, schema versions and migrations are in :mod:`gpudra.state.checkpoint_format` (pure); the names
users of the checkpoint need are re-exported here. A corrupt file is moved aside and the store starts empty;
so does a changed boot id (the node rebooted).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Final

from gpudra.fsutil import atomic_write, pread_all, rename_durably, write_all
from gpudra.state.checkpoint_format import (
    MIGRATIONS,
    NO_EXTRAS,
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    SCHEMA_VERSION,
    CheckpointFormatError,
    ClaimRecord,
    ClaimState,
    Content,
    Fragments,
    Migration,
    PreparedDevice,
    apply_changes,
    decode,
    decode_log,
    encode,
    encode_delete,
    encode_put,
    encode_snapshot,
    load_document,
    needs_compaction,
)

__all__ = [
    "BOOT_ID_PATH",
    "MIGRATIONS",
    "PREPARE_COMPLETED",
    "PREPARE_STARTED",
    "SCHEMA_VERSION",
    "CheckpointFormatError",
    "CheckpointStore",
    "ClaimRecord",
    "ClaimState",
    "Migration",
    "PreparedDevice",
    "Txn",
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


class _NeedsRepair(Exception):
    """Corruption seen under a shared lock: moving the file aside needs the exclusive one."""


class _OpenLog:
    """The checkpoint file as this process last read it, kept open (see the module docstring)."""

    def __init__(self, fd: int, key: tuple[int, int], size: int, consumed: int, content: Content) -> None:
        self.fd = fd
        self.key = key  # st_dev, st_ino
        self.size = size  # bytes in the file when last looked at (more than consumed: a torn last line)
        self.consumed = consumed  # bytes of complete lines read
        self.content = content


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

    def get(self, uid: str) -> ClaimRecord | None:
        return self._claims.get(uid)

    def put(self, record: ClaimRecord) -> None:
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
        self._base = self._store._write(self._base, self._claims, self._touched)
        self._touched = set()
        return True

    def _close(self) -> None:
        self._open = False


class CheckpointStore:
    """The prepared-claims checkpoint at ``path``, serialised across processes by a flock on ``lock_path``."""

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
        self._on_corrupt = on_corrupt
        self._schema_version = schema_version
        self._migrations = migrations
        self._mutex = threading.Lock()  # this process's threads take turns before taking the flock
        self._log: _OpenLog | None = None
        self._unsynced = False
        self._fragments: Fragments = {}  # each claim's JSON as last written, for the next compaction

    @contextlib.contextmanager
    def transaction(self, *, durable: bool = True) -> Iterator[Txn]:
        """Exclusive lock, fresh read, a :class:`Txn`; the lock is released when the block ends, and what
        the block committed is synced to disk before this returns — unless ``durable`` is False: then the
        next durable transaction syncs it (a record that only has to outlive the process, not the node)."""
        sync_fd: int | None = None
        try:
            with self._mutex, self._locked(fcntl.LOCK_EX):
                txn = Txn(self, self._load(repair=True))
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
            with self._locked(fcntl.LOCK_SH), contextlib.suppress(_NeedsRepair):
                return dict(self._load(repair=False).claims)
            with self._locked(fcntl.LOCK_EX):
                return dict(self._load(repair=True).claims)

    def close(self) -> None:
        """Let go of the open checkpoint file (the store reopens it when used again)."""
        with self._mutex:
            self._drop()

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(self.lock_path, flags, 0o644)
        except FileNotFoundError:
            self.lock_path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.lock_path, flags, 0o644)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _take_unsynced(self) -> int | None:
        """A descriptor to fdatasync once the lock is released (a duplicate: the log may be swapped)."""
        if not self._unsynced or self._log is None:
            return None
        self._unsynced = False
        return os.dup(self._log.fd)

    def _empty(self) -> Content:
        return Content(version=self._schema_version, boot_id=self.boot_id)

    def _drop(self) -> None:
        if self._log is not None:
            os.close(self._log.fd)
            self._log = None

    def _load(self, repair: bool) -> Content:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._drop()
            return self._empty()
        opened = self._log
        if opened is not None and opened.key == (st.st_dev, st.st_ino) and st.st_size >= opened.consumed:
            if st.st_size == opened.consumed:
                return opened.content
            return self._read_tail(opened, st.st_size, repair)
        return self._read_whole(repair)

    def _read_tail(self, opened: _OpenLog, size: int, repair: bool) -> Content:
        """Another instance appended: apply only its new lines."""
        tail = pread_all(opened.fd, size - opened.consumed, opened.consumed)
        try:
            content, used = apply_changes(opened.content, tail, self._schema_version)
        except CheckpointFormatError as exc:
            return self._corrupt(str(exc), repair)
        opened.content, opened.consumed, opened.size = content, opened.consumed + used, size
        return content

    def _read_whole(self, repair: bool) -> Content:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            self._drop()
            return self._empty()
        st = os.fstat(fd)
        data = pread_all(fd, st.st_size, 0)
        try:
            content, used = decode_log(data, self._schema_version, self._migrations)
        except CheckpointFormatError as exc:
            os.close(fd)
            return self._corrupt(str(exc), repair)
        self._warn_newer(content)
        content = self._check_boot(content)
        if not data.endswith(b"\n"):  # one document without its newline (hand-written): rewrite, never append
            content = replace(content, dirty=True)
        self._drop()
        self._log = _OpenLog(fd, (st.st_dev, st.st_ino), len(data), used, content)
        return content

    def _corrupt(self, reason: str, repair: bool) -> Content:
        if not repair:
            raise _NeedsRepair(reason)
        self._drop()
        self._set_aside(reason)
        return self._empty()

    def _warn_newer(self, content: Content) -> None:
        if content.version > self._schema_version:
            log.warning(
                "checkpoint %s has version %d, newer than this gpudra (%d): reading the fields it "
                "knows and keeping the rest",
                self.path,
                content.version,
                self._schema_version,
            )

    def _check_boot(self, content: Content) -> Content:
        if self.boot_id is None or content.boot_id is None or content.boot_id == self.boot_id:
            return content
        log.warning(
            "checkpoint %s was written in boot %s, this is boot %s: the node rebooted, dropping "
            "%d prepared claim(s)",
            self.path,
            content.boot_id,
            self.boot_id,
            len(content.claims),
        )
        return replace(content, boot_id=self.boot_id, claims={}, extras={}, dirty=True, rebooted=True)

    def _set_aside(self, reason: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        rename_durably(self.path, aside)
        log.error(
            "CHECKPOINT CORRUPT: %s (%s). Moved it to %s and starting from an EMPTY state: claims "
            "prepared before are forgotten until the kubelet prepares them again",
            self.path,
            reason,
            aside,
        )
        if self._on_corrupt is not None:
            try:
                self._on_corrupt(aside, reason)
            except Exception:
                log.exception("checkpoint: the on_corrupt callback failed")

    # ---- writing ----------------------------------------------------------------------------------------

    def _write(self, base: Content, claims: Mapping[str, ClaimRecord], touched: Iterable[str]) -> Content:
        content = Content(
            version=max(self._schema_version, base.version),  # never downgrade a newer file
            boot_id=self.boot_id if self.boot_id is not None else base.boot_id,
            claims=dict(claims),
            extras={uid: x for uid, x in base.extras.items() if uid in claims},
            top=base.top,
            changes=base.changes,
        )
        opened = self._log
        if opened is None or opened.content is not base or base.dirty or needs_compaction(base):
            return self._rewrite(content)
        lines = []
        for uid in sorted(touched):
            rec, before = claims.get(uid), base.claims.get(uid)
            if rec is None:
                if before is not None:
                    lines.append(encode_delete(uid))
            elif rec is not before and rec != before:
                lines.append(encode_put(rec, content.extras.get(uid, NO_EXTRAS)))
        data = b"".join(lines)
        if opened.size > opened.consumed:
            os.ftruncate(opened.fd, opened.consumed)  # cut a torn last line before appending after it
        write_all(opened.fd, data)
        content = replace(content, changes=base.changes + len(lines))
        end = opened.consumed + len(data)
        opened.content, opened.consumed, opened.size = content, end, end
        self._unsynced = True
        return content

    def _rewrite(self, content: Content) -> Content:
        """Compaction: the whole state as a new snapshot, atomically replacing the log."""
        content = replace(content, changes=0, dirty=False, rebooted=False)
        data, self._fragments = encode_snapshot(content, self._fragments)
        atomic_write(self.path, data, mode=0o600)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        st = os.fstat(fd)
        self._drop()
        self._log = _OpenLog(fd, (st.st_dev, st.st_ino), len(data), len(data), content)
        return content
