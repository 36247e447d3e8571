"""Prepare NVIDIA devices in "hardware" mode, in process: the ``h100-mig-mixed`` mock inventory (GPU 0 split
into three MIG devices, GPUs 1-7 whole) over fake host trees (/dev, /proc, a driver root, the Toolkit's CDI
spec directory), through the real Preparer, checkpoint and CDI writer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools import cdiinject
from gpudra.model.cdi import cdi_device_id
from gpudra.model.inventory import Device, DeviceKind, Inventory
from gpudra.planning.devicemeta import CONTAINER_ROOT
from gpudra.planning.devices import device_name
from gpudra.planning.offer import plan_offer
from gpudra.planning.plan import ClaimRef
from gpudra.state.cdi import CdiWriter
from gpudra.state.checkpoint import CheckpointStore
from gpudra.state.node import NodeStateStore
from gpudra.state.prepare import Preparer, PrepareSettings
from gpudra.vendors.base import HostRoots, VendorDriver
from gpudra.vendors.mock.driver import open_fake_hardware
from gpudra.vendors.mock.profile import load_profile
from gpudra.vendors.select import open_driver
from tests.unit import nvidia_fake_host as fake

PROFILE = "h100-mig-mixed"
RO = ["ro", "nosuid", "nodev", "bind"]


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    backend = open_driver("mock", PROFILE, Path("/sys"))
    try:
        return backend.discover()
    finally:
        backend.close()


def _mig(inv: Inventory, gi_id: int) -> Device:
    return next(d for d in inv.devices if d.mig is not None and d.mig.gi_id == gi_id)


def _gpu(inv: Inventory, minor: int) -> Device:
    return next(d for d in inv.devices if d.kind is DeviceKind.GPU and d.minor == minor)


class Claims:
    """The API server's side: claims allocated to named devices of this node."""

    def __init__(self) -> None:
        self.by_name: dict[str, Any] = {}

    def add(self, name: str, devices: list[Device]) -> ClaimRef:
        uid = f"b0000000-0000-4000-8000-{len(self.by_name):012d}"
        results = [
            {"request": "gpu", "driver": "gpudra.io", "pool": "node", "device": device_name(d)}
            for d in devices
        ]
        self.by_name[name] = {
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "status": {"allocation": {"devices": {"results": results}}},
        }
        return ClaimRef("ns", name, uid)

    def get_claim(self, namespace: str, name: str) -> Any:
        return self.by_name[name]


@dataclass
class Node:
    root: Path
    roots: HostRoots
    claims: Claims
    store: CheckpointStore
    cdi: CdiWriter

    drivers: list[VendorDriver] = field(default_factory=list)

    def preparer(self, inventory: Inventory) -> Preparer:
        """The real NVIDIA driver over the same fake hardware ``inventory`` came from, host roots here."""
        driver = open_fake_hardware(load_profile(PROFILE), self.root / f"hw{len(self.drivers)}", self.roots)
        self.drivers.append(driver)
        node = NodeStateStore(plan_offer(driver.discover()))
        assert node.current.offer.inventory.devices == inventory.devices
        settings = PrepareSettings("node", self.root / "state")
        return Preparer(self.claims, node, self.store, self.cdi, driver=driver, settings=settings)

    def edits(self, claim: ClaimRef) -> dict[str, dict[str, Any]]:
        spec = json.loads(self.cdi.path_for(claim.uid).read_text())
        assert spec["kind"] == "k8s.gpudra.io/claim"
        assert spec["cdiVersion"] == "0.5.0"  # hostPath on nodes (the fake /dev is not /dev), nothing newer
        assert "containerEdits" not in spec  # every device's edits are complete on their own
        return {d["name"]: d["containerEdits"] for d in spec["devices"]}


def _node(tmp_path: Path, *, toolkit: bool, hook: bool = False) -> Node:
    toolkit_dir = tmp_path / "host-cdi"
    if toolkit:
        fake.write_toolkit_spec(toolkit_dir)
    roots = HostRoots(dev=fake.make_dev(tmp_path), proc=fake.make_proc(tmp_path),
                      driver=fake.make_driver_root(tmp_path, hook=hook), cdi_dirs=(toolkit_dir,))
    store = CheckpointStore(tmp_path / "cp.json", tmp_path / "cp.lock", "boot")
    return Node(tmp_path, roots, Claims(), store, CdiWriter(tmp_path / "cdi"))


def _nodes(dev: Path, minor: int, *caps: int) -> list[dict[str, Any]]:
    host = [{"path": f"/dev/{n}", "hostPath": str(dev / n)}
            for n in (f"nvidia{minor}", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")]
    major = fake.CAPS_MAJOR
    return host + [{"path": f"/dev/nvidia-caps/nvidia-cap{c}", "type": "c", "major": major, "minor": c}
                   for c in caps]


def test_full_gpu_and_mig_device_with_the_toolkit_spec(tmp_path: Path, inventory: Inventory) -> None:
    node = _node(tmp_path, toolkit=True)
    gpu, mig = _gpu(inventory, 5), _mig(inventory, 3)
    claim = node.claims.add("mixed", [gpu, mig])

    result = node.preparer(inventory).prepare([claim])[claim.uid]

    assert result.error is None
    names = [device_name(gpu), device_name(mig)]
    assert [d.cdi_device_ids for d in result.devices] == [(cdi_device_id(claim.uid, n),) for n in names]
    edits = node.edits(claim)
    gpu_edits, mig_edits = edits[f"{claim.uid}-{names[0]}"], edits[f"{claim.uid}-{names[1]}"]
    modeset = {"path": "/dev/nvidia-modeset"}  # copied from the Toolkit's spec as written there
    assert gpu_edits["deviceNodes"] == [*_nodes(node.roots.dev, 5), modeset]
    caps = (fake.gi_minor(0, 3), fake.ci_minor(0, 3, 0))
    assert mig_edits["deviceNodes"] == [*_nodes(node.roots.dev, 0, *caps), modeset]
    common = fake.toolkit_spec()["containerEdits"]
    for dev in (gpu_edits, mig_edits):
        assert dev["env"] == ["NVIDIA_VISIBLE_DEVICES=void"]
        toolkit = [m for m in dev["mounts"] if not m["containerPath"].startswith(CONTAINER_ROOT)]
        assert toolkit == common["mounts"]
        [meta] = [m for m in dev["mounts"] if m["containerPath"].startswith(CONTAINER_ROOT)]  # KEP-5304
        assert meta["containerPath"] == f"{CONTAINER_ROOT}/resourceclaims/mixed/gpu/gpudra.io-metadata.json"
        assert dev["hooks"] == common["hooks"]
    assert node.store.snapshot()[claim.uid].state == "PrepareCompleted"


def test_a_container_given_one_device_sees_only_its_nodes(tmp_path: Path, inventory: Inventory) -> None:
    """What the runtime gives a container holding one of the claim's devices (one request of two)."""
    node = _node(tmp_path, toolkit=True)
    gpu, mig = _gpu(inventory, 5), _mig(inventory, 3)
    claim = node.claims.add("two", [gpu, mig])
    result = node.preparer(inventory).prepare([claim])[claim.uid]
    assert result.error is None
    dirs = [*node.roots.cdi_dirs, node.cdi.root]
    for device, minor in ((result.devices[0], 5), (result.devices[1], 0)):
        view = cdiinject.inject(device.cdi_device_ids, dirs)
        gpu_nodes = {p for p in view.device_nodes if p.startswith("/dev/nvidia") and p[11:].isdigit()}
        assert gpu_nodes == {f"/dev/nvidia{minor}"}
        assert view.env["NVIDIA_VISIBLE_DEVICES"] == "void"


@pytest.mark.parametrize("hook", [False, True])
def test_driver_root_when_no_toolkit_spec(tmp_path: Path, inventory: Inventory, hook: bool) -> None:
    node = _node(tmp_path, toolkit=False, hook=hook)
    mig = _mig(inventory, 4)
    claim = node.claims.add("mig", [mig])

    result = node.preparer(inventory).prepare([claim])[claim.uid]

    assert result.error is None
    [edits] = node.edits(claim).values()
    assert edits["deviceNodes"] == _nodes(node.roots.dev, 0, fake.gi_minor(0, 4), fake.ci_minor(0, 4, 0))
    drv = node.roots.driver
    targets = {m["containerPath"]: m for m in edits["mounts"]}
    soname = f"{fake.LIB}/libcuda.so.1"
    assert targets[f"/{soname}"] == {"hostPath": str(drv / soname), "containerPath": f"/{soname}",
                                     "options": RO}
    wanted = {f"/{fake.LIB}/libnvidia-ml.so.{fake.VERSION}", "/usr/bin/nvidia-smi", f"/{fake.FIRMWARE}"}
    assert wanted <= set(targets)
    assert f"/{fake.LIB}/libcuda.so.{fake.OLD_VERSION}" not in targets
    expected_hooks = [{"hookName": "createContainer", "path": str(drv / "usr/bin/nvidia-cdi-hook"),
                       "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", f"/{fake.LIB}"]}]
    assert edits.get("hooks") == (expected_hooks if hook else None)


def test_missing_parent_node_fails_only_that_claim(tmp_path: Path, inventory: Inventory) -> None:
    node = _node(tmp_path, toolkit=True)
    (node.roots.dev / "nvidia0").unlink()
    good, bad = node.claims.add("gpu", [_gpu(inventory, 1)]), node.claims.add("mig", [_mig(inventory, 2)])

    results = node.preparer(inventory).prepare([good, bad])

    assert results[good.uid].error is None
    assert results[bad.uid].error == (
        f"cannot prepare devices: device {_mig(inventory, 2).uuid}: host device node "
        f"{node.roots.dev / 'nvidia0'} does not exist"
    )
    assert results[bad.uid].devices == ()
    assert not node.cdi.path_for(bad.uid).exists()
    assert set(node.store.snapshot()) == {good.uid}


def test_no_user_space_driver_fails_the_claim_with_advice(tmp_path: Path, inventory: Inventory) -> None:
    node = _node(tmp_path, toolkit=False)
    node.roots = replace(node.roots, driver=tmp_path / "no-driver")
    claim = node.claims.add("gpu", [_gpu(inventory, 7)])

    result = node.preparer(inventory).prepare([claim])[claim.uid]

    assert result.error is not None
    assert "nvidia-ctk cdi generate --output=/var/run/cdi/nvidia.yaml" in result.error
    assert "--driver-root" in result.error
    assert not node.cdi.path_for(claim.uid).exists()
    assert claim.uid not in node.store.snapshot()
