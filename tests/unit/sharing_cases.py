"""One table of ``gpudra.io/v1alpha1`` sharing configs, good and bad, for both of their checkers.

tests/unit/test_sharing_config.py runs each case through the plugin's decoder (claim JSON -> claimjson ->
config.resolve); tests/unit/test_sharing_policy.py through the ValidatingAdmissionPolicy's CEL, in a claim, a
claim template and a DeviceClass. A bad case's ``error`` is the text after the parameters' path, exactly as
the policy writes it (``.sharing.strategy: required value is missing``); the decoder may add
``, got <JSON type>``. A good case's ``decoded`` is what the decoder returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gpudra.planning.sharing_config import (
    API_VERSION,
    GpuConfig,
    Interval,
    MigDeviceConfig,
    MpsConfig,
    Sharing,
    Strategy,
    TimeSlicingConfig,
)

GPU_UUID = "GPU-0b100000-0000-0000-0000-000000000001"
MIG_UUID = "MIG-0d100000-0000-5000-8000-000000000002"
MPS_NOT_MIB = " (MPS sets pinned memory limits in MiB)"
KNOWN_KINDS = "gpudra.io/v1alpha1/GpuConfig, gpudra.io/v1alpha1/MigDeviceConfig"
MPS_FIELDS = (
    "defaultActiveThreadPercentage, defaultPinnedDeviceMemoryLimit, defaultPerDevicePinnedMemoryLimit"
)
PER_DEVICE = ".sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit"
BAD_KEY = "must be a device index 0-31 or a GPU-/MIG- UUID in lowercase"


@dataclass(frozen=True)
class Case:
    id: str
    params: dict[str, Any]
    error: str | None = None  # None: the config is good
    decoded: object = None


def gpu(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "GpuConfig", **fields}


def mig(**fields: Any) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "MigDeviceConfig", **fields}


def mps(**fields: Any) -> dict[str, Any]:
    return gpu(sharing={"strategy": "MPS", "mpsConfig": fields})


def ts(interval: Interval) -> GpuConfig:
    return GpuConfig(Sharing(Strategy.TIME_SLICING, time_slicing=TimeSlicingConfig(interval)))


def with_mps(**fields: Any) -> GpuConfig:
    return GpuConfig(Sharing(Strategy.MPS, mps=MpsConfig(**fields)))


GOOD = [
    Case("gpu-without-sharing", gpu(), decoded=GpuConfig()),
    Case("mig-without-sharing", mig(), decoded=MigDeviceConfig()),
    Case("time-slicing-default", gpu(sharing={"strategy": "TimeSlicing"}), decoded=ts(Interval.DEFAULT)),
    Case(
        "time-slicing-empty-config",
        gpu(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": {}}),
        decoded=ts(Interval.DEFAULT),
    ),
    *(
        Case(
            f"interval-{i.value}",
            gpu(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": i.value}}),
            decoded=ts(i),
        )
        for i in Interval
    ),
    Case("mps-defaults", gpu(sharing={"strategy": "MPS"}), decoded=with_mps()),
    Case("mps-empty-config", mps(), decoded=with_mps()),
    Case(
        "mps-everything",
        mps(
            defaultActiveThreadPercentage=50,
            defaultPinnedDeviceMemoryLimit="10Gi",
            defaultPerDevicePinnedMemoryLimit={GPU_UUID: 2147483648, "1": "4Gi", "0": "1.5Gi"},
        ),
        decoded=with_mps(
            default_active_thread_percentage=50,
            default_pinned_device_memory_limit=10 * 2**30,
            default_per_device_pinned_memory_limit=(
                ("0", 1536 * 2**20),
                ("1", 4 * 2**30),
                (GPU_UUID, 2 * 2**30),
            ),
        ),
    ),
    Case(
        "mps-percentage-1",
        mps(defaultActiveThreadPercentage=1),
        decoded=with_mps(default_active_thread_percentage=1),
    ),
    Case(
        "mps-percentage-100",
        mps(defaultActiveThreadPercentage=100),
        decoded=with_mps(default_active_thread_percentage=100),
    ),
    Case(
        "pinned-integer-1mi",
        mps(defaultPinnedDeviceMemoryLimit=1048576),
        decoded=with_mps(default_pinned_device_memory_limit=2**20),
    ),
    Case(
        "pinned-decimal-exponent",
        mps(defaultPinnedDeviceMemoryLimit="1048576e3"),
        decoded=with_mps(default_pinned_device_memory_limit=1048576000),
    ),
    Case(
        "pinned-largest",
        mps(defaultPinnedDeviceMemoryLimit="8388607Ti"),
        decoded=with_mps(default_pinned_device_memory_limit=8388607 * 2**40),
    ),
    Case("per-device-empty", mps(defaultPerDevicePinnedMemoryLimit={}), decoded=with_mps()),
    Case(
        "per-device-index-31",
        mps(defaultPerDevicePinnedMemoryLimit={"31": "1Mi"}),
        decoded=with_mps(default_per_device_pinned_memory_limit=(("31", 2**20),)),
    ),
    Case(
        "mig-time-slicing-without-interval",
        mig(sharing={"strategy": "TimeSlicing"}),
        decoded=MigDeviceConfig(Sharing(Strategy.TIME_SLICING)),
    ),
    Case(
        "mig-mps",
        mig(
            sharing={"strategy": "MPS", "mpsConfig": {"defaultPerDevicePinnedMemoryLimit": {MIG_UUID: "5Gi"}}}
        ),
        decoded=MigDeviceConfig(
            Sharing(
                Strategy.MPS, mps=MpsConfig(default_per_device_pinned_memory_limit=((MIG_UUID, 5 * 2**30),))
            )
        ),
    ),
]


def unknown_kind(api_version: str, kind: str) -> str:
    return (
        f": unknown opaque config {api_version} kind {kind} for driver gpudra.io (known kinds: {KNOWN_KINDS})"
    )


def _pinned(value: object, error: str) -> Case:
    return Case(
        f"pinned-{value!r}",
        mps(defaultPinnedDeviceMemoryLimit=value),
        f".sharing.mpsConfig.defaultPinnedDeviceMemoryLimit: {error}",
    )


BAD = [
    # apiVersion and kind, as the plugin reads every config of ours
    Case("no-api-version", {"kind": "GpuConfig"}, ".apiVersion: required value is missing"),
    Case("api-version-number", {"apiVersion": 1, "kind": "GpuConfig"}, ".apiVersion: expected a string"),
    Case("api-version-empty", {"apiVersion": "", "kind": "GpuConfig"}, ".apiVersion: must not be empty"),
    Case("no-kind", {"apiVersion": API_VERSION}, ".kind: required value is missing"),
    Case("kind-list", {"apiVersion": API_VERSION, "kind": ["GpuConfig"]}, ".kind: expected a string"),
    Case("kind-empty", {"apiVersion": API_VERSION, "kind": ""}, ".kind: must not be empty"),
    Case(
        "unknown-api-version",
        {"apiVersion": "gpudra.io/v1", "kind": "GpuConfig"},
        unknown_kind("gpudra.io/v1", "GpuConfig"),
    ),
    Case(
        "nvidia-api-version",
        {"apiVersion": "resource.nvidia.com/v1beta1", "kind": "GpuConfig"},
        ": unknown opaque config resource.nvidia.com/v1beta1 kind GpuConfig for driver gpudra.io "
        f"(known kinds: {KNOWN_KINDS})",
    ),
    Case(
        "unknown-kind",
        {"apiVersion": API_VERSION, "kind": "AmdGpuConfig"},
        unknown_kind(API_VERSION, "AmdGpuConfig"),
    ),
    Case(
        "kind-wrong-case",
        {"apiVersion": API_VERSION, "kind": "gpuConfig"},
        unknown_kind(API_VERSION, "gpuConfig"),
    ),
    Case(
        "unknown-top-field",
        gpu(metadata={}),
        ".metadata: unknown field (known fields: apiVersion, kind, sharing)",
    ),
    Case("sharing-null", gpu(sharing=None), ".sharing: expected an object"),
    Case("sharing-string", mig(sharing="MPS"), ".sharing: expected an object"),
    # sharing
    Case(
        "sharing-unknown-field",
        gpu(sharing={"strategy": "MPS", "replicas": 2}),
        ".sharing.replicas: unknown field (known fields: strategy, timeSlicingConfig, mpsConfig)",
    ),
    Case(
        "unknown-field-before-missing-strategy",
        gpu(sharing={"replicas": 2}),
        ".sharing.replicas: unknown field (known fields: strategy, timeSlicingConfig, mpsConfig)",
    ),
    Case("no-strategy", gpu(sharing={}), ".sharing.strategy: required value is missing"),
    Case("strategy-number", gpu(sharing={"strategy": 1}), ".sharing.strategy: expected a string"),
    Case(
        "strategy-wrong-case",
        gpu(sharing={"strategy": "timeslicing"}),
        '.sharing.strategy: unsupported value "timeslicing": must be one of TimeSlicing, MPS',
    ),
    Case(
        "strategy-mig",
        mig(sharing={"strategy": "MIG"}),
        '.sharing.strategy: unsupported value "MIG": must be one of TimeSlicing, MPS',
    ),
    Case(
        "mps-config-with-time-slicing",
        gpu(sharing={"strategy": "TimeSlicing", "mpsConfig": {}}),
        ".sharing.mpsConfig: not allowed with strategy TimeSlicing",
    ),
    Case(
        "time-slicing-config-with-mps",
        gpu(sharing={"strategy": "MPS", "timeSlicingConfig": {"interval": "Long"}}),
        ".sharing.timeSlicingConfig: not allowed with strategy MPS",
    ),
    Case(
        "time-slicing-config-string",
        gpu(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": "Long"}),
        ".sharing.timeSlicingConfig: expected an object",
    ),
    Case(
        "mps-config-null",
        gpu(sharing={"strategy": "MPS", "mpsConfig": None}),
        ".sharing.mpsConfig: expected an object",
    ),
    Case(
        "mig-interval",
        mig(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Long"}}),
        ".sharing.timeSlicingConfig: the time-slice interval cannot be set on a MIG device "
        "(leave timeSlicingConfig out: strategy TimeSlicing alone is fine)",
    ),
    Case(
        "mig-empty-time-slicing-config-with-mps",
        mig(sharing={"strategy": "MPS", "timeSlicingConfig": {}}),
        ".sharing.timeSlicingConfig: the time-slice interval cannot be set on a MIG device "
        "(leave timeSlicingConfig out: strategy TimeSlicing alone is fine)",
    ),
    # timeSlicingConfig
    Case(
        "time-slicing-unknown-field",
        gpu(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": {"replicas": 4}}),
        ".sharing.timeSlicingConfig.replicas: unknown field (known fields: interval)",
    ),
    Case(
        "interval-number",
        gpu(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": 3}}),
        ".sharing.timeSlicingConfig.interval: expected a string",
    ),
    Case(
        "interval-null",
        gpu(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": None}}),
        ".sharing.timeSlicingConfig.interval: expected a string",
    ),
    Case(
        "interval-wrong-case",
        gpu(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "long"}}),
        '.sharing.timeSlicingConfig.interval: unsupported value "long": '
        "must be one of Default, Short, Medium, Long",
    ),
    # mpsConfig
    Case(
        "mps-multi-user",
        mps(multiUser=True),
        f".sharing.mpsConfig.multiUser: unknown field (known fields: {MPS_FIELDS})",
    ),
    Case(
        "percentage-string",
        mps(defaultActiveThreadPercentage="50"),
        ".sharing.mpsConfig.defaultActiveThreadPercentage: expected an integer",
    ),
    Case(
        "percentage-float",
        mps(defaultActiveThreadPercentage=50.5),
        ".sharing.mpsConfig.defaultActiveThreadPercentage: expected an integer",
    ),
    Case(
        "percentage-bool",
        mps(defaultActiveThreadPercentage=True),
        ".sharing.mpsConfig.defaultActiveThreadPercentage: expected an integer",
    ),
    Case(
        "percentage-0",
        mps(defaultActiveThreadPercentage=0),
        ".sharing.mpsConfig.defaultActiveThreadPercentage: 0 is out of range 1-100",
    ),
    Case(
        "percentage-150",
        mps(defaultActiveThreadPercentage=150),
        ".sharing.mpsConfig.defaultActiveThreadPercentage: 150 is out of range 1-100",
    ),
    Case(
        "percentage-negative",
        mps(defaultActiveThreadPercentage=-5),
        ".sharing.mpsConfig.defaultActiveThreadPercentage: -5 is out of range 1-100",
    ),
    _pinned("abc", '"abc" is not a quantity'),
    _pinned("", '"" is not a quantity'),
    _pinned("10 Gi", '"10 Gi" is not a quantity'),
    _pinned("512Ki", '"512Ki" is out of range 1Mi-8Ei'),
    _pinned("-1Gi", '"-1Gi" is out of range 1Mi-8Ei'),
    _pinned("0", '"0" is out of range 1Mi-8Ei'),
    _pinned("10E", '"10E" is out of range 1Mi-8Ei'),
    _pinned("1048576.5", '"1048576.5" is not a whole number of bytes'),
    _pinned("10G", f'"10G" is not a multiple of 1Mi{MPS_NOT_MIB}'),
    _pinned("8Ei", f'"8Ei" is not a multiple of 1Mi{MPS_NOT_MIB}'),  # the apiserver caps it at 2^63-1
    _pinned(1000, "1000 is out of range 1Mi-8Ei"),
    _pinned(0, "0 is out of range 1Mi-8Ei"),
    _pinned(1048577, f"1048577 is not a multiple of 1Mi{MPS_NOT_MIB}"),
    _pinned(1.5, "expected a quantity string or an integer"),
    _pinned(True, "expected a quantity string or an integer"),
    _pinned(None, "expected a quantity string or an integer"),
    _pinned({"value": "1Gi"}, "expected a quantity string or an integer"),
    Case(
        "per-device-list", mps(defaultPerDevicePinnedMemoryLimit=["1Gi"]), f"{PER_DEVICE}: expected an object"
    ),
    Case(
        "per-device-too-many",
        mps(
            defaultPerDevicePinnedMemoryLimit={
                f"MIG-0d100000-0000-5000-8000-0000000000{i:02}": "1Gi" for i in range(33)
            }
        ),
        f"{PER_DEVICE}: must have at most 32 entries",
    ),
    *(
        Case(
            f"per-device-key-{key}",
            mps(defaultPerDevicePinnedMemoryLimit={"0": "1Gi", key: "1Gi"}),
            f'{PER_DEVICE}[{key}]: invalid device "{key}": {BAD_KEY}',
        )
        for key in (
            "32",
            "-1",
            "01",
            "+1",
            "",
            "gpu0",
            GPU_UUID.upper(),
            GPU_UUID.lower(),
            GPU_UUID[4:],
            MIG_UUID + "/0",
        )
    ),
    Case(
        "per-device-bad-key-before-bad-value",
        mps(defaultPerDevicePinnedMemoryLimit={"0": "1Ki", "x": "1Gi"}),
        f'{PER_DEVICE}[x]: invalid device "x": {BAD_KEY}',
    ),
    Case(
        "per-device-value-small",
        mps(defaultPerDevicePinnedMemoryLimit={"0": "1Gi", "1": "1Ki"}),
        f'{PER_DEVICE}[1]: "1Ki" is out of range 1Mi-8Ei',
    ),
    Case(
        "per-device-value-not-mib",
        mps(defaultPerDevicePinnedMemoryLimit={MIG_UUID: 1048577}),
        f"{PER_DEVICE}[{MIG_UUID}]: 1048577 is not a multiple of 1Mi{MPS_NOT_MIB}",
    ),
    Case(
        "per-device-value-null",
        mps(defaultPerDevicePinnedMemoryLimit={"3": None}),
        f"{PER_DEVICE}[3]: expected a quantity string or an integer",
    ),
]
