"""Dynamic MIG through the real NvidiaDriver over the fake NVML (see ``test_nvidia_mig_dynamic.py``, whose rig
this uses): full GPUs and MIG mode, Ampere, what NVML refuses, two threads on one GPU, a GPU gone."""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

import pynvml
import pytest

from gpudra.model import names
from gpudra.model.applied import NOTHING_APPLIED, AppliedState, Change
from gpudra.planning.partitions import STATIC_MIG, MigPolicy
from gpudra.planning.plan import DeviceToPrepare
from gpudra.vendors.base import ApplyError
from gpudra.vendors.mock.fake_nvml import FakeNvml
from gpudra.vendors.mock.profile import Profile
from gpudra.vendors.nvidia.mig_dynamic import MIG_MODE

from .helpers import variant
from .test_nvidia_mig_dynamic import (
    CLAIM,
    DYNAMIC,
    H100,
    Rig,
    Rigs,
    caps,
    gpu,
    gpu_instances,
    mig_devices,
    mig_mode,
    mig_name,
    pick,
    pick_mig,
)

A100_0: Final = "GPU-0a100000-0000-0000-0000-000000000000"  # dgx-a100.json, index/minor 0
A100_1: Final = "GPU-0a100000-0000-0000-0000-000000000001"
DGX_H100_3: Final = "GPU-0b100000-0000-0000-0000-000000000003"  # dgx-h100.json, index/minor 3


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[Rigs]:
    opened = Rigs(tmp_path)
    yield opened
    opened.close()


def _switch_mig_on(fake: FakeNvml, index: int = 0) -> None:
    """What an admin does with ``nvidia-smi -i <index> -mig 1`` (and a reset where the GPU needs one)."""
    status = fake.nvmlDeviceSetMigMode(gpu(fake, index), pynvml.NVML_DEVICE_MIG_ENABLE)
    if status == pynvml.NVML_ERROR_RESET_REQUIRED:
        fake.reset_gpu(index)
    assert mig_mode(fake, index) == [1, 1]


def _whole(rig: Rig, uuid: str = H100, policy: MigPolicy = DYNAMIC) -> DeviceToPrepare:
    return pick(rig.offer(policy), names.gpu_device_name(uuid))


def _with_device_errors(profile: str, **errors: str) -> Profile:
    return variant(profile, lambda d: d["devices"][0]["errors"].update(errors))


# ---- 4. a full GPU and MIG mode ----------------------------------------------------------------------------


def test_a_managed_whole_gpu_in_mig_mode_without_instances_switches_mig_off(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    _switch_mig_on(rig.fake)
    whole = _whole(rig)
    assert whole.device.mig_managed
    intended = rig.driver.intend(CLAIM, [whole])
    assert intended == NOTHING_APPLIED  # nothing is created for a whole GPU

    applied = rig.driver.apply(CLAIM, [whole], intended)
    assert mig_mode(rig.fake) == [0, 0]
    assert applied == AppliedState((Change.of(MIG_MODE, "", parent=H100, enabled=False, previous=True),))
    nodes = rig.nodes(whole, applied)
    assert "/dev/nvidia0" in [n.path for n in nodes]
    assert caps(nodes) == []
    rig.driver.undo(applied)  # the mode the GPU had is put back
    assert mig_mode(rig.fake) == [1, 1]


def test_a_managed_whole_gpu_is_refused_while_mig_devices_exist(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    _switch_mig_on(rig.fake)
    offer = rig.offer()
    rig.prepare(pick_mig(offer, H100, "1g.10gb", 19, 0))
    layout = gpu_instances(rig.fake)
    with pytest.raises(ApplyError, match=f"GPU {H100}: .*while MIG devices exist on it"):
        rig.prepare(pick(offer, names.gpu_device_name(H100)))
    assert (mig_mode(rig.fake), gpu_instances(rig.fake)) == ([1, 1], layout)


def test_a_whole_gpu_already_out_of_mig_mode_changes_nothing(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    whole = _whole(rig)
    assert whole.device.mig_managed
    assert rig.prepare(whole) == NOTHING_APPLIED
    assert mig_mode(rig.fake) == [0, 0]
    assert "nvmlDeviceSetMigMode" not in rig.fake.calls


def test_a_whole_gpu_under_static_mig_never_touches_mig_mode(rigs: Rigs) -> None:
    rig = rigs.open("h100")
    whole = _whole(rig, policy=STATIC_MIG)  # published while MIG is off ...
    assert not whole.device.mig_managed
    _switch_mig_on(rig.fake)  # ... and an admin switches MIG on before prepare
    calls = len(rig.fake.calls)
    applied = rig.prepare(whole)
    rig.driver.undo(applied)
    assert applied == NOTHING_APPLIED
    assert mig_mode(rig.fake) == [1, 1]
    assert "nvmlDeviceSetMigMode" not in rig.fake.calls[calls:]


def test_an_unmanaged_whole_gpu_beside_a_created_mig_device_keeps_its_mig_mode(rigs: Rigs) -> None:
    rig = rigs.open("dgx-a100")
    _switch_mig_on(rig.fake, 0)
    offer = rig.offer()
    whole = pick(offer, names.gpu_device_name(A100_1))  # an Ampere GPU out of MIG mode: whole, not managed
    assert not whole.device.mig_managed
    _switch_mig_on(rig.fake, 1)  # an admin switches it (with a reset) before prepare
    applied = rig.prepare(pick_mig(offer, A100_0, "1g.5gb", 19, 0), whole)
    assert applied.of_kind(MIG_MODE) == ()
    assert (mig_mode(rig.fake, 1), len(mig_devices(rig.fake, 0))) == ([1, 1], 1)


# ---- 5. Ampere: MIG mode changes only with a reset ---------------------------------------------------------


def test_ampere_in_mig_mode_creates_and_with_mig_off_refuses_and_takes_the_pending_mode_back(
    rigs: Rigs,
) -> None:
    rig = rigs.open("dgx-a100")
    _switch_mig_on(rig.fake, 0)  # GPU 0 as an admin left it; GPU 1 stays out of MIG mode
    offer = rig.offer()
    assert names.gpu_device_name(A100_0) not in offer.devices  # no whole GPU: it could not leave MIG mode
    assert not any(d.parent_uuid == A100_1 for d in offer.devices.values())
    applied = rig.prepare(pick_mig(offer, A100_0, "1g.5gb", 19, 2))
    assert applied.of_kind(MIG_MODE) == ()
    [(profile_id, start, _, gi_id)] = gpu_instances(rig.fake, 0)
    assert (profile_id, start) == (19, 2)
    assert [(u, g) for u, g, _ in mig_devices(rig.fake, 0)] == [(applied.created_devices[0], gi_id)]

    # Forced: GPU 1's 1g.5gb at 0, built by hand (dynamic MIG never offers it while GPU 1 is out of MIG mode)
    slot = offer.devices[mig_name(A100_0, "1g.5gb", 19, 0)]
    assert slot.mig is not None
    forced = replace(slot, parent_uuid=A100_1, index=1, minor=1, mig=replace(slot.mig, parent_minor=1))
    device = DeviceToPrepare(
        request="gpu", pool="node", name=mig_name(A100_1, "1g.5gb", 19, 0), device=forced
    )
    with pytest.raises(ApplyError) as refused:
        rig.prepare(device)
    message = str(refused.value)
    assert A100_1 in message
    assert "reset" in message
    assert "`nvidia-smi -i 1 -mig 1`" in message
    assert mig_mode(rig.fake, 1) == [0, 0]  # current == pending == off: no reset will surprise anyone
    assert gpu_instances(rig.fake, 1) == []


# ---- 6. what NVML refuses ----------------------------------------------------------------------------------


def test_processes_on_the_gpu_keep_mig_mode_from_switching_on(rigs: Rigs) -> None:
    rig = rigs.open(variant("h100", lambda d: d["devices"][0].update(processes=1)))
    device = pick_mig(rig.offer(), H100, "1g.10gb", 19, 0)
    with pytest.raises(ApplyError) as refused:
        rig.prepare(device)
    message = str(refused.value)
    assert f"GPU {H100} MIG 1g.10gb at memory slices 0-0: enabling MIG mode failed" in message
    assert "processes are using the GPU" in message
    assert "IN_USE" in message
    assert "reset" not in message  # not the Ampere advice: a reset is not what this GPU needs
    assert mig_mode(rig.fake) == [0, 0]  # the pending change is taken back


def test_processes_on_the_gpu_keep_mig_mode_from_switching_off(rigs: Rigs) -> None:
    def busy_in_mig_mode(data: dict[str, Any]) -> None:
        data["devices"][0].update(processes=1, mig_mode=[1, 1], max_mig_device_count=7)

    rig = rigs.open(variant("h100", busy_in_mig_mode))
    with pytest.raises(ApplyError, match="disabling MIG mode failed: processes are using the GPU") as refused:
        rig.prepare(_whole(rig))
    assert "reset" not in str(refused.value)
    assert mig_mode(rig.fake) == [1, 1]


def test_no_permission_to_create_says_so_and_leaves_nothing(rigs: Rigs) -> None:
    profile = _with_device_errors("h100", nvmlDeviceCreateGpuInstanceWithPlacement="NVML_ERROR_NO_PERMISSION")
    rig = rigs.open(profile)
    with pytest.raises(
        ApplyError, match=r"creating the GPU instance failed: .*not privileged.*CAP_SYS_ADMIN"
    ):
        rig.prepare(pick_mig(rig.offer(), H100, "2g.20gb", 14, 4))
    assert mig_mode(rig.fake) == [0, 0]  # the MIG mode this apply switched on is switched off again
    assert gpu_instances(rig.fake) == []


def test_a_compute_instance_that_cannot_be_made_takes_its_gpu_instance_with_it(rigs: Rigs) -> None:
    profile = _with_device_errors("h100", nvmlGpuInstanceCreateComputeInstance="NVML_ERROR_UNKNOWN")
    rig = rigs.open(profile)
    _switch_mig_on(rig.fake)
    kept = _bare_gpu_instance_at_4(rig)
    with pytest.raises(ApplyError, match=r"MIG 3g\.40gb at memory slices 0-3: creating the compute instance"):
        rig.prepare(pick_mig(rig.offer(), H100, "3g.40gb", 9, 0))
    assert gpu_instances(rig.fake) == kept  # the 3g.40gb GPU instance made for it is gone again
    assert "nvmlGpuInstanceDestroy" in rig.fake.calls


def test_a_compute_instance_failure_on_a_gpu_out_of_mig_mode_leaves_it_out(rigs: Rigs) -> None:
    profile = _with_device_errors("h100", nvmlGpuInstanceCreateComputeInstance="NVML_ERROR_UNKNOWN")
    rig = rigs.open(profile)
    with pytest.raises(ApplyError, match="creating the compute instance failed"):
        rig.prepare(pick_mig(rig.offer(), H100, "1g.10gb", 19, 5))
    assert rig.fake.calls.count("nvmlGpuInstanceDestroy") == 1
    assert mig_mode(rig.fake) == [0, 0]


def _bare_gpu_instance_at_4(rig: Rig) -> list[tuple[int, int, int, int]]:
    """A GPU instance (no compute instance: the profile refuses them) at 4-7, to show that only the failed
    claim's instance goes."""
    placement = pynvml.c_nvmlGpuInstancePlacement_t(4, 4)
    rig.fake.nvmlDeviceCreateGpuInstanceWithPlacement(gpu(rig.fake), 9, ctypes.byref(placement))
    found = gpu_instances(rig.fake)
    assert [(p, s) for p, s, _, _ in found] == [(9, 4)]
    return found


# ---- 7. two threads on one GPU -----------------------------------------------------------------------------


class _OverlapNvml(FakeNvml):
    """Counts creations under way at once: each waits a moment for another to come in (it never does while
    the driver holds the GPU's lock around its creation)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = threading.Lock()
        self.inside = 0
        self.most = 0
        self.second = threading.Event()

    def nvmlDeviceCreateGpuInstanceWithPlacement(self, device: Any, profileId: int, placement: Any) -> Any:
        with self.guard:
            self.inside += 1
            self.most = max(self.most, self.inside)
            if self.inside > 1:
                self.second.set()
        self.second.wait(timeout=0.05)  # room for a second caller, if nothing keeps it out
        try:
            return super().nvmlDeviceCreateGpuInstanceWithPlacement(device, profileId, placement)
        finally:
            with self.guard:
                self.inside -= 1


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("1g.10gb", 19, 0), ("3g.40gb", 9, 4)),
        (("2g.20gb", 14, 2), ("1g.10gb", 19, 6)),
        (("4g.40gb", 5, 0), ("2g.20gb", 14, 4)),
    ],
)
def test_two_threads_creating_on_one_gpu_both_succeed_one_at_a_time(
    rigs: Rigs, first: tuple[str, int, int], second: tuple[str, int, int]
) -> None:
    rig = rigs.open("h100", fake_type=_OverlapNvml)
    fake = rig.fake
    assert isinstance(fake, _OverlapNvml)
    offer = rig.offer()
    devices = [pick_mig(offer, H100, *first), pick_mig(offer, H100, *second)]
    for _ in range(3):
        start = threading.Barrier(2)

        def prepare(device: DeviceToPrepare, start: threading.Barrier = start) -> AppliedState:
            start.wait(timeout=10)
            return rig.prepare(device)

        with ThreadPoolExecutor(max_workers=2) as pool:
            applied = [f.result(timeout=30) for f in [pool.submit(prepare, d) for d in devices]]
        layout = gpu_instances(fake)
        assert sorted((p, s) for p, s, _, _ in layout) == sorted((d[1], d[2]) for d in (first, second))
        assert len({gi for _, _, _, gi in layout}) == 2
        made = mig_devices(fake)
        assert sorted(u for u, _, _ in made) == sorted(u for a in applied for u in a.created_devices)
        assert len({u for u, _, _ in made}) == 2
        assert fake.most == 1  # never two creations on the GPU at once
        with ThreadPoolExecutor(max_workers=2) as pool:
            for future in [pool.submit(rig.driver.undo, a) for a in applied]:
                future.result(timeout=30)
        assert (gpu_instances(fake), mig_devices(fake)) == ([], [])
        fake.second.clear()


# ---- 8. a GPU gone -----------------------------------------------------------------------------------------


def test_undo_after_the_gpu_is_gone_logs_and_succeeds(rigs: Rigs, caplog: pytest.LogCaptureFixture) -> None:
    rig = rigs.open("dgx-h100")
    applied = rig.prepare(pick_mig(rig.offer(), DGX_H100_3, "1g.10gb", 19, 1))
    assert [d[0] for d in mig_devices(rig.fake, 3)] == list(applied.created_devices)

    def remove_gpu_3(data: dict[str, Any]) -> None:
        del data["devices"][3]
        for position, device in enumerate(data["devices"]):
            device["index"] = position
        for key, matrix in data["p2p_status"].items():  # one row and one column per GPU
            data["p2p_status"][key] = [row[:3] + row[4:] for i, row in enumerate(matrix) if i != 3]

    rig.fake.serve(variant("dgx-h100", remove_gpu_3))
    assert DGX_H100_3 not in {d.uuid for d in rig.driver.discover().devices}
    with caplog.at_level(logging.WARNING, logger="gpudra.vendors.nvidia.mig_dynamic"):
        rig.driver.undo(applied)
        rig.driver.undo(applied)
    assert any(DGX_H100_3 in r.getMessage() and "the GPU is gone" in r.getMessage() for r in caplog.records)
