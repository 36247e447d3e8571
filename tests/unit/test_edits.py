"""Per-device container edits: NVIDIA over a fake /dev, the mock backend's env and description file."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.model.cdi import CdiDevice, ContainerEdits, DeviceNode, Mount, build_spec, cdi_device_name
from gpudra.model.inventory import Device, DeviceKind, PciPlacement, Vendor
from gpudra.model.names import gpu_device_name
from gpudra.state.checkpoint import ClaimRecord
from gpudra.vendors.base import EditsError
from gpudra.vendors.mock.edits import device_description, env_key, mock_edits
from gpudra.vendors.nvidia.edits import nvidia_edits

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
    name = gpu_device_name(GPU.uuid)
    desc = tmp_path / "claims" / f"{UID}-{name}.json"
    edits = mock_edits(GPU, UID, name, desc)
    assert edits.device_nodes == ()
    prefix = "GPUDRA_" + name.upper().replace("-", "_")
    assert dict(e.split("=", 1) for e in edits.env) == {
        f"{prefix}_UUID": GPU.uuid,
        f"{prefix}_PRODUCT": "NVIDIA H100 80GB HBM3",
        f"{prefix}_MEMORY": "85520809984",
    }
    assert edits.mounts == (Mount(str(desc), f"/var/run/gpudra/devices/{UID}-{name}.json", RO),)
    assert not any("MEMORY" in e for e in mock_edits(GPU2, UID, "gpu-2", desc).env)
    named = mock_edits(GPU, UID, "gpu-0-mig-1g-10gb-0", desc)
    assert any(e.startswith("GPUDRA_GPU_0_MIG_1G_10GB_0_UUID=") for e in named.env)


def test_mock_spec_has_no_claim_wide_edits_and_devices_never_conflict(tmp_path: Path) -> None:
    devices = [
        CdiDevice(cdi_device_name(UID, n), mock_edits(d, UID, n, tmp_path / f"{n}.json"))
        for n, d in (("gpu-a", GPU), ("gpu-b", GPU2))
    ]
    spec = build_spec(UID, devices, ContainerEdits())
    assert spec["cdiVersion"] == "0.3.0"
    assert "containerEdits" not in spec
    everything = ContainerEdits()
    for d in devices:
        everything = everything.merge(d.edits)  # would raise on a key or mount given two values
    assert len(everything.env) == 3 + 2
    assert len(everything.mounts) == 2


def test_the_same_device_in_two_claims_sets_the_same_values(tmp_path: Path) -> None:
    """A container holding two claims that share a device (adminAccess, share IDs) gets both files and
    variables that agree, whichever spec the runtime applies last."""
    one = mock_edits(GPU, UID, "gpu-a", tmp_path / "1.json")
    two = mock_edits(GPU, "d0000000-0000-4000-8000-000000000000", "gpu-a", tmp_path / "2.json")
    assert one.env == two.env
    assert len(one.merge(two).mounts) == 2


@given(st.lists(st.uuids().map(lambda u: f"GPU-{u}"), min_size=2, max_size=5, unique=True))
def test_two_devices_never_share_an_env_key(uuids: list[str]) -> None:
    edits = [mock_edits(replace(GPU, uuid=u), UID, gpu_device_name(u), Path("/d")) for u in uuids]
    keys = [{e.partition("=")[0] for e in x.env} for x in edits]
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
def test_device_description(claim: _Ref | ClaimRecord) -> None:
    assert json.loads(device_description(claim, "gpu/h100", "gpu-0", GPU)) == {
        "claim": {"namespace": "team-a", "name": "two-gpus", "uid": UID},
        "request": "gpu/h100",
        "device": {"name": "gpu-0", "uuid": GPU.uuid, "productName": GPU.product_name,
                   "memory": 85520809984, "pciBusID": "0000:1b:00.0"},
    }
    # values the hardware did not report are left out, never null or guessed
    assert json.loads(device_description(claim, "gpu", "gpu-1", GPU2))["device"] == {
        "name": "gpu-1", "uuid": GPU2.uuid, "productName": GPU2.product_name,
    }
