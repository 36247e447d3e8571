"""The checkpoint's file format, pure: values <-> JSON documents, schema versions and migrations.

File format (JSON, camelCase): ``{"version": 1, "bootId": …, "claims": {"<uid>": {"namespace", "name",
"state", "cdiSpec", "devices": [{"request", "pool", "device", "cdiDeviceIds", "adminAccess", "shareId"}]}}}``.

Older files are brought forward by :data:`MIGRATIONS`. A file from a newer gpudra is read for the fields this
code knows; its version and unknown fields (top level, per claim, per device) are kept in :class:`Extras` and
written back unchanged, so a rollback never strips what the newer version recorded.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Final, Literal, cast

log = logging.getLogger("gpudra.checkpoint")

SCHEMA_VERSION: Final = 1

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
