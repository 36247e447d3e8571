"""Choose and open the hardware backend named on the command line (``--backend``, ``--profile``)."""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal, get_args

from gpudra.vendors.base import DiscoveryError, HardwareBackend
from gpudra.vendors.mock.fake_nvml import MockBackend
from gpudra.vendors.mock.profile import ProfileError, builtin_profile_names, load_profile
from gpudra.vendors.nvidia.discovery import MOCK_HINT, NvmlBackend

BackendKind = Literal["auto", "nvml", "amd", "mock"]
BACKEND_KINDS: Final[tuple[str, ...]] = get_args(BackendKind)
DEFAULT_PROFILE: Final = "dgx-h100"


def list_profiles() -> list[str]:
    """Built-in profile names for ``--backend mock --profile <name>`` (a JSON file path works too)."""
    return builtin_profile_names()


def open_backend(kind: BackendKind, profile: str | None, sysfs_root: Path) -> HardwareBackend:
    """Open the backend ``kind``; raises :class:`DiscoveryError` with a message meant for the user.

    ``auto`` uses NVML when it loads and sees a GPU, else the AMD backend when sysfs shows amdgpu devices,
    else fails (suggesting the mock); ``nvml`` uses NVML as is; ``amd`` reads sysfs/KFD (plus amdsmi when
    it loads); ``mock`` serves ``profile`` (default ``dgx-h100``) through a fake pynvml or, for an AMD
    profile, a fake sysfs tree and fake amdsmi.
    """
    if kind == "mock":
        return _open_mock(profile or DEFAULT_PROFILE)
    if profile is not None:
        raise DiscoveryError(f"--profile {profile!r} only applies to --backend mock (backend is {kind!r})")
    if kind == "nvml":
        return _open_nvml(sysfs_root)
    if kind == "auto":
        return _open_auto(sysfs_root)
    if kind == "amd":
        return _open_amd(sysfs_root)
    raise DiscoveryError(f"unknown backend {kind!r}; choose one of {', '.join(BACKEND_KINDS)}")


def _open_nvml(sysfs_root: Path) -> NvmlBackend:
    try:
        import pynvml  # importing it does not load libnvidia-ml; nvmlInit in NvmlBackend does
    except ImportError as err:  # pragma: no cover - pynvml is a pinned dependency
        raise DiscoveryError(f"the pynvml package (nvidia-ml-py) is not installed: {err}") from err
    return NvmlBackend(pynvml, sysfs_root=sysfs_root)


def _open_amd(sysfs_root: Path) -> HardwareBackend:
    from gpudra.vendors.amd.discovery import AmdBackend
    from gpudra.vendors.amd.smi import load_amdsmi

    return AmdBackend(sysfs_root, load_amdsmi())


def _open_auto(sysfs_root: Path) -> HardwareBackend:
    try:
        backend = _open_nvml(sysfs_root)
        count = backend.device_count()
    except DiscoveryError:
        if _has_amd(sysfs_root):
            return _open_amd(sysfs_root)
        raise
    if count > 0:
        return backend
    backend.close()
    if _has_amd(sysfs_root):
        return _open_amd(sysfs_root)
    raise DiscoveryError(f"NVML loaded but sees no NVIDIA GPU on this node. {MOCK_HINT}")


def _has_amd(sysfs_root: Path) -> bool:
    from gpudra.vendors.amd.sysfs import amdgpu_functions

    return bool(amdgpu_functions(sysfs_root))


def _open_mock(profile: str) -> HardwareBackend:
    from gpudra.vendors.mock.amd_profile import is_amd_profile, load_amd_profile  # the mock path only

    try:
        if is_amd_profile(profile):
            from gpudra.vendors.mock.fake_amdsmi import AmdMockBackend

            return AmdMockBackend(load_amd_profile(profile))
        loaded = load_profile(profile)
    except ProfileError as err:
        raise DiscoveryError(str(err)) from err
    return MockBackend(loaded)
