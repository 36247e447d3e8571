"""The checkpoint's file format, pure: values <-> JSON, schema versions and migrations.

Version 3 (current) is a log of JSON lines, camelCase:

- line 1, the snapshot: ``{"version": 3, "bootId": …, "claims": {"<uid>": {"namespace", "name", "state",
  "cdiSpec", "devices": [{"request", "pool", "device", "cdiDeviceIds", "adminAccess", "shareId"}],
  "applied": {"changes": [{"kind", "device", "params": {…}}], "createdDevices": […]}}}}``, where
  ``applied`` (what the vendor driver changed on the node for the claim, see :mod:`gpudra.model.applied`)
  is left out when nothing was changed;
- then one line per change: ``{"put": "<uid>", "claim": {…same entry…}}`` or ``{"del": "<uid>"}``.

Version 2 had no ``applied``: a version-2 claim changed nothing, so the migration is the identity. A version-2
plugin reading a version-3 file (a rollback) keeps ``applied`` as an unknown field and writes it back.

A change costs one small append instead of rewriting every claim held; the store compacts the log back into a
snapshot from time to time (:func:`needs_compaction`). Only ``\n``-terminated lines count: a torn last line
(a crash in the middle of an append) is not part of the checkpoint and is cut off by the next writer.
Version 1 was the snapshot line alone, so a version-1 file is a version-2 log without changes. The other
way round does not hold: a version-1 plugin reads a log with change lines as corrupt and moves it aside.
During a rolling update from version 1 the kubelet sends its calls to the newer instance once it has
registered, so the old one should not touch the file; if it does, the move is logged and raised as a Node
Event, not silent.

Older files are brought forward by :data:`MIGRATIONS`. A file from a newer gpudra is read for the fields this
code knows; its version and unknown fields (top level, per claim, per device) are kept in :class:`Extras` and
written back unchanged, so a rollback never strips what the newer version recorded.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal, cast

from gpudra.model.applied import NOTHING_APPLIED, AppliedState
from gpudra.state.checkpoint_applied import AppliedFormatError, decode_applied, encode_applied

log = logging.getLogger("gpudra.state.checkpoint")

SCHEMA_VERSION: Final = 3

ClaimState = Literal["PrepareStarted", "PrepareCompleted"]
PREPARE_STARTED: Final = "PrepareStarted"
PREPARE_COMPLETED: Final = "PrepareCompleted"

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

#: The log is compacted when it holds more change lines than this plus twice the claims held.
COMPACTION_SLACK: Final = 64

_CLAIM_KEYS: Final = frozenset({"namespace", "name", "state", "devices", "cdiSpec", "applied"})
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
    applied: AppliedState = NOTHING_APPLIED  # what the vendor driver changed on the node for the claim


class CheckpointFormatError(ValueError):
    """The document is not a checkpoint this code can read (bad JSON, wrong shape, missing migration)."""


_DeviceKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class Extras:
    """Fields of one claim entry (and its devices) that this code does not know, kept for the round trip."""

    claim: Mapping[str, Any] = field(default_factory=dict)
    devices: Mapping[_DeviceKey, Mapping[str, Any]] = field(default_factory=dict)
    state: str | None = None  # a state only a newer version knows (read as PrepareStarted) ...
    as_read: ClaimRecord | None = None  # ... kept while the record stays exactly as it was read


@dataclass(frozen=True, slots=True)
class Content:
    version: int
    boot_id: str | None
    claims: dict[str, ClaimRecord] = field(default_factory=dict)
    extras: Mapping[str, Extras] = field(default_factory=dict)
    top: Mapping[str, Any] = field(default_factory=dict)
    dirty: bool = False  # memory differs from the file although no claim changed (reset, migration)
    rebooted: bool = False
    changes: int = 0  # change lines after the snapshot line


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


def _decode_claim(uid: str, raw: object, newer: bool) -> tuple[ClaimRecord, Extras]:
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


def decode_document(doc: object, known: int, migrations: Mapping[int, Migration]) -> Content:
    if not isinstance(doc, dict):
        raise CheckpointFormatError("checkpoint: expected a JSON object")
    doc, migrated = _migrate(doc, known, migrations)
    version: int = doc["version"]
    raw_claims = _need(doc, "claims", dict, "checkpoint")
    claims: dict[str, ClaimRecord] = {}
    extras: dict[str, Extras] = {}
    for uid, raw in raw_claims.items():
        claims[uid], extras[uid] = _decode_claim(uid, raw, newer=version > known)
    return Content(
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


NO_EXTRAS = Extras()


def _encode_content(content: Content) -> dict[str, Any]:
    claims: dict[str, Any] = {}
    for uid in sorted(content.claims):
        record = content.claims[uid]
        if record.uid != uid:
            raise ValueError(f"checkpoint: claim {record.uid} stored under the key {uid}")
        claims[uid] = encode_claim(record, content.extras.get(uid, Extras()))
    return {"version": content.version, "bootId": content.boot_id, "claims": claims, **content.top}


def encode(claims: Mapping[str, ClaimRecord], boot_id: str | None) -> dict[str, Any]:
    """The JSON document (current schema) for ``claims``."""
    return _encode_content(Content(version=SCHEMA_VERSION, boot_id=boot_id, claims=dict(claims)))


def decode(document: object) -> dict[str, ClaimRecord]:
    """The claims in a checkpoint document; raises :class:`CheckpointFormatError`."""
    return decode_document(document, SCHEMA_VERSION, MIGRATIONS).claims


# ---- version 2: the log ----------------------------------------------------------------------------------


def _json_line(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode() + b"\n"


def encode_put(record: ClaimRecord, extras: Extras = NO_EXTRAS) -> bytes:
    """The change line recording ``record`` (added or replaced)."""
    return _json_line({"put": record.uid, "claim": encode_claim(record, extras)})


def encode_delete(uid: str) -> bytes:
    """The change line recording that claim ``uid`` is gone."""
    return _json_line({"del": uid})


def needs_compaction(content: Content) -> bool:
    """Whether the next write should rewrite the snapshot instead of appending (keeps the log O(claims))."""
    return content.changes > COMPACTION_SLACK + 2 * len(content.claims)


def _apply_line(
    claims: dict[str, ClaimRecord], extras: dict[str, Extras], raw: bytes, newer: bool, where: str
) -> None:
    try:
        change = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointFormatError(f"{where}: not JSON: {exc}") from exc
    if isinstance(change, dict) and isinstance(change.get("put"), str):
        uid: str = change["put"]
        claims[uid], extras[uid] = _decode_claim(uid, change.get("claim"), newer)
    elif isinstance(change, dict) and isinstance(change.get("del"), str):
        claims.pop(change["del"], None)
        extras.pop(change["del"], None)
    elif newer:  # a change only a newer gpudra knows: keep reading what this version understands
        log.warning("checkpoint: %s is a change unknown to this version; ignoring it", where)
    else:
        raise CheckpointFormatError(f"{where}: expected a put or del change, got {raw[:80]!r}")


def apply_changes(content: Content, data: bytes, known: int = SCHEMA_VERSION) -> tuple[Content, int]:
    """``content`` with the complete change lines at the start of ``data`` applied, and how many bytes they
    took. A last line without its newline (a torn append) is left unread. ``content`` is not modified."""
    end = data.rfind(b"\n") + 1
    if end == 0:
        return content, 0
    claims, extras = dict(content.claims), dict(content.extras)
    lines = data[:end].split(b"\n")[:-1]
    newer = content.version > known
    for number, raw in enumerate(lines, start=content.changes + 2):
        _apply_line(claims, extras, raw, newer, f"line {number}")
    applied = replace(content, claims=claims, extras=extras, changes=content.changes + len(lines))
    return applied, end


def decode_log(data: bytes, known: int, migrations: Mapping[int, Migration]) -> tuple[Content, int]:
    """A whole checkpoint file: the snapshot line, then its changes. Returns the content and the bytes read
    (everything but a torn last line). A version-1 file is one document, possibly not on one line."""
    first = data.find(b"\n")
    head = data if first < 0 else data[:first]
    try:
        doc = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        try:
            doc, first = json.loads(data), len(data) - 1  # a hand-written single document
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointFormatError(f"not JSON: {exc}") from exc
    if first < 0:
        first = len(data) - 1
    content = decode_document(doc, known, migrations)
    changes, used = apply_changes(content, data[first + 1 :], known)
    return changes, first + 1 + used


def load_document(data: bytes) -> dict[str, Any]:
    """A checkpoint file as one version-2 snapshot document (changes applied): for tools and tests."""
    content, _ = decode_log(data, SCHEMA_VERSION, MIGRATIONS)
    return _encode_content(content)


#: Each claim's JSON fragment in the last snapshot, with the record and extras it encodes.
Fragments = dict[str, tuple[ClaimRecord, Extras, bytes]]


def encode_snapshot(content: Content, memo: Fragments) -> tuple[bytes, Fragments]:
    """The snapshot line for ``content``, and the fragments to pass next time: a claim that has not changed
    since ``memo`` is not encoded again, so a compaction costs the claims that changed."""
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
            fragment = json.dumps(encode_claim(record, extras), separators=(",", ":")).encode()
        fragments[uid] = (record, extras, fragment)
        parts.append(json.dumps(uid).encode() + b":" + fragment)
    head = json.dumps(
        {"version": content.version, "bootId": content.boot_id, **content.top}, separators=(",", ":")
    ).encode()  # never empty: "version" is always there
    return head[:-1] + b',"claims":{' + b",".join(parts) + b"}}\n", fragments
