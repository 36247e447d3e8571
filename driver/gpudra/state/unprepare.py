"""NodeUnprepareResources: undo exactly what a claim's record says, then remove its files and the record.

An unknown claim is already unprepared (success), unless start-up kept files a damaged checkpoint could not
account for: the kubelet unprepares only what no pod uses, so they go now. Errors are per claim; a
checkpoint that cannot be written fails the call's claims (undoing is idempotent: the kubelet asks again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from gpudra.planning.plan import ClaimRef
from gpudra.state.checkpoint import CheckpointStore, Txn
from gpudra.state.claimfiles import ClaimFiles
from gpudra.state.recovery import others
from gpudra.vendors.base import ApplyError, ClaimApplier

log = logging.getLogger(__name__)


def unprepare_claims(
    store: CheckpointStore,
    driver: ClaimApplier,
    files: ClaimFiles,
    refs: Sequence[ClaimRef],
    report: Callable[[Txn], None],
) -> dict[str, str | None]:
    """Each claim's error, or None when it is unprepared (or never was prepared here)."""
    out: dict[str, str | None] = {}
    devices: dict[str, str] = {}
    try:
        with store.transaction() as txn:
            for ref in refs:
                record = txn.get(ref.uid)
                devices[ref.uid] = ", ".join(d.device for d in record.devices) if record else "no record"
                out[ref.uid] = _undo(txn, ref, driver, files)
            txn.commit()
            report(txn)
    except OSError as e:  # undone, but not recorded: the kubelet asks again, and undoing is idempotent
        log.error("unprepare: the checkpoint cannot be written: %s", e)
        return {ref.uid: f"cannot record the unprepare in the checkpoint: {e}" for ref in refs}
    for ref in refs:
        if out[ref.uid] is None:
            log.debug("unprepared %s: %s", ref, devices[ref.uid])
    return out


def _undo(txn: Txn, ref: ClaimRef, driver: ClaimApplier, files: ClaimFiles) -> str | None:
    record = txn.get(ref.uid)
    if record is None:
        return _undo_unrecorded(ref, files)
    try:
        driver.undo(record.applied, others(txn, ref.uid))  # a GPU setting others hold stays
        files.remove(ref.uid, record)
    except ApplyError as e:
        log.warning("unprepare %s: %s", ref, e)
        return f"cannot undo the changes for claim {ref.uid}: {e}"
    except OSError as e:
        log.warning("unprepare %s: %s", ref, e)
        return f"cannot remove CDI spec for claim {ref.uid}: {e}"
    txn.remove(ref.uid)
    return None


def _undo_unrecorded(ref: ClaimRef, files: ClaimFiles) -> str | None:
    """A claim without a record: never prepared here (success), or its record was lost to damage and
    start-up kept its files; the kubelet unprepares only what no pod uses, so they go now."""
    if not files.cdi.path_for(ref.uid).exists():
        return None
    try:
        files.remove(ref.uid, None)
    except OSError as e:
        log.warning("unprepare %s: %s", ref, e)
        return f"cannot remove CDI spec for claim {ref.uid}: {e}"
    log.warning("unprepare %s: removed the files of a claim the checkpoint had lost", ref)
    return None
