"""The MPS control client: ``nvidia-cuda-mps-control`` run in client mode, one command per run.

The control binary without a flag is the client of an MPS control daemon: it reads commands on stdin, sends
them to the daemon found through ``CUDA_MPS_PIPE_DIRECTORY`` and prints the daemon's answers. Which daemon
is meant is only ever said by that directory, so every call names it (and the log directory, which the
binary also reads from its environment). The binary is a constructor argument: the real one under the driver
root, or the mock's :mod:`gpudra.vendors.mock.fake_mps_control`, so the product runs the same code for both.

One command per run: an answer is then known to be that command's, and a refusal names the command. This is
the one place where the binary's failures become :class:`MpsError`:

- it cannot be run (missing, not executable) or does not finish within ``timeout_s``: :class:`MpsError`;
- no daemon answers on the pipe directory: :class:`MpsNotRunning` (a subclass; waiting for a daemon to come
  up and stopping one that is already gone both need to tell it apart);
- it exits with an error, or an answer line reads as a refusal (the daemon prints an error text and the
  client may still exit 0): :class:`MpsError` with that line.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

PIPE_DIR_ENV: Final = "CUDA_MPS_PIPE_DIRECTORY"
LOG_DIR_ENV: Final = "CUDA_MPS_LOG_DIRECTORY"
#: The binary under a driver root.
CONTROL_BINARY: Final = "usr/bin/nvidia-cuda-mps-control"
#: The file the control daemon writes its pid to, in its pipe directory.
PID_FILE: Final = "nvidia-cuda-mps-control.pid"
MIB: Final = 2**20

#: What the client prints when no daemon listens on the pipe directory.
_NOT_RUNNING: Final = re.compile(r"cannot find (the )?mps control daemon|no mps control daemon", re.I)
#: Answer lines that are a refusal rather than an answer.
_REFUSAL: Final = re.compile(
    r"\b(error|invalid|unrecognized|unknown|cannot|can't|failed|failure|not supported|not allowed|"
    r"not permitted|denied|usage)\b",
    re.IGNORECASE,
)
#: Environment the caller's process may carry that must not leak into the client's (it names the daemon).
_OWN_ENV: Final = (PIPE_DIR_ENV, LOG_DIR_ENV)
_EXCERPT: Final = 300


class MpsError(Exception):
    """An MPS control daemon could not be started, configured or stopped. The message is for the claim."""


class MpsNotRunning(MpsError):
    """No MPS control daemon answers on the pipe directory."""


def _one_line(text: str) -> str:
    folded = " ".join(text.split())
    return folded if len(folded) <= _EXCERPT else folded[: _EXCERPT - 1] + "…"


class MpsControl:
    """Runs the control binary as a client of the daemon of one pipe directory."""

    def __init__(self, command: str | Path | Sequence[str], *, timeout_s: float = 10.0) -> None:
        """``command``: the binary (``<driver root>/usr/bin/nvidia-cuda-mps-control``) or a whole argv
        (the mock's ``python -m gpudra.vendors.mock.fake_mps_control``). ``timeout_s`` bounds each run."""
        argv = (str(command),) if isinstance(command, str | Path) else tuple(str(a) for a in command)
        if not argv or not argv[0]:
            raise ValueError("MpsControl needs a command")
        self.command: tuple[str, ...] = argv
        self.timeout_s = timeout_s

    @classmethod
    def under_driver_root(cls, driver_root: Path, *, timeout_s: float = 10.0) -> MpsControl:
        return cls(driver_root / CONTROL_BINARY, timeout_s=timeout_s)

    def daemon_argv(self) -> tuple[str, ...]:
        """The argv of a control daemon that stays in the foreground (``-f``): what launchers run."""
        return (*self.command, "-f")

    # ---- the commands gpudra uses ------------------------------------------------------------------

    def server_list(self, pipe_dir: Path, log_dir: Path) -> tuple[int, ...]:
        """The pids of the daemon's MPS servers (none until a client connected). Answers iff the daemon
        does: this is the readiness check."""
        answer = self.run(pipe_dir, log_dir, "get_server_list")
        pids = []
        for word in answer.split():
            if not word.isdigit():
                raise MpsError(f"the MPS control daemon answered get_server_list with {_one_line(answer)!r}")
            pids.append(int(word))
        return tuple(pids)

    def set_active_thread_percentage(self, pipe_dir: Path, log_dir: Path, percentage: int) -> None:
        self.run(pipe_dir, log_dir, f"set_default_active_thread_percentage {percentage}")

    def set_pinned_mem_limit(self, pipe_dir: Path, log_dir: Path, device: str, limit_bytes: int) -> None:
        """``device``: a GPU or MIG UUID the daemon serves. MPS takes whole MiB: any other size is refused
        here rather than rounded."""
        if limit_bytes <= 0 or limit_bytes % MIB:
            raise MpsError(f"pinned memory limit {limit_bytes} bytes for {device} is not whole MiB")
        if not device or any(c.isspace() for c in device):
            raise MpsError(f"invalid device {device!r} for a pinned memory limit")
        self.run(pipe_dir, log_dir, f"set_default_device_pinned_mem_limit {device} {limit_bytes // MIB}M")

    def quit(self, pipe_dir: Path, log_dir: Path) -> None:
        """Ask the daemon to exit (its servers with it). :class:`MpsNotRunning` when none answers."""
        self.run(pipe_dir, log_dir, "quit")

    # ---- one run -----------------------------------------------------------------------------------

    def run(self, pipe_dir: Path, log_dir: Path, command: str) -> str:
        """Send one command; the daemon's answer (stripped). Raises :class:`MpsError` (see the module)."""
        if "\n" in command:
            raise ValueError("one command per run")
        env = self._env(pipe_dir, log_dir)
        try:
            done = subprocess.run(
                self.command,
                input=command + "\n",
                capture_output=True,
                text=True,
                errors="replace",
                env=env,
                cwd="/",
                timeout=self.timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            name = command.split(maxsplit=1)[0]
            raise MpsError(
                f"the MPS control client gave no answer to {name} within {self.timeout_s:g}s "
                f"(pipe directory {pipe_dir})"
            ) from e
        except OSError as e:
            raise MpsError(f"cannot run the MPS control binary {self.command[0]}: {e.strerror or e}") from e
        return _answer(command, done.returncode, done.stdout, done.stderr, pipe_dir)

    @staticmethod
    def _env(pipe_dir: Path, log_dir: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _OWN_ENV}
        env[PIPE_DIR_ENV] = str(pipe_dir)
        env[LOG_DIR_ENV] = str(log_dir)
        return env


def _answer(command: str, code: int, stdout: str, stderr: str, pipe_dir: Path) -> str:
    """The answer of one run, or the MpsError it amounts to."""
    name = command.split(maxsplit=1)[0]
    both = "\n".join(part for part in (stdout.strip(), stderr.strip()) if part)
    if _NOT_RUNNING.search(both):
        raise MpsNotRunning(f"no MPS control daemon answers on {pipe_dir} ({name}: {_one_line(both)})")
    for line in both.splitlines():
        if _REFUSAL.search(line):
            raise MpsError(f"the MPS control daemon refused {command!r}: {_one_line(line)}")
    if code != 0:
        why = _one_line(both) or "no output"
        raise MpsError(f"the MPS control client failed on {name} (exit status {code}): {why}")
    return stdout.strip()


def control_env(pipe_dir: Path, log_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The ``CUDA_MPS_*`` variables that name a daemon's directories, plus ``extra``."""
    return {PIPE_DIR_ENV: str(pipe_dir), LOG_DIR_ENV: str(log_dir), **(extra or {})}
