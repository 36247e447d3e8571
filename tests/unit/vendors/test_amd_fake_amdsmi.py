"""The fake amdsmi behaves like the Python wrapper: shapes, errors, handles, an older library."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from gpudra.vendors.amd.smi import STATUS_CODES
from gpudra.vendors.mock.amd_profile import load_amd_profile, parse_amd_profile
from gpudra.vendors.mock.fake_amdsmi import (
    AmdSmiInitFlags,
    AmdSmiLibraryException,
    AmdSmiParameterException,
    FakeAmdSmi,
    amdsmi_uuid,
)


def opened(name: str) -> FakeAmdSmi:
    fake = FakeAmdSmi(load_amd_profile(name))
    fake.amdsmi_init(AmdSmiInitFlags.INIT_AMD_GPUS)
    return fake


def test_uuid_layout() -> None:
    assert amdsmi_uuid(0xE3AA140F9A5F9E31, 0x74A1) == "e3ff74a1-0000-1000-80aa-140f9a5f9e31"
    assert amdsmi_uuid(0, 0x74A1) == "00ff74a1-0000-1000-8000-000000000000"


@pytest.mark.parametrize(
    ("name", "count"),
    [("mi300x-8-spx-nps1", 8), ("mi300x-8-cpx-nps4", 64), ("mi300x-8-cpx-nps4-bmc", 63), ("mi210-pcie", 8)],
)
def test_one_handle_per_kfd_gpu_node(name: str, count: int) -> None:
    assert len(opened(name).amdsmi_get_processor_handles()) == count


def test_partition_handles_share_the_gpu_uuid_and_encode_the_partition_in_the_bdf() -> None:
    fake = opened("mi300x-8-cpx-nps4")
    handles = fake.amdsmi_get_processor_handles()[:8]
    assert [fake.amdsmi_get_gpu_device_bdf(h) for h in handles] == [f"0000:05:00.{p}" for p in range(8)]
    assert {fake.amdsmi_get_gpu_device_uuid(h) for h in handles} == {"e3ff74a1-0000-1000-80aa-140f9a5f9e31"}
    assert fake.amdsmi_get_gpu_compute_partition(handles[3]) == "CPX"
    assert fake.amdsmi_get_gpu_memory_partition(handles[3]) == "NPS4"


def test_asic_vram_and_driver_info_shapes() -> None:
    fake = opened("mi300x-8-spx-nps1")
    handle = fake.amdsmi_get_processor_handles()[0]
    asic = fake.amdsmi_get_gpu_asic_info(handle)
    assert asic["market_name"] == "AMD Instinct MI300X"
    assert (asic["vendor_id"], asic["device_id"], asic["asic_serial"]) == (
        "0x1002",
        "0x74a1",
        "0xE3AA140F9A5F9E31",
    )
    assert (asic["num_compute_units"], asic["target_graphics_version"]) == (304, "gfx942")
    assert fake.amdsmi_get_gpu_vram_info(handle)["vram_size"] == 196592  # MiB
    assert fake.amdsmi_get_gpu_driver_info(handle)["driver_version"] == "6.10.5"


def test_unknown_values_raise_not_supported() -> None:
    fake = opened("mi210-pcie")
    handle = fake.amdsmi_get_processor_handles()[0]
    for call in (fake.amdsmi_get_gpu_vram_info, fake.amdsmi_get_gpu_compute_partition):
        with pytest.raises(AmdSmiLibraryException) as err:
            call(handle)
        assert err.value.get_error_code() == STATUS_CODES["AMDSMI_STATUS_NOT_SUPPORTED"]


def test_calls_before_init_and_after_shutdown_fail() -> None:
    fake = FakeAmdSmi(load_amd_profile("mi210-pcie"))
    with pytest.raises(AmdSmiLibraryException) as err:
        fake.amdsmi_get_processor_handles()
    assert err.value.err_code == STATUS_CODES["AMDSMI_STATUS_NOT_INIT"]
    assert "AMDSMI_STATUS_NOT_INIT" in str(err.value)
    fake.amdsmi_init()
    handles = fake.amdsmi_get_processor_handles()
    fake.amdsmi_shut_down()
    with pytest.raises(AmdSmiLibraryException):
        fake.amdsmi_get_gpu_device_bdf(handles[0])


def test_wrong_arguments_are_parameter_errors() -> None:
    fake = opened("mi210-pcie")
    other = opened("mi210-pcie")
    with pytest.raises(AmdSmiParameterException):
        fake.amdsmi_get_gpu_device_bdf(other.amdsmi_get_processor_handles()[0])
    with pytest.raises(AmdSmiParameterException):
        fake.amdsmi_init(2)


def test_an_older_library_lacks_functions_and_errors_are_injected() -> None:
    data = json.loads((resources.files("gpudra.vendors.mock") / "profiles" / "mi210-pcie.json").read_text())
    data["amdsmi"]["missing_functions"] = ["amdsmi_get_gpu_memory_partition"]
    data["amdsmi"]["errors"] = {"amdsmi_get_gpu_device_uuid": "AMDSMI_STATUS_NO_PERM"}
    fake = FakeAmdSmi(parse_amd_profile(json.dumps(data)))
    fake.amdsmi_init()
    assert not hasattr(fake, "amdsmi_get_gpu_memory_partition")
    with pytest.raises(AmdSmiLibraryException) as err:
        fake.amdsmi_get_gpu_device_uuid(fake.amdsmi_get_processor_handles()[0])
    assert err.value.get_error_info() == "AMDSMI_STATUS_NO_PERM"
    assert fake.calls[-1] == "amdsmi_get_gpu_device_uuid"
