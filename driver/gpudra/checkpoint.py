"""The record of which claims this node has prepared: the truth on disk between kubelet calls.

During a rolling update two plugin instances serve the kubelet at once, so nothing in memory is trusted
without checking the file: every call opens a :meth:`CheckpointStore.transaction`, which takes a short
exclusive ``flock`` on the lock file, (re)reads the checkpoint when its inode, size or mtime moved, and writes
atomically on :meth:`Txn.commit`. The lock is never held between calls.

File format (JSON, camelCase): ``{"version": 1, "bootId": …, "claims": {"<uid>": {"namespace", "name",
"state", "cdiSpec", "devices": [{"request", "pool", "device", "cdiDeviceIds", "adminAccess", "shareId"}]}}}``.

Older files are brought forward by :data:`MIGRATIONS`. A file from a newer gpudra is read for the fields this
code knows; its version and unknown fields (top level, per claim, per device) are written back unchanged, so a
rollback never strips what the newer version recorded. A corrupt file is moved aside and the store starts
empty; so does a changed boot id (the node rebooted).
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast

from gpudra.fsutil import atomic_write, rename_durably

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
BOOT_ID_PATH: Final = Path("/proc/sys/kernel/random/boot_id")

ClaimState = Literal["PrepareStarted", "PrepareCompleted"]
PREPARE_STARTED: Final = "PrepareStarted"
PREPARE_COMPLETED: Final = "PrepareCompleted"

Migration = Callable[[dict[str, Any]], dict[str, Any]]
#: ``MIGRATIONS[n]`` turns a version-``n`` document into a version-``n + 1`` document. Version 1 is the first
#: schema, so the chain is empty today; add a step (and bump :data:`SCHEMA_VERSION`) with every format change.
MIGRATIONS: Final[Mapping[int, Migration]] = MappingProxyType({})

_CLAIM_KEYS: Final = frozenset({"namespace", "name", "state", "devices", "cdiSpec"})
_DEVICE_KEYS: Final = frozenset({"request", "pool", "device", "cdiDeviceIds", "adminAccess", "shareId"})
_TOP_KEYS: Final = frozenset({"version", "bootId", "claims"})


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    request: str
    pool: str
    device: str
    cdi_device_ids: tuple[str, ...]
    admin_access: bool = False
    share_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClaimRecord:
    uid: str
    namespace: str
    name: str
    state: ClaimState
    devices: tuple[PreparedDevice, ...]
    cdi_spec: str | None  # path of the claim's CDI spec file


class CheckpointFormatError(ValueError):
    """The document is not a checkpoint this code can read (bad JSON, wrong shape, missing migration)."""


def read_boot_id(path: Path = BOOT_ID_PATH) -> str | None:
    """The kernel's boot id, or None when it cannot be read (then reboots are not detected)."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


# ---- the pure half: document <-> values -----------------------------------------------------------------

_DeviceKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class _Extras:
    """Fields of one claim entry (and its devices) that this code does not know, kept for the round trip."""

    claim: Mapping[str, Any] = field(default_factory=dict)
    devices: Mapping[_DeviceKey, Mapping[str, Any]] = field(default_factory=dict)
    state: str | None = None  # a state only a newer version knows (read as PrepareStarted) ...
    as_read: ClaimRecord | None = None  # ... kept while the record stays exactly as it was read


@dataclass(frozen=True, slots=True)
class _Content:
    version: int
    boot_id: str | None
    claims: dict[str, ClaimRecord] = field(default_factory=dict)
    extras: Mapping[str, _Extras] = field(default_factory=dict)
    top: Mapping[str, Any] = field(default_factory=dict)
    dirty: bool = False  # memory differs from the file although no claim changed (reset, migration)
    rebooted: bool = False


def _need(entry: Mapping[str, Any], key: str, kind: type, where: str, optional: bool = False) -> Any:
    value = entry.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise CheckpointFormatError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _device_key(d: PreparedDevice) -> _DeviceKey:
    return (d.request, d.pool, d.device)


def _decode_device(raw: object, where: str) -> tuple[PreparedDevice, Mapping[str, Any]]:
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{where}: expected an object")
    ids = _need(raw, "cdiDeviceIds", list, where)
    if not all(isinstance(i, str) for i in ids):
        raise CheckpointFormatError(f"{where}.cdiDeviceIds: expected strings")
    device = PreparedDevice(
        request=_need(raw, "request", str, where),
        pool=_need(raw, "pool", str, where),
        device=_need(raw, "device", str, where),
        cdi_device_ids=tuple(ids),
        admin_access=bool(_need(raw, "adminAccess", bool, where, optional=True)),
        share_id=_need(raw, "shareId", str, where, optional=True),
    )
    return device, {k: v for k, v in raw.items() if k not in _DEVICE_KEYS}


def _decode_state(raw: Mapping[str, Any], where: str, newer: bool) -> ClaimState:
    state: str = _need(raw, "state", str, where)
    if state in (PREPARE_STARTED, PREPARE_COMPLETED):
        return cast(ClaimState, state)
    if not newer:
        raise CheckpointFormatError(f"{where}.state: unknown state {state!r}")
    # A newer gpudra may have more states; "started" is the safe reading: prepare again or undo it fully.
    log.warning("checkpoint: %s has state %r unknown to this version; treating it as %s", where, state,
                PREPARE_STARTED)
    return PREPARE_STARTED


def _decode_claim(uid: str, raw: object, newer: bool) -> tuple[ClaimRecord, _Extras]:
    where = f"claims[{uid}]"
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{where}: expected an object")
    raw_devices: list[object] = _need(raw, "devices", list, where)
    pairs = [_decode_device(d, f"{where}.devices[{i}]") for i, d in enumerate(raw_devices)]
    record = ClaimRecord(
        uid=uid,
        namespace=_need(raw, "namespace", str, where),
        name=_need(raw, "name", str, where),
        state=_decode_state(raw, where, newer),
        devices=tuple(d for d, _ in pairs),
        cdi_spec=_need(raw, "cdiSpec", str, where, optional=True),
    )
    extras = _Extras(
        claim={k: v for k, v in raw.items() if k not in _CLAIM_KEYS},
        devices={_device_key(d): x for d, x in pairs if x},
    )
    if raw["state"] != record.state:
        extras = replace(extras, state=raw["state"], as_read=record)
    return record, extras


def _migrate(
    doc: dict[str, Any], known: int, migrations: Mapping[int, Migration]
) -> tuple[dict[str, Any], bool]:
    version: int = _need(doc, "version", int, "checkpoint")
    if version < 1:
        raise CheckpointFormatError(f"checkpoint.version: {version} is not a schema version")
    start = version
    while version < known:
        step = migrations.get(version)
        if step is None:
            raise CheckpointFormatError(f"no migration from checkpoint version {version} to {version + 1}")
        try:
            doc = step(copy.deepcopy(doc))
        except Exception as exc:
            raise CheckpointFormatError(f"migration {version} -> {version + 1} failed: {exc!r}") from exc
        version += 1
        doc["version"] = version
    return doc, version != start


def _decode_document(doc: object, known: int, migrations: Mapping[int, Migration]) -> _Content:
    if not isinstance(doc, dict):
        raise CheckpointFormatError("checkpoint: expected a JSON object")
    doc, migrated = _migrate(doc, known, migrations)
    version: int = doc["version"]
    raw_claims = _need(doc, "claims", dict, "checkpoint")
    claims: dict[str, ClaimRecord] = {}
    extras: dict[str, _Extras] = {}
    for uid, raw in raw_claims.items():
        claims[uid], extras[uid] = _decode_claim(uid, raw, newer=version > known)
    return _Content(
        version=version,
        boot_id=_need(doc, "bootId", str, "checkpoint", optional=True),
        claims=claims,
        extras=extras,
        top={k: v for k, v in doc.items() if k not in _TOP_KEYS},
        dirty=migrated,
    )


def _encode_device(device: PreparedDevice, extra: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "request": device.request,
        "pool": device.pool,
        "device": device.device,
        "cdiDeviceIds": list(device.cdi_device_ids),
        "adminAccess": device.admin_access,
        "shareId": device.share_id,
        **extra,
    }


def _encode_claim(record: ClaimRecord, extras: _Extras) -> dict[str, Any]:
    state = extras.state if extras.state is not None and record == extras.as_read else record.state
    return {
        "namespace": record.namespace,
        "name": record.name,
        "state": state,
        "cdiSpec": record.cdi_spec,
        "devices": [_encode_device(d, extras.devices.get(_device_key(d), {})) for d in record.devices],
        **extras.claim,
    }


_NO_EXTRAS = _Extras()


def _encode_content(content: _Content) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for uid in sorted(content.claims):
        record = content.claims[uid]
        if record.uid != uid:
            raise ValueError(f"checkpoint: claim {record.uid} stored under the key {uid}")
        claims[uid] = _encode_claim(record, content.extras.get(uid, _Extras()))
    return {"version": content.version, "bootId": content.boot_id, "claims": claims, **content.top}


def encode(claims: Mapping[str, ClaimRecord], boot_id: str | None) -> dict[str, Any]:
    """The JSON document (current schema) for ``claims``."""
    return _encode_content(_Content(version=SCHEMA_VERSION, boot_id=boot_id, claims=dict(claims)))


def decode(document: object) -> dict[str, ClaimRecord]:
    """The claims in a checkpoint document; raises :class:`CheckpointFormatError`."""
    return _decode_document(document, SCHEMA_VERSION, MIGRATIONS).claims


# ---- the edge: the file, the lock, the cache ------------------------------------------------------------

_StatKey = tuple[int, int, int, int, int]  # st_dev, st_ino, st_size, st_mtime_ns, st_ctime_ns


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class _NeedsRepair(Exception):
    """Corruption seen under a shared lock: moving the file aside needs the exclusive one."""


class Txn:
    """One locked read-modify-write of the checkpoint. ``claims`` is a working copy; only commit() writes."""

    def __init__(self, store: CheckpointStore, content: _Content) -> None:
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
        self._cache: tuple[_StatKey, _Content] | None = None
        self._fragments: dict[str, tuple[ClaimRecord, _Extras, bytes]] = {}

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

    def _empty(self) -> _Content:
        return _Content(version=self._schema_version, boot_id=self.boot_id)

    def _load(self, repair: bool) -> _Content:
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

    def _parse(self, data: bytes) -> _Content:
        try:
            doc = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointFormatError(f"not JSON: {exc}") from exc
        content = _decode_document(doc, self._schema_version, self._migrations)
        if content.version > self._schema_version:
            log.warning("checkpoint %s has version %d, newer than this gpudra (%d): reading the fields it "
                        "knows and keeping the rest", self.path, content.version, self._schema_version)
        if self.boot_id is not None and content.boot_id is not None and content.boot_id != self.boot_id:
            log.warning("checkpoint %s was written in boot %s, this is boot %s: the node rebooted, dropping "
                        "%d prepared claim(s)", self.path, content.boot_id, self.boot_id, len(content.claims))
            return replace(content, boot_id=self.boot_id, claims={}, extras={}, dirty=True, rebooted=True)
        return content

    def _set_aside(self, reason: str) -> None:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        rename_durably(self.path, aside)
        self._cache = None
        log.error("CHECKPOINT CORRUPT: %s (%s). Moved it to %s and starting from an EMPTY state: claims "
                  "prepared before are forgotten until the kubelet prepares them again",
                  self.path, reason, aside)
        if self._on_corrupt is not None:
            try:
                self._on_corrupt(aside, reason)
            except Exception:
                log.exception("checkpoint: the on_corrupt callback failed")

    def _serialise(self, content: _Content) -> bytes:
        """The document's bytes. Each claim's JSON is memoised, so a commit encodes only the claims that
        changed: the cost of a prepare does not grow with the number of claims already held."""
        fragments: dict[str, tuple[ClaimRecord, _Extras, bytes]] = {}
        parts = []
        for uid in sorted(content.claims):
            record = content.claims[uid]
            if record.uid != uid:
                raise ValueError(f"checkpoint: claim {record.uid} stored under the key {uid}")
            extras = content.extras.get(uid, _NO_EXTRAS)
            cached = self._fragments.get(uid)
            if cached is not None and cached[1] is extras and (cached[0] is record or cached[0] == record):
                fragment = cached[2]
            else:
                fragment = json.dumps(_encode_claim(record, extras), separators=(",", ":")).encode()
            fragments[uid] = (record, extras, fragment)
            parts.append(json.dumps(uid).encode() + b":" + fragment)
        self._fragments = fragments
        head = json.dumps({"version": content.version, "bootId": content.boot_id, **content.top},
                          separators=(",", ":")).encode()  # never empty: "version" is always there
        return head[:-1] + b',"claims":{' + b",".join(parts) + b"}}\n"

    def _write(self, base: _Content, claims: Mapping[str, ClaimRecord]) -> _Content:
        content = _Content(
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
