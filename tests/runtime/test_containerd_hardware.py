"""The hardware drivers' container edits in a real runtime: device nodes, driver files and ``additionalGids``.

The real NVIDIA and AMD drivers run over the mock's fake hardware (fake NVML; fake sysfs and amdsmi) with a
fake host ``/dev`` of real character device nodes, a ``/proc`` and an NVIDIA driver root, and prepare claims
through the real Preparer, checkpoint and CDI writer, in process (as tests/integration/test_prepare_*.py do:
``gpudra run --backend mock`` hands containers the mock's edits, never these). containerd 2.x then runs a
container per claim from the spec files written: the CDI library in ``ctr`` checks each spec's version against
the fields it uses, and runc creates the nodes and groups the container is shown.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.model.inventory import Device, DeviceKind
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
from gpudra.vendors.mock.node import NodeProfile
from gpudra.vendors.mock.profile import load_profile
from tests.runtime.conftest import Runtime, RuntimeRefused
from tests.unit import nvidia_fake_host as fake

pytestmark = pytest.mark.runtime

NVIDIA_MAJOR, UVM_MAJOR = 195, 238  # as tests/unit/nvidia_fake_host.PROC_DEVICES says (caps: 241)
KFD_MAJOR, DRM_MAJOR = 235, 226
VIDEO_GID, RENDER_GID = 44, 109


class Host:
    """A fake node: host trees under ``root``, claims the API side holds, one vendor driver and Preparer."""

    def __init__(self, root: Path) -> None:
        self.root, self.dev, self.spec_dir = root, root / "dev", root / "cdi"
        self.claims: dict[str, Any] = {}
        self.driver: VendorDriver | None = None

    def chardev(self, name: str, major: int, minor: int, gid: int = 0) -> None:
        path = self.dev / name
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mknod(path, stat.S_IFCHR | 0o660, os.makedev(major, minor))  # the runtime fixture needs root
        os.chown(path, 0, gid)

    def open(self, profile: NodeProfile, roots: HostRoots) -> list[Device]:
        self.driver = open_fake_hardware(profile, self.root / "hw", roots)
        return list(self.driver.discover().devices)

    def prepare(self, name: str, devices: list[Device]) -> tuple[ClaimRef, list[str]]:
        """Prepare a claim allocated ``devices``: the claim and its CDI ids, one per device."""
        assert self.driver is not None
        uid = f"c0000000-0000-4000-8000-{len(self.claims):012d}"
        results = [{"request": "gpu", "driver": "gpudra.io", "pool": "node", "device": device_name(d)}
                   for d in devices]  # fmt: skip
        self.claims[name] = {
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "status": {"allocation": {"devices": {"results": results}}},
        }
        store = CheckpointStore(self.root / "cp.json", self.root / "cp.lock", "boot")
        node = NodeStateStore(plan_offer(self.driver.discover()))
        settings = PrepareSettings("node", self.root / "state")
        cdi = CdiWriter(self.spec_dir)
        preparer = Preparer(self, node, store, cdi, driver=self.driver, settings=settings)
        claim = ClaimRef("ns", name, uid)
        result = preparer.prepare([claim])[uid]
        assert result.error is None, result.error
        return claim, [i for d in result.devices for i in d.cdi_device_ids]

    def get_claim(self, namespace: str, name: str) -> Any:
        return self.claims[name]


@pytest.fixture
def host(tmp_path: Path, runtime: Runtime) -> Iterator[Host]:
    h = Host(tmp_path)
    yield h
    if h.driver is not None:
        h.driver.close()


def _nvidia(host: Host) -> list[Device]:
    for minor in range(8):
        host.chardev(f"nvidia{minor}", NVIDIA_MAJOR, minor)
    host.chardev("nvidiactl", NVIDIA_MAJOR, 255)
    host.chardev("nvidia-uvm", UVM_MAJOR, 0)
    host.chardev("nvidia-uvm-tools", UVM_MAJOR, 1)
    roots = HostRoots(dev=host.dev, proc=fake.make_proc(host.root), driver=fake.make_driver_root(host.root),
                      cdi_dirs=(host.root / "no-toolkit",))  # fmt: skip
    return host.open(load_profile("h100-mig-mixed"), roots)


def _control_nodes(gpu_minor: int) -> dict[str, tuple[int, int, int]]:
    return {
        f"/dev/nvidia{gpu_minor}": (NVIDIA_MAJOR, gpu_minor, 0),
        "/dev/nvidiactl": (NVIDIA_MAJOR, 255, 0),
        "/dev/nvidia-uvm": (UVM_MAJOR, 0, 0),
        "/dev/nvidia-uvm-tools": (UVM_MAJOR, 1, 0),
    }


def _gpu_like(seen_devices: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
    """The container's GPU nodes (the runtime's own /dev/null etc. left out)."""
    return {p: v for p, v in seen_devices.items() if p.startswith(("/dev/nvidia", "/dev/dri", "/dev/kfd"))}


def test_nvidia_full_gpu_and_mig_device_nodes_and_driver_files(host: Host, runtime: Runtime) -> None:
    devices = _nvidia(host)
    gpu = next(d for d in devices if d.kind is DeviceKind.GPU and d.minor == 5)
    mig = next(d for d in devices if d.kind is DeviceKind.MIG and d.mig is not None)
    assert mig.mig is not None
    assert mig.mig.gi_id is not None
    assert mig.mig.ci_id is not None

    _, gpu_ids = host.prepare("gpu", [gpu])
    libcuda = f"/{fake.LIB}/libcuda.so.{fake.VERSION}"
    seen = runtime.run(host.spec_dir, gpu_ids, [libcuda])
    assert _gpu_like(seen.devices) == _control_nodes(5)
    assert seen.env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "ro" in seen.mounts[libcuda]
    assert seen.files[libcuda].startswith("\x7fELF")
    assert f"/usr/bin/{fake.BINS[0]}" in seen.mounts

    _, mig_ids = host.prepare("mig", [mig])
    seen = runtime.run(host.spec_dir, mig_ids)
    gi, ci = fake.gi_minor(0, mig.mig.gi_id), fake.ci_minor(0, mig.mig.gi_id, mig.mig.ci_id)
    caps = {f"/dev/nvidia-caps/nvidia-cap{m}": (fake.CAPS_MAJOR, m, 0) for m in (gi, ci)}
    assert _gpu_like(seen.devices) == _control_nodes(0) | caps  # the parent's node and its two caps only


def _partition(devices: list[Device], gpu: int, index: int) -> Device:
    parents = list(dict.fromkeys(d.parent_uuid for d in devices if d.kind is DeviceKind.PARTITION))
    return next(
        d for d in devices
        if d.parent_uuid == parents[gpu] and d.partition is not None and d.partition.index == index
    )  # fmt: skip


def test_amd_partitions_get_their_nodes_and_the_render_group(host: Host, runtime: Runtime) -> None:
    devices = host.open(load_amd_profile("mi300x-8-cpx-nps4"), HostRoots(dev=host.dev))
    a, b = _partition(devices, 0, 2), _partition(devices, 1, 0)
    assert a.minor is not None
    assert b.minor is not None
    host.chardev("kfd", KFD_MAJOR, 0, VIDEO_GID)
    for minor in (a.minor, b.minor):
        host.chardev(f"dri/renderD{minor}", DRM_MAJOR, minor, RENDER_GID)

    claim, ids = host.prepare("two", [a, b])  # one claim, two devices
    seen = runtime.run(host.spec_dir, ids)
    assert _gpu_like(seen.devices) == {
        "/dev/kfd": (KFD_MAJOR, 0, 0),
        f"/dev/dri/renderD{a.minor}": (DRM_MAJOR, a.minor, 0),
        f"/dev/dri/renderD{b.minor}": (DRM_MAJOR, b.minor, 0),
    }
    assert seen.groups == {0, VIDEO_GID, RENDER_GID}  # additionalGids: the host nodes' groups

    # The runtime enforces the spec version per field: additionalGids needs 0.7.0, which the writer chose.
    spec_file = next(host.spec_dir.glob(f"*{claim.uid}*"))
    spec = json.loads(spec_file.read_text())
    assert spec["cdiVersion"] == "0.7.0"
    older = host.root / "cdi-0.6.0"
    older.mkdir()
    (older / spec_file.name).write_text(json.dumps(spec | {"cdiVersion": "0.6.0"}))
    with pytest.raises(RuntimeRefused, match=r"spec version must be at least v0\.7\.0"):
        runtime.run(older, ids)

