"""The checkpoint's records, pure: values <-> JSON, schema versions and migrations, the size limits.

Version 3 (current) is a log of JSON lines, camelCase (the log itself is :mod:`gpudra.state.checkpoint_log`):

- line 1, the snapshot: ``{"version": 3, "bootId": …, "damage": {…}, "claims": {"<uid>": {"namespace",
  "name", "state", "cdiSpec", "devices": [{"request", "pool", "device", "cdiDeviceIds", "adminAccess",
  "shareId"}], "applied": {"changes": [{"kind", "device", "params": {…}}], "createdDevices": […]}}}}``, where
  ``applied`` (what the vendor driver changed on the node for the claim, see :mod:`gpudra.model.applied`)
  is left out when nothing was changed, and ``damage`` (``{"claims": [uid, …], "uncertain": bool}``: what
  earlier readers of this boot's checkpoint could not read, see :class:`Damage`) is left out when nothing
  was damaged;
- then one line per change: ``{"put": "<uid>", "n": 7, "claim": {…same entry…}}`` or ``{"del": "<uid>",
  "n": 8}``; ``n`` numbers the changes since the snapshot, so a reader sees lines that went missing.

Version 2 had no ``applied``: a version-2 claim changed nothing, so the migration is the identity. A version-2
plugin reading a version-3 file (a rollback) keeps ``applied`` as an unknown field and writes it back. Older
version-3 plugins ignore ``n`` in a change line and keep ``damage`` as an unknown top-level field; lines they
append without ``n`` are simply not checked for gaps.

Older files are brought forward by :data:`MIGRATIONS`. A file from a newer gpudra is read for the fields this
code knows; its version and unknown fields (top level, per claim, per device) are kept in :class:`Extras` and
written back unchanged, so a rollback never strips what the newer version recorded.

A record is only written when this code reads it back exactly (:func:`encode_fragment`, :func:`wrong_field`):
a value the decoder would reject (a numeric ``shareId``) fails that record's write, never the next start-up.

Size limits. The claims a node holds are bounded by its devices and their sharing: pods per node (kubelet
``--max-pods``, 110 by default, rarely over a few hundred) times a few claims each. A claim entry is ~0.4
KiB with one device and an applied change (~3 KiB with eight), so 1,000 claims are a snapshot under 1 MiB.
:data:`MAX_CHECKPOINT_BYTES` (8 MiB) holds over 12,000 such claims, or 2,500 claims of eight devices each:
far above any real node. The log needs no more room than its snapshot: the writer compacts before an
append would cross the limit and refuses a claim (EFBIG, the claim fails) rather than write a snapshot
over it. Reading the largest file accepted peaks at ~9 x its size (the snapshot line, its text, the parsed
JSON, the records; measured: +68 MiB for an 8.2 MB snapshot of 20,500 claims), well inside the DaemonSet's
256 Mi limit; change lines are read one at a time. One change line holds one claim: :data:`MAX_CHANGE_BYTES`
(1 MiB) is over 300 times the largest real one. A file over either limit was not written by gpudra.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, cast

from gpudra.model.applied import AppliedState
from gpudra.model.cdi import is_claim_uid
from gpudra.state.checkpoint_applied import AppliedFormatError, decode_applied, encode_applied
from gpudra.state.checkpoint_records import (
    PREPARE_COMPLETED,
    PREPARE_STARTED,
    ClaimRecord,
    ClaimState,
    PreparedDevice,
    wrong_field,
)

log = logging.getLogger("gpudra.state.checkpoint")

SCHEMA_VERSION: Final = 3

#: The largest checkpoint file this code reads or writes (see the module docstring for the reasoning).
MAX_CHECKPOINT_BYTES: Final = 8 * 1024 * 1024
#: The largest change line (one claim) this code reads or writes.
MAX_CHANGE_BYTES: Final = 1024 * 1024

Migration = Callable[[dict[str, Any]], dict[str, Any]]


def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 2 keeps the version-1 document as its snapshot line and adds change lines after it."""
    return doc


def _v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
    """Version 3 adds the optional ``applied`` state per claim; a version-2 claim applied nothing."""
    return doc


#: ``MIGRATIONS[n]`` turns a version-``n`` snapshot document into a version-``n + 1`` one. Add a step (and
#: bump :data:`SCHEMA_VERSION`) with every format change.
MIGRATIONS: Final[Mapping[int, Migration]] = MappingProxyType({1: _v1_to_v2, 2: _v2_to_v3})

_CLAIM_KEYS: Final = frozenset({"namespace", "name", "state", "devices", "cdiSpec", "applied"})
_DEVICE_KEYS: Final = frozenset({"request", "pool", "device", "cdiDeviceIds", "adminAccess", "shareId"})
_TOP_KEYS: Final = frozenset({"version", "bootId", "claims", "damage"})


class CheckpointFormatError(ValueError):
    """The document is not a checkpoint this code can read (bad JSON, wrong shape, missing migration)."""


class UnwritableRecord(ValueError):
    """A claim record this code would not read back as it is: it is not written (fail that claim only)."""

    def __init__(self, uid: object, reason: str) -> None:
        super().__init__(f"claim {uid}: cannot be recorded in the checkpoint: {reason}")
        self.uid = uid
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Damage:
    """One part of the checkpoint that could not be read: skipped, the rest still applies."""

    where: str  # "line 7 (byte 1234)", "line 1 claims[<uid>]"
    why: str
    uid: str | None = None  # the claim it concerns, when known
    raw: bytes = b""  # the text as found (the start of it, for a line over the limit)
    lost: bool = False  # records may be missing entirely (a cut, or a skipped line whose claim is unknown)


_DeviceKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Extras:
    """Fields of one claim entry (and its devices) that this code does not know, kept for the round trip."""

    claim: Mapping[str, Any] = field(default_factory=dict)
    devices: Mapping[_DeviceKey, Mapping[str, Any]] = field(default_factory=dict)
    state: str | None = None  # a state only a newer version knows (read as PrepareStarted) ...
    as_read: ClaimRecord | None = None  # ... kept while the record stays exactly as it was read


NO_EXTRAS: Final = Extras()


@dataclass(frozen=True, slots=True)
class Content:
    version: int
    boot_id: str | None
    claims: dict[str, ClaimRecord] = field(default_factory=dict)
    extras: Mapping[str, Extras] = field(default_factory=dict)
    top: Mapping[str, Any] = field(default_factory=dict)
    dirty: bool = False  # memory differs from the file although no claim changed (reset, migration, damage)
    rebooted: bool = False
    changes: int = 0  # change lines after the snapshot line
    seq: int = 0  # the number of the last change line (its ``n``), 0 right after the snapshot
    damaged: frozenset[str] = frozenset()  # claims whose record could not be read in this boot
    uncertain: bool = False  # records may be missing entirely (see :class:`Damage`)


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


def _decode_state(raw: Mapping[str, Any], where: str, newer: bool, quiet: bool) -> ClaimState:
    state: str = _need(raw, "state", str, where)
    if state in (PREPARE_STARTED, PREPARE_COMPLETED):
        return cast(ClaimState, state)
    if not newer:
        raise CheckpointFormatError(f"{where}.state: unknown state {state!r}")
    # A newer gpudra may have more states; "started" is the safe reading: prepare again or undo it fully.
    if not quiet:
        log.warning(
            "checkpoint: %s has state %r unknown to this version; treating it as %s",
            where,
            state,
            PREPARE_STARTED,
        )
    return PREPARE_STARTED


def _applied(raw: object, where: str) -> AppliedState:
    try:
        return decode_applied(raw, where)
    except AppliedFormatError as e:
        raise CheckpointFormatError(str(e)) from e


def decode_claim(uid: str, raw: object, newer: bool, quiet: bool = False) -> tuple[ClaimRecord, Extras]:
    """One claim entry; raises :class:`CheckpointFormatError` naming the bad field."""
    where = f"claims[{uid}]"
    if not is_claim_uid(uid):  # it names files (CDI spec, metadata): never a path of its own
        raise CheckpointFormatError(f"{where}: the key is not a Kubernetes UID")
    if not isinstance(raw, dict):
        raise CheckpointFormatError(f"{where}: expected an object")
    raw_devices: list[object] = _need(raw, "devices", list, where)
    pairs = [_decode_device(d, f"{where}.devices[{i}]") for i, d in enumerate(raw_devices)]
    record = ClaimRecord(
        uid=uid,
        namespace=_need(raw, "namespace", str, where),
        name=_need(raw, "name", str, where),
        state=_decode_state(raw, where, newer, quiet),
        devices=tuple(d for d, _ in pairs),
        cdi_spec=_need(raw, "cdiSpec", str, where, optional=True),
        applied=_applied(raw.get("applied"), f"{where}.applied"),
    )
    extras = Extras(
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


def _decode_damage(raw: object) -> tuple[frozenset[str], bool]:
    """The snapshot's record of earlier damage. A mangled one is itself damage: all may be uncertain."""
    if raw is None:
        return frozenset(), False
    claims = raw.get("claims", []) if isinstance(raw, dict) else None
    uncertain = raw.get("uncertain", False) if isinstance(raw, dict) else None
    if not isinstance(claims, list) or not all(isinstance(u, str) for u in claims):
        return frozenset(), True
    return frozenset(claims), uncertain is not False


def decode_document(
    doc: object, known: int, migrations: Mapping[int, Migration], damage: list[Damage] | None = None
) -> Content:
    """The snapshot document. A claim entry that does not decode raises, or, with ``damage``, is left out
    and noted there (the other claims still count)."""
    if not isinstance(doc, dict):
        raise CheckpointFormatError("checkpoint: expected a JSON object")
    doc, migrated = _migrate(doc, known, migrations)
    version: int = doc["version"]
    raw_claims = _need(doc, "claims", dict, "checkpoint")
    boot_id = _need(doc, "bootId", str, "checkpoint", optional=True)
    damaged, uncertain = _decode_damage(doc.get("damage"))
    claims: dict[str, ClaimRecord] = {}
    extras: dict[str, Extras] = {}
    for uid, raw in raw_claims.items():
        try:
            claims[uid], extras[uid] = decode_claim(uid, raw, newer=version > known)
        except CheckpointFormatError as exc:
            if damage is None:
                raise
            text = json.dumps(raw, separators=(",", ":"))[:MAX_CHANGE_BYTES].encode()
            damage.append(Damage(f"line 1 claims[{uid}]", str(exc), uid, text))
    return Content(
        version=version,
        boot_id=boot_id,
        claims=claims,
        extras=extras,
        top={k: v for k, v in doc.items() if k not in _TOP_KEYS},
        dirty=migrated,
        damaged=damaged,
        uncertain=uncertain,
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


def encode_claim(record: ClaimRecord, extras: Extras) -> dict[str, Any]:
    state = extras.state if extras.state is not None and record == extras.as_read else record.state
    return {
        "namespace": record.namespace,
        "name": record.name,
        "state": state,
        "cdiSpec": record.cdi_spec,
        "devices": [_encode_device(d, extras.devices.get(_device_key(d), {})) for d in record.devices],
        **({"applied": encode_applied(record.applied)} if not record.applied.empty else {}),
        **extras.claim,
    }


def encode_fragment(record: ClaimRecord, extras: Extras = NO_EXTRAS) -> bytes:
    """The claim's JSON entry. Raises :class:`UnwritableRecord` for a record this code would not read back
    exactly (a wrong type anywhere: a numeric ``shareId``), or one over the size limit."""
    uid = record.uid
    if type(uid) is not str or not is_claim_uid(uid):
        raise UnwritableRecord(uid, f"the claim UID must be a Kubernetes UID, not {uid!r}")
    wrong = wrong_field(record) if type(record) is ClaimRecord else "not a ClaimRecord"
    if wrong is not None:
        raise UnwritableRecord(uid, wrong)
    fragment = json.dumps(encode_claim(record, extras), separators=(",", ":")).encode()
    if len(fragment) + 6 * len(uid) + 64 > MAX_CHANGE_BYTES:  # the change line: fragment, UID, framing
        raise UnwritableRecord(uid, f"{len(fragment)} bytes, over the limit of {MAX_CHANGE_BYTES}")
    return fragment


def encode_top(content: Content) -> dict[str, Any]:
    """The snapshot's fields other than ``claims``."""
    head: dict[str, Any] = {"version": content.version, "bootId": content.boot_id}
    if content.damaged or content.uncertain:
        head["damage"] = {"claims": sorted(content.damaged), "uncertain": content.uncertain}
    return {**head, **content.top}


def encode_document(content: Content) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for uid in sorted(content.claims):
        record = content.claims[uid]
        if record.uid != uid:
            raise ValueError(f"checkpoint: claim {record.uid} stored under the key {uid}")
        claims[uid] = encode_claim(record, content.extras.get(uid, NO_EXTRAS))
    return {**encode_top(content), "claims": claims}


def encode(claims: Mapping[str, ClaimRecord], boot_id: str | None) -> dict[str, Any]:
    """The JSON document (current schema) for ``claims``."""
    return encode_document(Content(version=SCHEMA_VERSION, boot_id=boot_id, claims=dict(claims)))


def decode(document: object) -> dict[str, ClaimRecord]:
    """The claims in a checkpoint document; raises :class:`CheckpointFormatError`."""
    return decode_document(document, SCHEMA_VERSION, MIGRATIONS).claims
