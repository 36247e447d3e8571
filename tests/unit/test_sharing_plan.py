"""What sharing asks of the node per claim (planning/sharing_plan): settings per GPU, the claim's MPS daemon
and its limits (fractional shares enforced, an MpsConfig only lowering them), and the per-claim errors."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from typing import Final

import pytest

from gpudra.model.inventory import Device, DeviceKind, MigInfo, Vendor
from gpudra.planning.plan import DeviceToPrepare
from gpudra.planning.sharing_config import (
    GpuConfig,
    Interval,
    MigDeviceConfig,
    MpsConfig,
    Sharing,
    Strategy,
    TimeSlicingConfig,
)
from gpudra.planning.sharing_plan import (
    COMPUTE_MODE,
    TIMESLICE,
    ComputeMode,
    GpuSetting,
    MpsDevice,
    MpsPlan,
    SharingError,
    SharingPlan,
    conflict,
    plan_sharing,
)

GIB: Final = 2**30
MEMORY: Final = 85520809984  # an H100 80GB: 81559 MiB
SHARE: Final = "5e0c1a9e-0000-4000-8000-000000000007"
H100: Final = Device(DeviceKind.GPU, Vendor.NVIDIA, "GPU-0", "H100", 0, memory_bytes=MEMORY)
H100B: Final = replace(H100, uuid="GPU-1", index=1)
MIG: Final = Device(
    DeviceKind.MIG, Vendor.NVIDIA, "MIG-0", "H100", 0, memory_bytes=10 * GIB, parent_uuid="GPU-0"
)
MI300: Final = Device(DeviceKind.GPU, Vendor.AMD, "amd-0", "MI300X", 0, memory_bytes=192 * GIB)


def dev(device: Device = H100, *configs: object, name: str = "gpu-0", consumed: int | None = None,
        share: bool = False, admin: bool = False, index: int = 0) -> DeviceToPrepare:  # fmt: skip
    cap = () if consumed is None else (("memory", Fraction(consumed)),)
    return DeviceToPrepare(
        "gpu", "node-a", name, device, admin_access=admin, share_id=SHARE if share or cap else None,
        configs=configs, consumed_capacity=cap, path=f"status.allocation.devices.results[{index}]",
    )  # fmt: skip


def ts(interval: Interval | None = None) -> GpuConfig:
    config = None if interval is None else TimeSlicingConfig(interval)
    return GpuConfig(Sharing(Strategy.TIME_SLICING, time_slicing=config))


def mps(
    threads: int | None = None, pinned: int | None = None, per: tuple[tuple[str, int], ...] = ()
) -> GpuConfig:
    return GpuConfig(Sharing(Strategy.MPS, mps=MpsConfig(threads, pinned, per)))


def test_no_sharing_config_and_no_share_asks_nothing() -> None:
    assert plan_sharing([dev(), dev(H100, GpuConfig(None), name="gpu-1")]).empty


def test_time_slicing_sets_the_interval_and_compute_mode_default() -> None:
    plan = plan_sharing([dev(H100, ts(Interval.LONG))])
    default = GpuSetting("GPU-0", COMPUTE_MODE, ComputeMode.DEFAULT, "gpu-0")
    assert plan == SharingPlan((GpuSetting("GPU-0", TIMESLICE, 3, "gpu-0"), default))
    assert plan_sharing([dev(H100, ts())]).settings[0].value == Interval.DEFAULT.level


def test_time_slicing_on_a_mig_device_sets_nothing_and_refuses_an_interval() -> None:
    assert plan_sharing([dev(MIG, MigDeviceConfig(Sharing(Strategy.TIME_SLICING)))]).empty
    why = r"device gpu-0 is a MIG device: GpuConfig sharing\.timeSlicingConfig\.interval Short cannot be set"
    with pytest.raises(SharingError, match=why):
        plan_sharing([dev(MIG, ts(Interval.SHORT))])


def test_each_kind_governs_the_devices_of_its_type() -> None:
    mig_config = MigDeviceConfig(Sharing(Strategy.MPS, mps=MpsConfig(30)))
    plan = plan_sharing([dev(MIG, ts(Interval.LONG), mig_config), dev(H100B, ts(Interval.LONG), mig_config)])
    assert plan.mps == MpsPlan((MpsDevice("gpu-0", "MIG-0"),), 30)  # the MIG device: its MigDeviceConfig
    assert plan.settings[0] == GpuSetting("GPU-1", TIMESLICE, 3, "gpu-0")  # the GPU: its GpuConfig
    assert plan_sharing([dev(MIG, GpuConfig(None))]).empty  # no sharing settings: nothing to govern
    with pytest.raises(SharingError, match="is a MIG device: its sharing settings must be in a MigDevice"):
        plan_sharing([dev(MIG, ts(Interval.DEFAULT))])
    with pytest.raises(SharingError, match="is a GPU: its sharing settings must be in a GpuConfig"):
        plan_sharing([dev(H100, mig_config)])


def test_mps_owning_a_whole_gpu_is_exclusive_process() -> None:
    plan = plan_sharing([dev(H100, mps(threads=40, pinned=8 * GIB))])
    assert plan.settings == (GpuSetting("GPU-0", COMPUTE_MODE, ComputeMode.EXCLUSIVE_PROCESS, "gpu-0"),)
    assert plan.mps == MpsPlan((MpsDevice("gpu-0", "GPU-0", 8 * GIB),), 40)


def test_mps_beside_others_is_default_compute_mode() -> None:
    for d in (dev(H100, mps(), admin=True), dev(H100, mps(), share=True)):
        assert plan_sharing([d]).settings[0].value == ComputeMode.DEFAULT


def test_a_fractional_share_is_enforced_with_mps_without_any_config() -> None:
    plan = plan_sharing([dev(consumed=20 * GIB)])
    assert plan.settings == (GpuSetting("GPU-0", COMPUTE_MODE, ComputeMode.DEFAULT, "gpu-0"),)
    assert plan.mps == MpsPlan((MpsDevice("gpu-0", "GPU-0", 20 * GIB),), 26)  # ceil(100 * 20480 / 81559)


def test_a_share_of_all_the_memory_is_the_whole_device() -> None:
    assert plan_sharing([dev(consumed=MEMORY)]).empty


def test_an_mps_config_only_lowers_a_share_s_limits() -> None:
    lower = plan_sharing([dev(H100, mps(threads=10, pinned=4 * GIB), consumed=20 * GIB)]).mps
    assert lower == MpsPlan((MpsDevice("gpu-0", "GPU-0", 4 * GIB),), 10)
    higher = plan_sharing([dev(H100, mps(threads=90, pinned=40 * GIB), consumed=20 * GIB)]).mps
    assert higher == MpsPlan((MpsDevice("gpu-0", "GPU-0", 20 * GIB),), 26)


def test_one_daemon_per_claim_with_the_smallest_percentage() -> None:
    plan = plan_sharing([dev(consumed=20 * GIB), dev(H100B, name="gpu-1", consumed=60 * GIB, index=1)])
    assert plan.mps is not None
    assert [d.pinned_memory_limit for d in plan.mps.devices] == [20 * GIB, 60 * GIB]
    assert plan.mps.active_thread_percentage == 26


def test_per_device_limits_by_index_and_uuid() -> None:
    config = mps(pinned=8 * GIB, per=(("1", 2 * GIB),))
    plan = plan_sharing([dev(H100, config), dev(H100B, config, name="gpu-1", index=1)])
    assert plan.mps is not None
    assert [d.pinned_memory_limit for d in plan.mps.devices] == [8 * GIB, 2 * GIB]
    with pytest.raises(SharingError, match=r"GpuConfig sharing\.mpsConfig\.defaultPerDevicePinned.*\[5\]"):
        plan_sharing([dev(H100, mps(per=(("5", GIB),)))])


def test_a_mig_device_made_at_prepare_has_its_uuid_later() -> None:
    made = replace(MIG, uuid="", mig=MigInfo("1g.10gb", 19, 0, 1, gi_id=None, ci_id=None))
    assert made.created_at_prepare
    config = MigDeviceConfig(Sharing(Strategy.MPS, mps=MpsConfig(None, None, (("0", GIB),))))
    assert plan_sharing([dev(made, config)]).mps == MpsPlan((MpsDevice("gpu-0", "", GIB),), None)


def test_a_share_larger_than_the_device_names_the_field() -> None:
    with pytest.raises(SharingError) as err:
        plan_sharing([dev(consumed=100 * GIB, index=2)])
    assert str(err.value).startswith(
        "status.allocation.devices.results[2].consumedCapacity[memory]: 107374182400 bytes, 100.00 GiB is "
        "more than device gpu-0 has (85520809984 bytes"
    )


def test_a_share_that_is_not_whole_mib_or_of_unknown_memory() -> None:
    with pytest.raises(SharingError, match="not a positive whole number of MiB"):
        plan_sharing([dev(consumed=20 * GIB + 1)])
    with pytest.raises(SharingError, match="does not report its memory"):
        plan_sharing([dev(replace(H100, memory_bytes=None), consumed=GIB)])


def test_time_slicing_cannot_enforce_a_share() -> None:
    with pytest.raises(SharingError, match=r"sharing\.strategy TimeSlicing cannot enforce the share"):
        plan_sharing([dev(H100, ts(Interval.LONG), consumed=20 * GIB)])


def test_two_devices_of_one_claim_on_one_gpu_need_one_value() -> None:
    with pytest.raises(SharingError, match="need its timeslice to be both Long and Short"):
        plan_sharing([dev(H100, ts(Interval.LONG), share=True),
                      dev(H100, ts(Interval.SHORT), name="gpu-0b", share=True)])  # fmt: skip


def test_amd_accepts_shares_and_plain_time_slicing_only() -> None:
    assert plan_sharing([dev(MI300, ts(), consumed=20 * GIB)]).empty  # not enforceable on ROCm: nothing
    with pytest.raises(SharingError, match=r"is an AMD GPU: GpuConfig sharing\.strategy MPS"):
        plan_sharing([dev(MI300, mps())])
    with pytest.raises(SharingError, match=r"AMD GPU: GpuConfig sharing\.timeSlicingConfig\.interval Long"):
        plan_sharing([dev(MI300, ts(Interval.LONG))])
    with pytest.raises(SharingError, match="more than device gpu-0 has"):
        plan_sharing([dev(MI300, consumed=200 * GIB)])


def test_conflicts_with_what_other_claims_hold() -> None:
    long_ = GpuSetting("GPU-0", TIMESLICE, 3, "gpu-0")
    short = GpuSetting("GPU-0", TIMESLICE, 1, "gpu-0")
    default = GpuSetting("GPU-0", COMPUTE_MODE, ComputeMode.DEFAULT, "gpu-0")
    exclusive = GpuSetting("GPU-0", COMPUTE_MODE, ComputeMode.EXCLUSIVE_PROCESS, "gpu-0")
    assert conflict([long_, default], [long_, default]) is None
    assert conflict([long_], [replace(short, gpu="GPU-1")]) is None
    assert "set the time-slice interval Short, device gpu-0 of this claim asks for Long" in (
        conflict([long_], [short]) or ""
    )
    assert "another claim's MPS daemon holds it exclusively" in (conflict([default], [exclusive]) or "")
    assert "would hold it exclusively" in (conflict([exclusive], [default]) or "")
    assert conflict([exclusive], [exclusive]) is not None
