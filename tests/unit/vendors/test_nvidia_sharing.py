"""Sharing through the real NvidiaDriver over the fake NVML, driven as prepare drives it: intend -> settle
(with the other claims' recorded states) -> apply -> undo (with those still recorded).

What the GPUs hold is read from the fake hardware (its compute modes and time-slices), what an MPS daemon was
told from the fake daemon's state file: a GPU setting several claims hold is put back by the last of them, to
the value it replaced; conflicting settings, and MPS where no daemon can run, are errors for that claim.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Final

import pytest

from gpudra.model.applied import AppliedState
from gpudra.model.inventory import Device
from gpudra.planning.plan import ClaimRef, DeviceToPrepare
from gpudra.planning.sharing_config import (
    GpuConfig,
    Interval,
    MpsConfig,
    Sharing,
    Strategy,
    TimeSlicingConfig,
)
from gpudra.vendors.base import ApplyError, VendorDriver
from gpudra.vendors.mock.fake_mps_control import load_state
from gpudra.vendors.mock.fake_nvml_policy import COMPUTE_MODE, TIMESLICE
from gpudra.vendors.mock.hotswap import load_node_profile
from gpudra.vendors.mock.node import FakeNode
from gpudra.vendors.nvidia.mps import daemon_id_for
from gpudra.vendors.nvidia.sharing import MPS_DAEMON, SETTING, mps_edits
from gpudra.vendors.nvidia.sharing_options import MpsOptions

GIB: Final = 2**30
SHARES: Final = ("5e0c1a9e-0000-4000-8000-000000000001", "5e0c1a9e-0000-4000-8000-000000000002")
A: Final = ClaimRef("team-a", "a", "0a000000-0000-4000-8000-000000000001")
B: Final = ClaimRef("team-b", "b", "0b000000-0000-4000-8000-000000000002")


@dataclass
class Rig:
    node: FakeNode
    gpu: Device
    mps_root: Path

    @property
    def driver(self) -> VendorDriver:
        return self.node.driver

    def hardware(self, key: str) -> int:
        assert self.node.nvml is not None
        return self.node.nvml.policy.get(self.gpu.uuid, key)

    def set_by_admin(self, key: str, value: int) -> None:
        assert self.node.nvml is not None
        self.node.nvml.policy.set(self.gpu.uuid, key, value)

    def prepare(
        self, claim: ClaimRef, devices: Sequence[DeviceToPrepare], *others: AppliedState
    ) -> AppliedState:
        settled = self.driver.settle(self.driver.intend(claim, devices), others)
        return self.driver.apply(claim, devices, settled)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    mps = MpsOptions(tmp_path / "mps", ready_timeout_s=10.0)
    profile = load_node_profile("dgx-h100")
    node = FakeNode(profile, tmp_path / "hw", policy_file=tmp_path / "policy.json", mps=mps)
    gpu = node.driver.discover().devices[0]
    yield Rig(node, gpu, tmp_path / "mps")
    for pid_file in (tmp_path / "mps").glob("*/pipe/*.pid"):  # what a failing test leaves
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    node.close()


def on(
    gpu: Device, config: object | None = None, share: int = -1, consumed: int | None = None
) -> DeviceToPrepare:
    cap = () if consumed is None else (("memory", Fraction(consumed)),)
    return DeviceToPrepare("gpu", "node-a", "gpu-0", gpu, share_id=SHARES[share] if share >= 0 else None,
                           configs=() if config is None else (config,), consumed_capacity=cap)  # fmt: skip


def ts(interval: Interval) -> GpuConfig:
    return GpuConfig(Sharing(Strategy.TIME_SLICING, time_slicing=TimeSlicingConfig(interval)))


def test_a_setting_two_claims_hold_is_put_back_by_the_last_to_what_it_replaced(rig: Rig) -> None:
    rig.set_by_admin(TIMESLICE, 2)  # Medium, set by an admin before gpudra
    a = rig.prepare(A, [on(rig.gpu, ts(Interval.LONG), share=0)])
    assert rig.hardware(TIMESLICE) == 3
    b = rig.prepare(B, [on(rig.gpu, ts(Interval.LONG), share=1)], a)
    (setting,) = [c for c in b.of_kind(SETTING) if c.get("setting") == "timeslice"]
    assert setting.get("previous") == 2  # taken over from the first holder: not the Long it read
    rig.driver.undo(a, [b])
    assert rig.hardware(TIMESLICE) == 3  # b still holds it
    rig.driver.undo(b, [])
    assert rig.hardware(TIMESLICE) == 2  # the admin's Medium is back
    rig.driver.undo(b, [])  # idempotent
    assert rig.hardware(TIMESLICE) == 2


def test_another_interval_on_a_held_gpu_is_refused(rig: Rig) -> None:
    a = rig.prepare(A, [on(rig.gpu, ts(Interval.LONG), share=0)])
    with pytest.raises(ApplyError, match="set the time-slice interval Long, device gpu-0 of this claim asks"):
        rig.driver.settle(rig.driver.intend(B, [on(rig.gpu, ts(Interval.SHORT), share=1)]), [a])
    assert rig.hardware(TIMESLICE) == 3


def test_a_value_changed_since_is_left_alone(rig: Rig) -> None:
    a = rig.prepare(A, [on(rig.gpu, ts(Interval.SHORT))])
    rig.set_by_admin(TIMESLICE, 2)
    rig.driver.undo(a, [])
    assert rig.hardware(TIMESLICE) == 2


def test_an_interrupted_prepare_is_undone_from_what_was_intended(rig: Rig) -> None:
    rig.set_by_admin(COMPUTE_MODE, 2)  # PROHIBITED
    intended = rig.driver.intend(A, [on(rig.gpu, ts(Interval.LONG))])
    rig.driver.apply(A, [on(rig.gpu, ts(Interval.LONG))], intended)  # the process dies before recording it
    assert (rig.hardware(TIMESLICE), rig.hardware(COMPUTE_MODE)) == (3, 0)
    rig.driver.undo(intended, [])  # the roll-back of the recorded intent
    assert (rig.hardware(TIMESLICE), rig.hardware(COMPUTE_MODE)) == (0, 2)


def test_a_share_runs_a_limited_daemon_until_undone(rig: Rig) -> None:
    applied = rig.prepare(A, [on(rig.gpu, share=0, consumed=20 * GIB)])
    (daemon,) = applied.of_kind(MPS_DAEMON)
    assert daemon.text("gpus") == rig.gpu.uuid
    state = load_state(rig.mps_root / daemon_id_for(A.uid) / "log")
    assert state is not None
    assert (state.running, state.active_thread_percentage, state.pinned_mem_limits) == (
        True, 26.0, {rig.gpu.uuid: 20 * GIB},
    )  # fmt: skip
    edits = mps_edits("gpu-0", applied)
    assert edits is not None
    assert edits.env == ("CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",)
    assert mps_edits("gpu-1", applied) is None
    rig.driver.undo(applied, [])
    assert not (rig.mps_root / daemon_id_for(A.uid)).exists()


def test_mps_owning_a_gpu_conflicts_with_any_other_claim_there(rig: Rig) -> None:
    config = GpuConfig(Sharing(Strategy.MPS, mps=MpsConfig()))
    a = rig.prepare(A, [on(rig.gpu, config)])
    assert rig.hardware(COMPUTE_MODE) == 3
    other = DeviceToPrepare("gpu", "node-a", "gpu-0", rig.gpu, admin_access=True, configs=(config,))
    with pytest.raises(ApplyError, match="another claim's MPS daemon holds it exclusively"):
        rig.driver.settle(rig.driver.intend(B, [other]), [a])
    rig.driver.undo(a, [])
    assert rig.hardware(COMPUTE_MODE) == 0


def test_reconcile_stops_daemons_no_claim_holds(rig: Rig) -> None:
    held = rig.prepare(A, [on(rig.gpu, share=0, consumed=20 * GIB)])
    orphan = rig.prepare(B, [on(rig.gpu, share=1, consumed=20 * GIB)], held)  # its record was lost
    (daemon,) = orphan.of_kind(MPS_DAEMON)
    assert (rig.mps_root / daemon.text("daemon")).exists()
    rig.driver.reconcile([held], [])
    assert not (rig.mps_root / daemon_id_for(B.uid)).exists()
    assert (rig.mps_root / daemon_id_for(A.uid)).exists()
    rig.driver.undo(held, [])


def test_mps_without_a_daemon_directory_is_an_error_for_the_claim(tmp_path: Path) -> None:
    node = FakeNode(load_node_profile("dgx-h100"), tmp_path)
    try:
        gpu = node.driver.discover().devices[0]
        with pytest.raises(ApplyError, match="MPS is not available on this node"):
            node.driver.intend(A, [on(gpu, share=0, consumed=20 * GIB)])
    finally:
        node.close()
