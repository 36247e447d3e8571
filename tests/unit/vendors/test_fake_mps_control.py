"""The fake ``nvidia-cuda-mps-control`` as a program: daemon (``-f``, ``-d``) and client, run as real
subprocesses of the product module; what it answers, refuses and records in its state file."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpudra.vendors.mock import fake_mps_control as fake
from gpudra.vendors.mock.fake_mps_control import control_command, load_state

GPU_A = "GPU-0b100000-0000-0000-0000-000000000000"
GPU_B = "MIG-1c200000-0000-0000-0000-000000000000"
WAIT_S = 15.0


@dataclass
class Dirs:
    pipe: Path
    log: Path

    def env(self, devices: str | None = f"{GPU_A},{GPU_B}") -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_MPS_", "CUDA_VISIBLE"))}
        env.update({fake.PIPE_DIR_ENV: str(self.pipe), fake.LOG_DIR_ENV: str(self.log)})
        if devices is not None:
            env["CUDA_VISIBLE_DEVICES"] = devices
        return env


def run(dirs: Dirs, *flags: str, text: str = "") -> subprocess.CompletedProcess[str]:
    """The fake as a program, with ``text`` on stdin; bounded."""
    argv = [*control_command(), *flags]
    return subprocess.run(
        argv, input=text, env=dirs.env(), capture_output=True, text=True, timeout=WAIT_S, check=False
    )


def client(dirs: Dirs, *commands: str) -> subprocess.CompletedProcess[str]:
    return run(dirs, text="".join(f"{c}\n" for c in commands))


def wait_answering(dirs: Dirs, proc: subprocess.Popen[str] | None = None) -> None:
    deadline = time.monotonic() + WAIT_S
    while client(dirs, "get_server_list").returncode != 0:
        assert proc is None or proc.poll() is None, "the daemon exited"
        assert time.monotonic() < deadline, "the daemon never answered"
        time.sleep(0.02)


def state(dirs: Dirs) -> fake.FakeMpsState:
    found = load_state(dirs.log)
    assert found is not None
    return found


@pytest.fixture
def dirs(tmp_path: Path) -> Dirs:
    return Dirs(tmp_path / "pipe", tmp_path / "log")


@pytest.fixture
def daemon(dirs: Dirs) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*control_command(), "-f"], env=dirs.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_answering(dirs, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=WAIT_S)


def test_client_without_a_daemon_says_so(dirs: Dirs) -> None:
    done = client(dirs, "get_server_list")
    assert done.returncode == 1
    assert fake.NOT_RUNNING in done.stdout


def test_daemon_answers_and_records(dirs: Dirs, daemon: subprocess.Popen[str]) -> None:
    assert (dirs.pipe / fake.PID_FILE).read_text().strip() == str(daemon.pid)
    done = client(
        dirs,
        "get_default_active_thread_percentage",
        "set_default_active_thread_percentage 40",
        "get_default_active_thread_percentage",
        f"set_default_device_pinned_mem_limit {GPU_A} 10240M",
        "set_default_device_pinned_mem_limit 1 2G",  # an ordinal of CUDA_VISIBLE_DEVICES
        f"get_default_device_pinned_mem_limit {GPU_B}",
        "get_server_list",
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["100.0", "40.0", "2048M"]
    recorded = state(dirs)
    assert recorded.pid == daemon.pid
    assert recorded.running
    assert recorded.visible_devices == (GPU_A, GPU_B)
    assert recorded.active_thread_percentage == 40.0
    assert recorded.pinned_mem_limits == {GPU_A: 10240 * 2**20, GPU_B: 2 * 2**30}
    assert recorded.commands[-1] == "get_server_list"
    assert recorded.refused == ()
    assert "set_default_active_thread_percentage 40" in (dirs.log / fake.LOG_FILE).read_text()


@pytest.mark.parametrize(
    "command",
    [
        "set_default_active_thread_percentage 0",
        "set_default_active_thread_percentage 150",
        "set_default_active_thread_percentage lots",
        "set_default_active_thread_percentage",
        f"set_default_device_pinned_mem_limit {GPU_A} 10K",
        f"set_default_device_pinned_mem_limit {GPU_A} 0M",
        "set_default_device_pinned_mem_limit GPU-not-served 1G",
        "set_default_device_pinned_mem_limit 2 1G",
        "start_the_world",
    ],
)
def test_bad_commands_are_refused_and_change_nothing(
    dirs: Dirs, daemon: subprocess.Popen[str], command: str
) -> None:
    done = client(dirs, command)
    assert done.stdout.startswith("Error: ")
    recorded = state(dirs)
    assert recorded.refused == (command,)
    assert recorded.active_thread_percentage is None
    assert recorded.pinned_mem_limits == {}
    assert daemon.poll() is None  # still serving
    assert client(dirs, "get_server_list").returncode == 0


def test_a_second_daemon_of_the_pipe_dir_is_refused(dirs: Dirs, daemon: subprocess.Popen[str]) -> None:
    second = run(dirs, "-f")
    assert second.returncode == 1
    assert fake.ALREADY_RUNNING in second.stdout
    assert daemon.poll() is None
    assert state(dirs).pid == daemon.pid


def test_quit_ends_the_daemon_and_its_files(dirs: Dirs, daemon: subprocess.Popen[str]) -> None:
    assert client(dirs, "quit").returncode == 0
    assert daemon.wait(timeout=WAIT_S) == 0
    assert not (dirs.pipe / fake.PID_FILE).exists()
    assert not (dirs.pipe / fake.SOCKET_NAME).exists()
    assert not state(dirs).running
    assert fake.NOT_RUNNING in client(dirs, "get_server_list").stdout


def test_sigterm_ends_the_daemon_cleanly(dirs: Dirs, daemon: subprocess.Popen[str]) -> None:
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=WAIT_S) == 0
    assert not (dirs.pipe / fake.PID_FILE).exists()
    assert not state(dirs).running


def test_background_daemon_is_detached(dirs: Dirs) -> None:
    done = run(dirs, "-d")
    assert done.returncode == 0, done.stderr
    pid = int((dirs.pipe / fake.PID_FILE).read_text())
    try:
        assert client(dirs, "get_server_list").returncode == 0  # listening when -d returned
        stat = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        assert int(stat[1]) != os.getpid()  # not our child
        assert int(stat[3]) not in (os.getsid(0), 0)  # a session of its own
    finally:
        client(dirs, "quit")
    deadline = time.monotonic() + WAIT_S
    while (dirs.pipe / fake.PID_FILE).exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert not state(dirs).running


def test_a_deep_pipe_dir_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # the socket path exceeds sun_path (108 bytes)
    dirs = Dirs(deep / "pipe", deep / "log")
    proc = subprocess.Popen([*control_command(), "-f"], env=dirs.env(devices=None), text=True)
    try:
        wait_answering(dirs, proc)
        # without CUDA_VISIBLE_DEVICES any UUID-looking device is taken
        assert client(dirs, "set_default_device_pinned_mem_limit GPU-x 1G").stdout == ""
        assert state(dirs).pinned_mem_limits == {"GPU-x": 2**30}
        assert client(dirs, "quit").returncode == 0
        assert proc.wait(timeout=WAIT_S) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=WAIT_S)


def test_unknown_flags_are_a_usage_error(dirs: Dirs) -> None:
    done = run(dirs, "-x")
    assert done.returncode == 2
    assert "usage" in done.stderr
