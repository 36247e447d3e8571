"""AMD usage readings: the real AmdDriver over the fake amdsmi, and over a sysfs tree without amdsmi, with
the fakes' usage model on a clock the test turns."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gpudra.model.inventory import DeviceKind, Inventory
from gpudra.vendors.amd.driver import AmdDriver
from gpudra.vendors.mock.amd_profile import AmdProfile, load_amd_profile, parse_amd_profile
from gpudra.vendors.mock.fake_amd_sysfs import write_amd_sysfs, write_usage_files
from gpudra.vendors.mock.fake_amdsmi import FakeAmdSmi
from gpudra.vendors.mock.fake_usage import UsageModel
from gpudra.vendors.sysfs import pci_device_link

from .helpers import builtin_json

VRAM = 206141652992  # mi300x-8-spx-nps1's frame-buffer bank, as KFD reports it


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def _variant(name: str, edit: Callable[[dict[str, Any]], None]) -> AmdProfile:
    data = builtin_json(name)
    edit(data)
    return parse_amd_profile(json.dumps(data))


def _open(tmp_path: Path, profile: AmdProfile, usage: UsageModel) -> tuple[AmdDriver, Inventory]:
    write_amd_sysfs(tmp_path / "sys", profile)
    smi = FakeAmdSmi(profile, usage) if profile.amdsmi is not None else None
    driver = AmdDriver(tmp_path / "sys", smi)
    return driver, driver.discover()


def _wanted(inventory: Inventory) -> set[str]:
    return {d.uuid for d in inventory.devices} | {d.parent_uuid for d in inventory.devices if d.parent_uuid}


def test_amdsmi_reads_a_whole_gpu(tmp_path: Path) -> None:
    clock = Clock()
    usage = UsageModel(clock=clock)
    driver, inventory = _open(tmp_path, load_amd_profile("mi300x-8-spx-nps1"), usage)
    gpu = inventory.devices[0]
    usage.set_utilization(gpu.uuid, 0.4)
    driver.read_usage([gpu.uuid])
    clock.now += 5
    readings = driver.read_usage(_wanted(inventory))
    driver.close()
    assert len(readings) == 8
    r = readings[gpu.uuid]
    assert r.power_watts == 196.0  # round(60 + 340 * 0.4) watts, as amdsmi reports whole watts
    assert r.energy_joules == pytest.approx(196 * 5, abs=1e-4)  # accumulator steps x resolution
    assert r.utilization == 0.4
    assert r.memory_total_bytes == 196592 * (1 << 20)  # the profile's vram_size_mib
    assert r.memory_used_bytes == int(196592 * 0.85 * 0.4) * (1 << 20)
    assert readings[inventory.devices[1].uuid].utilization == 0.0


def test_amdsmi_partitions_get_their_own_activity_and_the_gpu_its_energy(tmp_path: Path) -> None:
    clock = Clock()
    usage = UsageModel(clock=clock)
    driver, inventory = _open(tmp_path, load_amd_profile("mi300x-8-cpx-nps4"), usage)
    parts = [d for d in inventory.devices if d.kind is DeviceKind.PARTITION]
    first = parts[0].parent_uuid
    assert first is not None
    mine = [p for p in parts if p.parent_uuid == first]
    usage.set_utilization(first, 0.5)  # the GPU: every partition of it ...
    usage.set_utilization(mine[3].uuid, 0.9)  # ... but this one
    driver.read_usage(_wanted(inventory))
    clock.now += 4
    readings = driver.read_usage(_wanted(inventory))
    driver.close()
    gpu = readings[first]
    assert (gpu.utilization, gpu.memory_used_bytes) == (None, None)  # activity and VRAM are per partition
    assert gpu.power_watts == 230.0
    assert gpu.energy_joules == pytest.approx(920, abs=1e-4)
    for part in mine:
        r = readings[part.uuid]
        assert (r.energy_joules, r.power_watts) == (None, None)  # never the GPU's, copied
        assert r.utilization == (0.9 if part is mine[3] else 0.5)
        assert r.memory_total_bytes == 196592 // 8 * (1 << 20)
    assert len([u for u in readings if u.startswith(first)]) == 1 + 8


def test_a_missing_or_failing_amdsmi_function_costs_that_value(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["amdsmi"]["missing_functions"] = ["amdsmi_get_energy_count"]
        data["amdsmi"]["errors"] = {"amdsmi_get_gpu_activity": "AMDSMI_STATUS_NOT_SUPPORTED"}

    driver, inventory = _open(tmp_path, _variant("mi300x-8-spx-nps1", edit), UsageModel(clock=Clock()))
    r = driver.read_usage([inventory.devices[0].uuid])[inventory.devices[0].uuid]
    driver.close()
    assert (r.energy_joules, r.utilization) == (None, None)
    assert r.power_watts == 60.0
    assert r.memory_used_bytes == 0


def _no_amdsmi(name: str) -> AmdProfile:
    def edit(data: dict[str, Any]) -> None:
        data["amdsmi"] = None

    return _variant(name, edit)


def test_without_amdsmi_the_gpus_sysfs_files_are_read(tmp_path: Path) -> None:
    clock = Clock()
    usage = UsageModel(clock=clock)
    profile = _no_amdsmi("mi300x-8-spx-nps1")
    driver, inventory = _open(tmp_path, profile, usage)
    gpu = inventory.devices[0]
    assert gpu.uuid.startswith("AMD-")  # the UUID gpudra gives without amdsmi: the usage file's key too
    usage.set_utilization(gpu.uuid, 0.75)
    write_usage_files(tmp_path / "sys", profile, usage)
    clock.now += 2
    write_usage_files(tmp_path / "sys", profile, usage)
    r = driver.read_usage([gpu.uuid])[gpu.uuid]
    assert r.utilization == 0.75
    assert r.power_watts == pytest.approx(315.0)  # hwmon microwatts
    assert r.energy_joules == pytest.approx(630.0)  # hwmon microjoules
    assert r.memory_total_bytes == VRAM  # the KFD frame-buffer bank of the profile
    assert r.memory_used_bytes == int(VRAM * 0.85 * 0.75)
    base = pci_device_link(tmp_path / "sys", gpu.pci.bus_id if gpu.pci else "")
    hwmon = next((base / "hwmon").iterdir())
    (hwmon / "power1_average").unlink()
    (hwmon / "power1_input").write_text("123000000\n")  # newer kernels: the current power only
    (base / "gpu_busy_percent").write_text("not a number\n")
    r = driver.read_usage([gpu.uuid])[gpu.uuid]
    driver.close()
    assert (r.power_watts, r.utilization) == (123.0, None)


def test_without_amdsmi_partitions_get_nothing_and_their_gpu_everything(tmp_path: Path) -> None:
    usage = UsageModel(clock=Clock())
    profile = _no_amdsmi("mi300x-8-cpx-nps4")
    driver, inventory = _open(tmp_path, profile, usage)
    write_usage_files(tmp_path / "sys", profile, usage)
    readings = driver.read_usage(_wanted(inventory))
    driver.close()
    parents = {d.parent_uuid for d in inventory.devices if d.parent_uuid}
    assert set(readings) == parents  # amdgpu's files are per PCI function: the GPU's, not a partition's
    assert all(r.power_watts == 60.0 and r.utilization == 0.0 for r in readings.values())
