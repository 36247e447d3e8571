"""Profile files: the built-ins cite their sources, and the loader rejects bad input with clear messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpudra.backends.profile import (
    DEVICE_CALLS,
    SYSTEM_CALLS,
    PciProfile,
    ProfileError,
    builtin_profile_names,
    load_profile,
    parse_profile,
)

from .helpers import builtin_json

FIXTURES = Path("/work/shared/fixtures")


def test_builtin_names() -> None:
    assert builtin_profile_names() == ["dgx-h100", "h100"]


@pytest.mark.parametrize("name", ["dgx-h100", "h100"])
def test_builtins_cite_sources_and_name_synthetic_values(name: str) -> None:
    profile = load_profile(name)
    assert profile.name == name
    assert profile.source
    assert all("shared/fixtures/" in s for s in profile.source)
    assert profile.synthetic
    assert isinstance(builtin_json(name)["_synthetic"], list)


def test_h100_values_are_the_capture() -> None:
    profile = load_profile("h100")
    (device,) = profile.devices
    assert (profile.driver_version, profile.cuda_driver_version) == ("580.159.04", 13000)
    assert device.uuid == "GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63"
    assert device.memory is not None
    assert device.memory.total == 85520809984
    assert device.numa_node is None
    assert device.errors == {"nvmlDeviceGetNumaNodeId": pynvml.NVML_ERROR_NOT_SUPPORTED}
    assert device.pci == PciProfile(
        bus_id="00000000:00:06.0", bus_id_legacy="0000:00:06.0", domain=0, bus=0, device=6,
        pci_device_id=590352606, pci_subsystem_id=381751518,
    )  # fmt: skip


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared fixtures not mounted")
def test_dgx_h100_matches_the_fixture_file() -> None:
    system = json.loads((FIXTURES / "hardware/nvidia-systems.json").read_text())["systems"]["dgx-h100"]
    profile = load_profile("dgx-h100")
    assert profile.driver_version == system["driver_version"]
    assert [d.uuid for d in profile.devices] == [g["uuid"] for g in system["gpus"]]
    assert [d.pci.bus_id if d.pci else None for d in profile.devices] == [
        g["pci"]["busId"] for g in system["gpus"]
    ]
    assert [d.sysfs.numa_node for d in profile.devices] == [g["sysfs_numa_node"] for g in system["gpus"]]


def test_user_file_by_path(tmp_path: Path) -> None:
    data = builtin_json("h100")
    del data["name"]
    path = tmp_path / "my-node.json"
    path.write_text(json.dumps(data))
    profile = load_profile(str(path))
    assert profile.name == "my-node"
    assert profile.devices == load_profile("h100").devices


def test_pci_fields_are_derived_from_bus_id() -> None:
    text = json.dumps({"devices": [{"uuid": "GPU-x", "pci": {"busId": "00000008:06:00.0"}}]})
    pci = parse_profile(text).devices[0].pci
    assert pci == PciProfile(
        bus_id="00000008:06:00.0", bus_id_legacy="0008:06:00.0", domain=8, bus=6, device=0
    )


def test_fault_names_cover_the_fake() -> None:
    assert "nvmlInit" in SYSTEM_CALLS
    assert "nvmlDeviceGetUUID" in DEVICE_CALLS


def _devices(**device: Any) -> str:
    return json.dumps({"devices": [device]})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[]", "the top level: expected a JSON object"),
        ("{}", "devices: required"),
        (json.dumps({"devices": [], "gpus": 1}), "unknown key(s) 'gpus'"),
        (_devices(uid="GPU-x"), "devices[0]: unknown key(s) 'uid'"),
        (_devices(index=3), "devices[0].index: is 3 but the device is at position 0"),
        (_devices(minor="0"), "devices[0].minor: expected int or null, got '0'"),
        (_devices(minor=True), "devices[0].minor: expected int or null"),
        (_devices(cuda_compute_capability=[9]), "devices[0].cuda_compute_capability"),
        (_devices(pci={"busId": "0000:1b:00.0"}), "devices[0].pci.busId: expected NVML's form"),
        (_devices(pci={}), "devices[0].pci.busId: required"),
        (_devices(memory={"total": 1, "free": 1}), "devices[0].memory.used: required"),
        (_devices(errors={"nvmlDeviceGetFoo": "NVML_ERROR_UNKNOWN"}), "'nvmlDeviceGetFoo' is not a call"),
        (_devices(errors={"nvmlDeviceGetUUID": "GPU_IS_LOST"}), "'GPU_IS_LOST' is not an NVML_ERROR_"),
        (_devices(sysfs={"pcie_root": "PCI0000:16"}), "devices[0].sysfs.pcie_root"),
        (json.dumps({"devices": [], "errors": {"nvmlDeviceGetUUID": "NVML_ERROR_UNKNOWN"}}), "is not a call"),
        (json.dumps({"devices": [], "_source": 3}), "_source: expected a string or a list"),
    ],
)
def test_invalid_profiles_are_explained(text: str, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, origin="profile file 'x.json'")
    assert str(caught.value).startswith("profile file 'x.json': ")
    assert message in str(caught.value)


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'dgx-b200'.*dgx-h100, h100"):
        load_profile("dgx-b200")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ProfileError, match="cannot read profile file"):
        load_profile(str(path))
