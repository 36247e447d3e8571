"""AMD profiles: they cite their sources, match the fixtures, and the loader rejects bad input clearly."""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gpudra.vendors.mock.amd_profile import (
    builtin_amd_profile_names,
    is_amd_profile,
    load_amd_profile,
    parse_amd_profile,
)
from gpudra.vendors.mock.fake_amd_sysfs import amd_layout, write_amd_sysfs
from gpudra.vendors.mock.profile import ProfileError

FIXTURES = Path("/work/shared/fixtures/hardware")
needs_fixtures = pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared fixtures not mounted")
AMD = ["mi210-pcie", "mi300x-8-cpx-nps4", "mi300x-8-cpx-nps4-bmc", "mi300x-8-spx-nps1"]


def raw(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        (resources.files("gpudra.vendors.mock") / "profiles" / f"{name}.json").read_text()
    )
    return data


def system(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / "amd-systems.json").read_text())["systems"][name]
    return data


def test_builtin_amd_names() -> None:
    assert builtin_amd_profile_names() == AMD


@pytest.mark.parametrize("name", AMD)
def test_builtins_cite_sources_and_name_synthetic_values(name: str) -> None:
    profile = load_amd_profile(name)
    assert profile.name == name
    assert profile.source
    assert all("fixtures/hardware" in s or "k8s-device-plugin" in s for s in profile.source)
    assert profile.synthetic
    assert isinstance(raw(name)["_synthetic"], list)


def test_is_amd_profile(tmp_path: Path) -> None:
    assert is_amd_profile("mi300x-8-cpx-nps4")
    assert not is_amd_profile("h100")  # an NVIDIA built-in
    assert not is_amd_profile("no-such-profile")
    custom = tmp_path / "mine.json"
    custom.write_text(json.dumps(raw("mi210-pcie")))
    assert is_amd_profile(str(custom))
    custom.write_text("{not json")
    assert not is_amd_profile(str(custom))
    with pytest.raises(ProfileError, match="unknown AMD profile"):
        load_amd_profile(str(tmp_path / "missing.json"))


def test_a_profile_file_takes_its_name_from_the_file(tmp_path: Path) -> None:
    data = raw("mi210-pcie")
    del data["name"]
    path = tmp_path / "lab-node.json"
    path.write_text(json.dumps(data))
    assert load_amd_profile(str(path)).name == "lab-node"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(vendor="nvidia"), 'vendor: must be "amd"'),
        (lambda d: d.update(colour="red"), "unknown key(s) 'colour'"),
        (lambda d: d["gpus"][0].update(bdf="0000:05:00.1"), "gpus[0].bdf: expected a lower-case function-0"),
        (lambda d: d["gpus"][0].update(unique_id="xyz"), "gpus[0].unique_id: expected hex"),
        (lambda d: d["gpus"][0].update(hive_id=1), "gpus[0].hive_id: expected str"),
        (
            lambda d: d["gpus"][0].update(compute_partition="XPX"),
            "gpus[0].compute_partition: expected one of",
        ),
        (
            lambda d: d["gpus"][0].update(memory_partition=None),
            "give both compute_partition and memory_partition",
        ),
        (lambda d: d["gpus"].append(dict(d["gpus"][0])), "gpus: bus ids must be distinct"),
        (lambda d: d["model"].update(device_id="74a1z"), "model.device_id: expected hex"),
        (lambda d: d["model"].update(kfd_gpu_properties="simd_count lots"), "model.kfd_gpu_properties"),
        (
            lambda d: d["model"].update(kfd_mem_banks=[{"heap_type": 1}]),
            "kfd_mem_banks[0].size_in_bytes: required",
        ),
        (lambda d: d["amdsmi"].update(errors={"amdsmi_init": "BROKEN"}), "amdsmi.errors"),
        (lambda d: d.update(faults={"gremlins": 1}), "faults: unknown key(s) 'gremlins'"),
        (lambda d: d.update(cpu_nodes="two"), "cpu_nodes: required, a list"),
    ],
)
def test_loader_errors_name_the_key(edit: Any, message: str) -> None:
    data = raw("mi300x-8-cpx-nps4")
    edit(data)
    with pytest.raises(ProfileError) as err:
        parse_amd_profile(json.dumps(data), origin="test profile")
    assert str(err.value).startswith("test profile: ")
    assert message in str(err.value)


def test_invalid_json() -> None:
    with pytest.raises(ProfileError, match="not valid JSON"):
        parse_amd_profile("{", origin="x")


@needs_fixtures
@pytest.mark.parametrize(("name", "fixture"), [("mi300x-8-spx-nps1", "mi300x-8-spx-nps1"),
                                               ("mi300x-8-cpx-nps4", "mi300x-8-cpx-nps4")])  # fmt: skip
def test_gpu0_files_are_the_fixtures_exact_contents(name: str, fixture: str, tmp_path: Path) -> None:
    """Every file the tree writes that the fixture spells out has exactly the fixture's text."""
    write_amd_sysfs(tmp_path, load_amd_profile(name))
    files = system(fixture)["sysfs_files_gpu0"]
    compared = 0
    for path, expected in files.items():
        synthetic = path.endswith(("/gpu_id", "/generation_id"))  # made-up values in the fixture too
        if not isinstance(expected, str) or path.endswith("/") or "/io_links/" in path or synthetic:
            continue
        relative = path.removeprefix("/sys/").replace("module/amdgpu/drivers/pci:amdgpu", "bus/pci/devices")
        relative = relative.replace("class/drm/card1/device/driver/module/version", "module/amdgpu/version")
        target = tmp_path / relative
        if target.is_file():
            assert target.read_text() == expected, path
            compared += 1
    assert compared >= 10


@needs_fixtures
def test_cpx_bmc_layout_matches_the_fixture_partition_table() -> None:
    layout = {(d.gpu.bdf, d.slot): d for d in amd_layout(load_amd_profile("mi300x-8-cpx-nps4-bmc"))}
    for part in system("mi300x-8-cpx-nps4")["partitions"]:
        device = layout.get((part["parent_bdf"], part["partition_id"]))
        if not part["exists_with_bmc_vga"]:
            assert device is None
            continue
        assert device is not None
        assert (device.kfd_node, device.render, device.card) == (
            part["kfd_node_id"], part["render_minor"], part["card_index"],
        )  # fmt: skip
        assert (device.xcp_name, device.bus_id) == (part["platform_device"], part["amdsmi_bdf"])


@needs_fixtures
def test_spx_layout_matches_the_fixture_gpu_table() -> None:
    layout = amd_layout(load_amd_profile("mi300x-8-spx-nps1"))
    for gpu in system("mi300x-8-spx-nps1")["gpus"]:
        mine = [d for d in layout if d.gpu.bdf == gpu["bdf"]]
        assert [d.xcp_name for d in mine[1:]] == gpu["xcp_platform_devices"]
        assert (mine[0].kfd_node, mine[0].render, mine[0].card) == (
            gpu["kfd_node_id"], gpu["render_minor"], gpu["card_index"],
        )  # fmt: skip
        assert all(d.kfd_node is None for d in mine[1:])


@needs_fixtures
def test_mi300x_profiles_use_the_fixture_identities() -> None:
    gpus = system("mi300x-8-spx-nps1")["gpus"]
    for name in AMD[1:]:
        profile = load_amd_profile(name)
        assert [(g.bdf, g.unique_id, g.numa_node) for g in profile.gpus] == [
            (g["bdf"], int(g["unique_id_hex"], 16), g["numa_node"]) for g in gpus
        ]


def test_the_tree_uses_relative_symlinks(tmp_path: Path) -> None:
    write_amd_sysfs(tmp_path, load_amd_profile("mi300x-8-spx-nps1"))
    link = tmp_path / "bus/pci/devices/0000:05:00.0"
    assert os.readlink(link) == "../../../devices/pci0000:00/0000:05:00.0"
    assert (tmp_path / "module/amdgpu/drivers/pci:amdgpu/0000:05:00.0/device").read_text() == "0x74a1\n"
