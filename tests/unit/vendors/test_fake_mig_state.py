"""The fake's MIG state outlives its process through a state file, as MIG instances outlive the plugin on a
real GPU; a damaged file is refused by name; a hardware change (profile swap) keeps what a real GPU would."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpudra.vendors.mock.fake_mig_state import STATE_VERSION, MigStateStore
from gpudra.vendors.mock.fake_nvml import FakeNvml
from gpudra.vendors.mock.node import FakeNode
from gpudra.vendors.mock.profile import Profile, ProfileError, load_profile

from .helpers import variant

GI_1G, GI_3G = 19, 9
CI_INDEX = {
    GI_1G: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE,
    GI_3G: pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE,
}
H100 = "GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63"


def _open(profile: Profile | str, state: Path | None) -> tuple[FakeNvml, Any]:
    nvml = FakeNvml(load_profile(profile) if isinstance(profile, str) else profile, state)
    nvml.nvmlInit()
    return nvml, nvml.nvmlDeviceGetHandleByIndex(0)


def _mig_device(nvml: FakeNvml, gpu: Any, profile_id: int, start: int, size: int) -> str:
    """Create a GPU instance at the placement with its full-size compute instance; the MIG device's UUID."""
    placement = pynvml.c_nvmlGpuInstancePlacement_t(start, size)
    gi = nvml.nvmlDeviceCreateGpuInstanceWithPlacement(gpu, profile_id, ctypes.byref(placement))
    info = nvml.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, CI_INDEX[profile_id], 0)
    ci = nvml.nvmlGpuInstanceCreateComputeInstance(gi, info.id)
    ci_info = nvml.nvmlComputeInstanceGetInfo(ci)
    gi_id = nvml.nvmlGpuInstanceGetInfo(gi).id
    for i in range(nvml.nvmlDeviceGetMaxMigDeviceCount(gpu)):
        mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)
        if (nvml.nvmlDeviceGetGpuInstanceId(mig), nvml.nvmlDeviceGetComputeInstanceId(mig)) == (
            gi_id,
            ci_info.id,
        ):
            return str(nvml.nvmlDeviceGetUUID(mig))
    raise AssertionError("the created MIG device is not enumerated")


def _listed(nvml: FakeNvml, gpu: Any) -> list[tuple[str, int, int]]:
    """(UUID, GI id, GI placement start) of every MIG device, in index order."""
    found = []
    for i in range(nvml.nvmlDeviceGetMaxMigDeviceCount(gpu)):
        try:
            mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, i)
        except pynvml.NVMLError_NotFound:
            break
        gi = nvml.nvmlDeviceGetGpuInstanceById(gpu, nvml.nvmlDeviceGetGpuInstanceId(mig))
        found.append((nvml.nvmlDeviceGetUUID(mig), nvml.nvmlGpuInstanceGetInfo(gi).id,
                      nvml.nvmlGpuInstanceGetInfo(gi).placement.start))  # fmt: skip
    return found


def test_a_second_process_sees_the_instances(tmp_path: Path) -> None:
    state = tmp_path / "mig.json"
    first, gpu = _open("h100", state)
    assert not state.exists()  # nothing changed yet: fresh hardware
    first.nvmlDeviceSetMigMode(gpu, 1)
    uuid = _mig_device(first, gpu, GI_3G, 4, 4)
    saved = json.loads(state.read_text())
    assert saved["version"] == STATE_VERSION
    assert saved["gpus"][H100]["compute_instances"][0]["uuid"] == uuid
    # the plugin is killed here (no shutdown, no clean-up) and starts again over the same hardware
    second, gpu2 = _open("h100", state)
    assert second.nvmlDeviceGetMigMode(gpu2) == [1, 1]
    assert _listed(second, gpu2) == [(uuid, 2, 4)]
    with pytest.raises(pynvml.NVMLError_InsufficientResources):  # its slices are still taken
        second.nvmlDeviceCreateGpuInstanceWithPlacement(
            gpu2, GI_3G, ctypes.byref(pynvml.c_nvmlGpuInstancePlacement_t(4, 4))
        )
    gi = second.nvmlDeviceGetGpuInstanceById(gpu2, 2)
    second.nvmlComputeInstanceDestroy(second.nvmlGpuInstanceGetComputeInstanceById(gi, 0))
    second.nvmlGpuInstanceDestroy(gi)
    third, gpu3 = _open("h100", state)
    assert _listed(third, gpu3) == []
    assert _mig_device(third, gpu3, GI_3G, 4, 4) != uuid  # the creation counter was kept: a new UUID


def test_a_pending_mode_survives_the_process(tmp_path: Path) -> None:
    state = tmp_path / "mig.json"
    first, gpu = _open("dgx-a100", state)
    assert first.nvmlDeviceSetMigMode(gpu, 1) == pynvml.NVML_ERROR_RESET_REQUIRED
    second, gpu2 = _open("dgx-a100", state)
    assert second.nvmlDeviceGetMigMode(gpu2) == [0, 1]
    second.reset_gpu(0)
    third, gpu3 = _open("dgx-a100", state)
    assert third.nvmlDeviceGetMigMode(gpu3) == [1, 1]


def test_without_a_file_the_state_is_this_objects_own(tmp_path: Path) -> None:
    first, gpu = _open("h100", None)
    first.nvmlDeviceSetMigMode(gpu, 1)
    second, gpu2 = _open("h100", None)
    assert second.nvmlDeviceGetMigMode(gpu2) == [0, 0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "expected a JSON object"),
        (json.dumps({"version": 99, "gpus": {}}), "version: 99 is not a version"),
        (json.dumps({"version": 1, "serial": 0}), "gpus: required"),
        (json.dumps({"version": 1, "serial": 0, "gpus": {"GPU-x": {"mode": "on"}}}), "gpus['GPU-x'].mode"),
        (
            json.dumps({"version": 1, "serial": 0, "gpus": {"GPU-x": {"gpu_instances": [{"id": 1}]}}}),
            "gpus['GPU-x'].gpu_instances[0].profile_id: required",
        ),
    ],
)
def test_a_damaged_file_is_refused_by_name(tmp_path: Path, text: str, message: str) -> None:
    state = tmp_path / "mig.json"
    state.write_text(text)
    with pytest.raises(ProfileError, match=r"mig\.json") as caught:
        FakeNvml(load_profile("h100"), state)
    assert message in str(caught.value)


def test_an_unwritable_file_fails_the_call_and_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    folder.mkdir()
    nvml, gpu = _open("h100", folder / "mig.json")
    folder.rmdir()
    folder.write_text("")  # the state file's directory is a file now
    with pytest.raises(pynvml.NVMLError_Unknown):
        nvml.nvmlDeviceSetMigMode(gpu, 1)
    assert nvml.nvmlDeviceGetMigMode(gpu) == [0, 0]


def test_a_profile_swap_keeps_what_the_hardware_keeps(tmp_path: Path) -> None:
    state = tmp_path / "mig.json"
    nvml, gpu0 = _open("dgx-h100", state)
    gpu1 = nvml.nvmlDeviceGetHandleByIndex(1)
    for gpu in (gpu0, gpu1):
        nvml.nvmlDeviceSetMigMode(gpu, 1)
    kept = _mig_device(nvml, gpu0, GI_1G, 0, 1)
    also_kept = _mig_device(nvml, gpu1, GI_1G, 0, 1)

    def gpu1_mode(mode: list[int]) -> Any:
        def edit(data: dict[str, Any]) -> None:
            data["devices"][1].update(mig_mode=mode, max_mig_device_count=7 if mode[0] else 0)
            data["devices"][2]["errors"] = {"nvmlDeviceGetBrand": "NVML_ERROR_NO_PERMISSION"}

        return edit

    nvml.serve(variant("dgx-h100", gpu1_mode([1, 1])))  # GPU 1 stays in MIG mode; GPU 2: unrelated
    assert _listed(nvml, gpu0) == [(kept, 7, 0)]
    assert _listed(nvml, gpu1) == [(also_kept, 7, 0)]
    nvml.serve(variant("dgx-h100", gpu1_mode([0, 0])))  # GPU 1 now reconfigured without MIG
    assert nvml.nvmlDeviceGetMigMode(gpu1) == [0, 0]
    assert _listed(nvml, gpu0) == [(kept, 7, 0)]
    assert list(json.loads(state.read_text())["gpus"]) == ["GPU-0b100000-0000-0000-0000-000000000000"]
    assert _listed(*_open("dgx-h100", state)) == [(kept, 7, 0)]  # and so says the file

    def without_gpu_0(data: dict[str, Any]) -> None:
        del data["devices"][0]
        for index, device in enumerate(data["devices"]):
            device["index"] = index
        data["p2p_status"] = {}

    nvml.serve(variant("dgx-h100", without_gpu_0))
    assert json.loads(state.read_text())["gpus"] == {}


def test_a_new_premade_layout_drops_what_clashes() -> None:
    nvml, gpu = _open("h100", None)
    nvml.nvmlDeviceSetMigMode(gpu, 1)
    kept = _mig_device(nvml, gpu, GI_1G, 0, 1)
    clash = _mig_device(nvml, gpu, GI_1G, 5, 1)

    def premade(data: dict[str, Any]) -> None:
        device = data["devices"][0]
        device.update(mig_mode=[1, 1], max_mig_device_count=7, mig_devices=[{
            "uuid": "MIG-5ea1ed00-0000-5000-8000-000000000000",
            "gpu_instance": {"id": 2, "profile_id": GI_3G, "placement": {"start": 4, "size": 4}},
            "compute_instance": {"id": 0, "profile_id": 2, "placement": {"start": 0, "size": 3}},
        }])  # fmt: skip

    nvml.serve(variant("h100", premade))  # MIG stays on, now with a pre-made 3g.40gb at 4:4
    assert _listed(nvml, gpu) == [("MIG-5ea1ed00-0000-5000-8000-000000000000", 2, 4), (kept, 7, 0)]
    assert clash not in [u for u, _, _ in _listed(nvml, gpu)]  # 5:1 overlaps the new 4:4


def test_the_store_round_trips(tmp_path: Path) -> None:
    nvml, gpu = _open("h100", tmp_path / "mig.json")
    nvml.nvmlDeviceSetMigMode(gpu, 1)
    _mig_device(nvml, gpu, GI_3G, 0, 4)
    nvml.set_processes(0, 1, 0, 3)
    assert MigStateStore(tmp_path / "mig.json").load() == nvml.mig_state
    assert nvml.mig_state.gpus[H100].processes == {(1, 0): 3}


def test_a_fake_node_passes_its_state_file_on(tmp_path: Path) -> None:
    state = tmp_path / "mig.json"
    node = FakeNode(load_profile("h100"), tmp_path / "node", mig_state=state)
    assert node.nvml is not None
    node.nvml.nvmlDeviceSetMigMode(node.nvml.nvmlDeviceGetHandleByIndex(0), 1)
    node.close()
    again = FakeNode(load_profile("h100"), tmp_path / "node2", mig_state=state)
    assert again.nvml is not None
    assert again.nvml.nvmlDeviceGetMigMode(again.nvml.nvmlDeviceGetHandleByIndex(0)) == [1, 1]
    assert any(d.mig_enabled for d in again.driver.discover().devices)
    again.close()
