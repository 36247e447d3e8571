"""The record of which claims this node has prepared: the truth on disk between kubelet calls.

During a rolling update two plugin instances serve the kubelet at once, so nothing in memory is trusted
without checking the file: every call opens a :meth:`CheckpointStore.transaction`, which takes a short
exclusive ``flock`` on the lock file, (re)reads the checkpoint when its inode, size or mtime moved, and writes
atomically on :meth:`Txn.commit`. The lock is never held between calls.

The file format, schema versions and migrations are in :mod:`gpudra.checkpoint_format` (pure); the names
users of the checkpoint need are re-exported here. A corrupt file is moved aside and the store starts empty;
so does a changed boot id (the node rebooted).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from gpudra.checkpoint_format import (
    MIGRATIONS,
    NO_EXTRAS,
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    SCHEMA_VERSION,
    CheckpointFormatError,
    ClaimRecord,
    ClaimState,
    Content,
    Extras,
    Migration,
    PreparedDevice,
    decode,
    decode_document,
    encode,
    encode_claim,
)
from gpudra.fsutil import atomic_write, rename_durably

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

_StatKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _NeedsRepair(Exception):
    """Corruption seen under a shared lock: moving the file aside needs the exclusive one."""


class Txn:
    """One locked read-modify-write of the checkpoint. ``claims`` is a working copy; only commit() writes."""

    def __init__(self, store: CheckpointStore, content: Content) -> None:
        self._store = store
        self._base = content
        self._open = True
        self.claims: dict[str, ClaimRecord] = dict(content.claims)
        #: True when the stored boot id differed: the node rebooted and the prepared state was dropped.
        self.rebooted = content.rebooted

    def get(self, uid: str) -> ClaimRecord | None:
        return self.claims.get(uid)

    def put(self, record: ClaimRecord) -> None:
        self.claims[record.uid] = record

    def remove(self, uid: str) -> ClaimRecord | None:
        return self.claims.pop(uid, None)

    def commit(self) -> bool:
        """Write the working copy now (atomically, durably) if it changed. Returns whether it wrote."""
        if not self._open:
            raise RuntimeError("checkpoint transaction is closed")
        if self.claims == self._base.claims and not self._base.dirty:
            return False
        self._base = self._store._write(self._base, self.claims)
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
        self._cache: tuple[_StatKey, Content] | None = None
        self._fragments: dict[str, tuple[ClaimRecord, Extras, bytes]] = {}

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Txn]:
        """Exclusive lock, fresh read, a :class:`Txn`; the lock is released when the block ends."""
        with self._locked(fcntl.LOCK_EX):
            txn = Txn(self, self._load(repair=True))
            try:
                yield txn
            finally:
                txn._close()

    def snapshot(self) -> dict[str, ClaimRecord]:
        """The prepared claims as on disk now (read under a shared lock)."""
        with self._locked(fcntl.LOCK_SH), contextlib.suppress(_NeedsRepair):
            return dict(self._load(repair=False).claims)
        with self._locked(fcntl.LOCK_EX):
            return dict(self._load(repair=True).claims)

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[None]:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, how)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _empty(self) -> Content:
        return Content(version=self._schema_version, boot_id=self.boot_id)

    def _load(self, repair: bool) -> Content:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return self._empty()
        with handle:
            key = _stat_key(os.fstat(handle.fileno()))
            cached = self._cache
            if cached is not None and cached[0] == key:
                return cached[1]
            data = handle.read()
        try:
            content = self._parse(data)
        except CheckpointFormatError as exc:
            if not repair:
                raise _NeedsRepair from exc
            self._set_aside(str(exc))
            return self._empty()
        self._cache = (key, content)
        return content

    def _parse(self, data: bytes) -> Content:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointFormatError(f"not JSON: {exc}") from exc
        content = decode_document(doc, self._schema_version, self._migrations)
        if content.version > self._schema_version:
            log.warning(
                "checkpoint %s has version %d, newer than this gpudra (%d): reading the fields it "
                "knows and keeping the rest",
                self.path,
                content.version,
                self._schema_version,
            )
        if self.boot_id is not None and content.boot_id is not None and content.boot_id != self.boot_id:
            log.warning(
                "checkpoint %s was written in boot %s, this is boot %s: the node rebooted, dropping "
                "%d prepared claim(s)",
                self.path,
                content.boot_id,
                self.boot_id,
                len(content.claims),
            )
            return replace(content, boot_id=self.boot_id, claims={}, extras={}, dirty=True, rebooted=True)
        return content

    def _set_aside(self, reason: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        rename_durably(self.path, aside)
        self._cache = None
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

    def _serialise(self, content: Content) -> bytes:
        """The document's bytes. Each claim's JSON is memoised, so a commit encodes only the claims that
        changed: the cost of a prepare does not grow with the number of claims already held."""
        fragments: dict[str, tuple[ClaimRecord, Extras, bytes]] = {}
        parts = []
        for uid in sorted(content.claims):
            record = content.claims[uid]
            if record.uid != uid:
                raise ValueError(f"checkpoint: claim {record.uid} stored under the key {uid}")
            extras = content.extras.get(uid, NO_EXTRAS)
            cached = self._fragments.get(uid)
            if cached is not None and cached[1] is extras and (cached[0] is record or cached[0] == record):
                fragment = cached[2]
            else:
                fragment = json.dumps(encode_claim(record, extras), separators=(",", ":")).encode()
            fragments[uid] = (record, extras, fragment)
            parts.append(json.dumps(uid).encode() + b":" + fragment)
        self._fragments = fragments
        head = json.dumps(
            {"version": content.version, "bootId": content.boot_id, **content.top}, separators=(",", ":")
        ).encode()  # never empty: "version" is always there
        return head[:-1] + b',"claims":{' + b",".join(parts) + b"}}\n"

    def _write(self, base: Content, claims: Mapping[str, ClaimRecord]) -> Content:
        content = Content(
            version=max(self._schema_version, base.version),  # never downgrade a newer file
            boot_id=self.boot_id if self.boot_id is not None else base.boot_id,
            claims=dict(claims),
            extras={uid: x for uid, x in base.extras.items() if uid in claims},
            top=base.top,
        )
        data = self._serialise(content)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, data, mode=0o600)
        self._cache = (_stat_key(os.stat(self.path)), content)
        return content
