"""The sharing config API ``gpudra.io/v1alpha1``: kinds ``GpuConfig`` and ``MigDeviceConfig`` (pure).

A claim or DeviceClass carries them as opaque config for driver ``gpudra.io``; :mod:`gpudra.planning.config`
routes each to the decoder of its kind here. Field names and meanings follow NVIDIA's
``resource.nvidia.com/v1beta1`` ``GpuConfig``/``MigDeviceConfig`` so a migration is a rename
(docs/sharing-config.md has the table)::

    apiVersion: gpudra.io/v1alpha1
    kind: GpuConfig                       # NVIDIA full GPU; MigDeviceConfig for a MIG device
    sharing:                              # absent: no sharing settings
      strategy: TimeSlicing               # or MPS (required)
      timeSlicingConfig: {interval: Long} # TimeSlicing on a full GPU only; interval Default when absent
      mpsConfig:                          # MPS only; every field optional
        defaultActiveThreadPercentage: 50                 # 1..100
        defaultPinnedDeviceMemoryLimit: 10Gi              # 1Mi..8Ei, a multiple of 1Mi
        defaultPerDevicePinnedMemoryLimit: {"0": 4Gi}     # device index 0-31 or GPU-/MIG- UUID -> limit

Decoding is strict and checks in a fixed order, stopping at the first problem, which it names by path
(``sharing.mpsConfig.defaultActiveThreadPercentage: 150 is out of range 1-100``). The
ValidatingAdmissionPolicy in ``deviceclasses/sharing-policy.yaml`` checks the same things in the same order
with the same texts.
Defaults are made explicit: ``strategy: TimeSlicing`` on a full GPU decodes with interval ``Default``,
``strategy: MPS`` with an empty :class:`MpsConfig`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from gpudra.planning import configfields as cf
from gpudra.planning.configfields import ConfigFieldError, JsonObject

API_VERSION: Final = "gpudra.io/v1alpha1"
GPU_CONFIG: Final = "GpuConfig"
MIG_DEVICE_CONFIG: Final = "MigDeviceConfig"

THREAD_PERCENTAGE_RANGE: Final = (1, 100)
PINNED_MEMORY_UNIT: Final = 2**20  # MPS takes pinned memory limits in whole MiB ("<n>M")
MAX_PER_DEVICE_LIMITS: Final = 32  # a claim has at most 32 allocated devices
DEVICE_KEY: Final = re.compile(
    r"^([0-9]|[12][0-9]|3[01]|(GPU|MIG)-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$"
)

TOP_FIELDS: Final = ("apiVersion", "kind", "sharing")
SHARING_FIELDS: Final = ("strategy", "timeSlicingConfig", "mpsConfig")
TIME_SLICING_FIELDS: Final = ("interval",)
MPS_FIELDS: Final = (
    "defaultActiveThreadPercentage",
    "defaultPinnedDeviceMemoryLimit",
    "defaultPerDevicePinnedMemoryLimit",
)
MIG_NO_INTERVAL: Final = (
    "the time-slice interval cannot be set on a MIG device "
    "(leave timeSlicingConfig out: strategy TimeSlicing alone is fine)"
)
BAD_DEVICE_KEY: Final = "must be a device index 0-31 or a GPU-/MIG- UUID in lowercase"


class Interval(StrEnum):
    """The GPU's compute time-slice, as ``nvidia-smi compute-policy --set-timeslice`` takes it."""

    DEFAULT = "Default"
    SHORT = "Short"
    MEDIUM = "Medium"
    LONG = "Long"

    @property
    def level(self) -> int:
        """The ``--set-timeslice`` value: 0 (Default) .. 3 (Long)."""
        return list(Interval).index(self)


class Strategy(StrEnum):
    TIME_SLICING = "TimeSlicing"
    MPS = "MPS"


@dataclass(frozen=True, slots=True)
class TimeSlicingConfig:
    interval: Interval = Interval.DEFAULT


@dataclass(frozen=True, slots=True)
class MpsConfig:
    default_active_thread_percentage: int | None = None  # 1..100
    default_pinned_device_memory_limit: int | None = None  # bytes, a multiple of 1Mi
    #: (device index "0".."31" or GPU-/MIG- UUID, bytes), sorted by key
    default_per_device_pinned_memory_limit: tuple[tuple[str, int], ...] = ()

    def pinned_memory_limits(self, device_uuids: Sequence[str]) -> dict[str, int]:
        """Each device's limit (UUID -> bytes) for the devices this config serves, in the order given.

        The default applies to every device; a per-device entry overrides it for the device it names: an
        index into ``device_uuids`` or one of those UUIDs. An entry that names no such device, or two
        entries naming the same device, raise :class:`ConfigFieldError`. Devices without a limit are left out.
        """
        limits = {}
        if self.default_pinned_device_memory_limit is not None:
            limits = dict.fromkeys(device_uuids, self.default_pinned_device_memory_limit)
        named: dict[str, str] = {}
        for key, limit in self.default_per_device_pinned_memory_limit:
            uuid = _device_of(key, device_uuids)
            if uuid in named:
                raise ConfigFieldError(_per_device_path(key), f"names the same device as {named[uuid]!r}")
            named[uuid] = key
            limits[uuid] = limit
        return limits


@dataclass(frozen=True, slots=True)
class Sharing:
    strategy: Strategy
    time_slicing: TimeSlicingConfig | None = None
    mps: MpsConfig | None = None


@dataclass(frozen=True, slots=True)
class GpuConfig:
    """Kind ``GpuConfig``: settings for an NVIDIA full GPU. ``sharing`` None: no sharing settings."""

    sharing: Sharing | None = None


@dataclass(frozen=True, slots=True)
class MigDeviceConfig:
    """Kind ``MigDeviceConfig``: settings for an NVIDIA MIG device (no time-slice interval on MIG)."""

    sharing: Sharing | None = None


# ---- decoding -----------------------------------------------------------------------------------------


def decode_gpu_config(params: Mapping[str, object]) -> GpuConfig:
    """Decode the parameters of a ``GpuConfig``; raises :class:`ConfigFieldError` naming the bad field."""
    return GpuConfig(_decode(params, mig=False))


def decode_mig_device_config(params: Mapping[str, object]) -> MigDeviceConfig:
    """Decode the parameters of a ``MigDeviceConfig``; raises :class:`ConfigFieldError`."""
    return MigDeviceConfig(_decode(params, mig=True))


#: (apiVersion, kind) -> decoder, as :data:`gpudra.planning.config.KNOWN_KINDS` registers them.
KINDS: Final[Mapping[tuple[str, str], Callable[[Mapping[str, object]], object]]] = {
    (API_VERSION, GPU_CONFIG): decode_gpu_config,
    (API_VERSION, MIG_DEVICE_CONFIG): decode_mig_device_config,
}


def _decode(params: Mapping[str, object], mig: bool) -> Sharing | None:
    cf.only_fields(params, "", TOP_FIELDS)
    if "sharing" not in params:
        return None
    sharing = cf.obj(params["sharing"], "sharing")
    strategy = _check_sharing(sharing, mig)
    if strategy is Strategy.MPS:
        return Sharing(strategy, mps=_mps(sharing.get("mpsConfig", {})))
    time_slicing = None if mig else _time_slicing(sharing.get("timeSlicingConfig", {}))
    return Sharing(strategy, time_slicing=time_slicing)


def _check_sharing(sharing: JsonObject, mig: bool) -> Strategy:
    """The strategy, after checking which sub-configs may go with it and that they are objects."""
    cf.only_fields(sharing, "sharing", SHARING_FIELDS)
    strategy = cf.one_of(cf.required(sharing, "strategy", "sharing"), "sharing.strategy", Strategy)
    for key, wanted in (("timeSlicingConfig", Strategy.TIME_SLICING), ("mpsConfig", Strategy.MPS)):
        if key not in sharing:
            continue
        path = f"sharing.{key}"
        if mig and wanted is Strategy.TIME_SLICING:
            raise ConfigFieldError(path, MIG_NO_INTERVAL)
        if strategy is not wanted:
            raise ConfigFieldError(path, f"not allowed with strategy {strategy.value}")
        cf.obj(sharing[key], path)
    return strategy


def _time_slicing(value: object) -> TimeSlicingConfig:
    path = "sharing.timeSlicingConfig"
    config = cf.obj(value, path)
    cf.only_fields(config, path, TIME_SLICING_FIELDS)
    if "interval" not in config:
        return TimeSlicingConfig()
    return TimeSlicingConfig(cf.one_of(config["interval"], f"{path}.interval", Interval))


def _mps(value: object) -> MpsConfig:
    path = "sharing.mpsConfig"
    config = cf.obj(value, path)
    cf.only_fields(config, path, MPS_FIELDS)
    percentage = pinned = None
    if "defaultActiveThreadPercentage" in config:
        low, high = THREAD_PERCENTAGE_RANGE
        field = f"{path}.defaultActiveThreadPercentage"
        percentage = cf.integer(config["defaultActiveThreadPercentage"], field, low, high)
    if "defaultPinnedDeviceMemoryLimit" in config:
        pinned = _pinned(config["defaultPinnedDeviceMemoryLimit"], f"{path}.defaultPinnedDeviceMemoryLimit")
    per_device: tuple[tuple[str, int], ...] = ()
    if "defaultPerDevicePinnedMemoryLimit" in config:
        per_device = _per_device(config["defaultPerDevicePinnedMemoryLimit"])
    return MpsConfig(percentage, pinned, per_device)


def _pinned(value: object, path: str) -> int:
    why = "MPS sets pinned memory limits in MiB"
    return cf.byte_quantity(value, path, PINNED_MEMORY_UNIT, "1Mi", why)


def _per_device_path(key: str) -> str:
    return f"sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit[{key}]"


def _per_device(value: object) -> tuple[tuple[str, int], ...]:
    limits = cf.obj(value, "sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit")
    if len(limits) > MAX_PER_DEVICE_LIMITS:
        raise ConfigFieldError(
            "sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit",
            f"must have at most {MAX_PER_DEVICE_LIMITS} entries",
        )
    for key in limits:  # every key first, then the values: the admission policy's order
        if not DEVICE_KEY.fullmatch(key):
            raise ConfigFieldError(_per_device_path(key), f"invalid device {cf.shown(key)}: {BAD_DEVICE_KEY}")
    return tuple(sorted((key, _pinned(limit, _per_device_path(key))) for key, limit in limits.items()))


def _device_of(key: str, device_uuids: Sequence[str]) -> str:
    if key.isdigit():
        if int(key) < len(device_uuids):
            return device_uuids[int(key)]
    elif key in device_uuids:
        return key
    count = len(device_uuids)
    problem = f"names none of the {count} device(s) this config applies to"
    raise ConfigFieldError(_per_device_path(key), problem)
