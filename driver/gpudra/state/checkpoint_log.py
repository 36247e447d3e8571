"""The checkpoint as a log of JSON lines, pure: the snapshot line, change lines, damage, compaction.

A change costs one small append instead of rewriting every claim held; the store compacts the log back into a
snapshot from time to time (:func:`needs_compaction`). Only ``\\n``-terminated lines count: a torn last line
(a crash in the middle of an append) is not part of the checkpoint and is cut off by the next writer.
Version 1 was the snapshot line alone, so a version-1 file is a version-2 log without changes. The other
way round does not hold: a version-1 plugin reads a log with change lines as corrupt and moves it aside.
During a rolling update from version 1 the kubelet sends its calls to the newer instance once it has
registered, so the old one should not touch the file; if it does, the move is logged and raised as a Node
Event, not silent.

A damaged record costs that record only. A change line that does not parse or decode is skipped and noted
as :class:`~gpudra.state.checkpoint_format.Damage` (the other lines still apply; the claim keeps its record
from before the line); so is a snapshot entry that does not decode. A line that is not JSON at all, or whose
claim is unknown, may hide lost lines (a cut joins two lines into one), and a jump in the change numbers
``n`` shows lines that went missing whole: both are ``lost`` — claims may be missing, or be older than the
file said (a completed claim read as half-finished). Only a file whose snapshot line cannot be read at all
is unreadable as a whole (it holds the version and boot id the rest depends on).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final

from gpudra.state.checkpoint_format import (
    MAX_CHANGE_BYTES,
    MAX_CHECKPOINT_BYTES,
    MIGRATIONS,
    NO_EXTRAS,
    SCHEMA_VERSION,
    CheckpointFormatError,
    Content,
    Damage,
    Extras,
    Migration,
    decode_claim,
    decode_document,
    encode_document,
    encode_fragment,
    encode_top,
)
from gpudra.state.checkpoint_records import ClaimRecord

log = logging.getLogger("gpudra.state.checkpoint")

#: The log is compacted when it holds more change lines than this plus twice the claims held.
COMPACTION_SLACK: Final = 64

#: How much of a line over the limit is kept (to name its claim and save it with the damage).
HEAD_BYTES: Final = 4096

#: UIDs that are their own JSON string (a Kubernetes UID always is).
_PLAIN: Final = re.compile(r"[A-Za-z0-9._-]+")

#: The claim a change line is about, read from its start when the rest does not parse.
_PREFIX: Final = re.compile(rb'\{\s*"(?:put|del)"\s*:\s*("(?:[^"\\\n]|\\.){1,256}")')


@dataclass(frozen=True, slots=True)
class Line:
    """One complete line of the file: ``data`` without its newline, None when over the limit (then ``head``
    is its start)."""

    offset: int
    data: bytes | None
    length: int  # with the newline
    head: bytes = b""


@dataclass(frozen=True, slots=True)
class Reading:
    content: Content
    used: int  # bytes of complete lines read (a torn last line is not)
    damage: tuple[Damage, ...] = ()


def split_lines(data: bytes, snapshot: bool = True) -> Iterator[Line]:
    """The complete lines of ``data`` within the limits (the first one is the snapshot when ``snapshot``)."""
    at = 0
    while (end := data.find(b"\n", at)) >= 0:
        limit = MAX_CHECKPOINT_BYTES if snapshot and at == 0 else MAX_CHANGE_BYTES
        raw = data[at:end]
        over = len(raw) > limit
        yield Line(at, None if over else raw, end + 1 - at, raw[:HEAD_BYTES] if over else b"")
        at = end + 1


# ---- writing -------------------------------------------------------------------------------------------


def put_line(uid: str, fragment: bytes, n: int | None) -> bytes:
    """The change line recording a claim (added or replaced) from its checked entry (see encode_fragment);
    ``n`` numbers it (None: unnumbered, as version-3 plugins before the numbers wrote)."""
    return b'{"put":' + _quote(uid) + _number(n) + b',"claim":' + fragment + b"}\n"


def delete_line(uid: str, n: int | None) -> bytes:
    return b'{"del":' + _quote(uid) + _number(n) + b"}\n"


def _quote(uid: str) -> bytes:
    return b'"' + uid.encode() + b'"' if _PLAIN.fullmatch(uid) else json.dumps(uid).encode()


def _number(n: int | None) -> bytes:
    return b"" if n is None else b',"n":' + str(n).encode()


def encode_put(record: ClaimRecord, extras: Extras = NO_EXTRAS, n: int | None = None) -> bytes:
    """The change line recording ``record``; raises UnwritableRecord as :func:`encode_fragment` does."""
    return put_line(record.uid, encode_fragment(record, extras), n)


def encode_delete(uid: str, n: int | None = None) -> bytes:
    """The change line recording that claim ``uid`` is gone."""
    return delete_line(uid, n)


def needs_compaction(content: Content) -> bool:
    """Whether the next write should rewrite the snapshot instead of appending (keeps the log O(claims))."""
    return content.changes > COMPACTION_SLACK + 2 * len(content.claims)


#: Each claim's JSON fragment in the last snapshot, with the record and extras it encodes.
Fragments = dict[str, tuple[ClaimRecord, Extras, bytes]]


def encode_snapshot(content: Content, memo: Fragments) -> tuple[bytes, Fragments]:
    """The snapshot line for ``content``, and the fragments to pass next time: a claim that has not changed
    since ``memo`` is not encoded again, so a compaction costs the claims that changed. Every claim is
    checked as :func:`encode_fragment` does."""
    fragments: Fragments = {}
    parts = []
    for uid in sorted(content.claims):
        record = content.claims[uid]
        if record.uid != uid:
            raise ValueError(f"checkpoint: claim {record.uid} stored under the key {uid}")
        extras = content.extras.get(uid, NO_EXTRAS)
        cached = memo.get(uid)
        if cached is not None and cached[1] is extras and (cached[0] is record or cached[0] == record):
            fragment = cached[2]
        else:
            fragment = encode_fragment(record, extras)
        fragments[uid] = (record, extras, fragment)
        parts.append(json.dumps(uid).encode() + b":" + fragment)
    head = json.dumps(encode_top(content), separators=(",", ":")).encode()  # never empty: "version"
    return head[:-1] + b',"claims":{' + b",".join(parts) + b"}}\n", fragments


# ---- reading -------------------------------------------------------------------------------------------


def _uid_of(raw: bytes) -> str | None:
    match = _PREFIX.match(raw)
    if match is None:
        return None
    try:
        uid = json.loads(match.group(1))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return uid if isinstance(uid, str) else None


class LogApplier:
    """Applies change lines, in order, to ``content``; what it could not read is in ``damage``."""

    def __init__(self, content: Content, known: int) -> None:
        self._content = content
        self._newer = content.version > known
        self._claims: dict[str, ClaimRecord] | None = None
        self._extras: dict[str, Extras] = {}
        self.seq = content.seq
        self._last: str | None = None  # the claim of the last line read
        self.lines = 0
        self.used = 0
        self.damage: list[Damage] = []

    def apply(self, line: Line) -> None:
        where = f"line {self._content.changes + 2 + self.lines} (byte {line.offset})"
        self.lines += 1
        self.used += line.length
        if self._claims is None:  # copied on the first line: nothing to copy when nothing was appended
            self._claims, self._extras = dict(self._content.claims), dict(self._content.extras)
        if line.data is None:
            self._skip(where, f"longer than {MAX_CHANGE_BYTES} bytes", line.head, _uid_of(line.head), True)
            return
        try:
            change = json.loads(line.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._skip(where, f"not JSON: {exc}", line.data, _uid_of(line.data), True)
            return
        if not isinstance(change, dict):
            self._skip(where, "expected a put or del change", line.data, None, True)
            return
        self._sequence(change.get("n"), where)
        self._change(change, line.data, where)

    def _change(self, change: dict[str, object], raw: bytes, where: str) -> None:
        assert self._claims is not None
        put, gone = change.get("put"), change.get("del")
        self._last = put if isinstance(put, str) else gone if isinstance(gone, str) else None
        if isinstance(put, str):
            try:
                self._claims[put], self._extras[put] = decode_claim(put, change.get("claim"), self._newer)
            except CheckpointFormatError as exc:
                self.damage.append(Damage(where, str(exc), put, raw))
        elif isinstance(gone, str):
            self._claims.pop(gone, None)
            self._extras.pop(gone, None)
        elif self._newer:  # a change only a newer gpudra knows: keep reading what this version understands
            log.warning("checkpoint: %s is a change unknown to this version; ignoring it", where)
        else:
            why = f"expected a put or del change, got {raw[:80]!r}"
            self.damage.append(Damage(where, why, None, raw, True))

    def _skip(self, where: str, why: str, raw: bytes, uid: str | None, lost: bool) -> None:
        self.seq += 1
        self._last = uid
        self.damage.append(Damage(where, why, uid, raw, lost))

    def _sequence(self, n: object, where: str) -> None:
        expected = self.seq + 1
        if not isinstance(n, int) or isinstance(n, bool):  # a writer that does not number its lines
            self.seq = expected
            return
        if n > expected:
            why = f"the log was cut: changes {expected}..{n - 1} are missing"
        elif n < expected:
            why = f"change {n} follows change {self.seq}: lines of the log were lost or spliced"
        else:
            self.seq = n
            return
        # The line before the gap may be a splice of two (a cut that happens to leave valid JSON).
        why += " (claims may be missing or older than recorded)"
        self.damage.append(Damage(where, why, self._last, lost=True))
        self.seq = n

    def result(self) -> Content:
        if self._claims is None:
            return self._content
        c = self._content
        changes = c.changes + self.lines
        return replace(c, claims=self._claims, extras=self._extras, changes=changes, seq=self.seq)


def read_log(
    lines: Iterator[Line], whole: Callable[[], bytes], known: int, migrations: Mapping[int, Migration]
) -> Reading:
    """A whole checkpoint file from its complete ``lines``; ``whole`` gives all its bytes, needed only for a
    document that is not on one line (hand-written, or a pretty-printed version 1). Raises
    :class:`CheckpointFormatError` only when the snapshot cannot be read."""
    first = next(lines, None)
    damage: list[Damage] = []
    error = ""  # only the message: a JSONDecodeError holds the whole text it failed on
    if first is not None and first.data is not None:
        try:
            doc = json.loads(first.data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            error = str(exc)
        else:
            content = decode_document(doc, known, migrations, damage)
            applier = LogApplier(content, known)
            for line in lines:
                applier.apply(line)
            return Reading(applier.result(), first.length + applier.used, (*damage, *applier.damage))
    del first
    data = whole()
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"line 1: not JSON: {error or exc}") from None
    content = decode_document(doc, known, migrations, damage)
    return Reading(replace(content, dirty=True), len(data), tuple(damage))  # rewrite it, never append


def apply_changes(content: Content, data: bytes, known: int = SCHEMA_VERSION) -> tuple[Content, int]:
    """``content`` with the complete change lines at the start of ``data`` applied, and how many bytes they
    took. A last line without its newline (a torn append) is left unread. ``content`` is not modified.
    Raises :class:`CheckpointFormatError` for any damage (for tools and tests; the store reads leniently)."""
    applier = LogApplier(content, known)
    for line in split_lines(data, snapshot=False):
        applier.apply(line)
    _strict(applier.damage)
    return applier.result(), applier.used


def decode_log(data: bytes, known: int, migrations: Mapping[int, Migration]) -> tuple[Content, int]:
    """A whole checkpoint file: the content and the bytes read (everything but a torn last line). Raises
    :class:`CheckpointFormatError` for any damage (for tools and tests; the store reads leniently)."""
    reading = read_log(split_lines(data), lambda: data, known, migrations)
    _strict(reading.damage)
    return reading.content, reading.used


def _strict(damage: list[Damage] | tuple[Damage, ...]) -> None:
    if damage:
        raise CheckpointFormatError("; ".join(f"{d.where}: {d.why}" for d in damage))


def load_document(data: bytes) -> dict[str, Any]:
    """A checkpoint file as one snapshot document (changes applied): for tools and tests."""
    content, _ = decode_log(data, SCHEMA_VERSION, MIGRATIONS)
    return encode_document(content)
