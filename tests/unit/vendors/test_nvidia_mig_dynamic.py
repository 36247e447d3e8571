"""Dynamic MIG through the real NvidiaDriver over the fake NVML, driven as prepare drives a vendor driver:
discover -> plan_offer (dynamic) -> devices picked from the offer by name -> intend -> apply -> edits -> undo.

Every fact is checked through the fake NVML's own calls (MIG mode, GPU instances, MIG device handles), never
through the driver's internals. This file: creating at a placement, sharing a GPU, undo. The fault cases,
full GPUs, Ampere, threads and a lost GPU are in ``test_nvidia_mig_dynamic_faults.py``; the rig below is
shared with it.
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pynvml
import pytest

from gpudra.model import names
from gpudra.model.applied import NOTHING_APPLIED, AppliedState
from gpudra.model.cdi import DeviceNode
from gpudra.planning.offer import Offer, plan_offer
from gpudra.planning.partitions import MigPolicy
from gpudra.planning.plan import ClaimRef, DeviceToPrepare
from gpudra.vendors.base import ApplyError, ClaimDevice, HostRoots
from gpudra.vendors.mock.fake_nvml import FakeNvml, write_sysfs_tree
from gpudra.vendors.mock.profile import Profile, load_profile
from gpudra.vendors.nvidia.driver import NvidiaDriver
from gpudra.vendors.nvidia.mig_dynamic import MIG_INSTANCE, MIG_MODE
from tests.unit import nvidia_fake_host as host

H100: Final = "GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63"  # h100.json, minor 0
CLAIM: Final = ClaimRef("default", "mig-claim", "5b1e0f6a-7c2d-4e3f-8a9b-0c1d2e3f4a5b")
DYNAMIC: Final = MigPolicy(dynamic=True)
GI_PROFILE_IDS: Final = (0, 5, 9, 14, 15, 19, 20)  # every GPU-instance profile id of the H100 and A100
CAPS: Final = "/dev/nvidia-caps/"

#: A GPU instance as NVML lists it: (profile id, placement start, placement size, GPU instance id).
Gi = tuple[int, int, int, int]
#: A MIG device as NVML lists it: (UUID, GPU instance id, compute instance id).
Mig = tuple[str, int, int]


@dataclass
class Rig:
    """One node: the real driver over ``fake``, and a fake host tree (/dev, /proc, driver, Toolkit spec)."""

    driver: NvidiaDriver
    fake: FakeNvml
    roots: HostRoots

    def offer(self, policy: MigPolicy = DYNAMIC, claim_created: frozenset[str] = frozenset()) -> Offer:
        return plan_offer(self.driver.discover(), claim_created, policy)

    def prepare(self, *devices: ClaimDevice) -> AppliedState:
        """intend, then apply, as prepare does (the intended state is what the checkpoint records first)."""
        return self.driver.apply(CLAIM, devices, self.driver.intend(CLAIM, devices))

    def nodes(self, device: ClaimDevice, applied: AppliedState) -> tuple[DeviceNode, ...]:
        return self.driver.edits(CLAIM, device, applied).edits.device_nodes


class Rigs:
    """Opens rigs under ``tmp_path`` and closes their drivers at the end of the test."""

    def __init__(self, tmp_path: Path) -> None:
        self._tmp = tmp_path
        self._count = itertools.count()
        self._open: list[NvidiaDriver] = []

    def open(self, profile: Profile | str, fake_type: type[FakeNvml] = FakeNvml) -> Rig:
        found = load_profile(profile) if isinstance(profile, str) else profile
        root = self._tmp / f"node{next(self._count)}"
        write_sysfs_tree(root / "sys", found)
        cdi = root / "cdi"
        host.write_toolkit_spec(cdi)
        roots = HostRoots(dev=host.make_dev(root), proc=host.make_proc(root),
                          driver=host.make_driver_root(root), cdi_dirs=(cdi,))  # fmt: skip
        fake = fake_type(found)
        driver = NvidiaDriver(fake, sysfs_root=root / "sys", roots=roots)
        self._open.append(driver)
        return Rig(driver, fake, roots)

    def close(self) -> None:
        for driver in self._open:
            driver.close()


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[Rigs]:
    opened = Rigs(tmp_path)
    yield opened
    opened.close()


# ---- picking devices from the offer, as prepare looks them up by the name the claim was allocated --------


def mig_name(parent: str, profile: str, gi_profile_id: int, start: int) -> str:
    return names.mig_device_name(parent, profile, gi_profile_id, start)


def pick(offer: Offer, name: str) -> ClaimDevice:
    assert name in offer.devices, f"{name} is not offered"
    return DeviceToPrepare(request="gpu", pool="node", name=name, device=offer.devices[name])


def pick_mig(offer: Offer, parent: str, profile: str, gi_profile_id: int, start: int) -> ClaimDevice:
    return pick(offer, mig_name(parent, profile, gi_profile_id, start))


# ---- what NVML says (the fake's own calls) ---------------------------------------------------------------


def gpu(fake: FakeNvml, index: int = 0) -> Any:
    return fake.nvmlDeviceGetHandleByIndex(index)


def mig_mode(fake: FakeNvml, index: int = 0) -> list[int]:
    mode: list[int] = fake.nvmlDeviceGetMigMode(gpu(fake, index))
    return mode


def gpu_instances(fake: FakeNvml, index: int = 0) -> list[Gi]:
    """Every GPU instance on the GPU, sorted; none while MIG mode is off."""
    found: list[Gi] = []
    for profile_id in GI_PROFILE_IDS:
        array = (pynvml.c_nvmlGpuInstance_t * 8)()
        count = ctypes.c_uint(8)
        try:
            fake.nvmlDeviceGetGpuInstances(gpu(fake, index), profile_id, array, ctypes.byref(count))
        except pynvml.NVMLError_NotSupported:
            return []  # MIG mode off: no instance exists
        for handle in array[: count.value]:
            info = fake.nvmlGpuInstanceGetInfo(handle)
            found.append((int(info.profileId), int(info.placement.start), int(info.placement.size),
                          int(info.id)))  # fmt: skip
    return sorted(found)


def gi_handle(fake: FakeNvml, gi_id: int, index: int = 0) -> Any:
    return fake.nvmlDeviceGetGpuInstanceById(gpu(fake, index), gi_id)


def mig_devices(fake: FakeNvml, index: int = 0) -> list[Mig]:
    """Every MIG device of the GPU, in MIG device index order."""
    found: list[Mig] = []
    handle = gpu(fake, index)
    for slot in range(fake.nvmlDeviceGetMaxMigDeviceCount(handle)):
        try:
            mig = fake.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
        except pynvml.NVMLError_NotFound:
            continue
        found.append((fake.nvmlDeviceGetUUID(mig), fake.nvmlDeviceGetGpuInstanceId(mig),
                      fake.nvmlDeviceGetComputeInstanceId(mig)))  # fmt: skip
    return found


def ci_profile_ids(fake: FakeNvml, gi_id: int, index: int = 0) -> list[tuple[int, int]]:
    """(compute instance id, CI profile id) of each compute instance of GPU instance ``gi_id``."""
    gi = gi_handle(fake, gi_id, index)
    found: list[tuple[int, int]] = []
    for ci_index in range(8):
        try:
            profile = fake.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, ci_index, 0)
        except (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument):
            continue
        array = (pynvml.c_nvmlComputeInstance_t * 8)()
        count = ctypes.c_uint(8)
        fake.nvmlGpuInstanceGetComputeInstances(gi, profile.id, array, ctypes.byref(count))
        for ci in array[: count.value]:
            info = fake.nvmlComputeInstanceGetInfo(ci)
            found.append((int(info.id), int(info.profileId)))
    return found


def create_directly(fake: FakeNvml, profile_id: int, start: int, size: int, ci_index: int) -> int:
    """A MIG device made through NVML itself (as an apply cut short, or an admin, leaves it): its GI id."""
    handle = gpu(fake)
    if mig_mode(fake)[0] != pynvml.NVML_DEVICE_MIG_ENABLE:
        assert fake.nvmlDeviceSetMigMode(handle, pynvml.NVML_DEVICE_MIG_ENABLE) == pynvml.NVML_SUCCESS
    placement = pynvml.c_nvmlGpuInstancePlacement_t(start, size)
    gi = fake.nvmlDeviceCreateGpuInstanceWithPlacement(handle, profile_id, ctypes.byref(placement))
    info = fake.nvmlGpuInstanceGetComputeInstanceProfileInfo(gi, ci_index, 0)
    fake.nvmlGpuInstanceCreateComputeInstance(gi, info.id)
    return int(fake.nvmlGpuInstanceGetInfo(gi).id)


def caps(nodes: Sequence[DeviceNode]) -> list[DeviceNode]:
    return [n for n in nodes if n.path.startswith(CAPS)]


# ---- 1. one MIG device created at exactly its placement ---------------------------------------------------


def test_a_1g_at_slice_3_switches_mig_on_and_creates_exactly_that_instance(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    device = pick_mig(rig.offer(), H100, "1g.10gb", 19, 3)
    assert mig_mode(rig.fake) == [0, 0]

    intended = rig.driver.intend(CLAIM, [device])
    assert [c.kind for c in intended.changes] == [MIG_INSTANCE]
    assert (intended.created_devices, intended.creating) == ((), (device.name,))
    assert (mig_mode(rig.fake), gpu_instances(rig.fake)) == ([0, 0], [])  # intend changes nothing
    before = rig.nodes(device, intended)  # the edits asked before apply: no instance, so no caps nodes
    assert "/dev/nvidia0" in [n.path for n in before]
    assert caps(before) == []

    applied = rig.driver.apply(CLAIM, [device], intended)

    assert mig_mode(rig.fake) == [1, 1]
    [(profile_id, start, size, gi_id)] = gpu_instances(rig.fake)
    assert (profile_id, start, size) == (19, 3, 1)
    [(uuid, mig_gi, ci_id)] = mig_devices(rig.fake)
    assert mig_gi == gi_id
    [(listed_ci, ci_profile)] = ci_profile_ids(rig.fake, gi_id)
    assert listed_ci == ci_id
    [mode] = applied.of_kind(MIG_MODE)
    assert (mode.get("parent"), mode.get("enabled"), mode.get("previous")) == (H100, True, False)
    [made] = applied.of_kind(MIG_INSTANCE)
    assert made.device == device.name
    assert dict(made.params) == {
        "parent": H100, "profile": "1g.10gb", "profileId": 19, "start": 3, "size": 1, "slices": 1,
        "index": 0, "creates": True, "giId": gi_id, "ciId": ci_id, "ciProfileId": ci_profile, "uuid": uuid,
    }  # fmt: skip
    assert applied.created_devices == (uuid,)

    nodes = rig.nodes(device, applied)
    assert [n.path for n in nodes][:3] == ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"]
    gi_minor, ci_minor = host.gi_minor(0, gi_id), host.ci_minor(0, gi_id, ci_id)
    assert caps(nodes) == [
        DeviceNode(f"{CAPS}nvidia-cap{gi_minor}", type="c", major=host.CAPS_MAJOR, minor=gi_minor),
        DeviceNode(f"{CAPS}nvidia-cap{ci_minor}", type="c", major=host.CAPS_MAJOR, minor=ci_minor),
    ]


def test_an_applied_device_is_not_published_again_and_its_placement_stays_offered(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    device = pick_mig(rig.offer(), H100, "2g.20gb", 14, 2)
    applied = rig.prepare(device)
    again = rig.offer(claim_created=frozenset(applied.created_devices) | set(applied.creating))
    assert again.dynamic_gpus == (H100,)
    assert device.name in again.devices  # the GPU stays partitionable: the claim made its only instance
    assert not any(d.uuid in applied.created_devices for d in again.devices.values())


# ---- 2. two MIG devices share a GPU; a taken placement fails and leaves nothing behind ---------------------


def test_two_3g_share_a_gpu_and_a_third_at_a_taken_placement_fails_cleanly(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    offer = rig.offer()
    first = rig.prepare(pick_mig(offer, H100, "3g.40gb", 9, 0))
    second = rig.prepare(pick_mig(offer, H100, "3g.40gb", 9, 4))
    layout = gpu_instances(rig.fake)
    assert [(p, s, n) for p, s, n, _ in layout] == [(9, 0, 4), (9, 4, 4)]
    devices = mig_devices(rig.fake)
    assert sorted(u for u, _, _ in devices) == sorted(first.created_devices + second.created_devices)
    assert len({gi for _, gi, _ in devices}) == 2

    with pytest.raises(ApplyError) as taken:
        rig.prepare(pick_mig(offer, H100, "3g.40gb", 9, 0))
    message = str(taken.value)
    assert H100 in message
    assert "3g.40gb" in message
    assert "memory slices 0-3" in message
    assert "overlaps" in message  # why, in words, besides NVML's INSUFFICIENT_RESOURCES
    with pytest.raises(ApplyError, match=r"MIG 1g\.10gb at memory slices 2-2"):
        rig.prepare(pick_mig(offer, H100, "1g.10gb", 19, 2))
    assert (gpu_instances(rig.fake), mig_devices(rig.fake)) == (layout, devices)  # untouched
    assert mig_mode(rig.fake) == [1, 1]


def test_a_claim_whose_second_device_fails_takes_its_first_one_back(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    offer = rig.offer()
    fits = pick_mig(offer, H100, "1g.10gb", 19, 6)
    overlaps = pick_mig(offer, H100, "7g.80gb", 0, 0)  # the whole GPU's slices, 6 included
    with pytest.raises(ApplyError, match=r"MIG 7g\.80gb at memory slices 0-7"):
        rig.prepare(fits, overlaps)
    assert (gpu_instances(rig.fake), mig_devices(rig.fake)) == ([], [])
    assert mig_mode(rig.fake) == [0, 0]  # the mode this claim switched on is put back


# ---- 3. undo -----------------------------------------------------------------------------------------------


def test_undo_destroys_exactly_the_claims_instance_and_twice_is_fine(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    offer = rig.offer()
    mine = rig.prepare(pick_mig(offer, H100, "1g.10gb", 19, 0))
    other = rig.prepare(pick_mig(offer, H100, "2g.20gb", 14, 2))
    [kept] = [g for g in gpu_instances(rig.fake) if g[0] == 14]

    rig.driver.undo(mine)
    assert gpu_instances(rig.fake) == [kept]
    assert [u for u, _, _ in mig_devices(rig.fake)] == list(other.created_devices)
    assert mig_mode(rig.fake) == [1, 1]  # another claim's MIG device still needs MIG mode
    rig.driver.undo(mine)  # idempotent: already gone is success
    assert gpu_instances(rig.fake) == [kept]

    rig.driver.undo(other)
    assert (gpu_instances(rig.fake), mig_devices(rig.fake)) == ([], [])
    rig.driver.undo(other)
    rig.driver.undo(NOTHING_APPLIED)


def test_undo_of_the_only_claim_puts_mig_mode_back(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    applied = rig.prepare(pick_mig(rig.offer(), H100, "4g.40gb", 5, 0))
    assert mig_mode(rig.fake) == [1, 1]
    rig.driver.undo(applied)
    assert mig_mode(rig.fake) == [0, 0]
    rig.driver.undo(applied)
    assert mig_mode(rig.fake) == [0, 0]


def test_undo_of_the_intended_state_destroys_an_instance_made_before_the_ids_were_recorded(
    rigs: Rigs,
) -> None:
    rig = rigs.open("h100")
    device = pick_mig(rig.offer(), H100, "3g.40gb", 9, 4)
    intended = rig.driver.intend(CLAIM, [device])
    assert all(c.get("giId") is None and c.get("uuid") is None for c in intended.changes)
    gi_id = create_directly(rig.fake, 9, 4, 4, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE)  # the crash
    assert gpu_instances(rig.fake) == [(9, 4, 4, gi_id)]
    assert len(mig_devices(rig.fake)) == 1

    rig.driver.undo(intended)
    assert (gpu_instances(rig.fake), mig_devices(rig.fake)) == ([], [])
    rig.driver.undo(intended)  # and again, with nothing there


def test_undo_never_destroys_an_instance_of_another_profile_or_placement(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    offer = rig.offer()
    create_directly(rig.fake, 19, 2, 1, 0)  # 1g.10gb at 2
    create_directly(rig.fake, 20, 3, 1, 0)  # 1g.10gb+me at 3: the same start as the claim's, another profile
    create_directly(rig.fake, 15, 4, 2, 0)  # 1g.20gb at 4-5
    layout, devices = gpu_instances(rig.fake), mig_devices(rig.fake)
    assert len(layout) == len(devices) == 3
    for profile, gi_profile_id, start in (
        ("1g.10gb", 19, 3), ("1g.10gb", 19, 4), ("2g.20gb", 14, 2), ("1g.20gb", 15, 2), ("3g.40gb", 9, 4),
    ):  # fmt: skip
        device = pick_mig(offer, H100, profile, gi_profile_id, start)
        rig.driver.undo(rig.driver.intend(CLAIM, [device]))
        assert (gpu_instances(rig.fake), mig_devices(rig.fake)) == (layout, devices), device.name
