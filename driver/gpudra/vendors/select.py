"""Choose and open the vendor driver named on the command line (``--backend``, ``--profile``)."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal, get_args

from gpudra.vendors.base import DiscoveryError, HostRoots, VendorDriver, WatchOptions
from gpudra.vendors.mock.profile import ProfileError, builtin_profile_names
from gpudra.vendors.nvidia.calls import MOCK_HINT
from gpudra.vendors.nvidia.driver import NvidiaDriver
from gpudra.vendors.nvidia.sharing_options import MpsOptions, SharingOptions

BackendKind = Literal["auto", "nvml", "amd", "mock"]
BACKEND_KINDS: Final[tuple[str, ...]] = get_args(BackendKind)
DEFAULT_PROFILE: Final = "dgx-h100"


def list_profiles() -> list[str]:
    """Built-in profile names for ``--backend mock --profile <name>`` (a JSON file path works too)."""
    return builtin_profile_names()


def open_driver(
    kind: BackendKind,
    profile: str | None,
    sysfs_root: Path,
    roots: HostRoots | None = None,
    files_dir: Path | None = None,
    *,
    health: WatchOptions | None = None,
    mps: MpsOptions | None = None,
) -> VendorDriver:
    """Open the driver ``kind``; raises :class:`DiscoveryError` with a message meant for the user.

    ``auto`` uses NVML when it loads and sees a GPU, else the AMD backend when sysfs shows amdgpu devices,
    else fails (suggesting the mock); ``nvml`` uses NVML as is; ``amd`` reads sysfs/KFD (plus amdsmi when
    it loads); ``mock`` serves ``profile`` (default ``dgx-h100``) through a fake pynvml or, for an AMD
    profile, a fake sysfs tree and fake amdsmi; a profile given as a JSON file is watched, and editing it is
    a hardware change the next discovery sees (:mod:`gpudra.vendors.mock.hotswap`). ``roots`` are where the
    host's device nodes and driver files are (hardware drivers); ``files_dir`` is where the mock writes the
    description files containers mount (default: a private temporary directory). ``mps``: where claims' MPS
    daemons live and how they run on an NVIDIA node (default: no MPS); the mock runs its fake daemons as
    detached processes in its run dir, whatever ``mps`` says.
    """
    roots = roots or HostRoots()
    health = health or WatchOptions()
    if kind == "mock":
        return _open_mock(profile or DEFAULT_PROFILE, files_dir, health)
    if profile is not None:
        raise DiscoveryError(f"--profile {profile!r} only applies to --backend mock (backend is {kind!r})")
    if kind == "nvml":
        return _open_nvml(sysfs_root, roots, health, mps)
    if kind == "auto":
        return _open_auto(sysfs_root, roots, health, mps)
    if kind == "amd":
        return _open_amd(sysfs_root, roots, health)
    raise DiscoveryError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")


def _open_nvml(
    sysfs_root: Path, roots: HostRoots, health: WatchOptions, mps: MpsOptions | None = None
) -> NvidiaDriver:
    try:
        import pynvml  # importing it does not load libnvidia-ml; nvmlInit in the driver does
    except ImportError as err:  # pragma: no cover - pynvml is a pinned dependency
        raise DiscoveryError(f"the pynvml package (nvidia-ml-py) is not installed: {err}") from err
    sharing = SharingOptions(mps=mps or MpsOptions())
    return NvidiaDriver(
        pynvml, sysfs_root, roots, ignored_xids=health.ignored_xids, health_poll_s=health.poll_s,
        sharing=sharing,
    )  # fmt: skip


def _open_amd(sysfs_root: Path, roots: HostRoots, health: WatchOptions) -> VendorDriver:
    from gpudra.vendors.amd.driver import AmdDriver
    from gpudra.vendors.amd.smi import load_amdsmi

    return AmdDriver(sysfs_root, load_amdsmi(), roots, health_poll_seconds=health.poll_s)


def _open_auto(
    sysfs_root: Path, roots: HostRoots, health: WatchOptions, mps: MpsOptions | None
) -> VendorDriver:
    try:
        driver = _open_nvml(sysfs_root, roots, health, mps)
        count = driver.device_count()
    except DiscoveryError:
        if _has_amd(sysfs_root):
            return _open_amd(sysfs_root, roots, health)
        raise
    if count > 0:
        return driver
    driver.close()
    if _has_amd(sysfs_root):
        return _open_amd(sysfs_root, roots, health)
    raise DiscoveryError(f"NVML loaded but sees no NVIDIA GPU on this node. {MOCK_HINT}")


def _has_amd(sysfs_root: Path) -> bool:
    from gpudra.vendors.amd.sysfs import amdgpu_functions

    return bool(amdgpu_functions(sysfs_root))


def _open_mock(profile: str, files_dir: Path | None, health: WatchOptions) -> VendorDriver:
    from gpudra.vendors.mock.driver import open_mock_profile  # the mock path only

    try:
        return open_mock_profile(profile, files_dir, health)
    except ProfileError as err:
        raise DiscoveryError(str(err)) from err
