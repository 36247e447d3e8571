"""Usage readings over NVML: the real NvidiaDriver over the fake pynvml, whose usage model runs on a clock
the test turns (energy integrates power over it)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from gpudra.model.inventory import DeviceKind
from gpudra.vendors.mock.driver import open_mock_profile
from gpudra.vendors.mock.fake_nvml import FakeNvml, write_sysfs_tree
from gpudra.vendors.mock.fake_usage import UsageModel
from gpudra.vendors.mock.profile import Profile, load_profile
from gpudra.vendors.nvidia.calls import Nvml
from gpudra.vendors.nvidia.driver import NvidiaDriver
from gpudra.vendors.nvidia.usage import RETRY_ABSENT, NvmlUsage

from .helpers import builtin_json, variant

H100 = "GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _open(tmp_path: Path, profile: Profile, clock: Clock) -> tuple[NvidiaDriver, FakeNvml]:
    write_sysfs_tree(tmp_path / "sys", profile)
    fake = FakeNvml(profile, usage=UsageModel(clock=clock))
    driver = NvidiaDriver(fake, sysfs_root=tmp_path / "sys")
    driver.discover()
    return driver, fake


def test_a_busy_gpu_draws_the_modelled_power_and_its_energy_integrates_it(tmp_path: Path) -> None:
    clock = Clock()
    driver, fake = _open(tmp_path, load_profile("h100"), clock)
    fake.usage.set_utilization(H100, 0.5)
    first = driver.read_usage([H100])[H100]
    clock.now += 10
    second = driver.read_usage([H100])[H100]
    driver.close()
    assert first.energy_joules == 0.0  # the fake's counter starts with its first reading
    assert second.power_watts == pytest.approx(60 + (400 - 60) * 0.5)  # the profile has no usage: defaults
    assert second.energy_joules == pytest.approx(230 * 10)  # power x time, joules from NVML's millijoules
    assert second.utilization == 0.5
    assert second.memory_total_bytes == 85520809984
    assert second.memory_used_bytes == 503316480 + int((85520809984 - 503316480) * 0.85 * 0.5)


def test_the_profile_sets_utilisation_and_the_power_model(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["devices"][0]["usage"] = {"utilization": 0.25, "idle_watts": 100, "max_watts": 700}

    driver, _ = _open(tmp_path, variant("h100", edit), Clock())
    reading = driver.read_usage([H100])[H100]
    driver.close()
    assert (reading.utilization, reading.power_watts) == (0.25, 250.0)


def test_mig_devices_report_memory_only_and_their_gpu_no_utilisation(tmp_path: Path) -> None:
    clock = Clock()
    driver, fake = _open(tmp_path, load_profile("h100-mig-mixed"), clock)
    inventory = driver.discover()
    migs = [d for d in inventory.devices if d.kind is DeviceKind.MIG]
    parent = migs[0].parent_uuid
    assert parent is not None
    fake.usage.set_utilization(parent, 1.0)
    driver.read_usage([parent])
    clock.now += 2
    readings = driver.read_usage([parent, *(m.uuid for m in migs)])
    driver.close()
    for mig in migs:
        r = readings[mig.uuid]
        assert (r.energy_joules, r.power_watts, r.utilization) == (None, None, None)  # per GPU in NVML
        assert r.memory_total_bytes is not None
        assert r.memory_total_bytes == mig.memory_bytes
        assert r.memory_used_bytes == int(r.memory_total_bytes * 0.85)
    gpu = readings[parent]
    assert gpu.utilization is None  # NVML reports no utilisation with MIG mode on
    assert gpu.power_watts == 400.0
    assert gpu.energy_joules == pytest.approx(800.0)


def test_a_value_nvml_does_not_have_is_left_out_and_not_asked_for_again(tmp_path: Path) -> None:
    def edit(data: dict[str, Any]) -> None:  # a GPU older than Volta: no energy counter
        data["devices"][0]["errors"] = {"nvmlDeviceGetTotalEnergyConsumption": "NVML_ERROR_NOT_SUPPORTED"}

    driver, fake = _open(tmp_path, variant("h100", edit), Clock())
    readings = [driver.read_usage([H100])[H100] for _ in range(3)]
    asked = fake.calls.count("nvmlDeviceGetTotalEnergyConsumption")
    for _ in range(RETRY_ABSENT):
        driver.read_usage([H100])
    driver.close()
    assert all(r.energy_joules is None and r.power_watts == 60.0 for r in readings)
    assert asked == 1
    assert fake.calls.count("nvmlDeviceGetTotalEnergyConsumption") == 2  # asked again after RETRY_ABSENT


def test_a_lost_gpu_is_left_out_and_an_odd_error_costs_one_value(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["devices"][0]["errors"] = {"*": "NVML_ERROR_GPU_IS_LOST"}
        data["devices"][1]["errors"] = {"nvmlDeviceGetPowerUsage": "NVML_ERROR_TIMEOUT"}

    profile = variant("dgx-h100", edit)
    lost, slow = profile.devices[0].uuid, profile.devices[1].uuid
    assert lost is not None
    assert slow is not None
    nvml = Nvml(FakeNvml(profile, usage=UsageModel(clock=Clock())))
    nvml.init()
    usage = NvmlUsage(nvml, lambda uuid: None)  # no discovery handles: every device is found by its UUID
    with caplog.at_level(logging.WARNING):
        first = usage.read([lost, slow, "GPU-not-on-this-node"])
        second = usage.read([lost, slow])
    assert set(first) == set(second) == {slow}  # the lost GPU and the unknown one are left out
    assert first[slow].power_watts is None
    assert first[slow].energy_joules == 0.0
    warnings = [r.getMessage() for r in caplog.records if "nvmlDeviceGetPowerUsage" in r.getMessage()]
    assert len(warnings) == 1
    assert "TIMEOUT" in warnings[0]


def test_a_closed_driver_reads_nothing(tmp_path: Path) -> None:
    driver, _ = _open(tmp_path, load_profile("h100"), Clock())
    driver.close()
    assert driver.read_usage([H100]) == {}


def test_editing_the_mock_profile_file_changes_the_utilisation(tmp_path: Path) -> None:
    data = builtin_json("h100")
    data["devices"][0]["usage"] = {"utilization": 0.1}
    file = tmp_path / "node.json"
    file.write_text(json.dumps(data))
    driver = open_mock_profile(str(file), tmp_path / "claims")
    try:
        driver.discover()
        before = driver.read_usage([H100])[H100].utilization
        data["devices"][0]["usage"] = {"utilization": 0.6}
        file.write_text(json.dumps(data, indent=1))  # another size: seen at the next discovery pass
        driver.discover()
        after = driver.read_usage([H100])[H100].utilization
    finally:
        driver.close()
    assert (before, after) == (0.1, 0.6)
