"""NodePrepareResources / NodeUnprepareResources: the side-effecting half.

Per call: fetch every claim (no lock held, in parallel with other calls), plan each one (pure, see
:mod:`gpudra.planning.plan`), then, under the checkpoint's short file lock, check conflicts against what is
on disk,
record ``PrepareStarted``, write the CDI specs, record ``PrepareCompleted``. Errors are per claim: a claim
that fails leaves no trace and never fails its neighbours. Unprepare removes exactly what prepare recorded.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from gpudra.fsutil import atomic_write
from gpudra.kube.client import KubeError
from gpudra.model import cdi
from gpudra.model.inventory import Device, DeviceKind, Inventory
from gpudra.model.k8stypes import DeviceAttribute, ResourceClaim
from gpudra.planning import devicemeta, plan, slices
from gpudra.planning.plan import ClaimPlan, ClaimRef, PlanError
from gpudra.state.checkpoint import CheckpointStore, ClaimRecord, PreparedDevice, Txn
from gpudra.vendors import edits

log = logging.getLogger(__name__)

EditsMode = Literal["hardware", "mock"]
State = Literal["PrepareStarted", "PrepareCompleted"]


class ClaimSource(Protocol):
    def get_claim(self, namespace: str, name: str) -> ResourceClaim: ...


@dataclass(frozen=True, slots=True)
class ClaimResult:
    devices: tuple[PreparedDevice, ...] = ()
    error: str | None = None
    error_kind: str | None = None  # stable label for metrics: not_found, device_in_use, internal, ...


@dataclass(frozen=True, slots=True)
class PrepareSettings:
    node_name: str
    state_dir: Path
    roots: edits.HostRoots
    edits_mode: EditsMode
    #: Where the per-claim files containers mount go (device metadata, mock claim descriptions). They only
    #: live as long as the boot, like the CDI specs, so tmpfs (/var/run) suits them: creating a file there
    #: costs no journal commit. None: the state dir.
    run_dir: Path | None = None

    @property
    def files_dir(self) -> Path:
        return self.run_dir or self.state_dir


@dataclass(frozen=True, slots=True)
class _Built:
    """A claim's CDI spec and what the kubelet is told, computed before anything is recorded."""

    spec: dict[str, object]
    spec_path: str  # where the CDI spec goes (recorded in the checkpoint)
    prepared: tuple[PreparedDevice, ...]
    #: Files containers mount, written before the spec: KEP-5304 device metadata, mock device descriptions.
    files: tuple[tuple[Path, bytes], ...] = ()


#: A claim read and planned, with its CDI spec computed (or why it cannot be): ready for the locked part.
_Ready = tuple[ClaimPlan, _Built | ClaimResult]


class Preparer:
    def __init__(
        self,
        claims: ClaimSource,
        inventory: Inventory,
        store: CheckpointStore,
        cdi_writer: cdi.CdiWriter,
        settings: PrepareSettings,
        *,
        on_prepared: Callable[[Mapping[str, int]], None] | None = None,
    ) -> None:
        self._claims = claims
        self._store = store
        self._cdi = cdi_writer
        self._settings = settings
        self._on_prepared = on_prepared  # devices held by completed claims, by type (for the metrics)
        self._devices: Mapping[str, Device] = {}
        self._attributes: Mapping[str, Mapping[str, DeviceAttribute]] = {}
        # Built once: Path joins show up in the profile of every call.
        self._metadata_root = settings.files_dir / "metadata"
        self._claims_root = settings.files_dir / "claims"
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="claim-get")
        self.set_inventory(inventory)

    def set_inventory(self, inventory: Inventory) -> None:
        """The devices a claim may name: the published ones. A GPU in MIG mode is not published (its MIG
        devices are), so an allocation naming it is stale and refused. Their published attributes (for the
        device metadata) are computed here once, not on every prepare."""
        devices = {
            slices.device_name(d): d
            for d in inventory.devices
            if not (d.kind is DeviceKind.GPU and d.mig_enabled)
        }
        self._attributes = {
            name: slices.build_device(d, inventory).device.get("attributes", {})
            for name, d in devices.items()
        }
        self._devices = devices

    # ---- prepare ------------------------------------------------------------------------------------

    def prepare(self, refs: Sequence[ClaimRef]) -> dict[str, ClaimResult]:
        results: dict[str, ClaimResult] = {}
        plans: list[_Ready] = []
        # One pod's claims arrive in one call: read them from the API and compute their CDI specs in
        # parallel, no lock held (the API server answers one claim while this process builds another).
        outcomes = map(self._try_plan, refs) if len(refs) == 1 else self._pool.map(self._try_plan, refs)
        for ref, outcome in zip(refs, outcomes, strict=True):
            if isinstance(outcome, ClaimResult):
                results[ref.uid] = outcome
            else:
                plans.append(outcome)
        if not plans:
            return results
        # Two short turns with the checkpoint lock around the file writes, so that calls in flight queue
        # for the lock only while they record: PrepareStarted (not synced yet), then PrepareCompleted
        # (synced, with everything before it, once the lock is released).
        with self._store.transaction(durable=False) as txn:
            started = self._start(txn, plans, results)
        written = [(p, built, self._write_files(p, built)) for p, built in started]
        if written:
            with self._store.transaction() as txn:
                for p, built, error in written:
                    results[p.ref.uid] = self._complete(txn, p, built, error)
                txn.commit()
                self._report(txn)
        return results

    def _report(self, txn: Txn) -> None:
        if self._on_prepared is None:
            return
        counts: dict[str, int] = {}
        for rec in txn.claims.values():
            if rec.state != "PrepareCompleted":
                continue
            for d in rec.devices:
                dev = self._devices.get(d.device)
                kind = dev.kind.value if dev is not None else "unknown"
                counts[kind] = counts.get(kind, 0) + 1
        self._on_prepared(counts)

    def _try_plan(self, ref: ClaimRef) -> _Ready | ClaimResult:
        try:
            p = self._plan(ref)
            return p, self._try_build(p)
        except PlanError as e:
            log.warning("prepare %s: %s", ref, e)
            return ClaimResult(error=str(e), error_kind=e.kind)
        except Exception as e:  # a bug or a claim shaped unlike any API server writes: this claim only
            log.exception("prepare %s: unexpected error", ref)
            return ClaimResult(error=f"internal error: {type(e).__name__}: {e}", error_kind="internal")

    def _plan(self, ref: ClaimRef) -> ClaimPlan:
        try:
            claim = self._claims.get_claim(ref.namespace, ref.name)
        except KubeError as e:
            if e.not_found:
                raise PlanError(f"ResourceClaim {ref.namespace}/{ref.name} not found", "not_found") from e
            raise PlanError(f"cannot read ResourceClaim {ref.namespace}/{ref.name}: {e}", "api") from e
        return plan.plan_claim(ref, claim, self._devices, self._settings.node_name)

    def _try_build(self, p: ClaimPlan) -> _Built | ClaimResult:
        try:
            return self._build(p)
        except (edits.EditsError, cdi.CdiSpecError, OSError) as e:
            return ClaimResult(error=f"cannot prepare devices: {e}", error_kind="device")

    def _start(
        self, txn: Txn, plans: list[_Ready], results: dict[str, ClaimResult]
    ) -> list[tuple[ClaimPlan, _Built]]:
        """First turn with the lock: idempotency, conflicts, then PrepareStarted for the claims to prepare
        (one checkpoint write for all of them). Claims that end here get their result in ``results``."""
        started: list[tuple[ClaimPlan, _Built]] = []
        for p, built in plans:
            done = txn.get(p.ref.uid)
            if done is not None and done.state == "PrepareCompleted":
                results[p.ref.uid] = ClaimResult(devices=done.devices)
                continue
            conflict = plan.find_conflict(p, _uses(txn.claims.values(), {d.name for d in p.devices}))
            if conflict is not None:
                log.warning("prepare %s: %s", p.ref, conflict)
                results[p.ref.uid] = ClaimResult(error=conflict, error_kind="device_in_use")
                continue
            if isinstance(built, ClaimResult):
                log.warning("prepare %s: %s", p.ref, built.error)
                results[p.ref.uid] = built
                continue
            txn.put(self._record(p.ref, "PrepareStarted", built))
            started.append((p, built))
        txn.commit()
        return started

    def _write_files(self, p: ClaimPlan, built: _Built) -> str | None:
        """No lock held: the claim's files (all named by its UID). Returns why they could not be written."""
        try:
            self._write(p, built)
        except OSError as e:
            self._remove_files(p.ref.uid, [path for path, _ in built.files])
            log.warning("prepare %s: %s", p.ref, e)
            return f"cannot prepare devices: {e}"
        return None

    def _complete(self, txn: Txn, p: ClaimPlan, built: _Built, error: str | None) -> ClaimResult:
        """Second turn with the lock: PrepareCompleted, unless the write failed or the claim was unprepared
        while its files were written (then those files go again)."""
        uid = p.ref.uid
        if txn.get(uid) is None:
            self._remove_files(uid, [path for path, _ in built.files])
            msg = f"claim {uid} was unprepared while it was being prepared"
            log.warning("prepare %s: %s", p.ref, msg)
            return ClaimResult(error=msg, error_kind="unprepared")
        if error is not None:
            txn.remove(uid)
            return ClaimResult(error=error, error_kind="io")
        txn.put(self._record(p.ref, "PrepareCompleted", built))
        log.debug("prepared %s: %s", p.ref, ", ".join(d.device for d in built.prepared))
        return ClaimResult(devices=built.prepared)

    @staticmethod
    def _record(ref: ClaimRef, state: State, built: _Built) -> ClaimRecord:
        return ClaimRecord(ref.uid, ref.namespace, ref.name, state, built.prepared, built.spec_path)

    def _forget(self, txn: Txn, claim_uid: str) -> None:
        record = txn.get(claim_uid)
        if record is not None:
            tops = {devicemeta.top_request(d.request) for d in record.devices}
            files = [self._metadata_path(claim_uid, top) for top in tops]
            if self._settings.edits_mode == "mock":
                files += [self._description_path(claim_uid, d.device) for d in record.devices]
        else:  # an orphan: whatever files carry its UID
            files = [
                *self._metadata_root.glob(f"{claim_uid}_*.json"),
                *self._claims_root.glob(f"{claim_uid}-*.json"),
            ]
        # A claim prepared by an older build: one description file per claim, a directory of metadata.
        files.append(self._claims_root / f"{claim_uid}.json")
        self._remove_files(claim_uid, files)
        shutil.rmtree(self._settings.state_dir / "metadata" / claim_uid, ignore_errors=True)
        txn.remove(claim_uid)

    def _remove_files(self, claim_uid: str, files: Iterable[Path]) -> None:
        """The claim's CDI spec and the ``files`` its containers mount."""
        self._cdi.remove(claim_uid)
        for path in files:
            path.unlink(missing_ok=True)

    def _build(self, p: ClaimPlan) -> _Built:
        """The claim's CDI spec: a device the node cannot give (a missing device node, ...) fails the claim
        here, before anything is recorded or written."""
        uid = p.ref.uid
        mounts, files = self._metadata(p)
        if self._settings.edits_mode == "mock":
            return self._build_mock(p, mounts, files)
        devs, prepared = [], []
        for d in p.devices:
            hw = edits.hardware_edits(d.device, self._settings.roots)
            device_edits = hw.edits.merge(cdi.ContainerEdits(mounts=(mounts[d.request],)))
            devs.append(cdi.CdiDevice(cdi.cdi_device_name(uid, d.name), device_edits))
            prepared.append(_prepared_device(uid, d, hw.extra_cdi_ids))
        spec = cdi.build_spec(uid, devs, cdi.ContainerEdits())
        return _Built(spec, str(self._cdi.path_for(uid)), tuple(prepared), files)

    def _metadata(self, p: ClaimPlan) -> tuple[dict[str, cdi.Mount], tuple[tuple[Path, bytes], ...]]:
        """KEP-5304: per top-level request, the metadata file and its read-only mount (see devicemeta)."""
        by_request: dict[str, list[devicemeta.MetadataDevice]] = {}
        for d in p.devices:
            meta = devicemeta.MetadataDevice(d.request, d.pool, d.name, self._attributes.get(d.name, {}))
            by_request.setdefault(devicemeta.top_request(d.request), []).append(meta)
        mounts: dict[str, cdi.Mount] = {}
        files = []
        for top, devices in by_request.items():
            host = self._metadata_path(p.ref.uid, top)
            inside = devicemeta.container_path(p.ref.name, p.pod_claim_name, top)
            data = devicemeta.metadata_stream(
                p.ref.namespace, p.ref.name, p.ref.uid, pod_claim_name=p.pod_claim_name, devices=devices
            )
            files.append((host, data))
            mount = cdi.Mount(str(host), inside, ("ro", "nosuid", "nodev", "bind"))
            for d in p.devices:
                if devicemeta.top_request(d.request) == top:
                    mounts[d.request] = mount
        return mounts, tuple(files)

    def _metadata_path(self, claim_uid: str, top_request: str) -> Path:
        """One flat file per claim and top-level request (request names are DNS labels: no ``_``). Flat,
        because a directory per claim costs two ``mkdir`` (0.4 ms each on ext4) on every prepare."""
        return self._metadata_root / f"{claim_uid}_{top_request}.json"

    def _build_mock(
        self, p: ClaimPlan, mounts: Mapping[str, cdi.Mount], files: tuple[tuple[Path, bytes], ...]
    ) -> _Built:
        """Mock devices: every edit is the device's own (see :mod:`gpudra.vendors.edits`), the spec has no
        claim-wide edits, so a container sees exactly the devices of the requests it names."""
        uid = p.ref.uid
        devs, descriptions = [], []
        for d in p.devices:
            desc = self._description_path(uid, d.name)
            descriptions.append((desc, edits.device_description(p.ref, d.request, d.name, d.device)))
            device_edits = edits.mock_edits(d.device, uid, d.name, desc)
            devs.append(
                cdi.CdiDevice(
                    cdi.cdi_device_name(uid, d.name),
                    device_edits.merge(cdi.ContainerEdits(mounts=(mounts[d.request],))),
                )
            )
        prepared = tuple(_prepared_device(uid, d) for d in p.devices)
        spec = cdi.build_spec(uid, devs, cdi.ContainerEdits())
        return _Built(spec, str(self._cdi.path_for(uid)), prepared, (*files, *descriptions))

    def _write(self, p: ClaimPlan, built: _Built) -> None:
        for path, data in built.files:
            atomic_write(path, data, mode=0o644, durable=False)
        self._cdi.write(p.ref.uid, built.spec)

    def _description_path(self, claim_uid: str, device_name: str) -> Path:
        return self._claims_root / edits.description_file_name(claim_uid, device_name)

    # ---- unprepare ----------------------------------------------------------------------------------

    def unprepare(self, refs: Sequence[ClaimRef]) -> dict[str, str | None]:
        """Undo prepare for each claim; an unknown claim is already unprepared (success)."""
        out: dict[str, str | None] = {}
        with self._store.transaction() as txn:
            for ref in refs:
                out[ref.uid] = self._undo(txn, ref)
            txn.commit()
            self._report(txn)
        return out

    def _undo(self, txn: Txn, ref: ClaimRef) -> str | None:
        if txn.get(ref.uid) is None:
            return None
        try:
            self._forget(txn, ref.uid)
        except OSError as e:
            log.warning("unprepare %s: %s", ref, e)
            return f"cannot remove CDI spec for claim {ref.uid}: {e}"
        return None

    # ---- housekeeping -------------------------------------------------------------------------------

    def collect_garbage(self) -> list[str]:
        """Remove CDI specs on disk that no checkpoint entry owns (left by a crash). Returns claim UIDs."""
        removed = []
        with self._store.transaction() as txn:
            for uid in self._cdi.claim_uids_on_disk():
                if txn.get(uid) is None:
                    self._forget(txn, uid)
                    removed.append(uid)
        if removed:
            log.info("removed %d orphaned CDI spec(s): %s", len(removed), ", ".join(removed))
        return removed


def _prepared_device(
    claim_uid: str, d: plan.DeviceToPrepare, extra_ids: tuple[str, ...] = ()
) -> PreparedDevice:
    return PreparedDevice(
        request=d.request,
        pool=d.pool,
        device=d.name,
        cdi_device_ids=(cdi.cdi_device_id(claim_uid, d.name), *extra_ids),
        admin_access=d.admin_access,
        share_id=d.share_id,
    )


def _uses(records: Iterable[ClaimRecord], devices: AbstractSet[str]) -> list[plan.DeviceUse]:
    """The recorded uses of ``devices`` (the ones a plan wants; the others cannot conflict)."""
    return [
        plan.DeviceUse(rec.uid, d.device, d.admin_access, d.share_id)
        for rec in records
        for d in rec.devices
        if d.device in devices
    ]
