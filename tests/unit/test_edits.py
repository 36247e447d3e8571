"""Per-device container edits: NVIDIA over a fake /dev, the mock backend's env and description file."""

from __future__ import annotations

import json
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.cdi import CdiDevice, ContainerEdits, DeviceNode, Mount, build_spec, cdi_device_name
from gpudra.checkpoint import ClaimRecord
from gpudra.edits import (
    EditsError,
    env_key,
    mock_claim_edits,
    mock_edits,
    write_claim_description,
)
from gpudra.edits_nvidia import nvidia_edits
from gpudra.inventory import Device, DeviceKind, PciPlacement, Vendor
from gpudra.names import gpu_device_name

UID = "c70e2b4a-5d6f-4a1b-9c8d-0e1f2a3b4c5d"  # starts with a letter: cdiVersion 0.3.0 possible
RO = ("ro", "nosuid", "nodev", "bind")
GPU = Device(
    kind=DeviceKind.GPU,
    vendor=Vendor.NVIDIA,
    uuid="GPU-bb61b538-f5d8-6e0c-2a3b-4c5d6e7f8091",
    product_name="NVIDIA H100 80GB HBM3",
    index=0,
    minor=3,
    memory_bytes=85520809984,
    pci=PciPlacement(bus_id="0000:1b:00.0"),
)
GPU2 = replace(GPU, uuid="GPU-00000000-1111-2222-3333-444444444444", index=1, minor=4, memory_bytes=None,
               pci=None)


@pytest.fixture
def dev_root(tmp_path: Path) -> Path:
    root = tmp_path / "dev"
    root.mkdir()
    for name in ("nvidia3", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        (root / name).touch()
    return root


# ---- NVIDIA -----------------------------------------------------------------------------------------


def test_nvidia_edits(dev_root: Path) -> None:
    edits = nvidia_edits(GPU, dev_root)
    assert edits == ContainerEdits(
        env=("NVIDIA_VISIBLE_DEVICES=void",),
        device_nodes=tuple(
            DeviceNode(f"/dev/{n}", host_path=str(dev_root / n))
            for n in ("nvidia3", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
        ),
    )
    spec = build_spec(UID, [CdiDevice(cdi_device_name(UID, "gpu-0"), edits)], ContainerEdits())
    assert spec["cdiVersion"] == "0.5.0"  # hostPath differs from path


def test_uvm_tools_is_optional(dev_root: Path) -> None:
    (dev_root / "nvidia-uvm-tools").unlink()
    paths = [n.path for n in nvidia_edits(GPU, dev_root).device_nodes]
    assert paths == ["/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm"]


@pytest.mark.parametrize("missing", ["nvidia3", "nvidiactl", "nvidia-uvm"])
def test_missing_required_node_names_the_path(dev_root: Path, missing: str) -> None:
    (dev_root / missing).unlink()
    with pytest.raises(EditsError) as err:
        nvidia_edits(GPU, dev_root)
    assert str(dev_root / missing) in str(err.value)


def test_two_gpus_merge_without_conflict(dev_root: Path) -> None:
    (dev_root / "nvidia4").touch()
    merged = nvidia_edits(GPU, dev_root).merge(nvidia_edits(GPU2, dev_root))
    assert [n.path for n in merged.device_nodes] == [
        "/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia4"
    ]


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (replace(GPU, vendor=Vendor.AMD), "not an NVIDIA device"),
        (replace(GPU, kind=DeviceKind.MIG), "mig"),
        (replace(GPU, minor=None), "minor unknown"),
    ],
)
def test_nvidia_edits_refuses(dev_root: Path, device: Device, message: str) -> None:
    with pytest.raises(EditsError, match=message):
        nvidia_edits(device, dev_root)


# ---- mock -------------------------------------------------------------------------------------------


def test_mock_edits(tmp_path: Path) -> None:
    desc = tmp_path / "claims" / f"{UID}.json"
    edits = mock_edits(GPU, UID, desc)
    assert edits.device_nodes == ()
    prefix = "GPUDRA_" + gpu_device_name(GPU.uuid).upper().replace("-", "_")
    assert dict(e.split("=", 1) for e in edits.env) == {
        f"{prefix}_UUID": GPU.uuid,
        f"{prefix}_PRODUCT": "NVIDIA H100 80GB HBM3",
        f"{prefix}_MEMORY": "85520809984",
        f"{prefix}_CLAIM": UID,
        f"{prefix}_DESCRIPTION": f"/var/run/gpudra/claims/{UID}.json",
    }
    assert edits.mounts == (Mount(str(desc), f"/var/run/gpudra/claims/{UID}.json", RO),)
    assert not any("MEMORY" in e for e in mock_edits(GPU2, UID, desc).env)
    named = mock_edits(GPU, UID, desc, device_name="gpu-0-mig-1g-10gb-0")
    assert any(e.startswith("GPUDRA_GPU_0_MIG_1G_10GB_0_UUID=") for e in named.env)


def test_mock_claim_edits_and_full_spec(tmp_path: Path) -> None:
    desc = tmp_path / f"{UID}.json"
    common = mock_claim_edits(UID, [GPU.uuid, GPU2.uuid], desc)
    assert common.env == (f"GPUDRA_VISIBLE_DEVICES={GPU.uuid},{GPU2.uuid}",)
    assert common.mounts == (Mount(str(desc), f"/var/run/gpudra/claims/{UID}.json", RO),)
    devices = [CdiDevice(cdi_device_name(UID, gpu_device_name(d.uuid)), mock_edits(d, UID, desc))
               for d in (GPU, GPU2)]
    spec = build_spec(UID, devices, common)
    assert spec["cdiVersion"] == "0.3.0"
    # all edits of one container together never conflict: per-device keys are distinct, the mount identical
    everything = common
    for d in devices:
        everything = everything.merge(d.edits)
    assert len(everything.env) == 1 + 5 + 4
    assert len(everything.mounts) == 1


@given(st.lists(st.uuids().map(lambda u: f"GPU-{u}"), min_size=2, max_size=5, unique=True))
def test_two_devices_never_share_an_env_key(uuids: list[str]) -> None:
    keys = [{e.partition("=")[0] for e in mock_edits(replace(GPU, uuid=u), UID, Path("/d.json")).env}
            for u in uuids]
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            assert not a & b


def test_env_key() -> None:
    assert env_key("gpu-bb61b538-f5d8", "UUID") == "GPUDRA_GPU_BB61B538_F5D8_UUID"


# ---- description file -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ref:
    namespace: str
    name: str
    uid: str


@pytest.mark.parametrize("claim", [_Ref("team-a", "two-gpus", UID),
                                   ClaimRecord(UID, "team-a", "two-gpus", "PrepareStarted", (), None)])
def test_write_claim_description(tmp_path: Path, claim: _Ref | ClaimRecord) -> None:
    path = tmp_path / "state" / "claims" / f"{UID}.json"  # parents created
    write_claim_description(path, claim, [GPU, GPU2])
    assert json.loads(path.read_text()) == {
        "claim": {"namespace": "team-a", "name": "two-gpus", "uid": UID},
        "devices": [
            {"name": gpu_device_name(GPU.uuid), "uuid": GPU.uuid, "productName": GPU.product_name,
             "memory": 85520809984, "pciBusID": "0000:1b:00.0"},
            {"name": gpu_device_name(GPU2.uuid), "uuid": GPU2.uuid, "productName": GPU2.product_name,
             "memory": None, "pciBusID": None},
        ],
    }
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_write_claim_description_with_names(tmp_path: Path) -> None:
    path = tmp_path / "d.json"
    write_claim_description(path, _Ref("n", "c", UID), [GPU], ["gpu-0"])
    assert json.loads(path.read_text())["devices"][0]["name"] == "gpu-0"
    with pytest.raises(ValueError, match="length"):
        write_claim_description(path, _Ref("n", "c", UID), [GPU], [])
