"""The mutable MIG state of a fake NVML node, and the JSON file that keeps it across plugin processes.

Real MIG instances are hardware state: they outlive the process that created them, until the GPU is reset
or the node reboots. A :class:`MigState` holds what the fake's calls changed on top of the profile, per GPU
(keyed by its UUID; ``#<index>`` for a GPU whose UUID is unknown or not unique in the profile): the MIG mode
set by ``nvmlDeviceSetMigMode``, the pre-made MIG instances of the profile that were destroyed, the GPU and
compute instances created, and the processes a test made run on an instance. It is immutable; every change
makes a new one.

:class:`MigStateStore` keeps it in memory, or in a JSON file written atomically after every change, so a
mock node killed with ``kill -9`` and started again sees the instances it left behind. A missing file is
fresh hardware; a file that does not parse raises :class:`~gpudra.vendors.mock.profile.ProfileError` naming
it and the bad key. Format (version 1)::

    {"version": 1,
     "serial": 12,                    # instances created so far on this node: every UUID and handle is new
     "gpus": {"GPU-0b10...": {
        "basis": [0, 0],              # the profile's mig_mode when this entry was made (an edit of the
                                      # profile's mig_mode is a hardware change: the entry restarts)
        "mode": [1, 1],               # [current, pending] set by nvmlDeviceSetMigMode; null = the profile's
        "wiped": false,               # every pre-made instance is gone (a mode switch or a GPU reset)
        "destroyed_gpu_instances": [2], "destroyed_compute_instances": [[2, 0]],   # pre-made, by id
        "gpu_instances": [{"id": 1, "profile_id": 9, "placement": {"start": 0, "size": 4}, "serial": 3}],
        "compute_instances": [{"gpu_instance": 1, "id": 0, "profile_id": 2,
                               "placement": {"start": 0, "size": 3}, "uuid": "MIG-...", "serial": 4}],
        "processes": [{"gpu_instance": 1, "compute_instance": 0, "count": 1}]}}}   # null CI: the GI itself
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from gpudra.fsutil import atomic_write
from gpudra.vendors.mock.profile import ProfileError
from gpudra.vendors.mock.profile_json import Invalid, int_list, obj, opt, req
from gpudra.vendors.mock.profile_mig import Placement

STATE_VERSION: Final = 1
_TOP_KEYS: Final = frozenset({"version", "serial", "gpus"})
_GPU_KEYS: Final = frozenset(
    {
        "basis", "mode", "wiped", "destroyed_gpu_instances", "destroyed_compute_instances", "gpu_instances",
        "compute_instances", "processes",
    }
)  # fmt: skip
_GI_KEYS: Final = frozenset({"id", "profile_id", "placement", "serial"})
_CI_KEYS: Final = frozenset({"gpu_instance", "id", "profile_id", "placement", "uuid", "serial"})
_BUSY_KEYS: Final = frozenset({"gpu_instance", "compute_instance", "count"})

#: Where processes run: (GPU instance id, compute instance id or None for the GPU instance itself).
InstanceKey = tuple[int, int | None]


@dataclass(frozen=True, slots=True)
class CreatedGi:
    """A GPU instance the fake created. ``serial`` tells it from an earlier one with the same id."""

    id: int
    profile_id: int
    placement: Placement  # memory slices
    serial: int


@dataclass(frozen=True, slots=True)
class CreatedCi:
    """A compute instance the fake created, in GPU instance ``gi_id`` (pre-made or created)."""

    gi_id: int
    id: int
    profile_id: int
    placement: Placement  # compute slices within the GPU instance
    uuid: str
    serial: int


@dataclass(frozen=True, slots=True)
class GpuMigState:
    """What the fake's calls changed on one GPU, on top of its profile."""

    basis: tuple[int, int] | None  # the profile's mig_mode this entry was made against
    mode: tuple[int, int] | None = None  # [current, pending] set by nvmlDeviceSetMigMode; None: the profile's
    wiped: bool = False  # every pre-made instance is gone
    destroyed_gis: frozenset[int] = frozenset()  # pre-made GPU instances destroyed
    destroyed_cis: frozenset[tuple[int, int]] = frozenset()  # pre-made (GI id, CI id) destroyed
    gis: tuple[CreatedGi, ...] = ()  # in creation order
    cis: tuple[CreatedCi, ...] = ()  # in creation order: the MIG device order after the pre-made ones
    processes: Mapping[InstanceKey, int] = field(default_factory=dict)  # only counts > 0

    def is_empty(self) -> bool:
        return self.mode is None and not (self.wiped or self.destroyed_gis or self.destroyed_cis or self.gis
                                          or self.cis or self.processes)  # fmt: skip


@dataclass(frozen=True, slots=True)
class MigState:
    """The whole node's MIG changes: per GPU key, and the creation counter."""

    gpus: Mapping[str, GpuMigState] = field(default_factory=dict)
    serial: int = 0  # instances created so far (never goes back: UUIDs and handles are never reused)

    def with_gpu(self, key: str, gpu: GpuMigState | None) -> MigState:
        """This state with ``key``'s entry replaced (``None`` or an empty entry: removed)."""
        gpus = {k: v for k, v in self.gpus.items() if k != key}
        if gpu is not None and not gpu.is_empty():
            gpus[key] = gpu
        return MigState(gpus=gpus, serial=self.serial)


class MigStateStore:
    """Where a node's :class:`MigState` lives: memory only, or also a JSON file (see the module docstring)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.lock = threading.RLock()  # held by the fake across check, save and swap of a change

    def load(self) -> MigState:
        """The saved state; a fresh one without a file or when the file does not exist yet."""
        if self.path is None:
            return MigState()
        try:
            text = self.path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            # no state yet; a directory that is a file is the plugin's start-up check to report, and a
            # later save says it too
            return MigState()
        except (OSError, UnicodeDecodeError) as err:
            raise ProfileError(f"cannot read MIG state file {str(self.path)!r}: {err}") from err
        try:
            return decode(json.loads(text))
        except json.JSONDecodeError as err:
            raise ProfileError(f"MIG state file {str(self.path)!r}: not valid JSON: {err}") from err
        except Invalid as err:
            raise ProfileError(f"MIG state file {str(self.path)!r}: {err}") from None

    def save(self, state: MigState) -> None:
        """Write ``state`` atomically (nothing to do without a file); ``OSError`` when it cannot be."""
        if self.path is not None:
            text = json.dumps(encode(state), indent=1, sort_keys=True) + "\n"
            atomic_write(self.path, text.encode(), mode=0o644)


# -- JSON -------------------------------------------------------------------------------------------------
def encode(state: MigState) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "serial": state.serial,
        "gpus": {key: _encode_gpu(gpu) for key, gpu in sorted(state.gpus.items())},
    }


def _encode_gpu(gpu: GpuMigState) -> dict[str, Any]:
    return {
        "basis": list(gpu.basis) if gpu.basis is not None else None,
        "mode": list(gpu.mode) if gpu.mode is not None else None,
        "wiped": gpu.wiped,
        "destroyed_gpu_instances": sorted(gpu.destroyed_gis),
        "destroyed_compute_instances": [list(pair) for pair in sorted(gpu.destroyed_cis)],
        "gpu_instances": [
            {"id": g.id, "profile_id": g.profile_id, "placement": _place(g.placement), "serial": g.serial}
            for g in gpu.gis
        ],
        "compute_instances": [
            {
                "gpu_instance": c.gi_id,
                "id": c.id,
                "profile_id": c.profile_id,
                "placement": _place(c.placement),
                "uuid": c.uuid,
                "serial": c.serial,
            }
            for c in gpu.cis
        ],
        "processes": [
            {"gpu_instance": gi, "compute_instance": ci, "count": n}
            for (gi, ci), n in sorted(gpu.processes.items(), key=lambda kv: (kv[0][0], _ci_order(kv[0][1])))
        ],
    }


def _ci_order(ci: int | None) -> int:
    return -1 if ci is None else ci


def _place(placement: Placement) -> dict[str, int]:
    return {"start": placement.start, "size": placement.size}


def decode(raw: object) -> MigState:
    """A :class:`MigState` from parsed JSON; :class:`Invalid` naming the bad key otherwise."""
    top = obj(raw, "", _TOP_KEYS)
    version = req(top, "version", int, "")
    if version != STATE_VERSION:
        raise Invalid(f"version: {version} is not a version this fake reads ({STATE_VERSION})")
    gpus = top.get("gpus")
    if not isinstance(gpus, dict):
        raise Invalid("gpus: required, an object mapping GPU keys to their MIG state")
    return MigState(
        gpus={str(key): _decode_gpu(value, f"gpus[{key!r}]") for key, value in gpus.items()},
        serial=_count(top, "serial", ""),
    )


def _decode_gpu(value: object, where: str) -> GpuMigState:
    raw = obj(value, where, _GPU_KEYS)
    wiped = raw.get("wiped", False)
    if not isinstance(wiped, bool):
        raise Invalid(f"{where}.wiped: expected true or false, got {wiped!r}")
    gis, cis = _list(raw, "gpu_instances", where), _list(raw, "compute_instances", where)
    return GpuMigState(
        basis=_pair(raw.get("basis"), f"{where}.basis"),
        mode=_pair(raw.get("mode"), f"{where}.mode"),
        wiped=wiped,
        destroyed_gis=frozenset(
            _ints(raw.get("destroyed_gpu_instances"), f"{where}.destroyed_gpu_instances")
        ),
        destroyed_cis=frozenset(
            _pairs(raw.get("destroyed_compute_instances"), f"{where}.destroyed_compute_instances")
        ),
        gis=tuple(_gi(v, f"{where}.gpu_instances[{i}]") for i, v in enumerate(gis)),
        cis=tuple(_ci(v, f"{where}.compute_instances[{i}]") for i, v in enumerate(cis)),
        processes=_processes(_list(raw, "processes", where), f"{where}.processes"),
    )


def _gi(value: object, where: str) -> CreatedGi:
    raw = obj(value, where, _GI_KEYS)
    return CreatedGi(
        id=_count(raw, "id", where), profile_id=_count(raw, "profile_id", where),
        placement=_placement(raw.get("placement"), f"{where}.placement"), serial=_count(raw, "serial", where),
    )  # fmt: skip


def _ci(value: object, where: str) -> CreatedCi:
    raw = obj(value, where, _CI_KEYS)
    return CreatedCi(
        gi_id=_count(raw, "gpu_instance", where), id=_count(raw, "id", where),
        profile_id=_count(raw, "profile_id", where),
        placement=_placement(raw.get("placement"), f"{where}.placement"),
        uuid=req(raw, "uuid", str, where), serial=_count(raw, "serial", where),
    )  # fmt: skip


def _processes(items: list[Any], where: str) -> dict[InstanceKey, int]:
    out: dict[InstanceKey, int] = {}
    for i, item in enumerate(items):
        raw = obj(item, f"{where}[{i}]", _BUSY_KEYS)
        ci = opt(raw, "compute_instance", int, f"{where}[{i}]")
        count = _count(raw, "count", f"{where}[{i}]")
        if count:
            out[(_count(raw, "gpu_instance", f"{where}[{i}]"), ci)] = count
    return out


def _placement(value: object, where: str) -> Placement:
    raw = obj(value, where, frozenset({"start", "size"}))
    return Placement(_count(raw, "start", where), _count(raw, "size", where))


def _count(raw: dict[str, Any], key: str, where: str) -> int:
    value = req(raw, key, int, where)
    if value < 0:
        raise Invalid(f"{where}.{key}: must not be negative, got {value}")
    return value


def _list(raw: dict[str, Any], key: str, where: str) -> list[Any]:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(f"{where}.{key}: expected a list")
    return value


def _pair(value: object, where: str) -> tuple[int, int] | None:
    pair = int_list(value, where, length=2)
    return (pair[0], pair[1]) if pair is not None else None


def _ints(value: object, where: str) -> tuple[int, ...]:
    return int_list(value, where) or ()


def _pairs(value: object, where: str) -> list[tuple[int, int]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise Invalid(f"{where}: expected a list of [GPU instance id, compute instance id] pairs")
    pairs: list[tuple[int, int]] = []
    for i, item in enumerate(value):
        pair = _pair(item, f"{where}[{i}]")
        if pair is None:
            raise Invalid(f"{where}[{i}]: expected [GPU instance id, compute instance id]")
        pairs.append(pair)
    return pairs
