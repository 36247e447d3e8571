"""The fake pynvml's event sets and ECC counter, and the profile fields that feed them (named when wrong)."""

from __future__ import annotations

import ctypes
import json
from typing import Any

import pynvml
import pytest

from gpudra.vendors.mock.fake_nvml import FakeNvml
from gpudra.vendors.mock.profile import Profile, ProfileError, parse_profile

from .helpers import builtin_json

Data = dict[str, Any]


def _profile(data: Data) -> Profile:
    return parse_profile(json.dumps(data), origin="test profile")


def _uuid(data: Data, index: int) -> str:
    uuid: str = data["devices"][index]["uuid"]
    return uuid


def _address(handle: Any) -> int | None:
    value: int | None = ctypes.cast(handle, ctypes.c_void_p).value
    return value


def _xid(event_id: str, xid: int, **instance: int) -> Data:
    return {"id": event_id, "type": "xid", "value": xid, **instance}


def test_the_fake_event_calls_speak_pynvml() -> None:
    data = builtin_json("pcie-l4-x2")
    data["devices"][0]["ecc_uncorrected_volatile"] = 2
    data["devices"][0]["events"] = [_xid("before", 79)]  # happened before anyone listened
    fake = FakeNvml(_profile(data))
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    event_set = fake.nvmlEventSetCreate()
    assert isinstance(event_set, pynvml.c_nvmlEventSet_t)
    assert fake.nvmlDeviceGetSupportedEventTypes(handle) == (
        pynvml.nvmlEventTypeXidCriticalError | pynvml.nvmlEventTypeDoubleBitEccError
        | pynvml.nvmlEventTypeSingleBitEccError
    )  # fmt: skip
    fake.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, event_set)
    with pytest.raises(pynvml.NVMLError_Timeout):
        fake.nvmlEventSetWait_v2(event_set, 0)
    data["devices"][0]["events"].append(_xid("now", 48, gpu_instance=1, compute_instance=2))
    fake.serve(_profile(data))
    event = fake.nvmlEventSetWait_v2(event_set, 1000)
    assert isinstance(event, pynvml.c_nvmlEventData_t)
    assert (event.eventType, event.eventData, event.gpuInstanceId, event.computeInstanceId) == (
        pynvml.nvmlEventTypeXidCriticalError, 48, 1, 2
    )
    assert fake.nvmlDeviceGetUUID(event.device) == _uuid(data, 0)
    with pytest.raises(pynvml.NVMLError_Timeout):  # "before" is not delivered
        fake.nvmlEventSetWait_v2(event_set, 0)
    by_uuid = fake.nvmlDeviceGetHandleByUUID(_uuid(data, 1))
    assert _address(by_uuid) == _address(fake.nvmlDeviceGetHandleByIndex(1))
    unc, vol = pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC
    assert fake.nvmlDeviceGetTotalEccErrors(handle, unc, vol) == 2
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetTotalEccErrors(handle, pynvml.NVML_MEMORY_ERROR_TYPE_CORRECTED, vol)
    with pytest.raises(pynvml.NVMLError_NotSupported):  # the profile has no ECC value for GPU 1
        fake.nvmlDeviceGetTotalEccErrors(fake.nvmlDeviceGetHandleByIndex(1), unc, vol)
    with pytest.raises(pynvml.NVMLError_NotFound):
        fake.nvmlDeviceGetHandleByUUID("GPU-not-here")
    fake.nvmlEventSetFree(event_set)
    with pytest.raises(pynvml.NVMLError_InvalidArgument):
        fake.nvmlEventSetWait_v2(event_set, 0)


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({"id": "x", "type": "xid"}, r"devices\[0\]\.events\[0\]\.value: an xid event needs the Xid"),
        ({"id": "x", "type": "reset"}, r"devices\[0\]\.events\[0\]\.type: expected one of"),
        ({"type": "double_bit_ecc"}, r"devices\[0\]\.events\[0\]\.id: required"),
        ({"id": "x", "type": "double_bit_ecc", "value": 3}, r"\.value: only an xid event has a value"),
        (_xid("x", 1, compute_instance=0), r"\.compute_instance: needs gpu_instance"),
        (_xid("x", 1, gpu_instance=-1), r"\.gpu_instance: must not be negative"),
        (_xid("x", 1, pid=4), r"devices\[0\]\.events\[0\]: unknown key\(s\) 'pid'"),
    ],
)
def test_a_bad_event_is_named(event: Data, error: str) -> None:
    data = builtin_json("pcie-l4-x2")
    data["devices"][0]["events"] = [event]
    with pytest.raises(ProfileError, match=error):
        _profile(data)


def test_bad_health_fields_are_named() -> None:
    data = builtin_json("pcie-l4-x2")
    data["devices"][0]["events"] = [_xid("same", 1)]
    data["devices"][1]["events"] = [_xid("same", 2)]
    with pytest.raises(ProfileError, match=r"devices\[1\]\.events\[0\]\.id: 'same' is also the id of dev"):
        _profile(data)
    data = builtin_json("pcie-l4-x2")
    data["devices"][1]["event_types"] = ["xid", "thermal"]
    with pytest.raises(ProfileError, match=r"devices\[1\]\.event_types: unknown event type\(s\) \['therm"):
        _profile(data)
    data = builtin_json("pcie-l4-x2")
    data["devices"][1]["ecc_uncorrected_volatile"] = -2
    with pytest.raises(ProfileError, match=r"devices\[1\]\.ecc_uncorrected_volatile: must not be negative"):
        _profile(data)
