"""NVIDIA device edits over fake host trees: MIG capability nodes, the user-space driver from the Toolkit's
spec or the driver root, and the error when neither exists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpudra.model.cdi import CdiDevice, ContainerEdits, DeviceNode, Hook, Mount, build_spec, cdi_device_name
from gpudra.model.inventory import Device, DeviceKind, MigInfo, Vendor
from gpudra.vendors.base import EditsError, HostRoots
from gpudra.vendors.nvidia.edits import (
    mig_cap_nodes,
    mig_edits,
    nvidia_device_edits,
    overlay,
    user_space_edits,
)
from gpudra.vendors.nvidia.host import parse_mig_minors
from tests.unit import nvidia_fake_host as fake

UID = "c70e2b4a-5d6f-4a1b-9c8d-0e1f2a3b4c5d"
GPU = Device(kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid="GPU-bb61b538-f5d8-6e0c-2a3b-4c5d6e7f8091",
             product_name="NVIDIA H100 80GB HBM3", index=3, minor=3)
MIG = Device(
    kind=DeviceKind.MIG, vendor=Vendor.NVIDIA, uuid="MIG-0d100000-0000-5000-8000-000000000002",
    product_name="NVIDIA H100 80GB HBM3 MIG 3g.40gb", index=0, minor=5, parent_uuid=GPU.uuid,
    mig=MigInfo(profile="3g.40gb", gi_profile_id=9, placement_start=4, placement_size=4, gi_id=2, ci_id=1,
                parent_minor=3),
)


@pytest.fixture
def roots(tmp_path: Path) -> HostRoots:
    """A host with the driver installed and the Toolkit's spec generated (the usual case)."""
    cdi = tmp_path / "cdi"
    fake.write_toolkit_spec(cdi)
    return HostRoots(dev=fake.make_dev(tmp_path), proc=fake.make_proc(tmp_path),
                     driver=fake.make_driver_root(tmp_path), cdi_dirs=(tmp_path / "etc-cdi", cdi))


# ---- MIG --------------------------------------------------------------------------------------------


def test_mig_cap_nodes_are_fully_specified() -> None:
    minors = parse_mig_minors(fake.mig_minors_text())
    assert MIG.mig is not None
    gi, ci = mig_cap_nodes(3, MIG.mig, minors, 241, Path("/proc/x"))
    assert gi == DeviceNode(f"/dev/nvidia-caps/nvidia-cap{fake.gi_minor(3, 2)}", type="c", major=241,
                            minor=fake.gi_minor(3, 2))
    assert ci.minor == fake.ci_minor(3, 2, 1)
    assert ci.path == f"/dev/nvidia-caps/nvidia-cap{ci.minor}"
    with pytest.raises(EditsError, match=r"/proc/x has no gpu3/gi2/ci1/access"):
        mig_cap_nodes(3, MIG.mig, {k: v for k, v in minors.items() if "ci1" not in k}, 241, Path("/proc/x"))


def test_mig_edits_use_the_parent_node_and_caps_missing_on_the_host(roots: HostRoots) -> None:
    edits = mig_edits(MIG, roots)
    paths = [n.path for n in edits.device_nodes]
    assert paths[:4] == ["/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    caps = edits.device_nodes[4:]
    assert [n.minor for n in caps] == [fake.gi_minor(3, 2), fake.ci_minor(3, 2, 1)]
    assert all(n.type == "c" and n.major == fake.CAPS_MAJOR and n.host_path is None for n in caps)
    assert not (roots.dev / "nvidia-caps" / f"nvidia-cap{caps[0].minor}").exists()
    assert edits.env == ("NVIDIA_VISIBLE_DEVICES=void",)
    assert MIG.mig is not None
    no_parent = replace(MIG, minor=None, mig=replace(MIG.mig, parent_minor=None))
    with pytest.raises(EditsError, match="parent GPU's minor unknown"):
        mig_edits(no_parent, roots)


@pytest.mark.parametrize("missing", ["nvidia3", "nvidiactl", "nvidia-uvm"])
def test_mig_missing_host_node_names_the_path(roots: HostRoots, missing: str) -> None:
    (roots.dev / missing).unlink()
    with pytest.raises(EditsError, match=str(roots.dev / missing)):
        nvidia_device_edits(MIG, roots)


def test_mig_without_caps_in_proc(roots: HostRoots) -> None:
    (roots.proc / "driver/nvidia-caps/mig-minors").unlink()
    with pytest.raises(EditsError, match="mig-minors"):
        nvidia_device_edits(MIG, roots)
    fake.make_proc(roots.proc.parent / "other", devices="Character devices:\n195 nvidia\n")
    with pytest.raises(EditsError, match="no nvidia-caps"):
        nvidia_device_edits(MIG, replace(roots, proc=roots.proc.parent / "other" / "proc"))


# ---- the user-space driver --------------------------------------------------------------------------


def test_toolkit_common_edits_are_copied(roots: HostRoots) -> None:
    result = nvidia_device_edits(GPU, roots)
    assert result.extra_cdi_ids == ()
    edits = result.edits
    assert edits.env == ("NVIDIA_VISIBLE_DEVICES=void",)
    paths = [n.path for n in edits.device_nodes]
    assert paths == ["/dev/nvidia3", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools",
                     "/dev/nvidia-modeset"]
    # ours win: the dev root differs from /dev, so our control nodes carry hostPath
    assert edits.device_nodes[1] == DeviceNode("/dev/nvidiactl", host_path=str(roots.dev / "nvidiactl"))
    assert edits.device_nodes[4] == DeviceNode("/dev/nvidia-modeset")  # the Toolkit's, as written there
    assert [h.args[1] for h in edits.hooks] == ["create-symlinks", "update-ldcache"]
    assert f"/{fake.LIB}/libcuda.so.{fake.VERSION}" in {m.container_path for m in edits.mounts}
    assert all(m.host_path.startswith("/usr/") for m in edits.mounts)  # the Toolkit's host paths
    spec = build_spec(UID, [CdiDevice(cdi_device_name(UID, "gpu-0"), edits)], ContainerEdits())
    assert spec["cdiVersion"] == "0.5.0"  # hostPath on device nodes
    assert spec["devices"][0]["containerEdits"]["hooks"][1]["hookName"] == "createContainer"


def test_toolkit_nodes_missing_on_the_host_are_dropped(roots: HostRoots) -> None:
    (roots.dev / "nvidia-modeset").unlink()
    paths = [n.path for n in nvidia_device_edits(GPU, roots).edits.device_nodes]
    assert "/dev/nvidia-modeset" not in paths


def test_driver_root_when_no_toolkit_spec(roots: HostRoots) -> None:
    no_spec = replace(roots, cdi_dirs=(roots.dev.parent / "empty",))
    edits = nvidia_device_edits(GPU, no_spec).edits
    lib = f"/{fake.LIB}/libcuda.so.1"
    assert Mount(str(roots.driver / lib.lstrip("/")), lib, ("ro", "nosuid", "nodev", "bind")) in edits.mounts
    assert f"/{fake.FIRMWARE}" in {m.container_path for m in edits.mounts}
    assert edits.hooks == ()  # no hook binary under this driver root
    assert edits.env == ("NVIDIA_VISIBLE_DEVICES=void",)


def test_driver_root_mounted_elsewhere_names_host_paths(roots: HostRoots) -> None:
    """In the DaemonSet the host's / is at /driver-root: scan there, but the runtime needs host paths."""
    no_spec = replace(roots, cdi_dirs=(roots.dev.parent / "empty",), host_driver=Path("/"))
    edits = nvidia_device_edits(GPU, no_spec).edits
    lib = f"/{fake.LIB}/libcuda.so.1"
    assert Mount(lib, lib, ("ro", "nosuid", "nodev", "bind")) in edits.mounts
    assert not any(m.host_path.startswith(str(roots.driver)) for m in edits.mounts)


def test_stale_toolkit_spec_loses_to_the_installed_driver(
    roots: HostRoots, caplog: pytest.LogCaptureFixture
) -> None:
    fake.write_toolkit_spec(roots.cdi_dirs[-1], fake.toolkit_spec(fake.OLD_VERSION))
    edits = user_space_edits(roots)
    assert all(m.host_path.startswith(str(roots.driver)) for m in edits.mounts)
    assert "generated for driver 535.104.05 but 580.105.08 is installed" in caplog.text
    # without a driver root to compare with, the Toolkit's spec is all there is
    blind = replace(roots, driver=roots.dev.parent / "nothing")
    assert user_space_edits(blind).mounts[0].host_path == f"/{fake.LIB}/libcuda.so.{fake.OLD_VERSION}"


def test_no_user_space_driver_tells_the_admin_what_to_install(roots: HostRoots) -> None:
    spec = "kind: nvidia.com/gpu\ncontainerEdits: {netDevices: []}\n"
    (roots.cdi_dirs[-1] / "nvidia.yaml").write_text(spec)
    bare = replace(roots, driver=roots.dev.parent / "nothing")
    with pytest.raises(EditsError) as err:
        nvidia_device_edits(GPU, bare)
    message = str(err.value)
    assert "nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml" in message
    assert "--driver-root" in message
    assert "unsupported field(s) netDevices" in message  # why the spec on disk was not used
    assert str(bare.driver) in message


def test_overlay_keeps_ours() -> None:
    ours = ContainerEdits(env=("A=1",), device_nodes=(DeviceNode("/dev/x", host_path="/h/x"),),
                          mounts=(Mount("/h/m", "/m"),))
    hook = Hook("createContainer", "/bin/h")
    theirs = ContainerEdits(env=("A=2", "B=1"), device_nodes=(DeviceNode("/dev/x"),),
                            mounts=(Mount("/other", "/m"), Mount("/n", "/n")), hooks=(hook,),
                            additional_gids=(44,))
    merged = overlay(ours, theirs, Path("/nonexistent"))
    assert merged.env == ("A=1", "B=1")
    assert merged.device_nodes == ours.device_nodes
    assert merged.mounts == (Mount("/h/m", "/m"), Mount("/n", "/n"))
    assert (merged.hooks, merged.additional_gids) == ((hook,), (44,))
    specified = DeviceNode("/dev/y", type="c", major=10, minor=1)  # the runtime never stats it
    outside = DeviceNode("/run/z")  # not under /dev: not ours to check
    kept = overlay(ContainerEdits(), ContainerEdits(device_nodes=(specified, outside)), Path("/nonexistent"))
    assert kept.device_nodes == (specified, outside)
