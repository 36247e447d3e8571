"""Start-up recovery of the claims' state on the node: prepares a crash cut short, and orphaned files.

- :func:`roll_back_interrupted`: a ``PrepareStarted`` record is a prepare that never answered the kubelet -
  the process died, or another instance's call is still running (a rolling update). So the records seen at
  start are rolled back only after a grace period longer than any prepare, and only if still unchanged:
  what a finished call completed is kept. What it intended or did - a MIG device created or being created,
  files written - is undone exactly as recorded, then the record goes. A claim the kubelet asks for again
  meanwhile is rolled back by that call first (:meth:`gpudra.state.prepare.Preparer.prepare`).
  The vendor driver's undo finds a half-made change by what was intended (a MIG device by its placement), so
  a crash between creating something and recording its ids leaks nothing.
- :func:`collect_garbage`: CDI specs no record owns, unless damage may have lost their records.
- :func:`reconcile`: what the recorded claims hold on the node and is gone (an MPS daemon), or runs for no
  claim, brought back in line by the vendor driver.

Undoing passes the vendor driver the other claims' recorded states (:func:`others`), read under the same
lock: a GPU setting several claims hold is put back only by the last of them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

from gpudra.model.applied import AppliedState
from gpudra.state.checkpoint import CheckpointStore, ClaimRecord, Txn
from gpudra.state.claimfiles import ClaimFiles
from gpudra.vendors.base import ApplyError, ClaimApplier

log = logging.getLogger(__name__)


def others(txn: Txn, uid: str) -> Iterator[AppliedState]:
    """The recorded states of every claim but ``uid`` (lazily: a driver with nothing shared never looks)."""
    return (rec.applied for rec in txn.claims.values() if rec.uid != uid)


def roll_back(txn: Txn, record: ClaimRecord, driver: ClaimApplier, files: ClaimFiles) -> bool:
    """Undo a half-done prepare (its changes as recorded, then its files) and drop its record."""
    ref = f"{record.namespace}/{record.name} ({record.uid})"
    try:
        driver.undo(record.applied, others(txn, record.uid))
        files.remove(record.uid, record)
    except (ApplyError, OSError) as e:
        log.error("rolling back the interrupted prepare of claim %s failed: %s", ref, e)
        return False
    txn.remove(record.uid)
    log.warning("rolled back the interrupted prepare of claim %s", ref)
    return True


def interrupted(store: CheckpointStore) -> dict[str, ClaimRecord]:
    """The prepares that have not completed now (PrepareStarted records), by claim UID."""
    return {uid: r for uid, r in store.snapshot().items() if r.state == "PrepareStarted"}


def roll_back_interrupted(
    store: CheckpointStore, driver: ClaimApplier, files: ClaimFiles, seen: Mapping[str, ClaimRecord]
) -> list[str]:
    """Undo the prepares a crash left half done: those of ``seen`` (taken at start, see
    :func:`interrupted`) whose record is still exactly as it was. A record that completed or went
    meanwhile belonged to a call still running in another instance (a rolling update) and is left alone;
    a claim the kubelet asked for again was rolled back by that call. Returns the UIDs rolled back."""
    rolled: list[str] = []
    with store.transaction() as txn:
        for uid, record in seen.items():
            if txn.get(uid) == record and roll_back(txn, record, driver, files):
                rolled.append(uid)
        txn.commit()
    return rolled


def collect_garbage(store: CheckpointStore, files: ClaimFiles) -> list[str]:
    """Remove CDI specs on disk that no checkpoint entry owns (left by a crash). Returns claim UIDs.

    Never after damage: a spec whose record was lost (a damaged record, or records possibly missing
    after a cut or a file moved aside) may belong to a running pod. Those are kept until the kubelet
    unprepares the claim (unpreparing a claim without a record removes its files)."""
    removed, kept = [], []
    with store.transaction() as txn:
        for uid in files.cdi.claim_uids_on_disk():
            if txn.get(uid) is not None:
                continue
            if store.uncertain or uid in store.damaged:
                kept.append(uid)
                continue
            files.remove(uid, None)
            removed.append(uid)
    if removed:
        log.info("removed %d orphaned CDI spec(s): %s", len(removed), ", ".join(removed))
    if kept:
        log.warning(
            "kept %d CDI spec(s) the damaged checkpoint cannot account for, until the kubelet "
            "unprepares them: %s", len(kept), ", ".join(sorted(kept)),
        )  # fmt: skip
    return removed


def reconcile(store: CheckpointStore, driver: ClaimApplier) -> None:
    """At start: the vendor driver brings back what completed claims hold and is gone, and ends what no
    recorded claim holds (:meth:`~gpudra.vendors.base.ClaimApplier.reconcile`). Under the checkpoint lock,
    so no prepare or unprepare changes the claims meanwhile; never raises."""
    try:
        with store.transaction(durable=False) as txn:
            records = list(txn.claims.values())
            held = [r.applied for r in records if r.state == "PrepareCompleted"]
            pending = [r.applied for r in records if r.state != "PrepareCompleted"]
            driver.reconcile(held, pending)
    except Exception:  # start-up goes on: what could not be reconciled is the driver's to log
        log.exception("reconciling the node with the prepared claims failed")
