"""Editing the profile file of a running mock is a hardware change: the next discovery pass sees it.

Every test drives the mock as an integration test drives ``gpudra run --backend mock --profile <file>``:
it edits the profile file and calls the driver's public methods, nothing else.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpudra.model.inventory import DeviceKind, Inventory
from gpudra.vendors.base import VendorDriver
from gpudra.vendors.select import open_driver

from .helpers import builtin_json
from .profile_edit import Json, ProfileFileEditor, gi_profile_row, mig_device

OpenFileMock = Callable[[str], tuple[VendorDriver, ProfileFileEditor]]
HOTSWAP = "gpudra.vendors.mock.hotswap"
MIXED_MIG = "MIG-0d100000-0000-5000-8000-00000000000"  # + GI id: h100-mig-mixed's MIG UUIDs on GPU 0


@pytest.fixture
def file_mock(tmp_path: Path) -> Iterator[OpenFileMock]:
    """``--backend mock --profile <tmp>/<name>.json``, the file a copy of built-in profile ``name``."""
    opened: list[VendorDriver] = []

    def _open(name: str) -> tuple[VendorDriver, ProfileFileEditor]:
        editor = ProfileFileEditor.builtin(name, tmp_path)
        driver = open_driver("mock", str(editor.path), tmp_path)
        opened.append(driver)
        return driver, editor

    yield _open
    for driver in opened:
        driver.close()


def uuids(inventory: Inventory, kind: DeviceKind | None = None) -> list[str]:
    return [d.uuid for d in inventory.devices if kind is None or d.kind is kind]


def hotswap_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == HOTSWAP and r.levelno >= logging.WARNING]


# -- NVIDIA -------------------------------------------------------------------------------------------------
def test_a_lost_gpu_is_skipped_and_comes_back(file_mock: OpenFileMock) -> None:
    driver, profile = file_mock("dgx-h100")
    before = driver.discover()
    assert len(uuids(before, DeviceKind.GPU)) == 8
    lost = profile.data["devices"][3]["uuid"]

    profile.edit(lambda d: d["devices"][3].update(errors={"*": "NVML_ERROR_GPU_IS_LOST"}))
    after = driver.discover()
    assert len(after.devices) == 7
    assert lost not in uuids(after)
    assert [w for w in after.warnings if "GPU index 3" in w and "lost" in w.lower()], after.warnings

    profile.restore()
    again = driver.discover()
    assert uuids(again) == uuids(before)
    assert again.warnings == before.warnings


def test_a_gpu_gone_from_the_list_is_counted_no_more(file_mock: OpenFileMock) -> None:
    driver, profile = file_mock("dgx-h100")
    before = uuids(driver.discover())

    def pull_gpu_3(data: Json) -> None:
        del data["devices"][3]
        for index, device in enumerate(data["devices"]):
            device["index"] = index
        for name, matrix in data["p2p_status"].items():
            data["p2p_status"][name] = [row[:3] + row[4:] for i, row in enumerate(matrix) if i != 3]

    profile.edit(pull_gpu_3)
    after = driver.discover()
    assert uuids(after) == before[:3] + before[4:]
    assert [d.index for d in after.devices] == list(range(7))


def replace_3g_by_three_1g(data: Json) -> None:
    """GPU 0 of h100-mig-mixed: its 3g.40gb (GI 2, memory slices 4-7) destroyed, and 1g.10gb instances
    created at 4, 5 and 6 (1g.10gb placements are single slices 0-6): 7/7 compute slices in use again."""
    gpu = data["devices"][0]
    one_g = gi_profile_row(gpu, "MIG 1g.10gb")
    kept = [m for m in gpu["mig_devices"] if m["gpu_instance"]["id"] != 2]
    new = [mig_device(one_g, f"{MIXED_MIG}{gi}", gi, (gi - 1, 1), ci_profile_id=0) for gi in (5, 6, 7)]
    gpu["mig_devices"] = kept + new


def test_a_new_mig_layout_is_discovered(file_mock: OpenFileMock) -> None:
    driver, profile = file_mock("h100-mig-mixed")
    before = driver.discover()
    assert sorted(uuids(before, DeviceKind.MIG)) == [f"{MIXED_MIG}{gi}" for gi in (2, 3, 4)]

    profile.edit(replace_3g_by_three_1g)
    after = driver.discover()
    migs = {d.uuid: d for d in after.devices if d.kind is DeviceKind.MIG}
    assert sorted(migs) == [f"{MIXED_MIG}{gi}" for gi in (3, 4, 5, 6, 7)]
    placements = sorted((m.mig.profile, m.mig.placement_start) for m in migs.values() if m.mig is not None)
    assert placements == [("1g.10gb", 4), ("1g.10gb", 5), ("1g.10gb", 6), ("2g.20gb", 0), ("2g.20gb", 2)]
    assert {m.memory_bytes for m in migs.values() if m.mig and m.mig.profile == "1g.10gb"} == {9984 << 20}
    assert uuids(after, DeviceKind.GPU) == uuids(before, DeviceKind.GPU)


def test_mig_mode_toggled_off_and_on(file_mock: OpenFileMock) -> None:
    driver, profile = file_mock("h100-mig-mixed")
    before = driver.discover()
    gpu0 = profile.data["devices"][0]["uuid"]

    profile.edit(lambda d: d["devices"][0].update(mig_mode=[0, 0], mig_devices=[]))
    off = driver.discover()
    assert uuids(off, DeviceKind.MIG) == []
    whole = off.by_uuid()[gpu0]
    assert (whole.kind, whole.mig_capable, whole.mig_enabled) == (DeviceKind.GPU, True, False)
    assert len(uuids(off, DeviceKind.GPU)) == 8

    profile.restore()
    assert driver.discover().devices == before.devices


# -- AMD ----------------------------------------------------------------------------------------------------
def test_one_amd_gpu_switched_to_cpx_nps4_and_back(file_mock: OpenFileMock) -> None:
    driver, profile = file_mock("mi300x-8-spx-nps1")
    before = driver.discover()
    assert [d.kind for d in before.devices] == [DeviceKind.GPU] * 8

    profile.edit(lambda d: d["gpus"][0].update(compute_partition="CPX", memory_partition="NPS4"))
    after = driver.discover()
    parts = [d for d in after.devices if d.kind is DeviceKind.PARTITION]
    assert [d.pci.bus_id for d in parts if d.pci] == [f"0000:05:00.{i}" for i in range(8)]
    assert {d.parent_uuid for d in parts} == {before.devices[0].uuid}
    assert [(p.partition.compute_mode, p.partition.memory_mode) for p in parts if p.partition] == [
        ("CPX", "NPS4")
    ] * 8
    assert uuids(after, DeviceKind.GPU) == uuids(before)[1:]
    assert after.warnings == ()

    profile.restore()
    assert driver.discover().devices == before.devices


def test_every_amd_gpu_switched_to_cpx_nps4_is_that_node(file_mock: OpenFileMock, tmp_path: Path) -> None:
    """Switching the whole node (partition modes, and the KFD facts that come with them) gives exactly what
    a mock started in that mode discovers: 63 partitions (GPU 7's last one has no DRM minor)."""
    driver, profile = file_mock("mi300x-8-spx-nps1")
    before = driver.discover()
    cpx = builtin_json("mi300x-8-cpx-nps4-bmc")

    def switch(data: Json) -> None:
        data.update(model=cpx["model"], cpu_nodes=cpx["cpu_nodes"])
        for gpu in data["gpus"]:
            gpu.update(compute_partition="CPX", memory_partition="NPS4")

    profile.edit(switch)
    after = driver.discover()
    fresh = open_driver("mock", "mi300x-8-cpx-nps4-bmc", tmp_path)
    try:
        expected = fresh.discover()
    finally:
        fresh.close()
    assert len(after.devices) == 63
    assert (after.devices, after.warnings) == (expected.devices, expected.warnings)

    profile.restore()
    assert driver.discover().devices == before.devices


# -- what does not change the hardware ----------------------------------------------------------------------
def test_an_invalid_edit_keeps_the_hardware_with_one_warning_each(
    file_mock: OpenFileMock, caplog: pytest.LogCaptureFixture
) -> None:
    driver, profile = file_mock("dgx-h100")
    before = driver.discover()
    caplog.set_level(logging.INFO, logger=HOTSWAP)

    profile.write_text('{"devices": [')  # an editor's half-saved file
    assert [driver.discover().devices for _ in range(3)] == [before.devices] * 3
    profile.write_text('{"devices": [')  # saved again, same bad content: no second warning
    assert driver.discover().devices == before.devices
    assert len(hotswap_warnings(caplog)) == 1
    assert "not valid JSON" in hotswap_warnings(caplog)[0]

    profile.edit(lambda d: d["devices"][2].update(minor="two"))  # another bad content: one more warning
    driver.discover()
    driver.discover()
    assert len(hotswap_warnings(caplog)) == 2
    assert "devices[2].minor" in hotswap_warnings(caplog)[1]
    assert driver.discover().devices == before.devices

    profile.edit(lambda d: d["devices"][2].update(minor=2, errors={"*": "NVML_ERROR_GPU_IS_LOST"}))
    assert len(driver.discover().devices) == 7  # a valid edit is served again
    assert len(hotswap_warnings(caplog)) == 2


def test_an_edit_in_place_is_seen(file_mock: OpenFileMock) -> None:
    """No rename, no forced timestamp: written over, as ``echo > file`` does."""
    driver, profile = file_mock("h100")
    assert len(driver.discover().devices) == 1
    profile.path.write_text('{"devices": []}', encoding="utf-8")
    assert driver.discover().devices == ()


def test_a_vendor_or_library_change_is_refused(
    file_mock: OpenFileMock, caplog: pytest.LogCaptureFixture
) -> None:
    nvidia, nvidia_file = file_mock("h100")
    amd, amd_file = file_mock("mi210-pcie")
    nvidia_devices, amd_devices = nvidia.discover().devices, amd.discover().devices
    nvidia_file.write_text(amd_file.path.read_text(encoding="utf-8"))
    amd_file.edit(lambda d: d.update(amdsmi=None))
    assert (nvidia.discover().devices, amd.discover().devices) == (nvidia_devices, amd_devices)
    warnings = hotswap_warnings(caplog)
    assert len(warnings) == 2
    assert "cannot change vendor" in warnings[0]
    assert "amdsmi" in warnings[1]


def test_a_deleted_file_keeps_the_hardware(file_mock: OpenFileMock, caplog: pytest.LogCaptureFixture) -> None:
    driver, profile = file_mock("pcie-l4-x2")
    before = driver.discover()
    text = profile.path.read_text(encoding="utf-8")
    profile.path.unlink()
    assert [driver.discover().devices for _ in range(2)] == [before.devices] * 2
    profile.write_text(text)  # back as it was: no change, no warning
    assert driver.discover().devices == before.devices
    assert len(hotswap_warnings(caplog)) == 1


def test_touching_the_file_reloads_nothing(file_mock: OpenFileMock, caplog: pytest.LogCaptureFixture) -> None:
    driver, profile = file_mock("h100")
    driver.discover()
    caplog.set_level(logging.INFO, logger=HOTSWAP)
    os.utime(profile.path, ns=(1, 1))
    driver.discover()
    assert [r for r in caplog.records if r.name == HOTSWAP] == []


def test_a_builtin_profile_never_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file named like a built-in profile in the working directory is neither read nor watched."""
    monkeypatch.chdir(tmp_path)
    lookalike = ProfileFileEditor(tmp_path / "dgx-h100", builtin_json("dgx-h100"))
    lookalike.edit(lambda d: d["devices"][0].update(errors={"*": "NVML_ERROR_GPU_IS_LOST"}))
    driver = open_driver("mock", "dgx-h100", tmp_path)
    try:
        before = driver.discover()
        lookalike.edit(lambda d: d["devices"].clear())
        assert len(before.devices) == 8
        assert driver.discover().devices == before.devices
    finally:
        driver.close()


def test_two_threads_see_whole_hardware_only(file_mock: OpenFileMock) -> None:
    """Discovery from two threads while the file flips: every pass sees one version, never a mix."""
    driver, profile = file_mock("dgx-h100")
    full = uuids(driver.discover())
    seen: list[list[str]] = []
    errors: list[BaseException] = []

    def discover_often() -> None:
        try:
            seen.extend(uuids(driver.discover()) for _ in range(15))
        except BaseException as err:  # surfaced below: a failing thread must fail the test
            errors.append(err)

    threads = [threading.Thread(target=discover_often) for _ in range(2)]
    for thread in threads:
        thread.start()
    for flip in range(10):
        if flip % 2:
            profile.restore()
        else:
            profile.edit(lambda d: d["devices"][5].update(errors={"*": "NVML_ERROR_GPU_IS_LOST"}))
    for thread in threads:
        thread.join()
    assert errors == []
    assert {tuple(s) for s in seen} <= {tuple(full), tuple(full[:5] + full[6:])}
