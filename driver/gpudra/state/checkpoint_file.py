"""The checkpoint file as this process last read it, kept open: loaded when it changed (the whole file,
or the lines another instance appended), appended to, compacted, and repaired. See
:mod:`gpudra.state.checkpoint` for the protocol and :mod:`gpudra.state.checkpoint_aside` for what is moved
aside and when.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from gpudra.fsutil import atomic_write, write_all
from gpudra.state.checkpoint_aside import MOVABLE, move_aside, save_damage, unavailable
from gpudra.state.checkpoint_format import (
    MAX_CHECKPOINT_BYTES,
    NO_EXTRAS,
    CheckpointFormatError,
    Content,
    Damage,
    Extras,
    Migration,
    UnwritableRecord,
    encode_fragment,
)
from gpudra.state.checkpoint_log import Fragments, delete_line, encode_snapshot, needs_compaction, put_line
from gpudra.state.checkpoint_read import read_tail, read_whole
from gpudra.state.checkpoint_records import ClaimRecord

log = logging.getLogger("gpudra.state.checkpoint")


class NeedsRepair(Exception):
    """Damage seen under a shared lock: repairing (moving aside, compacting) needs the exclusive one."""


class _OpenLog:
    """The open file and what was read of it."""

    def __init__(self, fd: int, key: tuple[int, int], size: int, consumed: int, content: Content) -> None:
        self.fd = fd
        self.key = key  # st_dev, st_ino
        self.size = size  # bytes in the file when last looked at (more than consumed: a torn last line)
        self.consumed = consumed  # bytes of complete lines read
        self.content = content


class CheckpointFile:
    """The checkpoint at ``path``; the caller holds the lock around every call."""

    def __init__(
        self,
        path: Path,
        boot_id: str | None,
        on_corrupt: Callable[[Path, str], None] | None,
        schema_version: int,
        migrations: Mapping[int, Migration],
    ) -> None:
        self.path = path
        self.boot_id = boot_id
        self._on_corrupt = on_corrupt
        self._schema_version = schema_version
        self._migrations = migrations
        self.opened: _OpenLog | None = None
        self.unsynced = False  # appended since the last fdatasync
        self._fragments: Fragments = {}  # each claim's JSON as last written, for the next compaction
        self.damaged: frozenset[str] = frozenset()  # see CheckpointStore.damaged
        self.uncertain = False  # see CheckpointStore.uncertain

    def drop(self) -> None:
        if self.opened is not None:
            os.close(self.opened.fd)
            self.opened = None

    def _empty(self) -> Content:
        return Content(version=self._schema_version, boot_id=self.boot_id)

    def load(self, repair: bool) -> Content:
        """The content of the file now; raises NeedsRepair for what only the exclusive lock may fix."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.drop()
            return self._empty()
        except OSError as exc:  # a loop of symlinks can be moved aside, a broken directory cannot
            return self._unusable(exc, repair, movable=exc.errno == errno.ELOOP)
        opened = self.opened
        if opened is not None and opened.key == (st.st_dev, st.st_ino) and st.st_size >= opened.consumed:
            if st.st_size == opened.consumed:
                return opened.content
            if st.st_size <= MAX_CHECKPOINT_BYTES:
                return self._read_tail(opened, st.st_size, repair)
        if not stat.S_ISREG(st.st_mode):
            what = (errno.EISDIR, "Is a directory") if stat.S_ISDIR(st.st_mode) else (0, "Not a regular file")
            return self._unusable(OSError(*what), repair, movable=True)
        return self._read_whole(repair)

    def _read_tail(self, opened: _OpenLog, size: int, repair: bool) -> Content:
        """Another instance appended: apply only its new lines."""
        try:
            reading = read_tail(opened.fd, opened.content, opened.consumed, size, self._schema_version)
        except OSError as exc:
            raise unavailable(self.path, exc) from exc
        if reading.damage and not repair:
            raise NeedsRepair(reading.damage[0].why)
        content = reading.content
        opened.content, opened.consumed, opened.size = content, opened.consumed + reading.used, size
        return self._repair(reading.damage, content) if reading.damage else content

    def _read_whole(self, repair: bool) -> Content:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        except FileNotFoundError:
            self.drop()
            return self._empty()
        except OSError as exc:
            return self._unusable(exc, repair, movable=exc.errno in MOVABLE)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):  # replaced since the stat: a FIFO would block the read
                raise CheckpointFormatError("not a regular file")
            reading = read_whole(fd, st.st_size, self._schema_version, self._migrations)
        except CheckpointFormatError as exc:
            os.close(fd)
            return self._corrupt(str(exc), repair)
        except OSError as exc:
            os.close(fd)
            raise unavailable(self.path, exc) from exc
        if reading.damage and not repair:
            os.close(fd)
            raise NeedsRepair(reading.damage[0].why)
        content = self._check_boot(self._warn_newer(reading.content))
        self.drop()
        self.opened = _OpenLog(fd, (st.st_dev, st.st_ino), st.st_size, reading.used, content)
        self._remember(content)
        return self._repair(reading.damage, content) if reading.damage else content

    def _remember(self, content: Content) -> None:
        """Damage recorded in the snapshot by an earlier reader of this boot's checkpoint."""
        if content.damaged - self.damaged or (content.uncertain and not self.uncertain):
            log.warning(
                "checkpoint %s records damage found earlier in this boot (claims %s%s): files that may "
                "belong to those claims are kept until the node reboots",
                self.path,
                ", ".join(sorted(content.damaged)) or "unknown",
                "; records may be missing" if content.uncertain else "",
            )
        self.damaged |= content.damaged
        self.uncertain |= content.uncertain

    def _repair(self, damage: tuple[Damage, ...], content: Content) -> Content:
        """Records that could not be read: say so loudly, keep their text, note what may be missing, and
        compact the log without them (the snapshot keeps the note)."""
        uids = frozenset(d.uid for d in damage if d.uid is not None)
        lost = any(d.lost or d.uid is None for d in damage)
        for d in damage:
            log.error("CHECKPOINT DAMAGED: %s %s: %s; skipped it", self.path, d.where, d.why)
        try:
            kept = str(save_damage(self.path, damage))
        except OSError as exc:
            kept = f"nowhere (saving them failed: {exc})"
        why = (
            f"{len(damage)} damaged record(s) skipped"
            + (f" (claims {', '.join(sorted(uids))})" if uids else "")
            + ("; claims may be missing or older than recorded" if lost else "")
        )
        log.error("CHECKPOINT DAMAGED: %s: %s; the other records still apply; the text is in %s",
                  self.path, why, kept)  # fmt: skip
        self.tell(Path(kept) if not kept.startswith("nowhere") else self.path, why)
        if content.rebooted:  # records of an earlier boot: nothing of this boot is missing
            return replace(content, dirty=True)
        content = replace(content, damaged=content.damaged | uids, uncertain=content.uncertain or lost)
        self.damaged |= content.damaged
        self.uncertain |= content.uncertain
        return self._compact(content)

    def _compact(self, content: Content) -> Content:
        try:
            return self._rewrite(content)
        except (OSError, UnwritableRecord) as exc:
            log.error("checkpoint %s: cannot rewrite it now (%s); the next change will", self.path, exc)
            content = replace(content, dirty=True)
            if self.opened is not None:
                self.opened.content = content
            return content

    def _corrupt(self, reason: str, repair: bool) -> Content:
        if not repair:
            raise NeedsRepair(reason)
        self.drop()
        aside = move_aside(self.path, "corrupt")
        log.error(
            "CHECKPOINT CORRUPT: %s (%s). Moved it to %s and starting from an EMPTY state: claims "
            "prepared before are forgotten until the kubelet prepares them again",
            self.path,
            reason,
            aside,
        )
        return self._restart(aside, reason)

    def _unusable(self, exc: OSError, repair: bool, movable: bool) -> Content:
        """The checkpoint path cannot be opened: move it aside when that cures it, else raise."""
        if not movable:
            raise unavailable(self.path, exc)
        if not repair:
            raise NeedsRepair(str(exc))
        self.drop()
        aside = move_aside(self.path, "unusable", exc)
        reason = f"it could not be opened ({exc.strerror or exc})"
        log.error(
            "CHECKPOINT UNUSABLE: %s: %s. Moved it to %s and starting from an EMPTY state: claims prepared "
            "before are forgotten until the kubelet prepares them again",
            self.path,
            reason,
            aside,
        )
        return self._restart(aside, reason)

    def _restart(self, aside: Path, reason: str) -> Content:
        """An empty checkpoint after moving the old one aside: every claim it held may be missing."""
        self.uncertain = True
        self.tell(aside, reason)
        return self._compact(replace(self._empty(), uncertain=True))

    def tell(self, path: Path, reason: str) -> None:
        if self._on_corrupt is not None:
            try:
                self._on_corrupt(path, reason)
            except Exception:
                log.exception("checkpoint: the on_corrupt callback failed")

    def _warn_newer(self, content: Content) -> Content:
        if content.version > self._schema_version:
            log.warning(
                "checkpoint %s has version %d, newer than this gpudra (%d): reading the fields it "
                "knows and keeping the rest",
                self.path,
                content.version,
                self._schema_version,
            )
        return content

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
        return replace(
            content, boot_id=self.boot_id, claims={}, extras={}, dirty=True, rebooted=True,
            damaged=frozenset(), uncertain=False,
        )  # fmt: skip

    # ---- writing ----------------------------------------------------------------------------------------

    def write(
        self, base: Content, claims: Mapping[str, ClaimRecord], touched: Iterable[str], put: Fragments
    ) -> Content:
        """Record ``claims`` (``base`` with ``touched`` changed; ``put`` holds the entries Txn.put checked):
        one appended line per changed claim, or a compaction."""
        extras = {uid: x for uid, x in base.extras.items() if uid in claims}
        opened = self.opened
        if opened is None or opened.content is not base or base.dirty or needs_compaction(base):
            return self._rewrite(self._next(base, claims, extras, 0, 0))
        lines, seq = [], base.seq
        for uid in sorted(touched):
            rec, before = claims.get(uid), base.claims.get(uid)
            if rec is None:
                if before is not None:
                    seq += 1
                    lines.append(delete_line(uid, seq))
            elif rec is not before and rec != before:
                seq += 1
                lines.append(put_line(uid, self._fragment(rec, extras, put), seq))
        data = b"".join(lines)
        if opened.consumed + len(data) > MAX_CHECKPOINT_BYTES:
            return self._rewrite(self._next(base, claims, extras, 0, 0))
        if opened.size > opened.consumed:
            os.ftruncate(opened.fd, opened.consumed)  # cut a torn last line before appending after it
        write_all(opened.fd, data)
        content = self._next(base, claims, extras, base.changes + len(lines), seq)
        end = opened.consumed + len(data)
        opened.content, opened.consumed, opened.size = content, end, end
        self.unsynced = True
        return content

    def _next(
        self,
        base: Content,
        claims: Mapping[str, ClaimRecord],
        extras: Mapping[str, Extras],
        changes: int,
        seq: int,
    ) -> Content:
        return Content(
            version=max(self._schema_version, base.version),  # never downgrade a newer file
            boot_id=self.boot_id if self.boot_id is not None else base.boot_id,
            claims=dict(claims),
            extras=extras,
            top=base.top,
            changes=changes,
            seq=seq,
            damaged=base.damaged,
            uncertain=base.uncertain,
        )

    def _fragment(self, record: ClaimRecord, extras: Mapping[str, Extras], put: Fragments) -> bytes:
        mine = extras.get(record.uid, NO_EXTRAS)
        done = put.get(record.uid)
        if done is not None and done[0] is record and done[1] is mine:
            fragment = done[2]
        else:
            fragment = encode_fragment(record, mine)
        self._fragments[record.uid] = (record, mine, fragment)  # the next compaction need not encode it
        return fragment

    def _rewrite(self, content: Content) -> Content:
        """Compaction: the whole state as a new snapshot, atomically replacing the log."""
        content = replace(
            content, changes=0, seq=0, dirty=False, rebooted=False,
            damaged=content.damaged | self.damaged, uncertain=content.uncertain or self.uncertain,
        )  # fmt: skip
        data, self._fragments = encode_snapshot(content, self._fragments)
        if len(data) > MAX_CHECKPOINT_BYTES:
            raise OSError(
                errno.EFBIG,
                f"the checkpoint would grow to {len(data)} bytes with {len(content.claims)} claims, over the "
                f"limit of {MAX_CHECKPOINT_BYTES} that no real node reaches; not recording more claims",
            )
        atomic_write(self.path, data, mode=0o600)
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC)
        st = os.fstat(fd)
        self.drop()
        self.opened = _OpenLog(fd, (st.st_dev, st.st_ino), len(data), len(data), content)
        return content
