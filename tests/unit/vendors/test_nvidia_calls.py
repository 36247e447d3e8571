"""The NVML call layer (one error type of ours) and discovery's reading policy over it, through the fake."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import pynvml
import pytest

from gpudra.vendors.mock.fake_nvml import FakeNvml
from gpudra.vendors.mock.profile import load_profile
from gpudra.vendors.nvidia.calls import FUNCTION_NOT_FOUND, Nvml, NvmlError
from gpudra.vendors.nvidia.reader import DeviceFailure, Reader

CALL = "nvmlSystemGetDriverVersion"


def _nvml(**errors: int) -> Nvml:
    """An initialised call layer over the h100 profile with ``errors`` injected into system calls."""
    profile = load_profile("h100")
    nvml = Nvml(FakeNvml(dataclasses.replace(profile, errors=errors)))
    nvml.init()
    return nvml


@pytest.mark.parametrize(
    ("code", "name", "absent", "fatal", "text"),
    [
        (pynvml.NVML_ERROR_NOT_SUPPORTED, "NOT_SUPPORTED", True, False, "NVMLError_NotSupported"),
        (pynvml.NVML_ERROR_NO_PERMISSION, "NO_PERMISSION", True, False, "NVMLError_NoPermission"),
        (pynvml.NVML_ERROR_TIMEOUT, "TIMEOUT", False, False, "NVMLError_Timeout"),
        (pynvml.NVML_ERROR_GPU_IS_LOST, "GPU_IS_LOST", False, True, "NVMLError_GpuIsLost"),
        (pynvml.NVML_ERROR_UNKNOWN, "UNKNOWN", False, True, "NVMLError_Unknown"),
    ],
)
def test_a_pynvml_error_is_raised_as_ours_with_its_name(
    code: int, name: str, absent: bool, fatal: bool, text: str
) -> None:
    with pytest.raises(NvmlError) as caught:
        _nvml(**{CALL: code}).call(CALL)
    err = caught.value
    assert (err.name, err.function, err.code) == (name, CALL, code)
    assert (err.value_absent, err.device_fatal) == (absent, fatal)
    assert err.message.startswith(f"{text}: ")
    assert str(err) == f"{CALL}: {err.message}"
    assert isinstance(err.__cause__, pynvml.NVMLError)


@pytest.mark.parametrize("module", [pynvml, FakeNvml(load_profile("h100"))], ids=["pynvml", "fake"])
def test_a_missing_function_is_function_not_found(module: Any) -> None:
    nvml = Nvml(module)  # no nvmlInit: a missing function fails before anything is loaded
    assert not nvml.has("nvmlDeviceGetTheAnswer")
    with pytest.raises(NvmlError) as caught:
        nvml.call("nvmlDeviceGetTheAnswer", 42)
    err = caught.value
    assert (err.name, err.function, err.code) == (FUNCTION_NOT_FOUND, "nvmlDeviceGetTheAnswer", None)
    assert (err.value_absent, err.device_fatal) == (True, False)
    assert "nvmlDeviceGetTheAnswer" in err.message


def test_a_call_before_init_is_uninitialized_and_fatal() -> None:
    with pytest.raises(NvmlError) as caught:
        Nvml(FakeNvml(load_profile("h100"))).call("nvmlDeviceGetCount")
    assert (caught.value.name, caught.value.device_fatal) == ("UNINITIALIZED", True)


def test_an_unnamed_code_is_named_by_its_number() -> None:
    class NewerNvml(FakeNvml):
        def nvmlDeviceGetFutureThing(self) -> int:
            raise pynvml.NVMLError(4242)  # a code this pynvml has no name for

    with pytest.raises(NvmlError) as caught:
        Nvml(NewerNvml(load_profile("h100"))).call("nvmlDeviceGetFutureThing")
    assert (caught.value.name, caught.value.code) == ("4242", 4242)
    assert (caught.value.value_absent, caught.value.device_fatal) == (False, False)


def test_a_successful_call_returns_the_value_and_constants_come_from_the_module() -> None:
    nvml = _nvml()
    assert nvml.call(CALL) == "580.159.04"
    assert nvml.has(CALL)
    assert nvml.constant("NVML_DEVICE_MIG_ENABLE", 7) == pynvml.NVML_DEVICE_MIG_ENABLE
    assert nvml.constant("NVML_NO_SUCH_CONSTANT", 7) == 7


def test_shutdown_failure_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    nvml = _nvml(nvmlShutdown=pynvml.NVML_ERROR_UNKNOWN)
    with caplog.at_level(logging.WARNING):
        nvml.shutdown()
    assert "nvmlShutdown failed: NVMLError_Unknown" in caplog.text


def test_reader_absent_value_is_none_without_a_warning() -> None:
    reader = Reader(_nvml(**{CALL: pynvml.NVML_ERROR_NOT_SUPPORTED}))
    assert reader.outcome(CALL, what="driver version") == (None, "NOT_SUPPORTED")
    assert reader.outcome("nvmlDeviceGetTheAnswer") == (None, FUNCTION_NOT_FOUND)
    assert reader.warnings == ()


def test_reader_other_error_is_none_with_a_warning_unless_expected() -> None:
    reader = Reader(_nvml(**{CALL: pynvml.NVML_ERROR_TIMEOUT}))
    assert reader.value(CALL, what="driver version") is None
    assert reader.outcome(CALL, expected=("TIMEOUT",)) == (None, "TIMEOUT")
    assert reader.warnings == (f"driver version: {CALL} failed (NVMLError_Timeout: Timeout); value omitted",)


def test_reader_device_fatal_error_is_a_device_failure() -> None:
    reader = Reader(_nvml(**{CALL: pynvml.NVML_ERROR_GPU_IS_LOST}))
    with pytest.raises(DeviceFailure, match=f"^{CALL}: NVMLError_GpuIsLost: ") as caught:
        reader.value(CALL)
    assert isinstance(caught.value.__cause__, NvmlError)
    assert reader.warnings == ()


def test_each_reader_has_its_own_warnings() -> None:
    nvml = _nvml(**{CALL: pynvml.NVML_ERROR_TIMEOUT})
    first, second = Reader(nvml), Reader(nvml)
    first.value(CALL, what="first")
    second.value(CALL, what="second")
    second.warn("only the second pass")
    assert [w.split(":")[0] for w in first.warnings] == ["first"]
    assert [w.split(":")[0] for w in second.warnings] == ["second", "only the second pass"]
