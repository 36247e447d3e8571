"""A prepare that will not complete: what it changed and wrote goes again (:mod:`gpudra.state.prepare`).

Applying or writing the files may fail, the checkpoint may be unwritable, or the claim may have been
unprepared while it was being prepared. Then its files are removed and the vendor driver undoes its changes,
given the other claims' recorded states so that a GPU setting they share stays. Best effort: the claim
already fails for the first error, which is the one to report.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from gpudra.model.applied import AppliedState
from gpudra.planning.plan import ClaimRef
from gpudra.state.checkpoint import CheckpointStore
from gpudra.state.claimfiles import Built, ClaimFiles
from gpudra.vendors.base import ApplyError, ClaimApplier

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Failed:
    """Applying or writing failed: what to undo (with the other claims' states, under the lock)."""

    message: str
    applied: AppliedState  # as intended when apply failed (undo is idempotent), else as applied
    files: Built | None = None  # the files to remove, when apply succeeded


def discard(
    ref: ClaimRef,
    outcome: Built | Failed,
    files: ClaimFiles,
    driver: ClaimApplier,
    others: Iterable[AppliedState],
) -> None:
    """Remove the claim's files, then undo its changes; never raises."""
    built = outcome if isinstance(outcome, Built) else outcome.files
    if built is not None:
        try:
            files.remove_built(ref.uid, built)
        except OSError as e:
            log.error("prepare %s: could not remove the files of a failed prepare: %s", ref, e)
    try:
        driver.undo(outcome.applied, others)
    except ApplyError as e:
        log.error("prepare %s: could not undo the changes of a failed prepare: %s", ref, e)


def others_now(store: CheckpointStore, uid: str) -> list[AppliedState]:
    """The other claims' states on disk, when no transaction is at hand (none when unreadable)."""
    try:
        return [rec.applied for rec in store.snapshot().values() if rec.uid != uid]
    except OSError:
        return []
