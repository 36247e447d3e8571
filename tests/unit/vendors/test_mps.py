"""MPS control daemons per claim: the manager (:class:`MpsDaemons`) with the process launcher and the control
client over the fake ``nvidia-cuda-mps-control``, all as real processes. A daemon outlives ``kill -9`` of the
process that started it, is reused by the next one, and is gone (with its directories) after stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpudra.model.cdi import Mount
from gpudra.vendors.mock.fake_mps_control import FakeMpsState, control_command, load_state
from gpudra.vendors.nvidia.mps import (
    MpsControl,
    MpsDaemons,
    MpsDaemonSpec,
    MpsError,
    MpsNotRunning,
    daemon_id_for,
)
from gpudra.vendors.nvidia.mps_process import MpsProcessLauncher

GPU = "GPU-0b100000-0000-0000-0000-000000000000"
MIG = "MIG-1c200000-0000-0000-0000-000000000000"
CLAIM = "5f0d7c4e-2b1a-4c3d-9e8f-0a1b2c3d4e5f"
GIB = 2**30
WAIT_S = 15.0
SPEC = MpsDaemonSpec(daemon_id_for(CLAIM), (GPU, MIG), 40, ((GPU, 8 * GIB), (MIG, 2 * GIB)))

# A plugin in miniature: starts a daemon through the product code, says where, then waits to be killed.
PLUGIN = """
import sys, time
from pathlib import Path
from gpudra.vendors.mock.fake_mps_control import control_command
from gpudra.vendors.nvidia.mps import MpsControl, MpsDaemons, MpsDaemonSpec
from gpudra.vendors.nvidia.mps_process import MpsProcessLauncher
control = MpsControl(control_command())
daemons = MpsDaemons(Path(sys.argv[1]), MpsProcessLauncher(control.command), control)
info = daemons.start(MpsDaemonSpec(sys.argv[2], (sys.argv[3],), 25, ()))
print(info.where, flush=True)
time.sleep(120)
"""


def make_daemons(
    root: Path, command: tuple[str, ...] | None = None, timeout_s: float = WAIT_S, ready_s: float = WAIT_S
) -> MpsDaemons:
    control = MpsControl(command or control_command(), timeout_s=timeout_s)
    launcher = MpsProcessLauncher(control.command, stop_timeout_s=WAIT_S)
    return MpsDaemons(root, launcher, control, ready_timeout_s=ready_s)


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[MpsDaemons]:
    manager = make_daemons(tmp_path / "mps")
    yield manager
    for daemon_id in manager.found():  # never leave a daemon behind
        manager.stop(daemon_id, manager.where(daemon_id))


def fake_state(daemons: MpsDaemons, daemon_id: str) -> FakeMpsState:
    state = load_state(daemons.info(daemon_id).log_dir)
    assert state is not None
    return state


def pid_of(where: str) -> int:
    assert where.startswith("pid:")
    return int(where.removeprefix("pid:"))


def test_start_launches_a_limited_daemon(daemons: MpsDaemons) -> None:
    info = daemons.start(SPEC)
    assert info.pipe_dir == daemons.root / SPEC.daemon_id / "pipe"
    assert info.host_pipe_dir == info.pipe_dir  # no host root given
    assert daemons.alive(SPEC.daemon_id, info.where)
    stat = Path(f"/proc/{pid_of(info.where)}/stat").read_text().rpartition(")")[2].split()
    assert int(stat[1]) != os.getpid()  # not our child: nothing of ours has to reap it
    assert int(stat[3]) not in (os.getsid(0), 0)  # a session of its own
    assert (info.log_dir / "daemon.out").exists()  # its output
    state = fake_state(daemons, SPEC.daemon_id)
    assert state.pid == pid_of(info.where)
    assert state.running
    assert state.visible_devices == (GPU, MIG)
    assert state.active_thread_percentage == 40.0
    assert state.pinned_mem_limits == {GPU: 8 * GIB, MIG: 2 * GIB}
    assert daemons.found() == (SPEC.daemon_id,)
    assert daemons.where(SPEC.daemon_id) == info.where
    assert oct(info.shm_dir.stat().st_mode & 0o7777) == oct(0o1777)


def test_start_is_idempotent_and_sets_the_limits_again(daemons: MpsDaemons) -> None:
    first = daemons.start(SPEC)
    again = daemons.start(SPEC)
    assert again == first
    state = fake_state(daemons, SPEC.daemon_id)
    assert state.pid == pid_of(first.where)  # the same daemon
    assert state.commands.count("set_default_active_thread_percentage 40") == 2


def test_daemon_outlives_kill_9_of_its_starter(daemons: MpsDaemons) -> None:
    daemon_id = daemon_id_for("0a0b0c0d-1111-2222-3333-444455556666")
    plugin = subprocess.Popen(
        [sys.executable, "-c", PLUGIN, str(daemons.root), daemon_id, GPU],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert plugin.stdout is not None
        where = plugin.stdout.readline().strip()  # EOF (and a failed assert) if the plugin died
    finally:
        plugin.send_signal(signal.SIGKILL)
        plugin.communicate(timeout=WAIT_S)
    assert daemons.alive(daemon_id, where)
    assert daemons.answers(daemon_id)
    spec = MpsDaemonSpec(daemon_id, (GPU,), 25, ())
    info = daemons.start(spec)  # the restarted plugin finds it
    assert info.where == where
    assert fake_state(daemons, daemon_id).pid == pid_of(where)
    daemons.stop(daemon_id, info.where)
    assert not daemons.alive(daemon_id, where)


def test_stop_ends_the_daemon_and_removes_its_directories(daemons: MpsDaemons) -> None:
    info = daemons.start(SPEC)
    daemons.stop(SPEC.daemon_id, info.where)
    assert not daemons.alive(SPEC.daemon_id, info.where)
    assert not (daemons.root / SPEC.daemon_id).exists()
    assert daemons.found() == ()
    daemons.stop(SPEC.daemon_id, info.where)  # again: nothing left, no error
    assert not daemons.answers(SPEC.daemon_id)


def test_a_killed_daemon_is_started_again(daemons: MpsDaemons) -> None:
    info = daemons.start(SPEC)
    os.kill(pid_of(info.where), signal.SIGKILL)
    deadline = time.monotonic() + WAIT_S
    while daemons.alive(SPEC.daemon_id, info.where):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    restarted = daemons.start(SPEC)
    assert restarted.where != info.where
    state = fake_state(daemons, SPEC.daemon_id)
    assert state.pid == pid_of(restarted.where)
    assert state.pinned_mem_limits == {GPU: 8 * GIB, MIG: 2 * GIB}


def test_alive_is_false_for_another_process_or_daemon(daemons: MpsDaemons) -> None:
    info = daemons.start(SPEC)
    other = MpsDaemonSpec(daemon_id_for("ffffffff-0000-0000-0000-000000000000"), (GPU,), None, ())
    other_info = daemons.start(other)
    assert not daemons.alive(SPEC.daemon_id, other_info.where)  # same command line, another daemon
    assert not daemons.alive(SPEC.daemon_id, f"pid:{os.getpid()}")  # a reused pid
    assert not daemons.alive(SPEC.daemon_id, "")
    assert daemons.alive(SPEC.daemon_id, info.where)
    with pytest.raises(MpsError, match="not a process MPS daemon"):
        daemons.alive(SPEC.daemon_id, "pod:ns/name")


def test_a_daemon_that_exits_at_once_fails_the_start_and_leaves_nothing(tmp_path: Path) -> None:
    manager = make_daemons(tmp_path / "mps", (sys.executable, "-c", "import sys; sys.exit('no GPU here')"))
    with pytest.raises(MpsError, match="exited at start: no GPU here"):
        manager.start(SPEC)
    assert manager.found() == ()


def test_a_daemon_that_never_answers_is_stopped(tmp_path: Path) -> None:
    hangs = (sys.executable, "-c", "import sys, time; print('up', flush=True); time.sleep(60)")
    manager = make_daemons(tmp_path / "mps", hangs, timeout_s=0.3, ready_s=0.5)
    with pytest.raises(MpsError, match=r"did not answer within 0\.5s") as raised:
        manager.start(SPEC)
    assert "gave no answer" in str(raised.value)
    assert manager.found() == ()
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    assert not any(manager.launcher.alive(SPEC.daemon_id, f"pid:{p}") for p in pids)


def test_a_missing_control_binary_fails_the_start(tmp_path: Path) -> None:
    manager = make_daemons(tmp_path / "mps", (str(tmp_path / "usr/bin/nvidia-cuda-mps-control"),))
    with pytest.raises(MpsError, match="cannot start MPS daemon"):
        manager.start(SPEC)
    assert manager.found() == ()


def test_container_edits_point_at_the_host_dirs(tmp_path: Path) -> None:
    manager = MpsDaemons(
        tmp_path / "mps", MpsProcessLauncher(()), MpsControl("x"), host_root=Path("/var/lib/gpudra/mps")
    )
    info = manager.info(SPEC.daemon_id, "pid:1")
    assert info.host_log_dir == Path(f"/var/lib/gpudra/mps/{SPEC.daemon_id}/log")
    edits = manager.container_edits(info)
    assert edits.env == ("CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",)
    options = ("rw", "nosuid", "nodev", "bind")
    assert edits.mounts == (
        Mount(f"/var/lib/gpudra/mps/{SPEC.daemon_id}/pipe", "/tmp/nvidia-mps", options),
        Mount(f"/var/lib/gpudra/mps/{SPEC.daemon_id}/shm", "/dev/shm", options),
    )


def test_found_lists_daemon_dirs_only(daemons: MpsDaemons) -> None:
    (daemons.root / "not-a-daemon").mkdir(parents=True)
    (daemons.root / "mps-file").write_text("")
    (daemons.root / "mps-a1").mkdir()
    assert daemons.found() == ("mps-a1",)
    assert daemons.where("mps-a1") == ""


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"daemon_id": "MPS_Bad"}, "not a DNS label"),
        ({"daemon_id": "mps-" + "a" * 60}, "not a DNS label"),
        ({"gpu_uuids": ()}, "invalid GPU UUIDs"),
        ({"gpu_uuids": ("GPU-a,GPU-b",)}, "invalid GPU UUIDs"),
        ({"active_thread_percentage": 0}, "not in 1-100"),
        ({"pinned_memory_limits": (("GPU-other", GIB),)}, "not served"),
        ({"pinned_memory_limits": ((GPU, GIB + 1),)}, "not whole MiB"),
        ({"pinned_memory_limits": ((MIG, GIB), (GPU, GIB))}, "unsorted"),
    ],
)
def test_bad_specs_are_refused(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {
        "daemon_id": SPEC.daemon_id,
        "gpu_uuids": SPEC.gpu_uuids,
        "active_thread_percentage": 50,
        "pinned_memory_limits": (),
        **kwargs,
    }
    with pytest.raises(MpsError, match=message):
        MpsDaemonSpec(**fields)  # type: ignore[arg-type]


# ---- the control client ------------------------------------------------------------------------------


def test_control_client_errors(daemons: MpsDaemons, tmp_path: Path) -> None:
    control = daemons.control
    nowhere = tmp_path / "nowhere"
    with pytest.raises(MpsNotRunning, match="no MPS control daemon answers"):
        control.server_list(nowhere, nowhere)
    info = daemons.start(SPEC)
    assert control.server_list(info.pipe_dir, info.log_dir) == ()
    with pytest.raises(MpsError, match=r"refused 'set_default_device_pinned_mem_limit GPU-x 1024M'"):
        control.set_pinned_mem_limit(info.pipe_dir, info.log_dir, "GPU-x", GIB)
    with pytest.raises(MpsError, match="not whole MiB"):
        control.set_pinned_mem_limit(info.pipe_dir, info.log_dir, GPU, 1000)
    with pytest.raises(MpsError, match="refused 'set_default_active_thread_percentage 101'"):
        control.set_active_thread_percentage(info.pipe_dir, info.log_dir, 101)
    assert fake_state(daemons, SPEC.daemon_id).active_thread_percentage == 40.0  # unchanged
    with pytest.raises(MpsError, match="cannot run the MPS control binary"):
        MpsControl(tmp_path / "missing").server_list(info.pipe_dir, info.log_dir)
    assert MpsControl.under_driver_root(Path("/run/nvidia/driver")).daemon_argv() == (
        "/run/nvidia/driver/usr/bin/nvidia-cuda-mps-control",
        "-f",
    )
