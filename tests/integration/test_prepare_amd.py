"""Prepare AMD compute partitions in "hardware" mode, in process: the ``mi300x-8-cpx-nps4`` mock inventory
(64 CPX partitions, each with its own render minor) over a fake host /dev, through the real Preparer,
checkpoint and CDI writer. Real character devices are created when this process may (root); the tests that
need them skip otherwise, the missing-node test runs everywhere."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

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
from gpudra.vendors.mock.amd_profile import load_amd_profile
from gpudra.vendors.mock.driver import open_fake_hardware
from gpudra.vendors.select import open_driver

PROFILE = "mi300x-8-cpx-nps4"
KFD_MAJOR, DRM_MAJOR = 235, 226
VIDEO_GID, RENDER_GID = 44, 109


@pytest.fixture(scope="module")
def inventory() -> Inventory:
    backend = open_driver("mock", PROFILE, Path("/sys"))
    try:
        return backend.discover()
    finally:
        backend.close()


def _partition(inv: Inventory, gpu: int, index: int) -> Device:
    """Partition ``index`` of the ``gpu``-th GPU (probe order)."""
    parents = list(dict.fromkeys(d.parent_uuid for d in inv.devices if d.kind is DeviceKind.PARTITION))
    return next(
        d for d in inv.devices
        if d.parent_uuid == parents[gpu] and d.partition is not None and d.partition.index == index
    )  # fmt: skip


class Claims:
    """The API server's side: claims allocated to named devices of this node."""

    def __init__(self) -> None:
        self.by_name: dict[str, Any] = {}

    def add(self, name: str, devices: list[Device]) -> ClaimRef:
        uid = f"a0000000-0000-4000-8000-{len(self.by_name):012d}"
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
    claims: Claims
    store: CheckpointStore
    cdi: CdiWriter
    dev: Path

    drivers: list[VendorDriver] = field(default_factory=list)

    def preparer(self, inventory: Inventory, *, additional_gids: bool = True) -> Preparer:
        """The real AMD driver over the same fake hardware ``inventory`` came from, with host roots here."""
        roots = HostRoots(dev=self.dev, additional_gids=additional_gids)
        driver = open_fake_hardware(load_amd_profile(PROFILE), self.root / f"hw{len(self.drivers)}", roots)
        self.drivers.append(driver)
        node = NodeStateStore(plan_offer(driver.discover()))
        assert node.current.offer.inventory.devices == inventory.devices
        settings = PrepareSettings("node", self.root / "state")
        return Preparer(self.claims, node, self.store, self.cdi, driver=driver, settings=settings)

    def spec(self, claim: ClaimRef) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.cdi.path_for(claim.uid).read_text())
        return data

    def chardev(self, name: str, major: int, minor: int, gid: int) -> None:
        path = self.dev / name
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mknod(path, stat.S_IFCHR | 0o660, os.makedev(major, minor))
            os.chown(path, 0, gid)
        except PermissionError:
            pytest.skip(
                "creating character devices needs CAP_MKNOD/CAP_CHOWN (root); "
                "tests/unit/test_edits_amd.py covers the node logic from stat results"
            )

    def render(self, device: Device) -> None:
        assert device.minor is not None
        self.chardev(f"dri/renderD{device.minor}", DRM_MAJOR, device.minor, RENDER_GID)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    store = CheckpointStore(tmp_path / "cp.json", tmp_path / "cp.lock", "boot")
    n = Node(tmp_path, Claims(), store, CdiWriter(tmp_path / "cdi"), tmp_path / "dev")
    yield n
    for driver in n.drivers:
        driver.close()


def _edits(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each device's edits, less the KEP-5304 metadata mount every device carries (tested on its own)."""
    out = {}
    for d in spec["devices"]:
        edits = dict(d["containerEdits"])
        mounts = [m for m in edits.pop("mounts", []) if not m["containerPath"].startswith(CONTAINER_ROOT)]
        assert len(d["containerEdits"]["mounts"]) == 1, d["containerEdits"]["mounts"]
        if mounts:
            edits["mounts"] = mounts
        out[d["name"]] = edits
    return out


def test_partitions_get_kfd_their_own_render_node_and_the_render_group(
    node: Node, inventory: Inventory
) -> None:
    a, b = _partition(inventory, 0, 2), _partition(inventory, 1, 0)
    node.chardev("kfd", KFD_MAJOR, 0, VIDEO_GID)
    node.render(a)
    node.render(b)
    claim = node.claims.add("two", [a, b])

    result = node.preparer(inventory).prepare([claim])[claim.uid]

    assert result.error is None
    names = [device_name(a), device_name(b)]
    assert [d.cdi_device_ids for d in result.devices] == [(cdi_device_id(claim.uid, n),) for n in names]
    spec = node.spec(claim)
    assert spec["cdiVersion"] == "0.7.0"
    assert "containerEdits" not in spec  # everything is per device
    kfd = {"path": "/dev/kfd", "hostPath": str(node.dev / "kfd"), "type": "c", "major": KFD_MAJOR, "minor": 0}
    for name, dev in zip(names, (a, b), strict=True):
        render = f"dri/renderD{dev.minor}"
        assert _edits(spec)[f"{claim.uid}-{name}"] == {
            "deviceNodes": [
                kfd,
                {"path": f"/dev/{render}", "hostPath": str(node.dev / render), "type": "c",
                 "major": DRM_MAJOR, "minor": dev.minor},
            ],
            "additionalGids": [VIDEO_GID, RENDER_GID],
        }  # fmt: skip
    assert (a.minor, b.minor) == (130, 136)  # CPX: each partition its own render minor
    assert node.store.snapshot()[claim.uid].state == "PrepareCompleted"


def test_without_additional_gids_the_spec_stays_below_0_7_0(node: Node, inventory: Inventory) -> None:
    part = _partition(inventory, 3, 5)
    node.chardev("kfd", KFD_MAJOR, 0, RENDER_GID)
    node.render(part)
    claim = node.claims.add("no-gids", [part])

    result = node.preparer(inventory, additional_gids=False).prepare([claim])[claim.uid]

    assert result.error is None
    spec = node.spec(claim)
    assert spec["cdiVersion"] == "0.5.0"  # hostPath (the fake /dev is not /dev), nothing newer
    [edits] = _edits(spec).values()
    assert "additionalGids" not in edits
    assert [n["path"] for n in edits["deviceNodes"]] == ["/dev/kfd", f"/dev/dri/renderD{part.minor}"]


def test_missing_render_node_fails_that_claim_naming_the_path(node: Node, inventory: Inventory) -> None:
    part = _partition(inventory, 7, 7)
    (node.dev / "dri").mkdir(parents=True)
    (node.dev / "kfd").touch()  # existence is checked first: no device node needed for this test
    claim = node.claims.add("lost", [part])

    result = node.preparer(inventory).prepare([claim])[claim.uid]

    missing = node.dev / f"dri/renderD{part.minor}"
    assert result.error == (
        f"cannot prepare devices: device {part.uuid}: host device node {missing} does not exist"
    )
    assert result.devices == ()
    assert not node.cdi.path_for(claim.uid).exists()
    assert claim.uid not in node.store.snapshot()


def test_missing_render_node_does_not_fail_a_neighbour(node: Node, inventory: Inventory) -> None:
    ok, lost = _partition(inventory, 2, 1), _partition(inventory, 2, 2)
    node.chardev("kfd", KFD_MAJOR, 0, RENDER_GID)
    node.render(ok)
    good, bad = node.claims.add("ok", [ok]), node.claims.add("lost", [lost])

    results = node.preparer(inventory).prepare([good, bad])

    assert results[good.uid].error is None
    assert _edits(node.spec(good))[f"{good.uid}-{device_name(ok)}"]["additionalGids"] == [RENDER_GID]
    assert f"{node.dev / 'dri' / f'renderD{lost.minor}'} does not exist" in str(results[bad.uid].error)
    assert set(node.store.snapshot()) == {good.uid}
