"""A stand-in for ``nvidia-cuda-mps-control``, run as ``python -m gpudra.vendors.mock.fake_mps_control``.

Like the real binary it is three programs in one:

- ``-f``: a control daemon in the foreground; ``-d``: the same, detached (it returns once the daemon
  listens). The daemon takes its directories from ``CUDA_MPS_PIPE_DIRECTORY`` (default
  ``/tmp/nvidia-mps``) and ``CUDA_MPS_LOG_DIRECTORY`` (default ``/var/log/nvidia-mps``), listens on a unix
  socket ``control`` in the pipe directory, writes its pid to ``nvidia-cuda-mps-control.pid`` there and
  refuses to start while another daemon of that directory lives. Its devices are ``CUDA_VISIBLE_DEVICES``
  (UUIDs or ordinals).
- no flag: the client. It reads commands from stdin, one per line, sends each to the daemon and prints the
  answer; with no daemon it prints ``Cannot find MPS control daemon process`` and exits 1.

The daemon understands ``get_server_list``, ``set_default_active_thread_percentage <p>``,
``get_default_active_thread_percentage``, ``set_default_device_pinned_mem_limit <dev> <n>M|<n>G``,
``get_default_device_pinned_mem_limit <dev>`` and ``quit``. A bad command or value is answered with an
``Error: ...`` line and changes nothing. It never starts MPS servers (there is no GPU): the server list is
empty. What it was told is written to ``fake-mps-state.json`` in the log directory (atomically, after every
command), and read back with :func:`load_state`, so tests and ``gpudra demo`` can show what a real daemon
would enforce. Commands are logged to ``control.log`` there, as the real daemon does.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, Final

from gpudra.fsutil import atomic_write, make_dirs

PIPE_DIR_ENV: Final = "CUDA_MPS_PIPE_DIRECTORY"
LOG_DIR_ENV: Final = "CUDA_MPS_LOG_DIRECTORY"
DEFAULT_PIPE_DIR: Final = "/tmp/nvidia-mps"
DEFAULT_LOG_DIR: Final = "/var/log/nvidia-mps"
SOCKET_NAME: Final = "control"
PID_FILE: Final = "nvidia-cuda-mps-control.pid"
STATE_FILE: Final = "fake-mps-state.json"
LOG_FILE: Final = "control.log"
NOT_RUNNING: Final = "Cannot find MPS control daemon process"
ALREADY_RUNNING: Final = "An instance of this daemon is already running"
DEFAULT_PERCENTAGE: Final = 100.0

_MODULE: Final = "gpudra.vendors.mock.fake_mps_control"
_MAX_REQUEST: Final = 4096
_IO_TIMEOUT_S: Final = 5.0
_READY_TIMEOUT_S: Final = 10.0
_MAX_RECORDED: Final = 256
_LIMIT: Final = re.compile(r"([1-9][0-9]{0,12})([MG])")
_UNITS: Final = {"M": 2**20, "G": 2**30}


def control_command() -> tuple[str, ...]:
    """The argv that runs this module with the current interpreter (what ``MpsControl`` takes)."""
    return (sys.executable, "-m", _MODULE)


@dataclass(frozen=True, slots=True)
class FakeMpsState:
    """What a fake daemon was told, as its state file says."""

    pid: int
    running: bool
    visible_devices: tuple[str, ...] | None  # CUDA_VISIBLE_DEVICES, None when unset
    active_thread_percentage: float | None  # None: never set (the daemon's default is 100)
    pinned_mem_limits: dict[str, int] = field(default_factory=dict)  # device -> bytes
    commands: tuple[str, ...] = ()  # accepted commands, oldest first (the last 256)
    refused: tuple[str, ...] = ()  # refused commands


def load_state(log_dir: Path) -> FakeMpsState | None:
    """The state a fake daemon wrote to ``log_dir``; None when there is none."""
    try:
        raw = json.loads((log_dir / STATE_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    devices = raw["visibleDevices"]
    return FakeMpsState(
        pid=int(raw["pid"]),
        running=bool(raw["running"]),
        visible_devices=None if devices is None else tuple(devices),
        active_thread_percentage=raw["defaultActiveThreadPercentage"],
        pinned_mem_limits={str(k): int(v) for k, v in raw["defaultDevicePinnedMemLimits"].items()},
        commands=tuple(raw["commands"]),
        refused=tuple(raw["refused"]),
    )


def _pid_alive(pid: int) -> bool:
    """The process exists and is no zombie (a killed daemon may wait a moment to be reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc to tell: it exists
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


class _Daemon:
    def __init__(self, pipe_dir: Path, log_dir: Path, devices: tuple[str, ...] | None) -> None:
        self.pipe_dir, self.log_dir, self.devices = pipe_dir, log_dir, devices
        self.percentage: float | None = None
        self.limits: dict[str, int] = {}
        self.commands: list[str] = []
        self.refused: list[str] = []
        self.running = False

    # ---- commands ----------------------------------------------------------------------------------

    def handle(self, line: str) -> tuple[str, bool]:
        """The answer to one command line, and whether the daemon quits."""
        words = line.split()
        if not words:
            return "", False
        command = _COMMANDS.get(words[0])
        if command is None:
            return self._refuse(line, f"Error: unknown command {words[0]}"), False
        arity, run = command
        if len(words) - 1 != arity:
            return self._refuse(line, f"Error: {words[0]} takes {arity} argument(s)"), False
        try:
            answer = run(self, *words[1:])
        except ValueError as e:
            return self._refuse(line, f"Error: {e}"), False
        self.commands = [*self.commands, line][-_MAX_RECORDED:]
        self._log(line)
        return answer, words[0] == "quit"

    def _refuse(self, line: str, answer: str) -> str:
        self.refused = [*self.refused, line][-_MAX_RECORDED:]
        self._log(f"{line} -> {answer}")
        return answer

    def _server_list(self) -> str:
        return ""  # no GPU, no MPS server

    def _set_percentage(self, value: str) -> str:
        try:
            percentage = float(value)
        except ValueError:
            raise ValueError(f"invalid active thread percentage {value}") from None
        if not 0 < percentage <= 100:
            raise ValueError(f"invalid active thread percentage {value}: must be in (0, 100]")
        self.percentage = percentage
        return ""

    def _get_percentage(self) -> str:
        return f"{DEFAULT_PERCENTAGE if self.percentage is None else self.percentage:.1f}"

    def _device(self, name: str) -> str:
        if self.devices is None:
            if name.isdigit() or name.startswith(("GPU-", "MIG-")):
                return name
        elif name in self.devices:
            return name
        elif name.isdigit() and int(name) < len(self.devices):
            return self.devices[int(name)]
        raise ValueError(f"invalid device {name}: not a device of this daemon")

    def _set_limit(self, device: str, value: str) -> str:
        uuid = self._device(device)
        match = _LIMIT.fullmatch(value)
        if match is None:
            raise ValueError(f"invalid pinned memory limit {value}: a whole number followed by M or G")
        self.limits[uuid] = int(match[1]) * _UNITS[match[2]]
        return ""

    def _get_limit(self, device: str) -> str:
        limit = self.limits.get(self._device(device))
        return "" if limit is None else f"{limit // 2**20}M"

    def _quit(self) -> str:
        return ""

    # ---- files -------------------------------------------------------------------------------------

    def save(self) -> None:
        state: dict[str, Any] = {
            "pid": os.getpid(),
            "running": self.running,
            "pipeDirectory": str(self.pipe_dir),
            "visibleDevices": None if self.devices is None else list(self.devices),
            "defaultActiveThreadPercentage": self.percentage,
            "defaultDevicePinnedMemLimits": dict(sorted(self.limits.items())),
            "commands": self.commands,
            "refused": self.refused,
        }
        text = json.dumps(state, indent=1) + "\n"
        atomic_write(self.log_dir / STATE_FILE, text.encode(), durable=False)

    def _log(self, text: str) -> None:
        with contextlib.suppress(OSError), (self.log_dir / LOG_FILE).open("a", encoding="utf-8") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")

    # ---- serving -----------------------------------------------------------------------------------

    def run(self, ready: Callable[[str], None]) -> int:
        """Serve until ``quit`` or SIGTERM/SIGINT; ``ready("")`` once listening, ``ready(why)`` when not."""
        make_dirs(self.pipe_dir, 0o755)
        make_dirs(self.log_dir, 0o755)
        pid_file = self.pipe_dir / PID_FILE
        with contextlib.suppress(FileNotFoundError, ValueError):
            other = int(pid_file.read_text().strip())
            if other != os.getpid() and _pid_alive(other):
                ready(ALREADY_RUNNING)
                return 1
        os.chdir(self.pipe_dir)  # bind by a relative name: a deep pipe dir would exceed sun_path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(SOCKET_NAME)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(SOCKET_NAME)
            listener.listen(16)
            atomic_write(pid_file, f"{os.getpid()}\n".encode(), durable=False)
            self.running = True
            self.save()
            self._log(f"fake MPS control daemon {os.getpid()} started, devices {self.devices}")
            ready("")
            self._serve(listener)
        finally:
            listener.close()
            self.running = False
            for stale in (self.pipe_dir / SOCKET_NAME, pid_file):
                with contextlib.suppress(OSError):
                    stale.unlink()
            with contextlib.suppress(OSError):
                self.save()
        return 0

    def _serve(self, listener: socket.socket) -> None:
        stop = False
        while not stop:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(_IO_TIMEOUT_S)
                try:
                    line = _read_request(conn)
                    answer, stop = self.handle(line)
                    self.save()
                    conn.sendall((answer + "\n").encode() if answer else b"")
                except OSError:
                    continue  # a client that went away: its command (if any) was still applied


_COMMANDS: Final[dict[str, tuple[int, Callable[..., str]]]] = {
    "get_server_list": (0, _Daemon._server_list),
    "set_default_active_thread_percentage": (1, _Daemon._set_percentage),
    "get_default_active_thread_percentage": (0, _Daemon._get_percentage),
    "set_default_device_pinned_mem_limit": (2, _Daemon._set_limit),
    "get_default_device_pinned_mem_limit": (1, _Daemon._get_limit),
    "quit": (0, _Daemon._quit),
}


def _read_request(conn: socket.socket) -> str:
    data = b""
    while b"\n" not in data and len(data) < _MAX_REQUEST:
        chunk = conn.recv(_MAX_REQUEST)
        if not chunk:
            break
        data += chunk
    return data.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


# ---- the client ---------------------------------------------------------------------------------------


def _ask(pipe_dir: Path, line: str) -> str:
    os.chdir(pipe_dir)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(_IO_TIMEOUT_S)
        conn.connect(SOCKET_NAME)
        conn.sendall(line.encode() + b"\n")
        conn.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := conn.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace").rstrip("\n")


def _client(pipe_dir: Path) -> int:
    for raw in sys.stdin:
        line = raw.strip()
        if not line:
            continue
        try:
            answer = _ask(pipe_dir, line)
        except (FileNotFoundError, NotADirectoryError, ConnectionRefusedError):
            print(NOT_RUNNING, flush=True)
            return 1
        except OSError as e:
            print(f"Error: no answer from the MPS control daemon: {e}", flush=True)
            return 1
        if answer:
            print(answer, flush=True)
    return 0


# ---- daemon modes -------------------------------------------------------------------------------------


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def _foreground(daemon: _Daemon) -> int:
    def ready(why: str) -> None:
        print(why or f"fake MPS control daemon {os.getpid()} listening in {daemon.pipe_dir}", flush=True)

    signal.signal(signal.SIGTERM, _raise_exit)
    signal.signal(signal.SIGINT, _raise_exit)
    return daemon.run(ready)


def _background(daemon: _Daemon) -> int:
    """Fork twice (the daemon is nobody's child), return once it listens (or says why it will not)."""
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        os.waitpid(child, 0)
        readable, _, _ = select.select([read_end], [], [], _READY_TIMEOUT_S)
        why = os.read(read_end, 4096).decode() if readable else "the daemon did not start in time"
        why = why or "the daemon exited before it listened"
        os.close(read_end)
        if why != "ok":
            print(why, file=sys.stderr)
            return 1
        return 0
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    signal.signal(signal.SIGTERM, _raise_exit)

    def ready(why: str) -> None:
        os.write(write_end, (why or "ok").encode())
        os.close(write_end)

    code = 1
    try:
        code = daemon.run(ready)
    except SystemExit:
        code = 0
    finally:
        os._exit(code)


def _visible_devices(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    return tuple(part.strip() for part in value.split(",") if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args not in ([], ["-d"], ["-f"]):
        print("usage: nvidia-cuda-mps-control [-d | -f]", file=sys.stderr)
        return 2
    pipe_dir = Path(os.environ.get(PIPE_DIR_ENV) or DEFAULT_PIPE_DIR).absolute()
    log_dir = Path(os.environ.get(LOG_DIR_ENV) or DEFAULT_LOG_DIR).absolute()
    if not args:
        return _client(pipe_dir)
    daemon = _Daemon(pipe_dir, log_dir, _visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES")))
    return _foreground(daemon) if args == ["-f"] else _background(daemon)


if __name__ == "__main__":
    sys.exit(main())
