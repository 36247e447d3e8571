"""One simulated node: the fakes serving a profile, and the real vendor driver running over them.

A :class:`FakeNode` owns the fake library of its vendor (:class:`~gpudra.vendors.mock.fake_nvml.FakeNvml`, or
:class:`~gpudra.vendors.mock.fake_amdsmi.FakeAmdSmi` unless the profile has no amdsmi) and the sysfs tree the
profile implies, written under ``<root>/sys``; its :attr:`~FakeNode.driver` is the real
:class:`~gpudra.vendors.nvidia.driver.NvidiaDriver` or :class:`~gpudra.vendors.amd.driver.AmdDriver` over
them, opened once, exactly as on a real node.

The hardware can change while that driver runs: :meth:`FakeNode.serve` makes the same fakes show another
profile of the same vendor - the tree is rewritten (a fresh tree swapped in whole, so a failure leaves the old
one) and the library answers for the new profile with the handles of devices still present kept valid. The
next discovery pass then sees the new hardware: a GPU lost, a MIG layout changed or MIG mode toggled, an AMD
compute/memory partition mode switched. What cannot change under a running process is refused with a
:class:`~gpudra.vendors.mock.profile.ProfileError`: the vendor, or whether amdsmi is there at all.
:mod:`~gpudra.vendors.mock.hotswap` calls it when the mock's profile file is edited.

The devices' usage (energy, power, utilisation, memory in use) comes from one
:class:`~gpudra.vendors.mock.fake_usage.UsageModel` per node, which the fake libraries answer from;
:meth:`FakeNode.tick_usage` writes it into the sysfs tree of an AMD node without amdsmi (the files the AMD
driver reads then).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from gpudra.vendors.base import HostRoots, VendorDriver, WatchOptions
from gpudra.vendors.mock.amd_profile import AmdProfile
from gpudra.vendors.mock.fake_nvml import FakeNvml, write_sysfs_tree
from gpudra.vendors.mock.fake_nvml_policy import FakeTimeSlicer
from gpudra.vendors.mock.fake_usage import UsageModel
from gpudra.vendors.mock.profile import Profile, ProfileError
from gpudra.vendors.nvidia.driver import NvidiaDriver
from gpudra.vendors.nvidia.sharing_options import MpsOptions, SharingOptions

if TYPE_CHECKING:
    from gpudra.vendors.mock.fake_amdsmi import FakeAmdSmi

log = logging.getLogger(__name__)

NodeProfile = Profile | AmdProfile


class FakeNode:
    """The fakes for one node's profile under ``root`` (kept by the caller until :meth:`close`), and the real
    vendor driver over them with hardware container edits over ``roots``.

    ``mig_state``: the file keeping an NVIDIA node's MIG instances across processes (see
    :mod:`~gpudra.vendors.mock.fake_mig_state`); without it they live as long as this node.

    ``usage_file``: where another process may set the devices' utilisation (see
    :mod:`~gpudra.vendors.mock.fake_usage`).

    ``policy_file``: where an NVIDIA node's compute modes and time-slices are kept across processes (see
    :mod:`~gpudra.vendors.mock.fake_nvml_policy`). ``mps``: where claims' MPS daemons live; the mock runs the
    fake control daemon (:mod:`~gpudra.vendors.mock.fake_mps_control`) as detached processes.

    Raises what the vendor driver raises when it cannot open (e.g. a profile injecting an ``nvmlInit``
    failure: :class:`~gpudra.vendors.base.DiscoveryError`), and ProfileError for a damaged ``mig_state``.
    """

    def __init__(
        self,
        profile: NodeProfile,
        root: Path,
        roots: HostRoots | None = None,
        mig_state: Path | None = None,
        watch: WatchOptions | None = None,
        *,
        usage_file: Path | None = None,
        policy_file: Path | None = None,
        mps: MpsOptions | None = None,
    ) -> None:
        watch = watch or WatchOptions()
        self.usage = UsageModel(usage_file)
        self._root = root
        self._profile = profile
        self.sysfs = root / "sys"
        self.sysfs.mkdir(parents=True, exist_ok=True)
        _write_tree(self.sysfs, profile)
        self.nvml: FakeNvml | None = None  # the fake library of an NVIDIA node
        self.amdsmi: FakeAmdSmi | None = None  # that of an AMD node, unless its profile has no amdsmi
        self.driver: VendorDriver
        if isinstance(profile, AmdProfile):  # the AMD side is imported only for an AMD node
            from gpudra.vendors.amd.driver import AmdDriver
            from gpudra.vendors.mock.fake_amdsmi import FakeAmdSmi

            self.amdsmi = FakeAmdSmi(profile, self.usage) if profile.amdsmi is not None else None
            self.driver = AmdDriver(self.sysfs, self.amdsmi, roots, health_poll_seconds=watch.poll_s)
        else:
            self.nvml = FakeNvml(profile, mig_state, self.usage, policy_file)
            self.driver = NvidiaDriver(
                self.nvml, self.sysfs, roots, ignored_xids=watch.ignored_xids, health_poll_s=watch.poll_s,
                sharing=SharingOptions(FakeTimeSlicer(self.nvml), _fake_mps(mps)),
            )  # fmt: skip

    @property
    def profile(self) -> NodeProfile:
        """The profile the fakes serve now."""
        return self._profile

    def serve(self, profile: NodeProfile) -> None:
        """Show ``profile``'s hardware from the next discovery pass on (not atomic to a pass in flight: the
        caller serialises them). Raises :class:`ProfileError` for a change no running node can make, and
        ``OSError`` when the new tree cannot be written; either way the old hardware stays."""
        self._check(profile)
        fresh = self._root / "sys.next"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir()
        try:
            _write_tree(fresh, profile)
        except BaseException:
            shutil.rmtree(fresh, ignore_errors=True)
            raise
        old = self._root / "sys.old"
        shutil.rmtree(old, ignore_errors=True)
        self.sysfs.rename(old)
        try:
            fresh.rename(self.sysfs)
        except OSError:
            old.rename(self.sysfs)
            raise
        shutil.rmtree(old, ignore_errors=True)
        if isinstance(profile, AmdProfile):
            if self.amdsmi is not None:
                self.amdsmi.serve(profile)
        elif self.nvml is not None:
            self.nvml.serve(profile)
        self._profile = profile

    def tick_usage(self) -> None:
        """Before the driver reads usage: an AMD node without amdsmi gets its sysfs usage files written
        (the fake libraries answer from the model directly). Never raises (a swap may move the tree)."""
        profile = self._profile
        if not isinstance(profile, AmdProfile) or self.amdsmi is not None:
            return
        from gpudra.vendors.mock.fake_amd_sysfs import write_usage_files

        try:
            write_usage_files(self.sysfs, profile, self.usage)
        except OSError as err:
            log.debug("mock usage files not written this time: %s", err)

    def _check(self, profile: NodeProfile) -> None:
        old, new = _vendor(self._profile), _vendor(profile)
        if old != new:
            raise ProfileError(f"it now describes an {new} node, but this one is {old}: a running node "
                               "cannot change vendor (restart the mock)")  # fmt: skip
        if isinstance(profile, AmdProfile) and (profile.amdsmi is None) != (self.amdsmi is None):
            now = "no amdsmi" if profile.amdsmi is None else "amdsmi"
            raise ProfileError(f"it now has {now}, but amdsmi was {'not ' if self.amdsmi is None else ''}"
                               "loaded when the plugin started (restart the mock)")  # fmt: skip

    def close(self) -> None:
        """Close the vendor driver (which shuts its library down); the tree stays for the caller to remove."""
        self.driver.close()


def _fake_mps(mps: MpsOptions | None) -> MpsOptions:
    """``mps`` with the fake control binary (and, unless given, detached processes of it)."""
    if mps is None or mps.root is None:
        return MpsOptions()
    from dataclasses import replace

    from gpudra.vendors.mock.fake_mps_control import control_command
    from gpudra.vendors.nvidia.mps import MpsControl

    return replace(mps, control=mps.control or MpsControl(control_command()))


def _vendor(profile: NodeProfile) -> str:
    return "AMD" if isinstance(profile, AmdProfile) else "NVIDIA"


def _write_tree(sysfs: Path, profile: NodeProfile) -> None:
    if isinstance(profile, AmdProfile):
        from gpudra.vendors.mock.fake_amd_sysfs import write_amd_sysfs

        write_amd_sysfs(sysfs, profile)
    else:
        write_sysfs_tree(sysfs, profile)
