"""AMD container edits: the pure stat -> CDI node logic, then over a fake /dev tree (real character devices
when this process may create them, regular files otherwise)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.model.cdi import CdiDevice, ContainerEdits, DeviceNode, build_spec, cdi_device_name
from gpudra.model.inventory import Device, DeviceKind, PartitionInfo, Vendor
from gpudra.vendors.amd.edits import (
    amd_device_edits,
    amd_edits,
    edits_for_nodes,
    group_ids,
    host_node,
    render_node,
)
from gpudra.vendors.base import EditsError, HostRoots

UID = "c70e2b4a-5d6f-4a1b-9c8d-0e1f2a3b4c5d"  # starts with a letter: cdiVersion 0.3.0 possible
CHR = stat.S_IFCHR | 0o660
KFD_MAJOR, DRM_MAJOR = 235, 226
RENDER_GID, VIDEO_GID = 109, 44
PARTITION = Device(
    kind=DeviceKind.PARTITION,
    vendor=Vendor.AMD,
    uuid="e3ff74a1-0000-1000-80aa-140f9a5f9e31-p2",
    product_name="AMD Instinct MI300X",
    index=2,
    minor=130,
    parent_uuid="e3ff74a1-0000-1000-80aa-140f9a5f9e31",
    partition=PartitionInfo(compute_mode="CPX", memory_mode="NPS4", index=2, memory_partition=1),
)


@dataclass(frozen=True)
class FakeStat:
    st_mode: int
    st_rdev: int
    st_gid: int


def _spec_version(edits: ContainerEdits) -> str:
    spec = build_spec(UID, [CdiDevice(cdi_device_name(UID, "gpu-0"), edits)], ContainerEdits())
    return str(spec["cdiVersion"])


def make_chardev(path: Path, major: int, minor: int, gid: int) -> None:
    """A real character device owned by ``gid``; skips the test where this process may not create one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mknod(path, CHR, os.makedev(major, minor))
        os.chown(path, 0, gid)
    except PermissionError:
        pytest.skip(
            "creating character devices needs CAP_MKNOD/CAP_CHOWN (root); the host_node tests "
            "cover the same logic from a stat result"
        )


# ---- pure: stat result -> device node ------------------------------------------------------------------


def test_host_node_from_stat() -> None:
    render = FakeStat(CHR, os.makedev(DRM_MAJOR, 128), RENDER_GID)
    got = host_node("dri/renderD128", Path("/host/dev"), render)
    assert got.node == DeviceNode(
        "/dev/dri/renderD128", host_path="/host/dev/dri/renderD128", type="c", major=DRM_MAJOR, minor=128
    )
    assert got.gid == RENDER_GID


def test_host_path_left_out_when_dev_is_the_host_dev() -> None:
    got = host_node("kfd", Path("/dev"), FakeStat(CHR, os.makedev(KFD_MAJOR, 0), RENDER_GID))
    assert got.node == DeviceNode("/dev/kfd", type="c", major=KFD_MAJOR, minor=0)
    assert _spec_version(edits_for_nodes([got], additional_gids=False)) == "0.3.0"


@given(major=st.integers(0, 4095), minor=st.integers(0, 2**20 - 1), gid=st.integers(0, 2**32 - 1))
def test_major_minor_and_gid_come_from_the_stat(major: int, minor: int, gid: int) -> None:
    got = host_node("kfd", Path("/dev"), FakeStat(CHR, os.makedev(major, minor), gid))
    assert (got.node.major, got.node.minor, got.gid) == (major, minor, gid)


@pytest.mark.parametrize("mode", [stat.S_IFREG | 0o644, stat.S_IFBLK | 0o660, stat.S_IFDIR | 0o755])
def test_not_a_character_device_names_the_path(mode: int) -> None:
    with pytest.raises(EditsError, match="/host/dev/kfd is not a character device"):
        host_node("kfd", Path("/host/dev"), FakeStat(mode, 0, 0))


@given(st.lists(st.integers(0, 70000), max_size=6))
def test_group_ids_unique_nonzero_in_first_seen_order(gids: list[int]) -> None:
    nodes = [host_node("kfd", Path("/dev"), FakeStat(CHR, 0, g)) for g in gids]
    got = group_ids(nodes)
    assert list(got) == [g for i, g in enumerate(gids) if g != 0 and g not in gids[:i]]


def test_additional_gids_need_cdi_0_7_0_and_the_flag_drops_them() -> None:
    kfd = host_node("kfd", Path("/dev"), FakeStat(CHR, os.makedev(KFD_MAJOR, 0), VIDEO_GID))
    render = host_node("dri/renderD130", Path("/dev"), FakeStat(CHR, os.makedev(DRM_MAJOR, 130), RENDER_GID))
    on = edits_for_nodes([kfd, render], additional_gids=True)
    assert on.additional_gids == (VIDEO_GID, RENDER_GID)
    assert on.to_cdi()["additionalGids"] == [VIDEO_GID, RENDER_GID]
    assert _spec_version(on) == "0.7.0"
    off = edits_for_nodes([kfd, render], additional_gids=False)
    assert off.additional_gids == ()
    assert "additionalGids" not in off.to_cdi()
    assert _spec_version(off) == "0.3.0"


def test_root_owned_nodes_add_no_group() -> None:
    kfd = host_node("kfd", Path("/dev"), FakeStat(CHR, os.makedev(KFD_MAJOR, 0), 0))
    edits = edits_for_nodes([kfd], additional_gids=True)
    assert edits.additional_gids == ()
    assert _spec_version(edits) == "0.3.0"


# ---- over a fake /dev ----------------------------------------------------------------------------------


@pytest.fixture
def dev(tmp_path: Path) -> Path:
    """kfd (group video) and the partition's render node (group render) as real character devices."""
    root = tmp_path / "dev"
    make_chardev(root / "kfd", KFD_MAJOR, 0, VIDEO_GID)
    make_chardev(root / render_node(130), DRM_MAJOR, 130, RENDER_GID)
    return root


def test_partition_gets_kfd_and_its_own_render_node(dev: Path) -> None:
    edits = amd_edits(PARTITION, HostRoots(dev=dev))
    assert edits == ContainerEdits(
        device_nodes=(
            DeviceNode("/dev/kfd", str(dev / "kfd"), "c", KFD_MAJOR, 0),
            DeviceNode("/dev/dri/renderD130", str(dev / "dri/renderD130"), "c", DRM_MAJOR, 130),
        ),
        additional_gids=(VIDEO_GID, RENDER_GID),
    )
    assert _spec_version(edits) == "0.7.0"
    off = amd_edits(PARTITION, HostRoots(dev=dev, additional_gids=False))
    assert off == replace(edits, additional_gids=())
    assert _spec_version(off) == "0.5.0"  # hostPath: the fake /dev is not /dev


def test_same_group_on_both_nodes_is_listed_once(tmp_path: Path) -> None:
    root = tmp_path / "dev"
    make_chardev(root / "kfd", KFD_MAJOR, 0, RENDER_GID)
    make_chardev(root / render_node(130), DRM_MAJOR, 130, RENDER_GID)
    assert amd_edits(PARTITION, HostRoots(dev=root)).additional_gids == (RENDER_GID,)


def test_card_node_added_only_when_known_and_present(dev: Path) -> None:
    assert "/dev/dri/card3" not in [n.path for n in amd_edits(PARTITION, HostRoots(dev=dev)).device_nodes]
    assert len(amd_edits(PARTITION, HostRoots(dev=dev), card_minor=3).device_nodes) == 2  # absent: skipped
    make_chardev(dev / "dri/card3", DRM_MAJOR, 3, VIDEO_GID)
    edits = amd_edits(PARTITION, HostRoots(dev=dev), card_minor=3)
    assert edits.device_nodes[-1] == DeviceNode("/dev/dri/card3", str(dev / "dri/card3"), "c", DRM_MAJOR, 3)
    assert edits.additional_gids == (VIDEO_GID, RENDER_GID)


def test_amd_device_edits_of_a_partition(dev: Path) -> None:
    got = amd_device_edits(PARTITION, HostRoots(dev=dev))
    assert got.extra_cdi_ids == ()
    assert got.edits == amd_edits(PARTITION, HostRoots(dev=dev))


@pytest.mark.parametrize("missing", ["kfd", "dri/renderD130"])
def test_missing_node_names_the_path(tmp_path: Path, missing: str) -> None:
    root = tmp_path / "dev"
    (root / "dri").mkdir(parents=True)
    for name in ("kfd", "dri/renderD130"):
        if name != missing:
            (root / name).touch()  # existence is checked before the node type
    with pytest.raises(EditsError) as err:
        amd_edits(PARTITION, HostRoots(dev=root))
    assert str(err.value) == f"device {PARTITION.uuid}: host device node {root / missing} does not exist"


def test_every_missing_node_is_named(tmp_path: Path) -> None:
    with pytest.raises(EditsError) as err:
        amd_edits(PARTITION, HostRoots(dev=tmp_path))
    assert f"nodes {tmp_path / 'kfd'}, {tmp_path / 'dri/renderD130'} do not exist" in str(err.value)


def test_regular_file_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "dev"
    (root / "dri").mkdir(parents=True)
    (root / "kfd").touch()
    (root / "dri/renderD130").touch()
    with pytest.raises(EditsError, match=f"{root / 'kfd'} is not a character device"):
        amd_edits(PARTITION, HostRoots(dev=root))


@pytest.mark.parametrize(
    ("device", "message"),
    [
        (replace(PARTITION, vendor=Vendor.NVIDIA), "is not an AMD device"),
        (replace(PARTITION, kind=DeviceKind.MIG), "do not support mig devices"),
        (replace(PARTITION, minor=None), "render minor unknown"),
    ],
)
def test_devices_amd_edits_cannot_serve(tmp_path: Path, device: Device, message: str) -> None:
    with pytest.raises(EditsError, match=message):
        amd_edits(device, HostRoots(dev=tmp_path))
