"""``--backend mock``: the real vendor driver over a fake library, with container edits that need no GPU.

Discovery (and, as vendors gain them, the changes prepare makes: MIG instances, MPS daemons) is the real
vendor code running over the fake ``pynvml`` / ``amdsmi`` / sysfs. Only the container side differs: a mock
device gives a container environment variables and a description file (see :mod:`.edits`). That file is
what prepare creates on the node for the claim, so it is recorded as applied state (``mock-file`` changes)
and removed by exactly the undo that unprepare — or the roll-back after a crash — runs.

The hardware is a :class:`~gpudra.vendors.mock.node.FakeNode`. When ``--profile`` is a JSON file (not a
built-in name) the mock watches it (:mod:`.hotswap`): editing the profile file of a running mock is a
hardware change, which the next discovery pass sees - a GPU lost, another MIG layout, an AMD partition mode
switched - while an invalid edit keeps the old hardware (one warning). :class:`MockDriver` itself knows
nothing of this: its inner driver is the vendor driver, or that driver behind a
:class:`~gpudra.vendors.mock.hotswap.HotSwapDriver`.

Usage readings are the vendor driver's over the fakes' usage model (:mod:`.fake_usage`), whose utilisation
another process sets through ``mock-usage.json`` in the run dir (beside the MIG state).
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final

from gpudra.fsutil import atomic_write
from gpudra.model.applied import NOTHING_APPLIED, AppliedState, Change
from gpudra.model.health import Observation
from gpudra.model.inventory import Inventory
from gpudra.model.usage import DeviceUsage
from gpudra.vendors.base import (
    ApplyError,
    ClaimDevice,
    ClaimIdentity,
    DeviceEdits,
    EditsError,
    HostRoots,
    VendorDriver,
    WatchOptions,
)
from gpudra.vendors.mock.edits import description_file_name, device_description, mock_edits
from gpudra.vendors.mock.fake_nvml_policy import POLICY_FILE
from gpudra.vendors.mock.fake_usage import USAGE_FILE
from gpudra.vendors.mock.hotswap import HotSwapDriver, ProfileFile, is_builtin, load_node_profile
from gpudra.vendors.mock.node import FakeNode, NodeProfile
from gpudra.vendors.nvidia.mig_dynamic import created_device
from gpudra.vendors.nvidia.sharing_options import MpsOptions

log = logging.getLogger(__name__)

#: The applied-state change for a description file: params ``path``.
FILE_CHANGE: Final = "mock-file"
#: The fake hardware's MIG state (instances created, MIG mode switched), kept across plugin restarts.
MIG_STATE_FILE: Final = "mock-mig-state.json"
#: Where claims' MPS daemons (the fake control daemon) have their directories, in the run dir.
MPS_DIR: Final = "mps"


class MockDriver:
    """A :class:`~gpudra.vendors.base.VendorDriver`: ``inner`` (the vendor driver over the fakes) for
    discovery and the claim changes it makes, the mock's own edits for containers."""

    def __init__(
        self, inner: VendorDriver, files_dir: Path, on_close: Callable[[], None] | None = None,
        on_usage: Callable[[], None] | None = None,
    ):  # fmt: skip
        self._inner = inner
        self._files_root = str(files_dir)  # paths are built as text on the prepare path (no Path parsing)
        self._on_close = on_close
        self._on_usage = on_usage  # before each usage reading: the fake hardware's files catch up

    @property
    def name(self) -> str:
        return "mock"

    @property
    def inner(self) -> VendorDriver:
        return self._inner

    def discover(self) -> Inventory:
        return self._inner.discover()

    def watch_health(self, report: Callable[[Observation], None], stop: threading.Event) -> None:
        """The inner vendor driver's health watching, over the fake hardware."""
        self._inner.watch_health(report, stop)

    def read_usage(self, uuids: Iterable[str]) -> Mapping[str, DeviceUsage]:
        """The inner vendor driver's readings of the fake hardware's usage model."""
        if self._on_usage is not None:
            self._on_usage()
        return self._inner.read_usage(uuids)

    def edits(self, claim: ClaimIdentity, device: ClaimDevice, applied: AppliedState) -> DeviceEdits:
        dev = created_device(device.device, device.name, applied.changes)  # a MIG device made at prepare
        for change in applied.of_kind(FILE_CHANGE):
            if change.device == device.name:
                from gpudra.vendors.nvidia.sharing import mps_edits  # at the first prepare

                edits = mock_edits(dev, claim.uid, device.name, change.text("path"))
                mps = mps_edits(device.name, applied)  # its claim's MPS daemon (the fake one)
                return DeviceEdits(edits if mps is None else edits.merge(mps))
        raise EditsError(f"device {device.name}: no description file was prepared for it")

    def intend(self, claim: ClaimIdentity, devices: Sequence[ClaimDevice]) -> AppliedState:
        inner = self._inner.intend(claim, devices)
        root = self._files_root
        files = tuple(
            Change.of(FILE_CHANGE, d.name, path=f"{root}/{description_file_name(claim.uid, d.name)}")
            for d in devices
        )
        return AppliedState(inner.changes + files, inner.created_devices)

    def settle(self, intended: AppliedState, others: Iterable[AppliedState]) -> AppliedState:
        inner, files = _split(intended)
        if inner.empty:
            return intended
        settled = self._inner.settle(inner, others)
        if settled == inner:
            return intended
        return AppliedState(settled.changes + files, settled.created_devices)

    def apply(
        self, claim: ClaimIdentity, devices: Sequence[ClaimDevice], intended: AppliedState
    ) -> AppliedState:
        inner_intended, files = _split(intended)
        inner = self._inner.apply(claim, devices, inner_intended)
        by_name = {d.name: d for d in devices}
        try:
            for change in files:
                d = by_name[change.device]
                dev = created_device(d.device, d.name, inner.changes)
                atomic_write(
                    change.text("path"), device_description(claim, d.request, d.name, dev), durable=False
                )
        except (OSError, KeyError) as e:
            self._remove(files, strict=False)  # best effort: the write error is the one to report
            self._inner.undo(inner)
            raise ApplyError(f"cannot write the mock device description: {e}") from e
        return AppliedState(inner.changes + files, inner.created_devices)

    def undo(self, applied: AppliedState, others: Iterable[AppliedState] = ()) -> None:
        inner, files = _split(applied)
        self._remove(files)
        self._inner.undo(inner, others)

    def reconcile(self, held: Sequence[AppliedState], pending: Sequence[AppliedState]) -> None:
        self._inner.reconcile([_split(s)[0] for s in held], [_split(s)[0] for s in pending])

    @staticmethod
    def _remove(files: Sequence[Change], *, strict: bool = True) -> None:
        """Remove the description files; ``strict``: raise for one that cannot go, else log it."""
        for change in files:
            try:
                os.unlink(change.text("path"))
            except FileNotFoundError:
                continue  # undone already (or never written: apply was cut short)
            except OSError as e:
                if strict:
                    raise ApplyError(f"cannot remove {change.text('path')}: {e}") from e
                log.warning("could not remove %s: %s", change.text("path"), e)

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if self._on_close is not None:
                self._on_close()


def _split(applied: AppliedState) -> tuple[AppliedState, tuple[Change, ...]]:
    """The inner driver's part of ``applied``, and the description files."""
    files = applied.of_kind(FILE_CHANGE)
    if len(files) == len(applied.changes) and not applied.created_devices:
        return NOTHING_APPLIED, files  # the usual case: the devices of the fake hardware are static
    rest = tuple(c for c in applied.changes if c.kind != FILE_CHANGE)
    return AppliedState(rest, applied.created_devices), files


def open_fake_hardware(profile: NodeProfile, root: Path, roots: HostRoots | None = None) -> VendorDriver:
    """The real vendor driver over the fake library for ``profile`` and a sysfs tree written under ``root``
    (which the caller keeps until the driver is closed), with hardware container edits over ``roots``."""
    return FakeNode(profile, root, roots).driver


def open_mock(
    profile: NodeProfile,
    files_dir: Path | None = None,
    *,
    watch: ProfileFile | None = None,
    health: WatchOptions | None = None,
) -> MockDriver:
    """The mock driver for a loaded profile: a :class:`FakeNode` in a private temporary directory, with the
    mock's container edits. ``files_dir`` defaults to a directory inside that private tree. ``watch``: the
    file ``profile`` was just read from (:meth:`ProfileFile.read`); its later edits are hardware changes."""
    tmp = tempfile.TemporaryDirectory(prefix="gpudra-mock-")
    root = Path(tmp.name)
    # The MIG devices made at prepare outlive the process, as on a real node until a reset or reboot: their
    # state lives beside the description files (the run dir: one boot). Without files_dir, in the tree.
    state = (files_dir.parent if files_dir is not None else root) / MIG_STATE_FILE
    usage = state.with_name(USAGE_FILE)  # tests and the demo set the fake GPUs' utilisation there
    # Compute modes, time-slices and MPS daemons outlive the plugin too (kill -9 included): the run dir.
    policy, mps = state.with_name(POLICY_FILE), MpsOptions(state.with_name(MPS_DIR), ready_timeout_s=10.0)
    try:
        node = FakeNode(profile, root, mig_state=state, watch=health, usage_file=usage, policy_file=policy,
                        mps=mps)  # fmt: skip
    except BaseException:
        tmp.cleanup()
        raise
    inner: VendorDriver = node.driver if watch is None else HotSwapDriver(node, watch)
    return MockDriver(inner, files_dir or root / "claims", on_close=tmp.cleanup, on_usage=node.tick_usage)


def open_mock_profile(
    name_or_path: str, files_dir: Path | None = None, health: WatchOptions | None = None
) -> MockDriver:
    """``--backend mock --profile name_or_path``: a built-in profile (fixed hardware), or a JSON file that is
    watched for edits. Raises :class:`~gpudra.vendors.mock.profile.ProfileError` for a bad profile."""
    if is_builtin(name_or_path) or not Path(name_or_path).is_file():
        return open_mock(load_node_profile(name_or_path), files_dir, health=health)  # the loader explains
    file = ProfileFile(Path(name_or_path).absolute())  # the same file should anything change directory
    return open_mock(file.read(), files_dir, watch=file, health=health)
