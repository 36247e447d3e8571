"""MPS control daemons: one per claim, with the claim's limits as the daemon's defaults.

Why one daemon per claim: an MPS client (``CUDA_MPS_ACTIVE_THREAD_PERCENTAGE``,
``CUDA_MPS_PINNED_DEVICE_MEM_LIMIT`` in its environment) can only LOWER the limits its control daemon sets,
so the daemon's defaults are the claim's ceiling, and claims that share a GPU with different limits each
need a daemon of their own. Each daemon has its own directories under ``root``::

    <root>/mps-<claim uid>/pipe    CUDA_MPS_PIPE_DIRECTORY: control socket, servers' pipes, pid file
    <root>/mps-<claim uid>/log     CUDA_MPS_LOG_DIRECTORY: control.log, server.log
    <root>/mps-<claim uid>/shm     mounted at /dev/shm for the daemon and its clients
    <root>/mps-<claim uid>/where   where the daemon runs ("pid:<n>" or "pod:<namespace>/<name>")

The daemon must outlive the plugin (restarts, rolling updates: running pods keep their GPU), so this process
never holds it: an :class:`MpsLauncher` runs it where it survives — a Pod of its own in a cluster
(:mod:`gpudra.runtime.mps_pods`), a detached process elsewhere and on the mock
(:mod:`gpudra.vendors.nvidia.mps_process`). Everything else goes through the control binary
(:class:`~gpudra.vendors.nvidia.mps_control.MpsControl`): the readiness check (``get_server_list`` answers),
the limits (``set_default_active_thread_percentage``, ``set_default_device_pinned_mem_limit``) and the stop
(``quit``). Compute modes are not set here: whoever decides that a daemon owns a whole GPU sets
EXCLUSIVE_PROCESS before :meth:`MpsDaemons.start`.

Containers reach their daemon through CDI (:meth:`MpsDaemons.container_edits`): the pipe directory mounted at
``/tmp/nvidia-mps`` (MPS's default, so a container that unsets the variable still finds it), the shm
directory at ``/dev/shm``, and ``CUDA_MPS_PIPE_DIRECTORY``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Protocol

from gpudra.fsutil import atomic_write, make_dirs
from gpudra.model.cdi import ContainerEdits, Mount
from gpudra.vendors.nvidia.mps_control import (
    LOG_DIR_ENV,
    MIB,
    PIPE_DIR_ENV,
    MpsControl,
    MpsError,
    MpsNotRunning,
)

__all__ = [
    "CONTAINER_PIPE_DIR",
    "CONTAINER_SHM_DIR",
    "DAEMON_ID_PREFIX",
    "MpsControl",
    "MpsDaemonInfo",
    "MpsDaemonSpec",
    "MpsDaemons",
    "MpsError",
    "MpsLauncher",
    "MpsNotRunning",
    "daemon_id_for",
]

log = logging.getLogger(__name__)

DAEMON_ID_PREFIX: Final = "mps-"
PIPE: Final = "pipe"
LOG: Final = "log"
SHM: Final = "shm"
WHERE_FILE: Final = "where"
#: Where the containers see the daemon's pipe directory: MPS's default pipe directory.
CONTAINER_PIPE_DIR: Final = "/tmp/nvidia-mps"
CONTAINER_SHM_DIR: Final = "/dev/shm"
_MOUNT_OPTIONS: Final = ("rw", "nosuid", "nodev", "bind")
_DNS_LABEL: Final = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_MAX_ID: Final = 63
_DIR_MODE: Final = 0o755
_SHM_MODE: Final = 0o1777  # like /dev/shm: every client user writes its segments there
_POLL_FIRST_S: Final = 0.02
_POLL_MAX_S: Final = 0.5


def daemon_id_for(claim_uid: str) -> str:
    """``mps-<claim uid>``: the id of a claim's daemon."""
    return f"{DAEMON_ID_PREFIX}{claim_uid.lower()}"


@dataclass(frozen=True, slots=True)
class MpsDaemonSpec:
    """What a daemon serves and the limits it imposes on each client (checked on construction)."""

    daemon_id: str  # "mps-<claim uid>": DNS-label safe, <= 63
    gpu_uuids: tuple[str, ...]  # GPU or MIG UUIDs it serves (its CUDA_VISIBLE_DEVICES)
    active_thread_percentage: int | None
    pinned_memory_limits: tuple[tuple[str, int], ...]  # (uuid, bytes), sorted

    def __post_init__(self) -> None:
        if len(self.daemon_id) > _MAX_ID or not _DNS_LABEL.fullmatch(self.daemon_id):
            raise MpsError(f"MPS daemon id {self.daemon_id!r} is not a DNS label of at most {_MAX_ID} chars")
        if not self.gpu_uuids or any(not u or "," in u or u != u.strip() for u in self.gpu_uuids):
            raise MpsError(f"MPS daemon {self.daemon_id}: invalid GPU UUIDs {list(self.gpu_uuids)}")
        percentage = self.active_thread_percentage
        if percentage is not None and not 1 <= percentage <= 100:
            raise MpsError(f"MPS daemon {self.daemon_id}: active thread percentage {percentage} not in 1-100")
        for uuid, limit in self.pinned_memory_limits:
            if uuid not in self.gpu_uuids:
                raise MpsError(f"MPS daemon {self.daemon_id}: pinned memory limit for {uuid}, not served")
            if limit <= 0 or limit % MIB:
                raise MpsError(
                    f"MPS daemon {self.daemon_id}: pinned memory limit {limit} for {uuid} is not whole MiB"
                )
        if list(self.pinned_memory_limits) != sorted(dict(self.pinned_memory_limits).items()):
            raise MpsError(f"MPS daemon {self.daemon_id}: pinned memory limits unsorted or repeated")


@dataclass(frozen=True, slots=True)
class MpsDaemonInfo:
    """Where a daemon's directories are, for this process and for the container runtime."""

    daemon_id: str
    pipe_dir: Path  # as this process sees them
    log_dir: Path
    shm_dir: Path
    host_pipe_dir: Path  # as the container runtime sees them (CDI mounts, hostPath volumes)
    host_shm_dir: Path
    where: str  # "pid:<n>" or "pod:<namespace>/<name>"; "" before the launch

    @property
    def host_log_dir(self) -> Path:
        """The log directory as the host sees it (the layout is the same on both sides)."""
        return self.host_pipe_dir.parent / LOG


class MpsLauncher(Protocol):
    """Runs control daemons where they outlive this process."""

    def launch(self, spec: MpsDaemonSpec, info: MpsDaemonInfo, env: Mapping[str, str]) -> str:
        """Start ``nvidia-cuda-mps-control -f`` with ``env`` (the ``CUDA_MPS_*`` directories as this
        process sees them, ``CUDA_VISIBLE_DEVICES``); returns ``where``. Raises MpsError."""
        ...

    def stop(self, daemon_id: str, where: str) -> None:
        """End it; nothing to do when it is gone already. Raises MpsError."""
        ...

    def alive(self, daemon_id: str, where: str) -> bool: ...


class MpsDaemons:
    """Starts, checks and stops the per-claim daemons under ``root``."""

    def __init__(
        self,
        root: Path,
        launcher: MpsLauncher,
        control: MpsControl,
        *,
        host_root: Path | None = None,
        ready_timeout_s: float = 30.0,
    ) -> None:
        """``host_root``: ``root`` as the container runtime sees it (default: the same path)."""
        self.root = root
        self.host_root = root if host_root is None else host_root
        self.launcher = launcher
        self.control = control
        self.ready_timeout_s = ready_timeout_s

    def info(self, daemon_id: str, where: str = "") -> MpsDaemonInfo:
        base, host = self.root / daemon_id, self.host_root / daemon_id
        return MpsDaemonInfo(daemon_id, base / PIPE, base / LOG, base / SHM, host / PIPE, host / SHM, where)

    # ---- start -------------------------------------------------------------------------------------

    def start(self, spec: MpsDaemonSpec) -> MpsDaemonInfo:
        """The claim's daemon, running and limited. A daemon of this id that answers is reused (its
        limits set again: a restarted daemon forgets them; a failure then leaves it running, as its clients
        may be using it). Raises MpsError, after stopping a daemon it launched."""
        info = self.info(spec.daemon_id)
        try:
            make_dirs(info.pipe_dir, _DIR_MODE)
            make_dirs(info.log_dir, _DIR_MODE)
            make_dirs(info.shm_dir, _SHM_MODE)
        except OSError as e:
            raise MpsError(f"cannot create the directories of MPS daemon {spec.daemon_id}: {e}") from e
        running = self._reusable(info)
        if running is not None:
            log.info("MPS daemon %s already runs (%s): limits set again", spec.daemon_id, running.where)
            self._apply(spec, running)
            return running
        env = {
            PIPE_DIR_ENV: str(info.pipe_dir),
            LOG_DIR_ENV: str(info.log_dir),
            "CUDA_VISIBLE_DEVICES": ",".join(spec.gpu_uuids),
        }
        try:
            where = self.launcher.launch(spec, info, env)
        except MpsError:
            self._stop_quietly(info)  # its directories
            raise
        started = replace(info, where=where)
        try:
            self._record(started)
            self._wait_ready(started)
            self._apply(spec, started)
        except MpsError:
            self._stop_quietly(started)
            raise
        log.info("MPS daemon %s started (%s) for %s", spec.daemon_id, where, ",".join(spec.gpu_uuids))
        return started

    def _reusable(self, info: MpsDaemonInfo) -> MpsDaemonInfo | None:
        """The running daemon of this id: it answers and its launcher knows it. One that answers without
        a record of where it runs cannot be stopped later: it is asked to quit, and a new one started."""
        try:
            self.control.server_list(info.pipe_dir, info.log_dir)
        except MpsError:
            return None
        where = self.where(info.daemon_id)
        if where and self.launcher.alive(info.daemon_id, where):
            return replace(info, where=where)
        with contextlib.suppress(MpsError):
            self.control.quit(info.pipe_dir, info.log_dir)
        return None

    def _wait_ready(self, info: MpsDaemonInfo) -> None:
        """Until ``get_server_list`` answers; bounded by ``ready_timeout_s``; early when the daemon died."""
        deadline = time.monotonic() + self.ready_timeout_s
        pause = _POLL_FIRST_S
        while True:
            try:
                self.control.server_list(info.pipe_dir, info.log_dir)
                return
            except MpsError as e:
                last = e
            if not self.launcher.alive(info.daemon_id, info.where):
                raise MpsError(f"MPS control daemon {info.daemon_id} exited at start: {self._tail(info)}")
            if time.monotonic() >= deadline:
                raise MpsError(
                    f"MPS control daemon {info.daemon_id} ({info.where}) did not answer within "
                    f"{self.ready_timeout_s:g}s: {last}"
                )
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, _POLL_MAX_S)

    def _apply(self, spec: MpsDaemonSpec, info: MpsDaemonInfo) -> None:
        """The claim's limits as the daemon's defaults (for the servers it starts from now on)."""
        if spec.active_thread_percentage is not None:
            percentage = spec.active_thread_percentage
            self.control.set_active_thread_percentage(info.pipe_dir, info.log_dir, percentage)
        for uuid, limit in spec.pinned_memory_limits:
            self.control.set_pinned_mem_limit(info.pipe_dir, info.log_dir, uuid, limit)

    def _stop_quietly(self, info: MpsDaemonInfo) -> None:
        try:
            self.stop(info.daemon_id, info.where)
        except MpsError as e:
            log.warning("could not stop MPS daemon %s after a failed start: %s", info.daemon_id, e)

    @staticmethod
    def _tail(info: MpsDaemonInfo) -> str:
        """The last line the daemon wrote (its output file, else its control log)."""
        for name in ("daemon.out", "control.log"):
            with contextlib.suppress(OSError):
                lines = (info.log_dir / name).read_text(errors="replace").strip().splitlines()
                if lines:
                    return lines[-1][-300:]
        return "it left no output"

    def _record(self, info: MpsDaemonInfo) -> None:
        try:
            atomic_write(self.root / info.daemon_id / WHERE_FILE, f"{info.where}\n".encode())
        except OSError as e:
            raise MpsError(f"cannot record where MPS daemon {info.daemon_id} runs: {e}") from e

    # ---- stop, look ------------------------------------------------------------------------------

    def stop(self, daemon_id: str, where: str) -> None:
        """``quit`` through the control client, then the launcher's stop, then the directories go.
        Idempotent; a daemon already gone is no error. Raises MpsError when the launcher cannot stop it or
        the directories cannot be removed (the caller retries)."""
        info = self.info(daemon_id, where)
        if info.pipe_dir.is_dir():
            try:
                self.control.quit(info.pipe_dir, info.log_dir)
            except MpsNotRunning:
                pass
            except MpsError as e:
                log.warning("MPS daemon %s did not quit (%s); stopping it by its launcher", daemon_id, e)
        if where:
            self.launcher.stop(daemon_id, where)
        try:
            shutil.rmtree(self.root / daemon_id)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise MpsError(f"cannot remove the directories of MPS daemon {daemon_id}: {e}") from e

    def alive(self, daemon_id: str, where: str) -> bool:
        """Whether the launcher still runs it (it may be restarting: see :meth:`answers`)."""
        return bool(where) and self.launcher.alive(daemon_id, where)

    def answers(self, daemon_id: str) -> bool:
        """Whether the daemon of this id answers its control client now."""
        info = self.info(daemon_id)
        try:
            self.control.server_list(info.pipe_dir, info.log_dir)
        except MpsError:
            return False
        return True

    def where(self, daemon_id: str) -> str:
        """Where the daemon of this id was launched, as recorded under ``root``; "" when not recorded."""
        try:
            return (self.root / daemon_id / WHERE_FILE).read_text().strip()
        except (OSError, UnicodeDecodeError):
            return ""

    def found(self) -> tuple[str, ...]:
        """The daemon ids that have directories under ``root`` (for orphan clean-up at start:
        ``stop(id, where(id))`` for those no claim holds)."""
        try:
            names = sorted(p.name for p in self.root.iterdir() if p.is_dir())
        except FileNotFoundError:
            return ()
        except OSError as e:
            raise MpsError(f"cannot list MPS daemon directories in {self.root}: {e}") from e
        return tuple(n for n in names if n.startswith(DAEMON_ID_PREFIX) and _DNS_LABEL.fullmatch(n))

    def container_edits(self, info: MpsDaemonInfo) -> ContainerEdits:
        """What a container of the claim needs to reach its daemon."""
        return ContainerEdits(
            env=(f"{PIPE_DIR_ENV}={CONTAINER_PIPE_DIR}",),
            mounts=(
                Mount(str(info.host_pipe_dir), CONTAINER_PIPE_DIR, _MOUNT_OPTIONS),
                Mount(str(info.host_shm_dir), CONTAINER_SHM_DIR, _MOUNT_OPTIONS),
            ),
        )
