"""MPS control daemons as detached processes: for the mock backend and for hosts without a cluster.

A daemon must outlive the plugin (``kill -9`` included), so it is never this process's child: a short-lived
helper interpreter starts it in a session of its own (``setsid``: no signal sent to the plugin's process
group or terminal reaches it), prints its pid and exits at once. This process reaps the helper; the daemon,
orphaned, is adopted and reaped by init (or the nearest subreaper), so it never lingers as a zombie of ours.
Its stdin is ``/dev/null``, its stdout and stderr go to ``daemon.out`` in its log directory, its working
directory is ``/``.

``where`` is ``pid:<n>``. Pids are reused, so a pid is taken to be the daemon only while
``/proc/<pid>/cmdline`` is still the daemon's command line and (where this process may read it) its
environment still names the daemon id (``GPUDRA_MPS_DAEMON_ID``, set at launch). A zombie is no daemon.

Inside a container whose first process is the plugin, orphans are adopted by the plugin itself and die with
the container: there, run the daemons as Pods (:mod:`gpudra.runtime.mps_pods`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from gpudra.vendors.nvidia.mps import MpsDaemonInfo, MpsDaemonSpec, MpsError
from gpudra.vendors.nvidia.mps_control import LOG_DIR_ENV, PIPE_DIR_ENV

DAEMON_ID_ENV: Final = "GPUDRA_MPS_DAEMON_ID"
OUTPUT_FILE: Final = "daemon.out"
PREFIX: Final = "pid:"
#: Variables of this process that must not reach a daemon: they would name another daemon or devices.
_NOT_INHERITED: Final = (PIPE_DIR_ENV, LOG_DIR_ENV, "CUDA_VISIBLE_DEVICES", DAEMON_ID_ENV)
#: The helper: start argv[2:] in a new session with output to argv[1], print its pid, exit.
_SPAWN: Final = """
import os, subprocess, sys
out = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
try:
    child = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                             start_new_session=True, cwd="/", close_fds=True)
except OSError as e:
    print(f"cannot run {sys.argv[2]}: {e.strerror or e}", file=sys.stderr)
    sys.exit(1)
print(child.pid, flush=True)
"""
_POLL_S: Final = 0.02


def parse_where(where: str) -> int:
    """The pid of ``pid:<n>``; MpsError for anything else."""
    text = where.removeprefix(PREFIX)
    if not where.startswith(PREFIX) or not text.isdigit() or int(text) <= 0:
        raise MpsError(f"not a process MPS daemon: {where!r}")
    return int(text)


class MpsProcessLauncher:
    """Runs ``<command> -f`` detached; ``command`` is the control binary's argv (``MpsControl.command``)."""

    def __init__(
        self, command: Sequence[str], *, spawn_timeout_s: float = 10.0, stop_timeout_s: float = 10.0
    ) -> None:
        self.argv: tuple[str, ...] = (*command, "-f")
        self.spawn_timeout_s = spawn_timeout_s
        self.stop_timeout_s = stop_timeout_s

    def launch(self, spec: MpsDaemonSpec, info: MpsDaemonInfo, env: Mapping[str, str]) -> str:
        full = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
        full.update(env)
        full[DAEMON_ID_ENV] = spec.daemon_id
        helper = [sys.executable, "-I", "-c", _SPAWN, str(info.log_dir / OUTPUT_FILE), *self.argv]
        try:
            done = subprocess.run(
                helper,
                env=full,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd="/",
                timeout=self.spawn_timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise MpsError(f"starting MPS daemon {spec.daemon_id} took over {self.spawn_timeout_s:g}s") from e
        except OSError as e:
            raise MpsError(f"cannot start MPS daemon {spec.daemon_id}: {e.strerror or e}") from e
        pid = done.stdout.strip()
        if done.returncode != 0 or not pid.isdigit():
            why = " ".join(done.stderr.split())[-300:] or f"exit status {done.returncode}"
            raise MpsError(f"cannot start MPS daemon {spec.daemon_id}: {why}")
        return f"{PREFIX}{pid}"

    def alive(self, daemon_id: str, where: str) -> bool:
        return self._is_daemon(parse_where(where), daemon_id)

    def stop(self, daemon_id: str, where: str) -> None:
        """SIGTERM, then SIGKILL after ``stop_timeout_s``; waits (bounded) until it is gone."""
        pid = parse_where(where)
        for sig, wait_s in ((signal.SIGTERM, self.stop_timeout_s), (signal.SIGKILL, self.stop_timeout_s)):
            if not self._is_daemon(pid, daemon_id):
                return
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
            except PermissionError as e:
                raise MpsError(f"cannot stop MPS daemon {daemon_id} (pid {pid}): {e.strerror}") from e
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                _reap(pid)
                if not _running(pid):
                    return
                time.sleep(_POLL_S)
        raise MpsError(f"MPS daemon {daemon_id} (pid {pid}) outlived SIGKILL for {self.stop_timeout_s:g}s")

    def _is_daemon(self, pid: int, daemon_id: str) -> bool:
        """``pid`` runs this launcher's daemon command for ``daemon_id`` (not a zombie, not a reused pid)."""
        _reap(pid)
        if not _running(pid):
            return False
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return False
        if tuple(a.decode(errors="replace") for a in cmdline.split(b"\0")[:-1]) != self.argv:
            return False
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except PermissionError:
            return True  # another user's process: the command line has to do
        except OSError:
            return False
        return f"{DAEMON_ID_ENV}={daemon_id}".encode() in environ.split(b"\0")


def _running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[:1]  # the command name in (...) may hold spaces
    return state not in (["Z"], ["X"])


def _reap(pid: int) -> None:
    """As pid 1 this process adopts the orphans, daemons included: reap ``pid`` if it has exited. (Any
    other process never has a daemon as its child, and must not steal another child's exit status.)"""
    if os.getpid() == 1:
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)
