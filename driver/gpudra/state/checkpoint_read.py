"""Reading the checkpoint file from its descriptor in bounded memory: line by line, never the whole log.

Memory is the line being read (a change line is at most :data:`MAX_CHANGE_BYTES`; longer ones are skipped
without being kept) plus the claims decoded so far. A file over :data:`MAX_CHECKPOINT_BYTES`, or one that
does not even start like a JSON object, is refused before a byte of it is decoded.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Final

from gpudra.fsutil import pread_all
from gpudra.state.checkpoint_format import (
    MAX_CHANGE_BYTES,
    MAX_CHECKPOINT_BYTES,
    CheckpointFormatError,
    Content,
    Migration,
)
from gpudra.state.checkpoint_log import HEAD_BYTES, Line, LogApplier, Reading, read_log

#: Bytes read at a time.
CHUNK: Final = 256 * 1024
_BLANK: Final = b" \t\r\n"


class TooLarge(CheckpointFormatError):
    """The file is larger than any checkpoint gpudra writes."""


def lines_of(fd: int, start: int, end: int, snapshot: bool) -> Iterator[Line]:
    """The complete lines of ``fd`` between the offsets ``start`` and ``end`` (a torn last line is not
    one). A line over its limit (:data:`MAX_CHANGE_BYTES`, or the whole file for the snapshot line when
    ``snapshot``) comes with ``data`` None and only its start kept."""
    pieces: list[bytes] = []  # the line being read, when it spans chunks
    held = 0  # its length so far (counted on when over the limit: then nothing more is kept)
    line_at = pos = start
    limit = MAX_CHECKPOINT_BYTES if snapshot else MAX_CHANGE_BYTES
    while pos < end:
        chunk = os.pread(fd, min(CHUNK, end - pos), pos)
        if not chunk:
            break
        pos += len(chunk)
        at = 0
        while (nl := chunk.find(b"\n", at)) >= 0:
            length = held + nl - at
            # Nothing of the line stays in this frame while it is out: the consumer may drop it.
            if length > limit:
                yield Line(line_at, None, length + 1, _take(pieces, chunk[at : at + HEAD_BYTES])[:HEAD_BYTES])
            else:
                yield Line(line_at, _take(pieces, chunk[at:nl]), length + 1)
            held, at = 0, nl + 1
            line_at += length + 1
            limit = MAX_CHANGE_BYTES
        rest = len(chunk) - at
        if held + rest <= limit:
            pieces.append(chunk[at:])
        elif held <= limit:  # it just went over the limit: keep its start only
            pieces = [(b"".join(pieces) + chunk[at : at + HEAD_BYTES])[:HEAD_BYTES]]
        held += rest


def _take(pieces: list[bytes], last: bytes) -> bytes:
    """The pieces and ``last`` joined; ``pieces`` is emptied."""
    if not pieces:
        return last
    pieces.append(last)
    joined = b"".join(pieces)
    pieces.clear()
    return joined


def read_whole(fd: int, size: int, known: int, migrations: Mapping[int, Migration]) -> Reading:
    """The checkpoint in ``fd`` (``size`` bytes), streamed. Raises :class:`CheckpointFormatError` when it is
    unreadable as a whole (over the limit, not JSON, no snapshot)."""
    if size > MAX_CHECKPOINT_BYTES:
        raise TooLarge(
            f"{size} bytes, more than the {MAX_CHECKPOINT_BYTES} a checkpoint of any real node reaches "
            "(gpudra never writes one that large)"
        )
    start = os.pread(fd, 64, 0).lstrip(_BLANK)[:1]
    if size and start != b"{":
        raise CheckpointFormatError(f"line 1: not JSON: starts with {start!r}, not an object")
    return read_log(lines_of(fd, 0, size, True), lambda: pread_all(fd, size, 0), known, migrations)


def read_tail(fd: int, content: Content, start: int, end: int, known: int) -> Reading:
    """``content`` with the change lines another instance appended between ``start`` and ``end``."""
    applier = LogApplier(content, known)
    for line in lines_of(fd, start, end, False):
        applier.apply(line)
    return Reading(applier.result(), applier.used, tuple(applier.damage))
