"""AMD discovery over the built-in profiles and their variants (real AmdDiscovery, fake tree, fake amdsmi)."""

from __future__ import annotations

import json
import logging
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpudra.model.inventory import Device, DeviceKind, Inventory, PartitionInfo, Semver, Vendor
from gpudra.vendors.amd.discovery import AmdDiscovery
from gpudra.vendors.amd.driver import AmdDriver
from gpudra.vendors.mock.amd_profile import AmdProfile, load_amd_profile, parse_amd_profile
from gpudra.vendors.mock.driver import open_fake_hardware, open_mock
from gpudra.vendors.mock.fake_amd_sysfs import write_amd_sysfs
from gpudra.vendors.mock.fake_amdsmi import FakeAmdSmi
from gpudra.vendors.mock.node import FakeNode

GIB = 1 << 30
HIVE = "xgmi-d2ca1ad46147c377"  # 15188982192727901047, the real hive id of the MI300X capture
GPU0_UUID = "e3ff74a1-0000-1000-80aa-140f9a5f9e31"  # amdsmi's UUID for unique_id e3aa140f9a5f9e31 / 0x74a1
BUSES = ["05", "27", "47", "65", "85", "a7", "c7", "e5"]


def variant(name: str, edit: Callable[[dict[str, Any]], None]) -> AmdProfile:
    data = json.loads((resources.files("gpudra.vendors.mock") / "profiles" / f"{name}.json").read_text())
    edit(data)
    return parse_amd_profile(json.dumps(data), origin=f"variant of {name}")


@pytest.fixture
def discover(tmp_path: Path) -> Iterator[Callable[[AmdProfile], Inventory]]:
    """Discover a profile with the real backend over its tree in tmp_path and its fake amdsmi (if any)."""
    opened: list[AmdDiscovery] = []

    def _discover(profile: AmdProfile) -> Inventory:
        root = tmp_path / f"sys{len(opened)}"
        write_amd_sysfs(root, profile)
        backend = AmdDiscovery(root, FakeAmdSmi(profile) if profile.amdsmi is not None else None)
        opened.append(backend)
        return backend.discover()

    yield _discover
    for backend in opened:
        backend.close()


def test_cpx_nps4_yields_64_partitions(discover: Callable[[AmdProfile], Inventory]) -> None:
    inventory = discover(load_amd_profile("mi300x-8-cpx-nps4"))
    devices = inventory.devices
    assert inventory.warnings == ()
    assert len(devices) == 64
    assert {d.kind for d in devices} == {DeviceKind.PARTITION}
    assert len({d.uuid for d in devices}) == 64
    assert [d.pci.bus_id for d in devices if d.pci] == [f"0000:{b}:00.{p}" for b in BUSES for p in range(8)]
    assert [d.minor for d in devices] == list(range(128, 192))
    assert [d.index for d in devices] == list(range(64))
    assert {d.parent_pci_bus_id for d in devices} == {f"0000:{b}:00.0" for b in BUSES}
    first = devices[0]
    assert first.uuid == f"{GPU0_UUID}-p0"
    assert first.parent_uuid == GPU0_UUID
    assert (first.product_name, first.vendor, first.gfx_version, first.pci_device_id) == (
        "AMD Instinct MI300X", Vendor.AMD, "gfx942", "0x74a1",
    )  # fmt: skip
    assert (first.compute_units, first.simd_units, first.memory_bytes) == (38, 152, 48 * GIB)
    assert {d.fabric_domain for d in devices} == {HIVE}
    assert inventory.driver_version == Semver(6, 10, 5)


def test_cpx_nps4_memory_pools_pair_partitions(discover: Callable[[AmdProfile], Inventory]) -> None:
    devices = discover(load_amd_profile("mi300x-8-cpx-nps4")).devices
    gpu0 = [d.partition for d in devices if d.parent_pci_bus_id == "0000:05:00.0"]
    assert gpu0 == [PartitionInfo("CPX", "NPS4", p, p // 2, 2) for p in range(8)]


def test_cpx_nps4_bmc_yields_63_and_names_the_missing_one(
    discover: Callable[[AmdProfile], Inventory], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gpudra.vendors.amd.discovery"):
        inventory = discover(load_amd_profile("mi300x-8-cpx-nps4-bmc"))
    assert len(inventory.devices) == 63
    (warning,) = inventory.warnings
    assert "0000:e5:00.0" in warning
    assert "partition 7" in warning
    assert "0000:e5:00.7" in warning
    assert [r.getMessage() for r in caplog.records] == [warning]
    gpu7 = [d for d in inventory.devices if d.parent_pci_bus_id == "0000:e5:00.0"]
    assert [d.partition.index for d in gpu7 if d.partition] == list(range(7))
    assert gpu7[-1].partition == PartitionInfo("CPX", "NPS4", 6, 3, 2)  # the pool count stays the mode's


def test_spx_nps1_yields_8_whole_gpus(discover: Callable[[AmdProfile], Inventory]) -> None:
    inventory = discover(load_amd_profile("mi300x-8-spx-nps1"))
    assert inventory.warnings == ()  # the xcp devices without KFD nodes are normal in SPX
    devices = inventory.devices
    assert [d.kind for d in devices] == [DeviceKind.GPU] * 8
    assert [d.minor for d in devices] == [128 + 8 * k for k in range(8)]
    assert devices[0].uuid == GPU0_UUID
    assert (devices[0].memory_bytes, devices[0].compute_units, devices[0].simd_units) == (
        206141652992,
        304,
        1216,
    )
    assert {d.partition for d in devices} == {PartitionInfo("SPX", "NPS1", 0, 0, 1)}
    assert [d.pci.numa_node for d in devices if d.pci] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert devices[4].pci is not None
    assert devices[4].pci.pcie_root == "pci0000:80"
    assert all(d.parent_uuid is None and d.parent_pci_bus_id is None for d in devices)


def test_mi210_whole_gpus_two_hives_and_unknown_memory(discover: Callable[[AmdProfile], Inventory]) -> None:
    inventory = discover(load_amd_profile("mi210-pcie"))
    devices = inventory.devices
    assert [d.pci.bus_id for d in devices if d.pci] == sorted(d.pci.bus_id for d in devices if d.pci)
    assert all(d.kind is DeviceKind.GPU and d.partition is None for d in devices)
    assert all(d.memory_bytes is None for d in devices)  # the capture has no mem_banks: never guessed
    assert Counter(d.fabric_domain for d in devices) == {
        "xgmi-aefdf8293fefa6b7": 4,
        "xgmi-fb11632c00f4d272": 4,
    }
    assert {(d.gfx_version, d.compute_units, d.product_name) for d in devices} == {
        ("gfx90a", 104, "AMD Instinct MI210")
    }
    # KFD/render order is the capture's probe order, not PCI order: identity is joined, not assumed
    assert [d.minor for d in devices] == [130, 131, 129, 128, 134, 135, 133, 132]
    assert inventory.driver_version is None


@pytest.mark.parametrize("name", ["mi300x-8-cpx-nps4", "mi300x-8-spx-nps1", "mi210-pcie"])
def test_without_amdsmi_identity_is_the_unique_id_and_names_do_not_change(
    name: str, discover: Callable[[AmdProfile], Inventory]
) -> None:
    with_smi = discover(load_amd_profile(name)).devices
    without = discover(variant(name, lambda d: d.update(amdsmi=None))).devices
    assert len(without) == len(with_smi)
    assert all(d.uuid.startswith("AMD-") for d in without)
    assert [d.product_name for d in without] == [d.product_name for d in with_smi]
    assert [d.pci for d in without] == [d.pci for d in with_smi]


def test_without_amdsmi_the_driver_version_comes_from_the_module(
    discover: Callable[[AmdProfile], Inventory],
) -> None:
    inventory = discover(variant("mi300x-8-spx-nps1", lambda d: d.update(amdsmi=None)))
    assert inventory.devices[0].uuid == "AMD-e3aa140f9a5f9e31"
    assert inventory.driver_version == Semver(6, 10, 5)


def test_an_older_amdsmi_without_partition_functions_changes_nothing(
    discover: Callable[[AmdProfile], Inventory],
) -> None:
    missing = [
        "amdsmi_get_gpu_compute_partition",
        "amdsmi_get_gpu_memory_partition",
        "amdsmi_get_gpu_vram_info",
    ]
    older = variant("mi300x-8-cpx-nps4", lambda d: d["amdsmi"].update(missing_functions=missing))
    assert discover(older) == discover(load_amd_profile("mi300x-8-cpx-nps4"))


def test_amdsmi_that_cannot_initialise_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    profile = variant(
        "mi300x-8-spx-nps1",
        lambda d: d["amdsmi"].update(errors={"amdsmi_init": "AMDSMI_STATUS_DRIVER_NOT_LOADED"}),
    )
    write_amd_sysfs(tmp_path, profile)
    with caplog.at_level(logging.INFO):
        backend = AmdDiscovery(tmp_path, FakeAmdSmi(profile))
        first, second = backend.discover(), backend.discover()
    backend.close()
    assert not backend.uses_amdsmi
    assert first == second
    assert first.devices[0].uuid == "AMD-e3aa140f9a5f9e31"
    assert [r.getMessage() for r in caplog.records if "amdsmi" in r.getMessage()] == [
        "amdsmi_init failed (AMDSMI_STATUS_DRIVER_NOT_LOADED); AMD discovery reads sysfs and KFD only"
    ]


def test_a_failing_amdsmi_call_is_one_warning_and_loses_only_amdsmi_values(
    discover: Callable[[AmdProfile], Inventory],
) -> None:
    busy = {"amdsmi_get_gpu_asic_info": "AMDSMI_STATUS_BUSY"}
    inventory = discover(variant("mi300x-8-spx-nps1", lambda d: d["amdsmi"].update(errors=busy)))
    assert len(inventory.devices) == 8
    assert inventory.warnings == (
        "amdsmi: amdsmi_get_gpu_asic_info failed (AMDSMI_STATUS_BUSY); value omitted (8x)",
    )
    # without the asic serial amdsmi's UUID cannot be tied to the GPU: the sysfs identity is used
    assert inventory.devices[0].uuid == "AMD-e3aa140f9a5f9e31"
    assert inventory.devices[0].product_name == "AMD Instinct MI300X"


def test_bank_zero_is_not_always_vram(discover: Callable[[AmdProfile], Inventory]) -> None:
    def system_bank_first(data: dict[str, Any]) -> None:
        banks = data["model"]["kfd_mem_banks"]
        data["model"]["kfd_mem_banks"] = [{"heap_type": 0, "size_in_bytes": 1 << 40}, *banks]

    devices = discover(variant("mi300x-8-cpx-nps4", system_bank_first)).devices
    assert {d.memory_bytes for d in devices} == {48 * GIB}


def test_partitions_without_frame_buffer_banks_have_no_memory(
    discover: Callable[[AmdProfile], Inventory],
) -> None:
    devices = discover(variant("mi300x-8-cpx-nps4", lambda d: d["model"].update(kfd_mem_banks=[]))).devices
    assert {d.memory_bytes for d in devices} == {None}  # amdsmi's whole-GPU VRAM is never lent to a partition


def test_nps1_partitions_share_one_pool(discover: Callable[[AmdProfile], Inventory]) -> None:
    def nps1(data: dict[str, Any]) -> None:
        for gpu in data["gpus"]:
            gpu["memory_partition"] = "NPS1"
        data["model"]["kfd_mem_banks"][0]["size_in_bytes"] = 206141652992  # each partition sees the pool

    devices = discover(variant("mi300x-8-cpx-nps4", nps1)).devices
    assert {d.partition.memory_partition for d in devices if d.partition} == {0}
    assert {d.partition.memory_shared_with for d in devices if d.partition} == {8}
    assert {d.memory_bytes for d in devices} == {206141652992}


def test_xcp_render_node_without_kfd_node_is_skipped_and_named(
    discover: Callable[[AmdProfile], Inventory],
) -> None:
    inventory = discover(
        variant("mi300x-8-cpx-nps4", lambda d: d.update(faults={"xcp_without_kfd": ["amdgpu_xcp_3"]}))
    )
    assert len(inventory.devices) == 63
    assert "0000:05:00.4" not in {d.pci.bus_id for d in inventory.devices if d.pci}
    assert any(w.startswith("amdgpu_xcp_3 skipped") for w in inventory.warnings)
    assert any("partition 4 (0000:05:00.4) not published" in w for w in inventory.warnings)


def test_newer_kernels_xcp_dot_names(discover: Callable[[AmdProfile], Inventory]) -> None:
    inventory = discover(variant("mi300x-8-cpx-nps4", lambda d: d.update(xcp_name_prefix="amdgpu_xcp.")))
    assert (len(inventory.devices), inventory.warnings) == (64, ())


def test_a_gpu_with_no_partition_files_among_cpx_gpus(discover: Callable[[AmdProfile], Inventory]) -> None:
    """Its xcp devices' KFD nodes say it is partitioned: it is not published as a 38-CU "whole" GPU."""
    inventory = discover(
        variant("mi300x-8-cpx-nps4", lambda d: d.update(faults={"no_partition_files": ["0000:27:00.0"]}))
    )
    assert len(inventory.devices) == 56
    assert "0000:27:00.0" not in {d.parent_pci_bus_id for d in inventory.devices}
    assert any(w.startswith("GPU 0000:27:00.0 skipped") for w in inventory.warnings)


def test_mock_serves_profiles_and_cleans_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the mock's private tree goes
    driver = open_mock(load_amd_profile("mi300x-8-cpx-nps4-bmc"))
    assert len(driver.discover().devices) == 63
    assert list(tmp_path.iterdir())
    driver.close()
    driver.close()
    assert list(tmp_path.iterdir()) == []


def test_fake_node_shuts_amdsmi_down(tmp_path: Path) -> None:
    node = FakeNode(load_amd_profile("mi300x-8-cpx-nps4-bmc"), tmp_path)
    assert node.amdsmi is not None
    assert node.amdsmi.init_count == 1
    node.close()
    assert node.amdsmi.init_count == 0


def test_mock_without_amdsmi(tmp_path: Path) -> None:
    driver = open_fake_hardware(variant("mi210-pcie", lambda d: d.update(amdsmi=None)), tmp_path)
    try:
        devices: tuple[Device, ...] = driver.discover().devices
        assert isinstance(driver, AmdDriver)
        assert not driver.uses_amdsmi
    finally:
        driver.close()
    assert [d.product_name for d in devices] == ["AMD Instinct MI210"] * 8  # from the device-id table


def test_fake_amdsmi_serves_a_new_partition_mode() -> None:
    """A processor still there (same bus id) keeps its handle; a handle of one that is gone: NOT_FOUND."""
    smi = FakeAmdSmi(load_amd_profile("mi300x-8-spx-nps1"))
    smi.amdsmi_init()
    spx = smi.amdsmi_get_processor_handles()
    smi.serve(
        variant(
            "mi300x-8-spx-nps1",
            lambda d: d["gpus"][0].update(compute_partition="CPX", memory_partition="NPS4"),
        )
    )
    cpx = smi.amdsmi_get_processor_handles()
    assert len(cpx) == 15
    assert cpx[0] is spx[0]
    assert [smi.amdsmi_get_gpu_device_bdf(h) for h in cpx[:8]] == [f"0000:05:00.{i}" for i in range(8)]
    assert smi.amdsmi_get_gpu_compute_partition(cpx[0]) == "CPX"
    smi.serve(load_amd_profile("mi300x-8-spx-nps1"))
    assert smi.amdsmi_get_processor_handles() == spx
    with pytest.raises(smi.AmdSmiLibraryException) as gone:
        smi.amdsmi_get_gpu_device_bdf(cpx[1])
    assert gone.value.get_error_info() == "AMDSMI_STATUS_NOT_FOUND"
    assert smi.init_count == 1


MODES = [("SPX", "NPS1"), ("DPX", "NPS1"), ("DPX", "NPS2"), ("QPX", "NPS1"), ("QPX", "NPS4"), ("CPX", "NPS1"),
         ("CPX", "NPS4")]  # fmt: skip
PARTS = {"SPX": 1, "DPX": 2, "QPX": 4, "CPX": 8}


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(MODES), min_size=8, max_size=8), st.booleans())
def test_any_mix_of_modes_publishes_every_partition_with_a_drm_minor(
    modes: list[tuple[str, str]], bmc: bool
) -> None:
    """Per GPU its mode's partitions, except those past the 64 primary DRM minors, each named in a warning."""

    def edit(data: dict[str, Any]) -> None:
        data["bmc_vga"] = "0000:c3:00.0" if bmc else None
        for gpu, (compute, memory) in zip(data["gpus"], modes, strict=True):
            gpu.update(compute_partition=compute, memory_partition=memory)

    profile = variant("mi300x-8-cpx-nps4", edit)
    expected = [
        (k, p)
        for k, (compute, _) in enumerate(modes)
        for p in range(PARTS[compute])
        if p == 0 or (bmc + 8 * k + p) < 64
    ]
    with tempfile.TemporaryDirectory() as root:
        write_amd_sysfs(Path(root), profile)
        backend = AmdDiscovery(Path(root), FakeAmdSmi(profile))
        inventory = backend.discover()
        backend.close()
    assert [
        (BUSES.index(d.pci.bus_id[5:7]), d.partition.index)
        for d in inventory.devices
        if d.pci and d.partition
    ] == expected
    lost = modes[7][0] == "CPX" and bmc
    not_published = [w for w in inventory.warnings if "not published" in w]
    assert len(not_published) == int(lost)
    assert all("partition 7 (0000:e5:00.7)" in w for w in not_published)
    for device in inventory.devices:
        assert device.kind is (DeviceKind.GPU if device.parent_uuid is None else DeviceKind.PARTITION)
        assert device.partition is not None
        compute, memory = device.partition.compute_mode, device.partition.memory_mode
        assert (compute, memory) in MODES
        pools, count = int(memory[3:]), PARTS[compute]
        if count >= pools:
            assert device.partition.memory_shared_with == count // pools
