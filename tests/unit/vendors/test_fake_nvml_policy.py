"""The fake GPUs' compute policy: compute modes through the fake pynvml, the time-slice through the fake of
``nvidia-smi compute-policy``, both kept in a state file that another fake (a plugin started again) reads."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import pynvml
import pytest

from gpudra.vendors.mock.fake_nvml import FakeNvml
from gpudra.vendors.mock.fake_nvml_policy import FakeTimeSlicer, load_policy
from gpudra.vendors.mock.profile import ProfileError, load_profile
from gpudra.vendors.nvidia.timeslice import TimeSliceError

GPU0: Final = "GPU-0b100000-0000-0000-0000-000000000000"


def fake(path: Path | None, profile: str = "dgx-h100") -> FakeNvml:
    nvml = FakeNvml(load_profile(profile), policy_file=path)
    nvml.nvmlInit()
    return nvml


def test_settings_outlive_the_fake_that_set_them(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    first = fake(path)
    handle = first.nvmlDeviceGetHandleByIndex(0)
    assert first.nvmlDeviceGetComputeMode(handle) == pynvml.NVML_COMPUTEMODE_DEFAULT
    first.nvmlDeviceSetComputeMode(handle, pynvml.NVML_COMPUTEMODE_EXCLUSIVE_PROCESS)
    FakeTimeSlicer(first).set_timeslice(GPU0, 2)
    assert load_policy(path) == {GPU0: {"computeMode": 3, "timeslice": 2}}
    second = fake(path)
    assert second.nvmlDeviceGetComputeMode(second.nvmlDeviceGetHandleByIndex(0)) == 3
    assert FakeTimeSlicer(second).timeslice(GPU0) == 2
    second.nvmlDeviceSetComputeMode(second.nvmlDeviceGetHandleByIndex(0), 0)
    FakeTimeSlicer(second).set_timeslice(GPU0, 0)
    assert load_policy(path) == {}  # the defaults are not written down


def test_what_nvml_and_nvidia_smi_refuse(tmp_path: Path) -> None:
    nvml = fake(None)
    handle = nvml.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceSetComputeMode(handle, 7)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceSetComputeMode(handle, 1)  # EXCLUSIVE_THREAD: gone from NVML
    slicer = FakeTimeSlicer(nvml)
    with pytest.raises(TimeSliceError, match="Invalid timeslice value 4"):
        slicer.set_timeslice(GPU0, 4)
    with pytest.raises(TimeSliceError, match="No devices were found for GPU-nope"):
        slicer.set_timeslice("GPU-nope", 1)


def test_a_mig_device_has_no_compute_mode_of_its_own() -> None:
    nvml = fake(None, "h100-mig-mixed")
    mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(nvml.nvmlDeviceGetHandleByIndex(0), 0)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetComputeMode(mig)


def test_a_damaged_state_file_names_itself(tmp_path: Path) -> None:
    path = tmp_path / "policy.json"
    path.write_text('{"version": 1, "gpus": {"GPU-x": {"computeMode": "3"}}}')
    with pytest.raises(ProfileError, match=r"policy\.json.*gpus\.GPU-x\.computeMode: not a setting"):
        fake(path)
