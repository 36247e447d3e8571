"""Sharing at prepare on NVIDIA GPUs: whole-GPU settings (time-slice, compute mode), the claim's MPS daemon.

What a claim needs is decided in :mod:`gpudra.planning.sharing_plan`; here it becomes applied state, is
applied and undone:

- :data:`SETTING` (one per GPU and setting): the value set and the ``previous`` one, read when the claim
  was planned. Settings are per GPU and several claims may hold one GPU, so :meth:`GpuSharing.settle`
  (under the checkpoint lock) refuses a value that contradicts another claim's and takes over the original
  ``previous`` from a claim holding the same setting; :meth:`GpuSharing.undo` puts ``previous`` back (the
  default where it is unknown) only when no other claim holds the setting, and only while the GPU still has
  the value set (an admin's later change stays).
- :data:`MPS_DAEMON` (one per claim): the daemon's id, the devices it serves and their UUIDs, its limits and
  directories, and where it runs. It is started after the settings (a GPU an MPS daemon owns is in
  ``EXCLUSIVE_PROCESS`` first) through :class:`~gpudra.vendors.nvidia.mps.MpsDaemons`, outlives the plugin,
  and is stopped at unprepare. :meth:`GpuSharing.reconcile` restarts at start-up the daemons of completed
  claims that are gone and stops those no claim holds.

The containers of a claim's MPS devices get the daemon's pipe and shm directories and
``CUDA_MPS_PIPE_DIRECTORY`` on top of the device's own edits (:func:`mps_edits`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from gpudra.model.applied import AppliedState, Change
from gpudra.model.cdi import ContainerEdits, Mount
from gpudra.planning import sharing_plan
from gpudra.planning.sharing_plan import GpuSetting, MpsPlan, SharingError
from gpudra.vendors.base import ApplyError, ClaimDevice, ClaimIdentity
from gpudra.vendors.nvidia.mig_dynamic import created_device
from gpudra.vendors.nvidia.mps import (
    CONTAINER_PIPE_DIR,
    CONTAINER_SHM_DIR,
    MpsControl,
    MpsDaemons,
    MpsDaemonSpec,
    MpsError,
    daemon_id_for,
)
from gpudra.vendors.nvidia.mps_control import PIPE_DIR_ENV
from gpudra.vendors.nvidia.mps_process import MpsProcessLauncher
from gpudra.vendors.nvidia.sharing_options import MpsOptions, SharingOptions
from gpudra.vendors.nvidia.timeslice import GpuSettings, NvidiaSmiTimeSlicer

log = logging.getLogger(__name__)

#: A whole-GPU setting a claim holds. Params: ``gpu`` (UUID), ``setting`` (``timeslice`` | ``compute-mode``),
#: ``value``, ``previous`` (when it was known).
SETTING: Final = "nvidia.gpu-setting"
#: The claim's MPS control daemon. Params: ``daemon``, ``devices`` and ``gpus`` (comma-separated, in the same
#: order; a MIG device made at prepare has its UUID once applied), ``limits`` (``<device>=<bytes>,...``),
#: ``threads`` (when limited), ``hostPipeDir``, ``hostShmDir``; once applied ``where``.
MPS_DAEMON: Final = "nvidia.mps-daemon"
KINDS: Final = (SETTING, MPS_DAEMON)
#: What a setting is put back to when the value it replaced is not known.
_DEFAULTS: Final = {sharing_plan.TIMESLICE: 0, sharing_plan.COMPUTE_MODE: 0}
_MOUNT_OPTIONS: Final = ("rw", "nosuid", "nodev", "bind")


def mps_edits(device: str, applied: AppliedState) -> ContainerEdits | None:
    """What a container of ``device`` needs to reach its claim's MPS daemon; None when no daemon serves it."""
    for change in applied.of_kind(MPS_DAEMON):
        if device in change.text("devices").split(","):
            return ContainerEdits(
                env=(f"{PIPE_DIR_ENV}={CONTAINER_PIPE_DIR}",),
                mounts=(
                    Mount(change.text("hostPipeDir"), CONTAINER_PIPE_DIR, _MOUNT_OPTIONS),
                    Mount(change.text("hostShmDir"), CONTAINER_SHM_DIR, _MOUNT_OPTIONS),
                ),
            )
    return None


def held_settings(changes: Iterable[Change]) -> list[GpuSetting]:
    return [
        GpuSetting(c.text("gpu"), c.text("setting"), c.integer("value"), c.device)
        for c in changes
        if c.kind == SETTING
    ]


class GpuSharing:
    """Applies and undoes the sharing part of claims (``settings`` for the GPUs, ``daemons`` for MPS: None
    when MPS is not available)."""

    def __init__(self, settings: GpuSettings, daemons: MpsDaemons | None) -> None:
        self._settings = settings
        self._daemons = daemons

    # ---- prepare -----------------------------------------------------------------------------------

    def intend(self, claim: ClaimIdentity, devices: Sequence[ClaimDevice]) -> tuple[Change, ...]:
        try:
            plan = sharing_plan.plan_sharing(devices)
        except SharingError as e:
            raise ApplyError(str(e)) from e
        changes = [self._setting(s) for s in plan.settings]
        if plan.mps is not None:
            changes.append(self._mps_change(claim, plan.mps))
        return tuple(changes)

    def _setting(self, s: GpuSetting) -> Change:
        previous = self._settings.read(s.gpu, s.name)
        extra = {} if previous is None else {"previous": previous}
        return Change.of(SETTING, s.device, gpu=s.gpu, setting=s.name, value=int(s.value), **extra)

    def _mps_change(self, claim: ClaimIdentity, plan: MpsPlan) -> Change:
        if self._daemons is None:
            raise ApplyError("MPS is not available on this node (no MPS directory configured)")
        daemon = daemon_id_for(claim.uid)
        info = self._daemons.info(daemon)
        limits = ",".join(f"{d.device}={d.pinned_memory_limit}" for d in plan.devices
                          if d.pinned_memory_limit)  # fmt: skip
        params: dict[str, str | int] = {
            "daemon": daemon,
            "devices": ",".join(d.device for d in plan.devices),
            "gpus": ",".join(d.uuid for d in plan.devices),
            "limits": limits,
            "hostPipeDir": str(info.host_pipe_dir),
            "hostShmDir": str(info.host_shm_dir),
        }
        if plan.active_thread_percentage is not None:
            params["threads"] = plan.active_thread_percentage
        return Change.from_mapping(MPS_DAEMON, "", params)

    def settle(self, changes: Sequence[Change], others: Iterable[AppliedState]) -> tuple[Change, ...]:
        """``changes`` checked against the settings other claims hold, each taking over the ``previous``
        of a claim holding the same setting (the value before the first of them set it)."""
        wanted = held_settings(changes)
        if not wanted:
            return tuple(changes)
        held: dict[tuple[str, str], Change] = {}
        for state in others:
            for c in state.of_kind(SETTING):
                held.setdefault((c.text("gpu"), c.text("setting")), c)
        why = sharing_plan.conflict(wanted, held_settings(held.values()))
        if why is not None:
            raise ApplyError(why)
        return tuple(_inherit(c, held) for c in changes)

    def apply(
        self, devices: Sequence[ClaimDevice], changes: Sequence[Change], made: Sequence[Change]
    ) -> list[Change]:
        """Set the settings, then start the daemon (``made``: the MIG devices created for the claim, whose
        UUIDs the daemon serves). On failure the daemon is stopped; the settings are left for the caller's
        :meth:`undo` with the other claims' states."""
        done: list[Change] = []
        for c in changes:
            if c.kind == SETTING:
                self._settings.set(c.text("gpu"), c.text("setting"), c.integer("value"))
                done.append(c)
            elif c.kind == MPS_DAEMON:
                done.append(self._start(devices, c, made))
        return done

    def _start(self, devices: Sequence[ClaimDevice], change: Change, made: Sequence[Change]) -> Change:
        assert self._daemons is not None  # intend refused MPS without daemons
        by_name = {d.name: d for d in devices}
        uuids = []
        for name in change.text("devices").split(","):
            d = by_name.get(name)
            uuid = created_device(d.device, d.name, made).uuid if d is not None else ""
            if not uuid:
                raise ApplyError(f"MPS daemon {change.text('daemon')}: device {name} has no UUID")
            uuids.append(uuid)
        gpus = ",".join(uuids)
        resolved = Change.from_mapping(MPS_DAEMON, "", dict(change.params) | {"gpus": gpus})
        try:
            info = self._daemons.start(_spec(resolved))
        except MpsError as e:
            raise ApplyError(f"MPS daemon of the claim: {e}") from e
        return Change.from_mapping(MPS_DAEMON, "", dict(resolved.params) | {"where": info.where})

    # ---- undo --------------------------------------------------------------------------------------

    def undo(self, changes: Sequence[Change], others: Iterable[AppliedState]) -> list[str]:
        """Stop the daemon, then put back the settings no other claim holds. Returns what failed."""
        failures = []
        for c in changes:
            if c.kind == MPS_DAEMON:
                try:
                    self.stop(c)
                except MpsError as e:
                    failures.append(f"stopping MPS daemon {c.text('daemon')}: {e}")
        settings = [c for c in changes if c.kind == SETTING]
        if not settings:
            return failures
        still = {(s.gpu, s.name) for state in others for s in held_settings(state.changes)}
        for c in reversed(settings):
            if (c.text("gpu"), c.text("setting")) in still:
                continue
            try:
                self._restore(c)
            except ApplyError as e:
                failures.append(str(e))
        return failures

    def stop(self, change: Change) -> None:
        if self._daemons is None:
            raise MpsError("MPS is not available on this node, yet a claim recorded a daemon")
        daemon = change.text("daemon")
        self._daemons.stop(daemon, _where(self._daemons, change))

    def _restore(self, change: Change) -> None:
        gpu, name, value = change.text("gpu"), change.text("setting"), change.integer("value")
        previous = _int(change, "previous")
        target = _DEFAULTS[name] if previous is None else previous
        current = self._settings.read(gpu, name)
        if current is not None and current != value:
            log.warning("GPU %s: the %s is %s, not the %s this claim set: left as it is", gpu, name,
                        sharing_plan.shown(name, current), sharing_plan.shown(name, value))  # fmt: skip
            return
        if current != target:
            self._settings.set(gpu, name, target)

    # ---- start-up ----------------------------------------------------------------------------------

    def reconcile(self, held: Sequence[AppliedState], pending: Sequence[AppliedState]) -> None:
        daemons = self._daemons
        if daemons is None:
            return
        known = {c.text("daemon") for s in (*held, *pending) for c in s.of_kind(MPS_DAEMON)}
        for state in held:
            for c in state.of_kind(MPS_DAEMON):
                self._keep_running(daemons, c)
        try:
            found = daemons.found()
        except MpsError as e:
            log.error("MPS daemons: %s", e)
            return
        for daemon in found:
            if daemon in known:
                continue
            try:
                daemons.stop(daemon, daemons.where(daemon))
                log.warning("MPS daemon %s belongs to no claim of this node: stopped", daemon)
            except MpsError as e:
                log.error("MPS daemon %s belongs to no claim, and could not be stopped: %s", daemon, e)

    def _keep_running(self, daemons: MpsDaemons, change: Change) -> None:
        daemon = change.text("daemon")
        where = _where(daemons, change)
        try:
            if daemons.alive(daemon, where):
                return
            log.warning("MPS daemon %s of a prepared claim is gone (%s): starting it again", daemon, where)
            daemons.start(_spec(change))
        except (MpsError, ApplyError) as e:
            log.error("MPS daemon %s of a prepared claim could not be started again: %s", daemon, e)


def _spec(change: Change) -> MpsDaemonSpec:
    """The daemon a :data:`MPS_DAEMON` change describes (its UUIDs resolved)."""
    names = change.text("devices").split(",")
    uuids = change.text("gpus").split(",")
    if len(uuids) != len(names) or not all(uuids):
        raise ApplyError(f"MPS daemon {change.text('daemon')}: the UUIDs of its devices are not recorded")
    by_name = dict(zip(names, uuids, strict=True))
    limits: list[tuple[str, int]] = []
    for item in filter(None, change.text("limits").split(",")):
        name, _, size = item.partition("=")
        if name not in by_name or not size.isdigit():
            raise ApplyError(f"MPS daemon {change.text('daemon')}: bad recorded limit {item!r}")
        limits.append((by_name[name], int(size)))
    return MpsDaemonSpec(
        daemon_id=change.text("daemon"),
        gpu_uuids=tuple(uuids),
        active_thread_percentage=_int(change, "threads"),
        pinned_memory_limits=tuple(sorted(limits)),
    )


def _inherit(change: Change, held: dict[tuple[str, str], Change]) -> Change:
    """A setting change with the ``previous`` of the claim holding the same setting (none when that claim
    does not know it either); any other change as it is."""
    first = held.get((change.text("gpu"), change.text("setting"))) if change.kind == SETTING else None
    if first is None:
        return change
    params = {k: v for k, v in change.params if k != "previous"}
    previous = _int(first, "previous")
    if previous is not None:
        params["previous"] = previous
    return Change.from_mapping(SETTING, change.device, params)


def _int(change: Change, key: str) -> int | None:
    value = change.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _where(daemons: MpsDaemons, change: Change) -> str:
    """Where the change's daemon runs: as its directory says (a restart moves it), else as recorded."""
    recorded = change.get("where")
    return daemons.where(change.text("daemon")) or (recorded if isinstance(recorded, str) else "")


def gpu_sharing(
    nvml: Any, handle: Callable[[str], Any | None], driver_root: Path, options: SharingOptions
) -> GpuSharing:
    """The sharing part of an NVIDIA driver (``nvml``: its :class:`~gpudra.vendors.nvidia.calls.Nvml`)."""
    settings = GpuSettings(nvml, handle, options.timeslicer or NvidiaSmiTimeSlicer(driver_root))
    return GpuSharing(settings, _daemons(driver_root, options.mps))


def _daemons(driver_root: Path, mps: MpsOptions) -> MpsDaemons | None:
    if mps.root is None:
        return None
    control = mps.control or MpsControl.under_driver_root(driver_root)
    launcher = mps.launcher or MpsProcessLauncher(control.command)
    timeout = mps.ready_timeout_s
    return MpsDaemons(mps.root, launcher, control, host_root=mps.host_root, ready_timeout_s=timeout)
