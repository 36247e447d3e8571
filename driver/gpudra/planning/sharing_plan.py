"""What sharing asks of the node for one claim (pure): settings per GPU, the claim's MPS daemon, or why not.

From a claim's devices as prepare planned them (:class:`~gpudra.planning.plan.DeviceToPrepare`: the device,
its decoded ``GpuConfig`` / ``MigDeviceConfig`` (:mod:`gpudra.planning.sharing_config`), its ``shareID`` and
``consumedCapacity``), :func:`plan_sharing` decides:

- **Fractional shares** (KEP-5075): a device allocated with a share of its ``memory`` smaller than all of it
  is enforced with MPS, whatever the config says: the claim's MPS daemon limits each client's pinned device
  memory to the share and its active threads to ``ceil(100 * share / memory)`` percent. An ``MpsConfig`` may
  only lower both (the smaller value wins); strategy ``TimeSlicing`` cannot enforce a share and is an error.
  A share of all the memory (the request policy's default: a claim that asks for no memory) is the whole
  device, exclusive in effect, and is not limited.
- **Which config**: ``GpuConfig`` governs an NVIDIA GPU, ``MigDeviceConfig`` a MIG device (both may apply
  to a request that can get either); sharing settings only in a config of the other kind are an error.
- **TimeSlicing** on a full GPU: the GPU's time-slice interval (``Default`` included) and compute mode
  ``DEFAULT``. A MIG device has no interval of its own (NVIDIA sets none on MIG): nothing is set.
- **MPS**: one daemon per claim, serving every device of the claim that uses MPS, with the config's limits.
  A full GPU gets compute mode ``EXCLUSIVE_PROCESS`` when the claim's daemon owns it whole (no other claim
  can be on it), ``DEFAULT`` when it is shared (a share, or ``adminAccess``). Compute modes are per GPU, so
  none is set for a MIG device.
- **Other vendors** (AMD): nothing is set. Sharing a GPU by time (``TimeSlicing``, interval ``Default``) is
  what the GPU does anyway and is accepted; ``MPS`` or another interval is an error; a share is accepted
  but not enforced (ROCm has no per-process VRAM limit: docs/sharing.md).

Settings are per GPU and other claims may hold the same GPU (shares, ``adminAccess``): :func:`conflict`
tells when the settings a claim wants contradict those other claims hold (another interval; a GPU one
claim's MPS daemon holds exclusively). Errors are per claim and name the device and the field.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from fractions import Fraction
from typing import Final

from gpudra.model.inventory import DeviceKind, Vendor
from gpudra.planning.configfields import ConfigFieldError
from gpudra.planning.fractional import MIB, SHARED_CAPACITY
from gpudra.planning.plan import DeviceToPrepare
from gpudra.planning.sharing_config import (
    GPU_CONFIG,
    MIG_DEVICE_CONFIG,
    GpuConfig,
    Interval,
    MigDeviceConfig,
    MpsConfig,
    Sharing,
    Strategy,
)

TIMESLICE: Final = "timeslice"
COMPUTE_MODE: Final = "compute-mode"


class ComputeMode(IntEnum):
    """The NVML compute modes gpudra sets (``nvmlComputeMode_t`` values)."""

    DEFAULT = 0
    EXCLUSIVE_PROCESS = 3


class SharingError(ValueError):
    """The claim's sharing cannot be done; the message names the device and the field."""


@dataclass(frozen=True, slots=True)
class GpuSetting:
    """A setting of a whole GPU that a claim needs while it is prepared."""

    gpu: str  # the GPU's UUID
    name: str  # TIMESLICE (value: Interval.level) | COMPUTE_MODE (value: ComputeMode)
    value: int
    device: str = ""  # the claim's device it is for (messages)

    def shown(self) -> str:
        return shown(self.name, self.value)


@dataclass(frozen=True, slots=True)
class MpsDevice:
    """A device the claim's MPS daemon serves, and the pinned-memory limit of each of its clients there."""

    device: str  # published name
    uuid: str  # "" for a MIG device created at prepare (its UUID is known once it exists)
    pinned_memory_limit: int | None = None  # bytes, whole MiB


@dataclass(frozen=True, slots=True)
class MpsPlan:
    devices: tuple[MpsDevice, ...]
    active_thread_percentage: int | None = None  # 1..100; None: MPS's default (100)


@dataclass(frozen=True, slots=True)
class SharingPlan:
    settings: tuple[GpuSetting, ...] = ()
    mps: MpsPlan | None = None

    @property
    def empty(self) -> bool:
        return not self.settings and self.mps is None


def shown(name: str, value: int) -> str:
    """A setting's value as users write it (``Long``, ``EXCLUSIVE_PROCESS``)."""
    if name == TIMESLICE:
        return list(Interval)[value].value if 0 <= value < len(Interval) else str(value)
    try:
        return ComputeMode(value).name
    except ValueError:
        return str(value)


@dataclass(frozen=True, slots=True)
class _Chosen:
    kind: str  # GpuConfig | MigDeviceConfig
    sharing: Sharing


@dataclass(frozen=True, slots=True)
class _MpsUse:
    device: DeviceToPrepare
    share: int | None  # bytes of a fractional share
    config: _Chosen | None  # the MPS config it came with


def plan_sharing(devices: Sequence[DeviceToPrepare]) -> SharingPlan:
    """What the claim's devices need; raises :class:`SharingError` naming the device and field."""
    settings: dict[tuple[str, str], GpuSetting] = {}
    mps: list[_MpsUse] = []
    for d in devices:
        share = fractional_share(d)
        chosen = _effective(d)
        if d.device.vendor is not Vendor.NVIDIA:
            _check_other_vendor(d, chosen)
            continue
        whole_gpu = d.device.kind is DeviceKind.GPU
        if share is not None:
            if chosen is not None and chosen.sharing.strategy is Strategy.TIME_SLICING:
                raise SharingError(
                    f"device {d.name}: {chosen.kind} sharing.strategy TimeSlicing cannot enforce the share "
                    f"this claim was allocated ({_bytes(share)} of {_bytes(_total(d))}); use strategy MPS "
                    "or leave the sharing config out (a share is enforced with MPS)"
                )
            mps.append(_MpsUse(d, share, chosen))
            if whole_gpu:
                _add(settings, GpuSetting(d.device.uuid, COMPUTE_MODE, ComputeMode.DEFAULT, d.name))
        elif chosen is None:
            continue
        elif chosen.sharing.strategy is Strategy.TIME_SLICING:
            if whole_gpu:
                ts = chosen.sharing.time_slicing
                level = (ts.interval if ts is not None else Interval.DEFAULT).level
                _add(settings, GpuSetting(d.device.uuid, TIMESLICE, level, d.name))
                _add(settings, GpuSetting(d.device.uuid, COMPUTE_MODE, ComputeMode.DEFAULT, d.name))
        else:
            mps.append(_MpsUse(d, None, chosen))
            if whole_gpu:
                mode = ComputeMode.DEFAULT if d.admin_access or d.share_id else ComputeMode.EXCLUSIVE_PROCESS
                _add(settings, GpuSetting(d.device.uuid, COMPUTE_MODE, mode, d.name))
    return SharingPlan(tuple(settings.values()), _mps_plan(mps))


def fractional_share(d: DeviceToPrepare) -> int | None:
    """The bytes of ``d``'s memory its allocation consumed, when that is less than all of it (a share to
    enforce); None when it consumed all of it or does not say. Raises :class:`SharingError` for a share the
    device cannot give."""
    consumed = d.consumed(SHARED_CAPACITY)
    if consumed is None:
        return None
    where = f"{d.path}.consumedCapacity[{SHARED_CAPACITY}]".removeprefix(".")
    total = d.device.memory_bytes
    if total is None:
        raise SharingError(f"{where}: device {d.name} does not report its memory: no share can be given")
    if consumed > total:
        raise SharingError(
            f"{where}: {_exact(consumed)} is more than device {d.name} has ({_bytes(total)}); "
            "the device cannot give this share"
        )
    if consumed <= 0 or consumed.denominator != 1 or consumed % MIB:
        raise SharingError(
            f"{where}: {_exact(consumed)} is not a positive whole number of MiB (MPS limits memory in MiB)"
        )
    return int(consumed) if consumed < total else None


def conflict(wanted: Iterable[GpuSetting], held: Iterable[GpuSetting]) -> str | None:
    """Why the settings a claim wants contradict those other claims hold now, or None."""
    mine = {(s.gpu, s.name): s for s in wanted}
    if not mine:
        return None
    for other in held:
        want = mine.get((other.gpu, other.name))
        if want is None:
            continue
        if want.name == TIMESLICE and want.value != other.value:
            return (
                f"GPU {want.gpu}: another claim prepared on it set the time-slice interval {other.shown()}, "
                f"device {want.device} of this claim asks for {want.shown()}; a GPU has one interval (ask "
                "for the same one, or wait until that claim is unprepared)"
            )
        if want.name == COMPUTE_MODE and ComputeMode.EXCLUSIVE_PROCESS in (want.value, other.value):
            if other.value == ComputeMode.EXCLUSIVE_PROCESS:
                return (
                    f"GPU {want.gpu}: another claim's MPS daemon holds it exclusively (compute mode "
                    f"EXCLUSIVE_PROCESS), so device {want.device} of this claim cannot use it as well"
                )
            return (
                f"GPU {want.gpu}: the MPS daemon of this claim would hold it exclusively (compute mode "
                "EXCLUSIVE_PROCESS), but another claim prepared on it uses it too (compute mode DEFAULT)"
            )
    return None


# ---- which config applies ------------------------------------------------------------------------------


def _effective(d: DeviceToPrepare) -> _Chosen | None:
    """The sharing config of ``d``; None without sharing settings. Each kind governs the devices of its
    own type (``GpuConfig`` an NVIDIA GPU, ``MigDeviceConfig`` a MIG device): a config of the other kind
    with sharing settings, and no config of the device's own kind, is an error. Other vendors have no kind
    of their own: whichever applies is checked by :func:`_check_other_vendor`."""
    gpu = next((c for c in d.configs if isinstance(c, GpuConfig)), None)
    mig = next((c for c in d.configs if isinstance(c, MigDeviceConfig)), None)
    if d.device.vendor is not Vendor.NVIDIA:
        found = [(k, c.sharing) for k, c in ((GPU_CONFIG, gpu), (MIG_DEVICE_CONFIG, mig))
                 if c is not None and c.sharing is not None]  # fmt: skip
        return _Chosen(*found[0]) if found else None
    is_mig = d.device.kind is DeviceKind.MIG
    own_kind, own = (MIG_DEVICE_CONFIG, mig) if is_mig else (GPU_CONFIG, gpu)
    other_kind, other = (GPU_CONFIG, gpu) if is_mig else (MIG_DEVICE_CONFIG, mig)
    if own is not None:
        return None if own.sharing is None else _Chosen(own_kind, own.sharing)
    if other is None or other.sharing is None:
        return None
    interval = _interval(_Chosen(other_kind, other.sharing))
    what = "a MIG device" if is_mig else "a GPU"
    if is_mig and interval is not Interval.DEFAULT:
        raise SharingError(
            f"device {d.name} is {what}: {other_kind} sharing.timeSlicingConfig.interval {interval.value} "
            "cannot be set on it (the time-slice interval is a setting of a whole GPU)"
        )
    raise SharingError(
        f"device {d.name} is {what}: its sharing settings must be in a {own_kind} ({other_kind} is for "
        f"{'GPUs' if is_mig else 'MIG devices'}; a request that may get either can carry both kinds)"
    )


def _interval(chosen: _Chosen) -> Interval:
    ts = chosen.sharing.time_slicing
    return ts.interval if ts is not None else Interval.DEFAULT


def _check_other_vendor(d: DeviceToPrepare, chosen: _Chosen | None) -> None:
    if chosen is None:
        return
    vendor = d.device.vendor.value.upper()
    if chosen.sharing.strategy is Strategy.MPS:
        raise SharingError(
            f"device {d.name} is an {vendor} GPU: {chosen.kind} sharing.strategy MPS is NVIDIA's "
            "Multi-Process Service and cannot apply to it"
        )
    interval = _interval(chosen)
    if interval is not Interval.DEFAULT:
        raise SharingError(
            f"device {d.name} is an {vendor} GPU: {chosen.kind} sharing.timeSlicingConfig.interval "
            f"{interval.value} has no equivalent there (only Default: processes share it by time anyway)"
        )


def _add(settings: dict[tuple[str, str], GpuSetting], setting: GpuSetting) -> None:
    key = (setting.gpu, setting.name)
    held = settings.get(key)
    if held is None:
        settings[key] = setting
    elif held.value != setting.value:
        raise SharingError(
            f"devices {held.device} and {setting.device} of this claim are on GPU {setting.gpu} and need "
            f"its {setting.name} to be both {held.shown()} and {setting.shown()}"
        )


# ---- the claim's MPS daemon ------------------------------------------------------------------------------


def _mps_plan(uses: Sequence[_MpsUse]) -> MpsPlan | None:
    if not uses:
        return None
    explicit = _explicit_limits(uses)
    devices, percentages = [], []
    for use in uses:
        d, mps = use.device, _mps_config(use.config)
        limit = explicit.get(d.name)
        if use.share is not None:
            limit = use.share if limit is None else min(limit, use.share)
            percentages.append(max(1, math.ceil(100 * use.share / _total(d))))
        if mps is not None and mps.default_active_thread_percentage is not None:
            percentages.append(mps.default_active_thread_percentage)
        devices.append(MpsDevice(d.name, "" if d.device.created_at_prepare else d.device.uuid, limit))
    return MpsPlan(tuple(devices), min(percentages) if percentages else None)


def _mps_config(chosen: _Chosen | None) -> MpsConfig | None:
    return chosen.sharing.mps if chosen is not None else None


def _explicit_limits(uses: Sequence[_MpsUse]) -> dict[str, int]:
    """Each device's pinned-memory limit from its MpsConfig. A config's per-device entries name devices by
    index or UUID among the devices that config applies to, in the claim's order."""
    groups: dict[int, tuple[_Chosen, MpsConfig, list[DeviceToPrepare]]] = {}
    for use in uses:
        mps = _mps_config(use.config)
        if use.config is not None and mps is not None:
            groups.setdefault(id(mps), (use.config, mps, []))[2].append(use.device)
    out: dict[str, int] = {}
    for chosen, mps, members in groups.values():
        # A MIG device made at prepare has no UUID yet: a stand-in no per-device key can name.
        uuids = [m.device.uuid or f"#{i}" for i, m in enumerate(members)]
        try:
            limits = mps.pinned_memory_limits(uuids)
        except ConfigFieldError as e:
            raise SharingError(f"{chosen.kind} {e.path}: {e.problem}") from e
        for uuid, member in zip(uuids, members, strict=True):
            if uuid in limits:
                out[member.name] = limits[uuid]
    return out


def _total(d: DeviceToPrepare) -> int:
    return d.device.memory_bytes or 0


def _bytes(n: int) -> str:
    return f"{n} bytes, {n / 2**30:.2f} GiB"


def _exact(value: Fraction) -> str:
    return f"{value} bytes" if value.denominator != 1 else _bytes(int(value))
