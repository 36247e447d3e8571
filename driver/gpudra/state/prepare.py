"""NodePrepareResources / NodeUnprepareResources: orchestration of the side effects.

Per call, against ONE version of the node state (:mod:`gpudra.state.node`): read every claim (no lock held, in
parallel), plan it (pure, :mod:`gpudra.planning.plan`), ask the vendor driver what it will change for it
and compute the claim's files from that. Then, under the checkpoint's short file lock, check conflicts and
record ``PrepareStarted`` with the intended changes; without the lock, let the driver apply them and write
the files; under the lock again, record ``PrepareCompleted`` with what was really applied. Errors are per
claim: a claim that fails leaves no trace and never fails its neighbours. Unprepare undoes exactly the
recorded state and removes exactly the recorded files.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from gpudra.model import cdi
from gpudra.model.applied import AppliedState
from gpudra.model.health import ConditionKind
from gpudra.planning import plan
from gpudra.planning.offer import Offer
from gpudra.planning.plan import ClaimPlan, ClaimRef, PlanError
from gpudra.state import recovery
from gpudra.state.cdi import CdiWriter
from gpudra.state.checkpoint import CheckpointStore, ClaimRecord, PreparedDevice, Txn, UnwritableRecord
from gpudra.state.claimfiles import Built, ClaimFiles
from gpudra.state.claimsource import ClaimReadError, ClaimSource
from gpudra.state.discard import Failed, discard, others_now
from gpudra.state.node import NodeStateStore
from gpudra.state.unprepare import unprepare_claims
from gpudra.vendors.base import ApplyError, ClaimDevice, EditsError, VendorDriver

__all__ = ["ClaimReadError", "ClaimResult", "ClaimSource", "PrepareSettings", "Preparer"]

log = logging.getLogger(__name__)

State = Literal["PrepareStarted", "PrepareCompleted"]


@dataclass(frozen=True, slots=True)
class ClaimResult:
    devices: tuple[PreparedDevice, ...] = ()
    error: str | None = None
    error_kind: str | None = None  # stable label for metrics: not_found, device_in_use, internal, ...


@dataclass(frozen=True, slots=True)
class PrepareSettings:
    node_name: str
    state_dir: Path
    #: Where the per-claim files containers mount go (device metadata). They only live as long as the boot,
    #: like the CDI specs, so tmpfs (/var/run) suits them: creating a file there costs no journal commit.
    #: None: the state dir.
    run_dir: Path | None = None

    @property
    def files_dir(self) -> Path:
        return self.run_dir or self.state_dir


@dataclass(frozen=True, slots=True)
class _Ready:
    """A claim read and planned, its changes intended and its files computed: ready for the locked part."""

    plan: ClaimPlan
    devices: tuple[ClaimDevice, ...]
    built: Built | ClaimResult  # or why the node cannot give the devices (reported after the checks)


class Preparer:
    def __init__(
        self,
        claims: ClaimSource,
        node: NodeStateStore,
        store: CheckpointStore,
        cdi_writer: CdiWriter,
        *,
        driver: VendorDriver,
        settings: PrepareSettings,
        on_prepared: Callable[[Mapping[str, int]], None] | None = None,
    ) -> None:
        self._claims = claims
        self._node = node
        self._store = store
        self._driver = driver
        self._settings = settings
        self._files = ClaimFiles(settings.files_dir, settings.state_dir, cdi_writer, driver)
        self._on_prepared = on_prepared  # devices held by completed claims, by type (for the metrics)
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="claim-get")
        self._inflight: set[str] = set()  # claims this process is preparing (PrepareStarted, not done)
        self._inflight_lock = threading.Lock()

    # ---- prepare ------------------------------------------------------------------------------------

    def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, ClaimResult]:
        offer = self._node.current.offer  # one version of the node state for the whole call
        results: dict[str, ClaimResult] = {}
        ready: list[_Ready] = []
        # One pod's claims arrive in one call: read them from the API and compute their files in parallel,
        # no lock held (the API server answers one claim while this process builds another).
        if len(refs) == 1:
            outcomes: Iterable[_Ready | ClaimResult] = [self._try_plan(refs[0], offer)]
        else:
            outcomes = self._pool.map(lambda r: self._try_plan(r, offer), refs)
        for ref, outcome in zip(refs, outcomes, strict=True):
            if isinstance(outcome, ClaimResult):
                results[ref.uid] = outcome
            else:
                ready.append(outcome)
        if ready:
            self._record_and_write(ready, offer, results)
        return results

    def _record_and_write(self, ready: list[_Ready], offer: Offer, results: dict[str, ClaimResult]) -> None:
        """Two short turns with the checkpoint lock around the changes and file writes, so that calls in
        flight queue for the lock only while they record: PrepareStarted (not synced yet), then
        PrepareCompleted (synced, with everything before it, once the lock is released). A checkpoint that
        cannot be written (a full or failing disk) fails the claims it would have recorded, not the call."""
        try:
            with self._store.transaction(durable=False) as txn:
                started = self._start(txn, ready, results)
        except OSError as e:
            for r in ready:
                results.setdefault(r.plan.ref.uid, _unrecorded(r.plan.ref, e))
            return
        try:
            self._apply_and_complete(started, offer, results)
        finally:
            with self._inflight_lock:
                self._inflight.difference_update(r.plan.ref.uid for r, _ in started)

    def _apply_and_complete(
        self, started: list[tuple[_Ready, Built]], offer: Offer, results: dict[str, ClaimResult]
    ) -> None:
        done = [(r, self._apply_and_write(r, built, offer)) for r, built in started]
        if not done:
            return
        try:
            with self._store.transaction() as txn:
                for r, written in done:
                    results[r.plan.ref.uid] = self._complete(txn, r, written)
                txn.commit()
                self._report(txn)
        except OSError as e:
            for r, written in done:
                self._discard(r.plan.ref, written, others_now(self._store, r.plan.ref.uid))
                results[r.plan.ref.uid] = _unrecorded(r.plan.ref, e)

    def _report(self, txn: Txn) -> None:
        if self._on_prepared is None:
            return
        devices = self._node.current.offer.devices
        counts: dict[str, int] = {}
        for rec in txn.claims.values():
            if rec.state != "PrepareCompleted":
                continue
            for d in rec.devices:
                dev = devices.get(d.device)
                kind = dev.kind.value if dev is not None else "unknown"
                counts[kind] = counts.get(kind, 0) + 1
        self._on_prepared(counts)

    def _try_plan(self, ref: ClaimRef, offer: Offer) -> _Ready | ClaimResult:
        try:
            p = self._plan(ref, offer)
            if isinstance(p, ClaimResult):
                return p
            devices = p.devices  # each planned device is what the vendor driver is given
            return _Ready(p, devices, self._try_build(p, devices, offer))
        except PlanError as e:
            log.warning("prepare %s: %s", ref, e)
            return ClaimResult(error=str(e), error_kind=e.kind)
        except Exception as e:  # a bug or a claim shaped unlike any API server writes: this claim only
            log.exception("prepare %s: unexpected error", ref)
            return ClaimResult(error=f"internal error: {type(e).__name__}: {e}", error_kind="internal")

    def _plan(self, ref: ClaimRef, offer: Offer) -> ClaimPlan | ClaimResult:
        try:
            claim = self._claims.get_claim(ref.namespace, ref.name)
        except ClaimReadError as e:
            if e.not_found:
                raise PlanError(f"ResourceClaim {ref.namespace}/{ref.name} not found", "not_found") from e
            done = self._completed(ref)
            if done is not None:
                log.info("prepare %s: the API is unreachable (%s); answered from the checkpoint", ref, e)
                return done
            raise PlanError(f"cannot read ResourceClaim {ref.namespace}/{ref.name}: {e}", "api") from e
        return plan.plan_claim(ref, claim, offer.devices, self._settings.node_name)

    def _completed(self, ref: ClaimRef) -> ClaimResult | None:
        """What this node answered for the claim before, when it completed preparing exactly this claim.

        Safe without the API: a UID is never reused, and a claim's allocation cannot change while it is
        prepared (deallocation needs every pod to release it, after the kubelet has unprepared it), so the
        recorded devices are still the claim's. The kubelet asks again after its own restarts.
        """
        record = self._store.snapshot().get(ref.uid)
        if record is None or record.state != "PrepareCompleted":
            return None
        if (record.namespace, record.name) != (ref.namespace, ref.name):
            return None
        return ClaimResult(devices=record.devices)

    def _try_build(self, p: ClaimPlan, devices: tuple[ClaimDevice, ...], offer: Offer) -> Built | ClaimResult:
        try:
            intended = self._driver.intend(p.ref, devices)
            return self._files.build(p, devices, offer, intended)
        except (EditsError, ApplyError, cdi.CdiSpecError, OSError) as e:
            return ClaimResult(error=f"cannot prepare devices: {e}", error_kind="device")

    def _start(
        self, txn: Txn, ready: list[_Ready], results: dict[str, ClaimResult]
    ) -> list[tuple[_Ready, Built]]:
        """First turn with the lock: idempotency, conflicts, then PrepareStarted with the intended changes
        for the claims to prepare (one checkpoint write for all of them). Claims that end here get their
        result in ``results``."""
        started: list[tuple[_Ready, Built]] = []
        for r in ready:
            uid = r.plan.ref.uid
            done = txn.get(uid)
            if done is not None and done.state == "PrepareCompleted":
                results[uid] = ClaimResult(devices=done.devices)
                continue
            if done is not None:  # PrepareStarted: a call in flight, or what a crash left half done
                failed = self._busy_or_roll_back(txn, done)
                if failed is not None:
                    results[uid] = failed
                    continue
            sick = self._unhealthy(r.plan)
            if sick is not None:  # a claim already prepared was answered above: only new ones are refused
                log.warning("prepare %s: %s", r.plan.ref, sick)
                results[uid] = ClaimResult(error=sick, error_kind="unhealthy")
                continue
            wanted = {d.name for d in r.plan.devices}
            conflict = plan.find_conflict(r.plan, _uses(txn.claims.values(), wanted))
            if conflict is not None:
                log.warning("prepare %s: %s", r.plan.ref, conflict)
                results[uid] = ClaimResult(error=conflict, error_kind="device_in_use")
                continue
            if isinstance(r.built, ClaimResult):
                log.warning("prepare %s: %s", r.plan.ref, r.built.error)
                results[uid] = r.built
                continue
            try:  # what it intends, against what the other claims hold (a GPU setting they share)
                settled = self._driver.settle(r.built.applied, recovery.others(txn, uid))
                built = r.built if settled is r.built.applied else replace(r.built, applied=settled)
            except ApplyError as e:
                log.warning("prepare %s: %s", r.plan.ref, e)
                results[uid] = ClaimResult(error=f"cannot prepare devices: {e}", error_kind="device_in_use")
                continue
            try:
                txn.put(_record(r.plan.ref, "PrepareStarted", built))
            except UnwritableRecord as e:  # a value the checkpoint could not read back: this claim only
                results[uid] = _unrecordable(r.plan.ref, e)
                continue
            started.append((r, built))
            with self._inflight_lock:
                self._inflight.add(uid)
        txn.commit()
        return started

    def _unhealthy(self, p: ClaimPlan) -> str | None:
        state = self._node.current
        for d in p.devices:
            health = state.health_of(d.name)
            if any(c.kind is not ConditionKind.UNMONITORED for c in health.conditions):  # tainted
                return f"device {d.name} is unhealthy: {health.message} (see its gpudra.io taints)"
        return None

    def _busy_or_roll_back(self, txn: Txn, record: ClaimRecord) -> ClaimResult | None:
        """A PrepareStarted record of a claim asked for again: an error while another call of this process
        prepares it; else undo what it intended (a crash cut that prepare short), so it can start afresh."""
        with self._inflight_lock:
            busy = record.uid in self._inflight
        if busy:
            msg = f"claim {record.uid} is being prepared by another call; try again"
            return ClaimResult(error=msg, error_kind="in_progress")
        return (
            None
            if self._roll_back(txn, record)
            else ClaimResult(
                error=f"cannot undo an earlier, interrupted prepare of claim {record.uid}",
                error_kind="device",
            )
        )

    def _roll_back(self, txn: Txn, record: ClaimRecord) -> bool:
        return recovery.roll_back(txn, record, self._driver, self._files)

    def roll_back_interrupted(self, seen: Mapping[str, ClaimRecord]) -> list[str]:
        """Undo the prepares a crash left half done, of those ``seen`` at start and unchanged since (see
        :mod:`gpudra.state.recovery`)."""
        return recovery.roll_back_interrupted(self._store, self._driver, self._files, seen)

    def interrupted(self) -> dict[str, ClaimRecord]:
        return recovery.interrupted(self._store)

    def _apply_and_write(self, r: _Ready, built: Built, offer: Offer) -> Built | Failed:
        """No lock held: the driver's changes, then the claim's files. Returns what was built (with the
        applied state) or what failed, for :meth:`_complete` to undo under the lock."""
        ref, intended = r.plan.ref, built.applied
        try:
            applied = self._driver.apply(ref, r.devices, intended)
        except ApplyError as e:
            log.warning("prepare %s: %s", ref, e)
            return Failed(f"cannot prepare devices: {e}", intended)
        try:
            if applied != intended:  # the hardware assigned ids the edits depend on
                built = self._files.build(r.plan, r.devices, offer, applied)
            self._files.write(ref.uid, built)
        except (EditsError, cdi.CdiSpecError, OSError) as e:
            log.warning("prepare %s: %s", ref, e)
            return Failed(f"cannot prepare devices: {e}", applied, replace(built, applied=applied))
        return built

    def _discard(self, ref: ClaimRef, outcome: Built | Failed, others: Iterable[AppliedState]) -> None:
        discard(ref, outcome, self._files, self._driver, others)

    def _complete(self, txn: Txn, r: _Ready, outcome: Built | Failed) -> ClaimResult:
        """Second turn with the lock: PrepareCompleted, unless applying or writing failed or the claim was
        unprepared meanwhile (then what this call did goes again)."""
        ref = r.plan.ref
        if txn.get(ref.uid) is None:
            self._discard(ref, outcome, recovery.others(txn, ref.uid))
            msg = f"claim {ref.uid} was unprepared while it was being prepared"
            log.warning("prepare %s: %s", ref, msg)
            return ClaimResult(error=msg, error_kind="unprepared")
        if isinstance(outcome, Failed):
            self._discard(ref, outcome, recovery.others(txn, ref.uid))
            txn.remove(ref.uid)
            return ClaimResult(error=outcome.message, error_kind="io")
        try:
            txn.put(_record(ref, "PrepareCompleted", outcome))
        except UnwritableRecord as e:
            self._discard(ref, outcome, recovery.others(txn, ref.uid))
            txn.remove(ref.uid)
            return _unrecordable(ref, e)
        log.debug("prepared %s: %s", ref, ", ".join(d.device for d in outcome.prepared))
        return ClaimResult(devices=outcome.prepared)

    # ---- unprepare ----------------------------------------------------------------------------------

    def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str | None]:
        """Undo prepare for each claim; an unknown claim is already unprepared (success)."""
        return unprepare_claims(self._store, self._driver, self._files, refs, self._report)

    # ---- housekeeping -------------------------------------------------------------------------------

    def health(self) -> None:
        """The probes' check of the plugin's own state: the checkpoint can be locked and read. Raises when
        it cannot; hangs while another process holds its lock. The API server plays no part."""
        self._store.snapshot()

    def reconcile(self) -> None:
        """At start: the vendor driver's changes brought in line with the recorded claims (an MPS daemon of
        a prepared claim restarted, one of no claim stopped; see :func:`gpudra.state.recovery.reconcile`)."""
        recovery.reconcile(self._store, self._driver)

    def collect_garbage(self) -> list[str]:
        """Remove CDI specs no checkpoint entry owns (see :func:`gpudra.state.recovery.collect_garbage`)."""
        return recovery.collect_garbage(self._store, self._files)

    def claim_created_devices(self) -> frozenset[str]:
        """UUIDs of the devices that exist because a recorded claim created them, and the published names
        of the devices recorded claims create or are creating (never published as devices of their own;
        see :func:`gpudra.planning.offer.plan_offer`)."""
        return self._store.claim_created()


def _unrecordable(ref: ClaimRef, error: UnwritableRecord) -> ClaimResult:
    log.error("prepare %s: %s", ref, error)
    return ClaimResult(error=f"cannot record the claim: {error}", error_kind="invalid")


def _unrecorded(ref: ClaimRef, error: OSError) -> ClaimResult:
    log.error("prepare %s: the checkpoint cannot be written: %s", ref, error)
    return ClaimResult(error=f"cannot record the claim in the checkpoint: {error}", error_kind="io")


def _record(ref: ClaimRef, state: State, built: Built) -> ClaimRecord:
    return ClaimRecord(
        ref.uid, ref.namespace, ref.name, state, built.prepared, built.spec_path, built.applied
    )


def _uses(records: Iterable[ClaimRecord], devices: AbstractSet[str]) -> list[plan.DeviceUse]:
    """The recorded uses of ``devices`` (the ones a plan wants; the others cannot conflict)."""
    return [
        plan.DeviceUse(rec.uid, d.device, d.admin_access, d.share_id)
        for rec in records
        for d in rec.devices
        if d.device in devices
    ]
