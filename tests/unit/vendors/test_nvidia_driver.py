"""NvidiaDriver over FakeNvml: the device handles it keeps, passes from several threads, a GPU lost later."""

from __future__ import annotations

import ctypes
import dataclasses
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpudra.model.inventory import DeviceKind, Inventory
from gpudra.vendors.base import DiscoveryError
from gpudra.vendors.mock.fake_nvml import FakeNvml, write_sysfs_tree
from gpudra.vendors.mock.profile import Profile, load_profile
from gpudra.vendors.nvidia.calls import Nvml
from gpudra.vendors.nvidia.discovery import Discovered, NvidiaDiscovery
from gpudra.vendors.nvidia.driver import NvidiaDriver

from .helpers import variant

OpenNvml = Callable[[Profile], tuple[NvidiaDriver, FakeNvml]]
TIMEOUT_WARNING = "nvmlDeviceGetBrand failed (NVMLError_Timeout: Timeout); value omitted"


def _slow_brand_on_gpu_1() -> Profile:
    """dgx-h100 where GPU 1's brand times out: every pass publishes 8 GPUs and exactly one warning."""
    return variant(
        "dgx-h100", lambda d: d["devices"][1].update(errors={"nvmlDeviceGetBrand": "NVML_ERROR_TIMEOUT"})
    )


def _lose_gpu(fake: FakeNvml, index: int) -> None:
    """From now on every call about GPU ``index`` answers GPU_IS_LOST."""
    devices = list(fake.profile.devices)
    devices[index] = dataclasses.replace(devices[index], errors={"*": pynvml.NVML_ERROR_GPU_IS_LOST})
    fake.profile = dataclasses.replace(fake.profile, devices=tuple(devices))


def _uuid_of(fake: FakeNvml, handle: Any) -> str:
    uuid: str = fake.nvmlDeviceGetUUID(handle)
    return uuid


def test_the_handles_are_those_of_every_device_discovered(open_nvml: OpenNvml) -> None:
    driver, fake = open_nvml(load_profile("h100-mig-mixed"))
    assert driver.handles == {}
    inventory = driver.discover()
    assert {d.kind for d in inventory.devices} == {DeviceKind.GPU, DeviceKind.MIG}
    assert set(driver.handles) == {d.uuid for d in inventory.devices}
    for device in inventory.devices:
        assert _uuid_of(fake, driver.handle(device.uuid)) == device.uuid
    assert driver.handle("GPU-not-on-this-node") is None
    assert fake.init_count == 1  # NVML stays initialised between passes


def test_a_gpu_lost_between_passes_leaves_the_inventory_and_the_handles(open_nvml: OpenNvml) -> None:
    driver, fake = open_nvml(load_profile("dgx-h100"))
    first = driver.discover()
    lost = first.devices[3].uuid
    assert driver.handle(lost) is not None
    _lose_gpu(fake, 3)
    second = driver.discover()
    assert [d.uuid for d in second.devices] == [d.uuid for d in first.devices if d.uuid != lost]
    assert len(second.warnings) == 1
    assert second.warnings[0].startswith(
        "GPU index 3 skipped: nvmlDeviceGetHandleByIndex: NVMLError_GpuIsLost"
    )
    assert driver.handle(lost) is None
    assert set(driver.handles) == {d.uuid for d in second.devices}


def test_a_failed_pass_keeps_the_previous_handles(open_nvml: OpenNvml) -> None:
    driver, fake = open_nvml(load_profile("dgx-h100"))
    inventory = driver.discover()
    before = driver.handles
    fake.profile = dataclasses.replace(fake.profile, errors={"nvmlDeviceGetCount": pynvml.NVML_ERROR_UNKNOWN})
    with pytest.raises(DiscoveryError, match="cannot count the GPUs: nvmlDeviceGetCount: NVMLError_Unknown"):
        driver.discover()
    assert driver.handles is before
    assert set(before) == {d.uuid for d in inventory.devices}


def test_close_forgets_the_handles(open_nvml: OpenNvml) -> None:
    driver, fake = open_nvml(load_profile("h100"))
    uuid = driver.discover().devices[0].uuid
    driver.close()
    assert (driver.handle(uuid), dict(driver.handles), fake.init_count) == (None, {}, 0)
    with pytest.raises(DiscoveryError, match="closed"):
        driver.device_count()


def test_two_threads_discovering_at_once_get_equal_complete_inventories(open_nvml: OpenNvml) -> None:
    driver, _ = open_nvml(_slow_brand_on_gpu_1())
    start = threading.Barrier(2)

    def passes() -> list[Inventory]:
        start.wait(timeout=10)
        return [driver.discover() for _ in range(5)]

    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(passes) for _ in range(2)]
        inventories = [inventory for f in futures for inventory in f.result(timeout=60)]
    reference = inventories[0]
    assert len(reference.devices) == 8
    assert reference.devices[1].brand is None
    assert reference.warnings == (f"GPU {reference.devices[1].uuid}: {TIMEOUT_WARNING}",)
    assert all(inventory == reference for inventory in inventories)
    assert set(driver.handles) == {d.uuid for d in reference.devices}


class _MeetingNvml(FakeNvml):
    """Once ``meeting`` is set, each discovery pass waits for the other one twice: before it reads its first
    GPU, and in nvmlSystemGetDriverVersion after it has read them all — so both passes are under way at once
    while they read every GPU."""

    meeting: threading.Barrier | None = None

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        if self.meeting is not None and index == 0:
            self.meeting.wait(timeout=10)
        return super().nvmlDeviceGetHandleByIndex(index)

    def nvmlSystemGetDriverVersion(self) -> str:
        if self.meeting is not None:
            self.meeting.wait(timeout=10)
        return super().nvmlSystemGetDriverVersion()


def test_passes_under_way_at_once_keep_their_warnings_apart(tmp_path: Path) -> None:
    profile = _slow_brand_on_gpu_1()
    write_sysfs_tree(tmp_path, profile)
    fake = _MeetingNvml(profile)
    nvml = Nvml(fake)
    nvml.init()
    discovery = NvidiaDiscovery(nvml, tmp_path)  # no driver lock: the passes really overlap
    reference = discovery.discover()  # also makes every handle: the fake hands them out without a lock
    fake.meeting = threading.Barrier(2)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(discovery.discover) for _ in range(2)]
        found: list[Discovered] = [f.result(timeout=60) for f in futures]
    nvml.shutdown()
    assert len(reference.inventory.warnings) == 1
    assert [f.inventory for f in found] == [reference.inventory] * 2
    assert [_addresses(f) for f in found] == [_addresses(reference)] * 2


def _addresses(found: Discovered) -> dict[str, int | None]:
    """UUID -> the address a handle holds (handles are new ctypes objects on every call)."""
    return {uuid: ctypes.cast(handle, ctypes.c_void_p).value for uuid, handle in found.handles.items()}
