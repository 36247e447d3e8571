"""AMD identity resolution: a device that does not resolve from scratch is skipped, never defaulted.

Each test writes a built-in profile's tree into tmp_path, breaks one fact the way real nodes (or the loops of
ROCm/k8s-gpu-dra-driver #77/#79) do, and checks that only the affected device goes, with a warning.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from gpudra.model.inventory import Inventory
from gpudra.vendors.amd.discovery import AmdDiscovery
from gpudra.vendors.base import DiscoveryError
from gpudra.vendors.mock.amd_profile import AmdProfile, load_amd_profile
from gpudra.vendors.mock.fake_amd_sysfs import write_amd_sysfs
from gpudra.vendors.mock.fake_amdsmi import FakeAmdSmi

NODES = "class/kfd/kfd/topology/nodes"


def tree(tmp_path: Path, name: str) -> tuple[Path, AmdProfile]:
    profile = load_amd_profile(name)
    write_amd_sysfs(tmp_path, profile)
    return tmp_path, profile


def run(root: Path, profile: AmdProfile | None = None) -> Inventory:
    backend = AmdDiscovery(root, FakeAmdSmi(profile) if profile is not None else None)
    try:
        return backend.discover()
    finally:
        backend.close()


def set_prop(root: Path, node: int, key: str, value: int) -> None:
    path = root / NODES / str(node) / "properties"
    text = path.read_text()
    path.write_text(re.sub(rf"^{key} \d+$", f"{key} {value}", text, flags=re.MULTILINE))


def test_kfd_node_at_another_address_skips_only_that_gpu(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi300x-8-spx-nps1")
    set_prop(root, 3, "location_id", 0x0500)  # GPU 1's node (renderD136) now claims GPU 0's address
    inventory = run(root)
    assert [d.pci.bus_id for d in inventory.devices if d.pci][:2] == ["0000:05:00.0", "0000:47:00.0"]
    assert any(w.startswith("GPU 0000:27:00.0 skipped: KFD node 3") for w in inventory.warnings)
    assert len(inventory.devices) == 7


def test_unique_id_disagreement_between_sysfs_and_kfd_skips(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi300x-8-spx-nps1")
    set_prop(root, 4, "unique_id", 2472748907779728154)  # GPU 2's node carries GPU 1's unique_id
    inventory = run(root)
    assert "0000:47:00.0" not in {d.pci.bus_id for d in inventory.devices if d.pci}
    assert any("reports unique_id 2250f807caf2231a" in w for w in inventory.warnings)


def test_vram_is_never_lent_from_a_neighbour(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi300x-8-spx-nps1")
    shutil.rmtree(root / NODES / "3" / "mem_banks")
    devices = run(root).devices
    assert [d.memory_bytes for d in devices] == [206141652992, None] + [206141652992] * 6


def test_amdsmi_handle_that_disagrees_with_sysfs_is_not_used(tmp_path: Path) -> None:
    root, profile = tree(tmp_path, "mi300x-8-spx-nps1")
    new = 0x1234567890ABCDEF
    (root / "bus/pci/devices/0000:05:00.0/unique_id").write_text(f"{new:016x}\n")
    set_prop(root, 2, "unique_id", new)
    inventory = run(root, profile)
    assert inventory.devices[0].uuid == "AMD-1234567890abcdef"
    assert inventory.devices[1].uuid == "22ff74a1-0000-1000-8050-f807caf2231a"
    assert any("GPU 0000:05:00.0: amdsmi's handle disagrees" in w for w in inventory.warnings)


def test_two_kfd_nodes_with_one_render_minor_skip_the_gpu(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi300x-8-spx-nps1")
    set_prop(root, 3, "drm_render_minor", 128)
    inventory = run(root)
    buses = {d.pci.bus_id for d in inventory.devices if d.pci}
    assert "0000:05:00.0" not in buses
    assert "0000:27:00.0" not in buses
    assert any("2 KFD GPU nodes have drm_render_minor 128" in w for w in inventory.warnings)


def test_xcp_whose_kfd_node_names_another_gpu_is_skipped(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi300x-8-cpx-nps4")
    set_prop(root, 3, "location_id", 0x2701)  # amdgpu_xcp_0 (GPU 0, partition 1) now says GPU 1 partition 1
    inventory = run(root)
    assert len(inventory.devices) == 63
    assert any(w.startswith("amdgpu_xcp_0 skipped: KFD node 3 reports unique_id") for w in inventory.warnings)
    assert any("0000:05:00.0 (CPX) partition 1 (0000:05:00.1) not published" in w for w in inventory.warnings)


def test_xcp_duplicating_a_partition_index_is_skipped(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi300x-8-cpx-nps4")
    set_prop(root, 4, "location_id", 0x0501)  # two xcp devices both resolve to partition 1 of GPU 0
    inventory = run(root)
    assert len(inventory.devices) == 63
    assert any("partition 1 of 0000:05:00.0 is already taken" in w for w in inventory.warnings)


def test_xcp_without_render_node(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi300x-8-cpx-nps4")
    shutil.rmtree(root / "devices/platform/amdgpu_xcp_54/drm/renderD190")
    inventory = run(root)
    assert len(inventory.devices) == 63
    assert "amdgpu_xcp_54 skipped: no render node" in inventory.warnings
    assert any(
        w.startswith("KFD node 64 (0000:e5:00.6, renderD190) matches no device") for w in inventory.warnings
    )


def test_gpu_without_identity_is_skipped(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi210-pcie")
    (root / "bus/pci/devices/0000:03:00.0/unique_id").unlink()
    set_prop(root, 4, "unique_id", 0)
    inventory = run(root)  # no amdsmi either
    assert len(inventory.devices) == 7
    assert "GPU 0000:03:00.0 skipped: no identity (no amdsmi UUID, no unique_id)" in inventory.warnings


def test_unknown_partition_mode_skips(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi300x-8-spx-nps1")
    (root / "bus/pci/devices/0000:05:00.0/current_compute_partition").write_text("XPX\n")
    inventory = run(root)
    assert len(inventory.devices) == 7
    assert "GPU 0000:05:00.0 skipped: unknown compute partition mode 'XPX'" in inventory.warnings


def test_functions_found_through_the_module_directory(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi210-pcie")
    drivers = root / "bus/pci/drivers/amdgpu"
    module_dir = root / "module/amdgpu/drivers/pci:amdgpu"
    module_dir.unlink()
    drivers.rename(module_dir)
    assert len(run(root).devices) == 8


def test_missing_kfd_topology_is_a_discovery_error(tmp_path: Path) -> None:
    root, _ = tree(tmp_path, "mi210-pcie")
    shutil.rmtree(root / "class/kfd")
    with pytest.raises(DiscoveryError, match="KFD topology"):
        run(root)


def test_no_amdgpu_function_is_an_empty_inventory(tmp_path: Path) -> None:
    inventory = run(tmp_path)
    assert inventory.devices == ()
    assert inventory.warnings == ("no PCI function is bound to the amdgpu driver",)


def test_closed_backend_refuses_to_discover(tmp_path: Path) -> None:
    root, profile = tree(tmp_path, "mi210-pcie")
    fake = FakeAmdSmi(profile)
    backend = AmdDiscovery(root, fake)
    backend.close()
    backend.close()
    assert fake.calls.count("amdsmi_shut_down") == 1
    with pytest.raises(DiscoveryError, match="closed"):
        backend.discover()
