"""``--backend mock``: the real vendor driver over a fake library, with container edits that need no GPU.

Discovery (and, as vendors gain them, the changes prepare makes: MIG instances, MPS daemons) is the real
vendor code running over the fake ``pynvml`` / ``amdsmi`` / sysfs. Only the container side differs: a mock
device gives a container environment variables and a description file (see :mod:`.edits`). That file is
what prepare creates on the node for the claim, so it is recorded as applied state (``mock-file`` changes)
and removed by exactly the undo that unprepare — or the roll-back after a crash — runs.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from gpudra.fsutil import atomic_write
from gpudra.model.applied import AppliedState, Change
from gpudra.model.inventory import Inventory
from gpudra.vendors.amd.driver import AmdDriver
from gpudra.vendors.base import (
    ApplyError,
    ClaimDevice,
    ClaimIdentity,
    DeviceEdits,
    EditsError,
    HostRoots,
    VendorDriver,
)
from gpudra.vendors.mock.amd_profile import AmdProfile
from gpudra.vendors.mock.edits import description_file_name, device_description, mock_edits
from gpudra.vendors.mock.fake_amd_sysfs import write_amd_sysfs
from gpudra.vendors.mock.fake_amdsmi import FakeAmdSmi
from gpudra.vendors.mock.fake_nvml import FakeNvml, write_sysfs_tree
from gpudra.vendors.mock.profile import Profile
from gpudra.vendors.nvidia.driver import NvidiaDriver

log = logging.getLogger(__name__)

#: The applied-state change for a description file: params ``path``.
FILE_CHANGE: Final = "mock-file"


class MockDriver:
    """A :class:`~gpudra.vendors.base.VendorDriver`: ``inner`` (the vendor driver over the fakes) for
    discovery and the claim changes it makes, the mock's own edits for containers."""

    def __init__(self, inner: VendorDriver, files_dir: Path, on_close: Callable[[], None] | None = None):
        self._inner = inner
        self._files_dir = files_dir
        self._on_close = on_close

    @property
    def name(self) -> str:
        return "mock"

    @property
    def inner(self) -> VendorDriver:
        return self._inner

    def discover(self) -> Inventory:
        return self._inner.discover()

    def edits(self, claim: ClaimIdentity, device: ClaimDevice, applied: AppliedState) -> DeviceEdits:
        for change in applied.of_kind(FILE_CHANGE):
            if change.device == device.name:
                return DeviceEdits(
                    mock_edits(device.device, claim.uid, device.name, Path(change.text("path")))
                )
        raise EditsError(f"device {device.name}: no description file was prepared for it")

    def intend(self, claim: ClaimIdentity, devices: Sequence[ClaimDevice]) -> AppliedState:
        inner = self._inner.intend(claim, devices)
        files = tuple(
            Change.of(
                FILE_CHANGE, d.name, path=str(self._files_dir / description_file_name(claim.uid, d.name))
            )
            for d in devices
        )
        return AppliedState(inner.changes + files, inner.created_devices)

    def apply(
        self, claim: ClaimIdentity, devices: Sequence[ClaimDevice], intended: AppliedState
    ) -> AppliedState:
        inner_intended, files = _split(intended)
        inner = self._inner.apply(claim, devices, inner_intended)
        by_name = {d.name: d for d in devices}
        try:
            for change in files:
                d = by_name[change.device]
                atomic_write(
                    Path(change.text("path")),
                    device_description(claim, d.request, d.name, d.device),
                    durable=False,
                )
        except (OSError, KeyError) as e:
            self._remove(files)
            self._inner.undo(inner)
            raise ApplyError(f"cannot write the mock device description: {e}") from e
        return AppliedState(inner.changes + files, inner.created_devices)

    def undo(self, applied: AppliedState) -> None:
        inner, files = _split(applied)
        self._remove(files)
        self._inner.undo(inner)

    @staticmethod
    def _remove(files: Sequence[Change]) -> None:
        for change in files:
            try:
                Path(change.text("path")).unlink(missing_ok=True)
            except OSError as e:
                raise ApplyError(f"cannot remove {change.text('path')}: {e}") from e

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            if self._on_close is not None:
                self._on_close()


def _split(applied: AppliedState) -> tuple[AppliedState, tuple[Change, ...]]:
    files = applied.of_kind(FILE_CHANGE)
    rest = tuple(c for c in applied.changes if c.kind != FILE_CHANGE)
    return AppliedState(rest, applied.created_devices), files


def open_fake_hardware(
    profile: Profile | AmdProfile, root: Path, roots: HostRoots | None = None
) -> VendorDriver:
    """The real vendor driver over the fake library for ``profile`` and a sysfs tree written under ``root``
    (which the caller keeps until the driver is closed), with hardware container edits over ``roots``."""
    sysfs = root / "sys"
    sysfs.mkdir(parents=True, exist_ok=True)
    if isinstance(profile, AmdProfile):
        write_amd_sysfs(sysfs, profile)
        amdsmi = FakeAmdSmi(profile) if profile.amdsmi is not None else None
        return AmdDriver(sysfs, amdsmi, roots)
    write_sysfs_tree(sysfs, profile)
    return NvidiaDriver(FakeNvml(profile), sysfs, roots)


def open_mock(profile: Profile | AmdProfile, files_dir: Path | None = None) -> MockDriver:
    """The mock driver for a loaded profile: :func:`open_fake_hardware` in a private temporary directory,
    with the mock's container edits. ``files_dir`` defaults to a directory inside that private tree."""
    tmp = tempfile.TemporaryDirectory(prefix="gpudra-mock-")
    root = Path(tmp.name)
    try:
        inner = open_fake_hardware(profile, root)
    except BaseException:
        tmp.cleanup()
        raise
    return MockDriver(inner, files_dir or root / "claims", on_close=tmp.cleanup)
