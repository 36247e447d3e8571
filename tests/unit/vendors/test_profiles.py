"""Profile files: the built-ins cite their sources, and the loader rejects bad input with clear messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pynvml
import pytest

from gpudra.vendors.mock.profile import (
    DEVICE_CALLS,
    MIG_CALLS,
    SYSTEM_CALLS,
    PciProfile,
    ProfileError,
    builtin_profile_names,
    load_profile,
    parse_profile,
)

from .helpers import builtin_json

FIXTURES = Path("/work/shared/fixtures")


NVIDIA_PROFILES = ["dgx-a100", "dgx-h100", "gb200-nvl72-tray", "h100", "h100-mig-mixed", "pcie-l4-x2"]
#: built-in profile -> its node in shared/fixtures/hardware/nvidia-systems.json
SYSTEMS = {name: name for name in NVIDIA_PROFILES if name != "h100"}


def test_builtin_names() -> None:
    names = builtin_profile_names()
    assert names == sorted(names)
    assert set(NVIDIA_PROFILES) <= set(names)


@pytest.mark.parametrize("name", NVIDIA_PROFILES)
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


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared fixtures not mounted")
@pytest.mark.parametrize("name", sorted(SYSTEMS))
def test_profile_matches_its_fixture_node(name: str) -> None:
    system = json.loads((FIXTURES / "hardware/nvidia-systems.json").read_text())["systems"][SYSTEMS[name]]
    profile = load_profile(name)
    gpus = system["gpus"]
    assert (profile.driver_version, profile.cuda_driver_version) == (
        system["driver_version"], system["cuda_driver_version"],
    )  # fmt: skip
    assert [d.uuid for d in profile.devices] == [g["uuid"] for g in gpus]
    assert [d.pci.bus_id if d.pci else None for d in profile.devices] == [g["pci"]["busId"] for g in gpus]
    assert [d.sysfs.numa_node for d in profile.devices] == [g.get("sysfs_numa_node") for g in gpus]
    for device, gpu in zip(profile.devices, gpus, strict=True):
        mig_mode = gpu["mig_mode"] if isinstance(gpu["mig_mode"], list) else None
        assert device.mig_mode == (tuple(mig_mode) if mig_mode else None)
        fabric = gpu["fabric"] if isinstance(gpu["fabric"], dict) else None
        assert (device.fabric.clique_id if device.fabric else None) == (
            fabric["cliqueId"] if fabric else None
        )
        links = gpu["nvlink"]["links"]
        assert (len(device.nvlink.states) if device.nvlink else 0) == links
        for mig, fixture in zip(device.mig_devices, gpu.get("mig_devices", []), strict=True):
            assert mig.uuid == fixture["uuid"]
            assert mig.gpu_instance.placement.start == fixture["gpu_instance"]["placement"]["start"]
            assert mig.gpu_instance.profile_id == fixture["gpu_instance"]["profile_id"]
            assert mig.memory_bytes == fixture["memory_total_bytes"]


def test_h100_mig_table_is_the_capture() -> None:
    captured = json.loads((FIXTURES / "nvml/h100-80gb-hbm3.json").read_text()) if FIXTURES.is_dir() else None
    table = {
        row.index: (row.name, row.values["id"])
        for row in load_profile("h100").devices[0].gpu_instance_profiles
    }
    assert table == {
        0: ("MIG 1g.10gb", 19), 1: ("MIG 2g.20gb", 14), 2: ("MIG 3g.40gb", 9), 3: ("MIG 4g.40gb", 5),
        4: ("MIG 7g.80gb", 0), 7: ("MIG 1g.10gb+me", 20), 9: ("MIG 1g.20gb", 15),
    }  # fmt: skip
    if captured is not None:
        rows = captured["devices"][0]["gi_profiles_v"]
        assert {int(i): (r["name"], r["id"]) for i, r in rows.items() if "id" in r} == table


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
    assert {"nvmlDeviceGetUUID", "nvmlDeviceGetMigMode", "nvmlDeviceGetGpuFabricInfoV"} <= DEVICE_CALLS
    assert MIG_CALLS - {"*"} <= DEVICE_CALLS


def _devices(**device: Any) -> str:
    return json.dumps({"devices": [device]})


GI = {"index": 0, "id": 19, "name": "MIG 1g.10gb", "sliceCount": 1}
MIG: dict[str, Any] = {
    "uuid": "MIG-x",
    "gpu_instance": {"id": 1, "profile_id": 19, "placement": {"start": 0, "size": 1}},
    "compute_instance": {"id": 0, "profile_id": 0, "placement": {"start": 0, "size": 1}},
}


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
        (_devices(mig_mode=[1]), "devices[0].mig_mode: expected 2 integers"),
        (_devices(mig_mode="on"), "devices[0].mig_mode: expected a list of integers"),
        (
            _devices(gpu_instance_profiles=[{"index": 0, "name": "MIG 1g.10gb"}]),
            "devices[0].gpu_instance_profiles[0].id: required",
        ),
        (_devices(gpu_instance_profiles=[GI, GI]), "profile indices must be unique"),
        (
            _devices(
                gpu_instance_profiles=[GI], max_mig_device_count=1, mig_devices=[{**MIG, "errors": {"x": 1}}]
            ),
            "'x' is not a call the fake serves",
        ),
        (
            _devices(
                gpu_instance_profiles=[GI],
                max_mig_device_count=1,
                mig_devices=[{**MIG, "gpu_instance": {**MIG["gpu_instance"], "profile_id": 5}}],
            ),
            "profile_id: 5 is not the id of any entry",
        ),
        (_devices(gpu_instance_profiles=[GI], mig_devices=[MIG]), "max_mig_device_count: null is fewer than"),
        (
            _devices(
                gpu_instance_profiles=[GI],
                max_mig_device_count=1,
                mig_devices=[{**MIG, "compute_instance": {}}],
            ),
            "devices[0].mig_devices[0].compute_instance.placement: expected a JSON object",
        ),
        (
            _devices(fabric={"state": 3, "status": 0, "cliqueId": 1, "clusterUuid": "x"}),
            "clusterUuid: expected a UUID",
        ),
        (_devices(fabric={"state": 3}), "devices[0].fabric.clusterUuid: required"),
        (_devices(nvlink={"states": [1] * 37}), "at most 36 links"),
        (_devices(nvlink={"states": [1], "beyond": "INVALID"}), "'INVALID' is not an NVML_ERROR_"),
        (
            json.dumps({"devices": [{}], "p2p_status": {"NVLINK": [[0, 0]]}}),
            "p2p_status.NVLINK: expected a 1x1",
        ),
        (json.dumps({"devices": [], "p2p_status": {"NVLNK": []}}), "unknown key(s) 'NVLNK'"),
        (_devices(mig_mode_change="later"), "devices[0].mig_mode_change: expected one of immediate, reset_"),
        (_devices(processes=-1), "devices[0].processes: must not be negative"),
        (
            _devices(gpu_instance_profiles=[{**GI, "placements": [{"start": 0, "size": 0}]}]),
            "devices[0].gpu_instance_profiles[0].placements[0]: start (>= 0) and size (>= 1) are required",
        ),
        (
            _devices(
                gpu_instance_profiles=[{**GI, "ci_profiles": [{"id": 0, "name": "c", "sliceCount": 2}]}]
            ),
            "devices[0].gpu_instance_profiles[0].ci_profiles[0].sliceCount: 2 is not within",
        ),
        (
            _devices(
                gpu_instance_profiles=[{**GI, "placements": [{"start": 0, "size": 1}]}],
                max_mig_device_count=1,
                mig_devices=[
                    {**MIG, "gpu_instance": {**MIG["gpu_instance"], "placement": {"start": 3, "size": 1}}}
                ],
            ),
            "devices[0].mig_devices[0].gpu_instance.placement: 3:1 is not one of the placements",
        ),
    ],
)
def test_invalid_profiles_are_explained(text: str, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        parse_profile(text, origin="profile file 'x.json'")
    assert str(caught.value).startswith("profile file 'x.json': ")
    assert message in str(caught.value)


def test_unknown_name_lists_the_builtins() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile 'dgx-b200'.*dgx-a100, dgx-h100.*h100-mig-mixed"):
        load_profile("dgx-b200")


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ProfileError, match="cannot read profile file"):
        load_profile(str(path))
