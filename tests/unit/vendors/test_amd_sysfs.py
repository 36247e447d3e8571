"""amdgpu/KFD conventions and sysfs readers."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.vendors.amd.sysfs import (
    KfdNode,
    MemBank,
    amdgpu_functions,
    gfx_name,
    kfd_nodes,
    memory_pool,
    parse_properties,
    partition_bus_id,
    read_drm_minors,
    read_pci_function,
    xcp_devices,
    xgmi_fabric_domain,
)


@pytest.mark.parametrize(
    ("target", "name"),
    [(90402, "gfx942"), (90010, "gfx90a"), (110000, "gfx1100"), (90008, "gfx908"), (0, None), (91600, None)],
)
def test_gfx_name_known_targets(target: int, name: str | None) -> None:
    assert gfx_name(target) == name


@given(st.integers(1, 20), st.integers(0, 15), st.integers(0, 15))
def test_gfx_name_uses_hex_digits_for_minor_and_stepping(major: int, minor: int, stepping: int) -> None:
    assert gfx_name(major * 10000 + minor * 100 + stepping) == f"gfx{major}{minor:x}{stepping:x}"


@given(st.dictionaries(st.from_regex(r"[a-z_]{1,20}", fullmatch=True), st.integers(0, 2**64 - 1)))
def test_parse_properties_round_trips_and_drops_junk(values: dict[str, int]) -> None:
    text = "".join(f"{k} {v}\n" for k, v in values.items()) + "garbage\nname with spaces x\nkey notanint\n"
    assert parse_properties(text) == values


@given(st.sampled_from([1, 2, 3, 4, 8]), st.sampled_from([1, 2, 4, 8]))
def test_memory_pool_assignments_cover_each_pool_evenly(partitions: int, pools: int) -> None:
    answers = [memory_pool(i, partitions, pools) for i in range(partitions)]
    if partitions % pools == 0:
        assert sorted(pool for pool, _ in answers if pool is not None) == sorted(
            p for p in range(pools) for _ in range(partitions // pools)
        )
        assert {shared for _, shared in answers} == {partitions // pools}
        assert [pool for pool, _ in answers] == sorted(pool for pool, _ in answers if pool is not None)
    elif pools % partitions == 0:
        assert set(answers) == {(None, 1)}  # each partition spans several pools, exclusively
    else:
        assert set(answers) == {(None, None)}


def test_memory_pool_rejects_out_of_range() -> None:
    assert memory_pool(8, 8, 4) == (None, None)
    assert memory_pool(0, 0, 1) == (None, None)


def test_partition_bus_id_and_fabric_domain() -> None:
    assert partition_bus_id("0000:05:00.0", 3) == "0000:05:00.3"
    assert xgmi_fabric_domain(15188982192727901047) == "xgmi-d2ca1ad46147c377"
    assert xgmi_fabric_domain(0) is None
    assert xgmi_fabric_domain(None) is None


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7))
def test_kfd_node_bus_id_from_domain_and_location(domain: int, bus: int, device: int, function: int) -> None:
    node = KfdNode(0, {"domain": domain, "location_id": bus << 8 | device << 3 | function})
    assert node.bus_id == f"{domain:04x}:{bus:02x}:{device:02x}.{function}"


def test_kfd_node_bus_id_unknown() -> None:
    assert KfdNode(0, {"location_id": 1280}).bus_id is None
    assert KfdNode(0, {"domain": 0x10000, "location_id": 1280}).bus_id is None


@given(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 2**40)), max_size=5))
def test_vram_counts_only_frame_buffer_banks(banks: list[tuple[int, int]]) -> None:
    node = KfdNode(0, {}, tuple(MemBank(heap_type, size) for heap_type, size in banks))
    fb = [size for heap_type, size in banks if heap_type in (1, 2) and size]
    assert node.vram_bytes() == (sum(fb) if fb else None)


def test_readers_ignore_what_is_not_theirs(tmp_path: Path) -> None:
    drivers = tmp_path / "bus/pci/drivers/amdgpu"
    for entry in ("0000:05:00.0", "0000:03:00.0", "bind", "unbind", "new_id", "module"):
        (drivers / entry).mkdir(parents=True)
    assert amdgpu_functions(tmp_path) == ("0000:03:00.0", "0000:05:00.0")
    drm = tmp_path / "drm"
    for entry in ("card3", "renderD131", "controlD67", "card3-DP-1", "version"):
        (drm / entry).mkdir(parents=True)
    minors = read_drm_minors(drm)
    assert (minors.cards, minors.renders) == ((3,), (131,))
    platform = tmp_path / "devices/platform"
    for entry in ("amdgpu_xcp_10", "amdgpu_xcp_9", "amdgpu_xcp.2", "serial8250", "amdgpu_xcp_x"):
        (platform / entry).mkdir(parents=True)
    assert [x.name for x in xcp_devices(tmp_path)] == ["amdgpu_xcp.2", "amdgpu_xcp_9", "amdgpu_xcp_10"]


def test_kfd_nodes_skip_entries_without_properties(tmp_path: Path) -> None:
    nodes = tmp_path / "class/kfd/kfd/topology/nodes"
    (nodes / "0").mkdir(parents=True)
    (nodes / "0/properties").write_text("cpu_cores_count 96\nsimd_count 0\n")
    (nodes / "1").mkdir()
    (nodes / "lock").mkdir()
    (nodes / "10/mem_banks/0").mkdir(parents=True)
    (nodes / "10/properties").write_text("simd_count 152\n")
    (nodes / "10/mem_banks/0/properties").write_text("heap_type 1\nsize_in_bytes 51539607552\n")
    found = kfd_nodes(tmp_path)
    assert found is not None
    assert [(n.node_id, n.is_gpu, n.vram_bytes()) for n in found] == [
        (0, False, None),
        (10, True, 51539607552),
    ]
    assert kfd_nodes(tmp_path / "nowhere") is None


def test_read_pci_function_with_odd_files(tmp_path: Path) -> None:
    device = tmp_path / "bus/pci/devices/0000:05:00.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text("0x1002\n")
    (device / "device").write_text("not hex\n")
    (device / "unique_id").write_text("\n")
    (device / "current_compute_partition").write_bytes(b"\xff\xfe")
    fn = read_pci_function(tmp_path, "0000:05:00.0")
    assert (fn.vendor_id, fn.device_id, fn.unique_id, fn.compute_partition) == (0x1002, None, None, None)
    assert (fn.drm.cards, fn.drm.renders) == ((), ())
