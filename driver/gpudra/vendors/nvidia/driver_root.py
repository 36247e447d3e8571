"""The NVIDIA user-space driver found under a driver root, as CDI edits (used when no Toolkit spec exists).

What a CUDA container needs from the host driver: the compute and management libraries (``libcuda``,
``libnvidia-ml``, the PTX JIT and NVVM compilers, ...), the utility binaries (``nvidia-smi``, ...), and the
GSP firmware of the running driver version. Each is a read-only bind mount at its own path relative to the
driver root (``<root>/usr/lib/x86_64-linux-gnu/libcuda.so.580.105.08`` -> ``/usr/lib/x86_64-linux-gnu/...``).

Libraries: the driver's library directory is the first candidate holding ``libcuda.so.<version>``; the
version is that of ``libcuda.so.1``'s target (else the highest one). Per library, the versioned file and the
links that resolve to it (``libcuda.so.1``, ``libcuda.so``) are mounted: a bind mount follows a host symlink,
so the container gets the SONAME and development names without a hook creating symlinks.

Finding them: when the Toolkit's ``nvidia-cdi-hook`` (or older ``nvidia-ctk``) is installed under the root, a
``createContainer`` hook runs ``update-ldcache`` on the library directory, so any image's loader finds them.
Without it, nothing else is added: ``LD_LIBRARY_PATH`` would REPLACE the image's own value (CDI env edits
overwrite), breaking images that rely on theirs. The loader then finds the libraries only where the image
searches anyway (its default directories: the Debian/Ubuntu multiarch ones, ``/usr/lib64`` on RHEL-family
images); install the Container Toolkit for any other combination.

Host paths are the driver root as the runtime sees it joined with the relative path
(:func:`driver_files_edits` takes that root); today the caller passes the root this process scanned, which is
right when the driver root is mounted at its host path (``/run/nvidia/driver`` with the GPU operator). The
scan is cached by the modification times of the directories it read.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gpudra.model.cdi import ContainerEdits, Hook, Mount

LIB_DIRS: Final = (
    "usr/lib/x86_64-linux-gnu",
    "usr/lib/aarch64-linux-gnu",
    "usr/lib64",
    "lib/x86_64-linux-gnu",
    "lib/aarch64-linux-gnu",
    "lib64",
    "usr/lib",
    "lib",
)
#: Compute and utility libraries (what a CUDA / NVML workload loads), by name without ``.so``.
LIBRARIES: Final = (
    "libcuda",
    "libcudadebugger",
    "libnvidia-ml",
    "libnvidia-ptxjitcompiler",
    "libnvidia-nvvm",
    "libnvidia-cfg",
    "libnvidia-opencl",
    "libnvidia-gpucomp",
    "libnvidia-allocator",
    "libnvidia-pkcs11",
    "libnvidia-pkcs11-openssl3",
)
BINARIES: Final = (
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-persistenced",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
)
BIN_DIR: Final = "usr/bin"
FIRMWARE_DIRS: Final = ("lib/firmware/nvidia", "usr/lib/firmware/nvidia")
#: Hook binaries, best first, with the arguments that select their ``update-ldcache`` command.
HOOK_BINARIES: Final = (
    ("usr/bin/nvidia-cdi-hook", ("nvidia-cdi-hook", "update-ldcache")),
    ("usr/local/nvidia/toolkit/nvidia-cdi-hook", ("nvidia-cdi-hook", "update-ldcache")),
    ("usr/bin/nvidia-ctk", ("nvidia-ctk", "hook", "update-ldcache")),
    ("usr/local/nvidia/toolkit/nvidia-ctk", ("nvidia-ctk", "hook", "update-ldcache")),
)
READ_ONLY: Final = ("ro", "nosuid", "nodev", "bind")
_VERSIONED = re.compile(r"libcuda\.so\.(\d+\.\d+(?:\.\d+)?)")


@dataclass(frozen=True, slots=True)
class DriverFiles:
    """The user-space driver under one root: what to mount, and the hook that refreshes the loader cache."""

    version: str
    lib_dir: str  # relative to the root, e.g. "usr/lib/x86_64-linux-gnu"
    files: tuple[str, ...]  # relative paths: libraries, binaries, the firmware directory
    hook: tuple[str, tuple[str, ...]] | None = None  # (relative path, argv before the hook's own options)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def pick_version(names: Iterable[str], soname_target: str | None) -> str | None:
    """Pure: the driver version of a library directory listing: that of ``libcuda.so.1``'s target when it
    names one, else the highest ``libcuda.so.<version>`` present; None without any."""
    if soname_target is not None:
        found = _VERSIONED.fullmatch(soname_target)
        if found:
            return found.group(1)
    versions = [m.group(1) for n in names if (m := _VERSIONED.fullmatch(n))]
    return max(versions, key=version_key, default=None)


def library_candidates(names: Iterable[str], library: str) -> list[str]:
    """Pure: the entries of a listing that may be ``library``: ``<library>.so``, ``<library>.so.<digits>``."""
    pattern = re.compile(re.escape(library) + r"\.so(\.\d+)*")
    return sorted(n for n in names if pattern.fullmatch(n))


def _real(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True)
    except (OSError, RuntimeError):
        return None


def _library_files(lib_dir: Path, names: Sequence[str], version: str) -> list[str]:
    """Per library, ``<lib>.so.<version>`` and the entries resolving to that same file."""
    out: list[str] = []
    for library in LIBRARIES:
        target = _real(lib_dir / f"{library}.so.{version}")
        if target is None or not target.is_file():
            continue
        out += [n for n in library_candidates(names, library) if _real(lib_dir / n) == target]
    return out


def _listing(path: Path) -> list[str] | None:
    try:
        return os.listdir(path)
    except OSError:
        return None


def _find_lib_dir(root: Path) -> tuple[str, list[str], str] | None:
    """(relative dir, its listing, driver version) of the first library directory holding libcuda."""
    for rel in LIB_DIRS:
        names = _listing(root / rel)
        if not names:
            continue
        link = root / rel / "libcuda.so.1"
        target = _real(link)
        version = pick_version(names, target.name if target is not None else None)
        if version is not None:
            return rel, names, version
    return None


def scan_driver_root(root: Path) -> DriverFiles | None:
    """The user-space driver under ``root``; None when no library directory holds ``libcuda.so.<version>``."""
    found = _find_lib_dir(root)
    if found is None:
        return None
    lib_dir, names, version = found
    files = [f"{lib_dir}/{n}" for n in _library_files(root / lib_dir, names, version)]
    files += [f"{BIN_DIR}/{b}" for b in BINARIES if (root / BIN_DIR / b).is_file()]
    # One firmware directory: with a merged /usr, lib/firmware and usr/lib/firmware are the same one.
    files += [f"{d}/{version}" for d in FIRMWARE_DIRS if (root / d / version).is_dir()][:1]
    hook = next(((rel, argv) for rel, argv in HOOK_BINARIES if (root / rel).is_file()), None)
    return DriverFiles(version, lib_dir, tuple(files), hook)


def driver_files_edits(host_root: Path, found: DriverFiles) -> ContainerEdits:
    """Pure: read-only bind mounts of ``found`` at their container paths, and the ``update-ldcache`` hook.

    ``host_root`` is the driver root as the container runtime sees it (host paths in the spec are
    ``host_root/<relative path>``); the scan itself may have looked at another mount of the same tree.
    """
    mounts = tuple(Mount(str(host_root / rel), f"/{rel}", READ_ONLY) for rel in found.files)
    hooks: tuple[Hook, ...] = ()
    if found.hook is not None:
        rel, argv = found.hook
        hooks = (Hook("createContainer", str(host_root / rel), (*argv, "--folder", f"/{found.lib_dir}")),)
    return ContainerEdits(mounts=mounts, hooks=hooks)


class _ScanCache:
    """:func:`scan_driver_root` results by root, valid while no directory it looked at changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[Path, tuple[tuple[int, ...], DriverFiles | None]] = {}

    @staticmethod
    def _stamp(root: Path) -> tuple[int, ...]:
        dirs = (*LIB_DIRS, BIN_DIR, *FIRMWARE_DIRS, "usr/local/nvidia/toolkit")
        stamps: list[int] = []
        for rel in dirs:
            try:
                stamps.append((root / rel).stat().st_mtime_ns)
            except OSError:
                stamps.append(-1)
        return tuple(stamps)

    def get(self, root: Path) -> DriverFiles | None:
        stamp = self._stamp(root)
        with self._lock:
            hit = self._entries.get(root)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        found = scan_driver_root(root)
        with self._lock:
            self._entries[root] = (stamp, found)
        return found


_CACHE = _ScanCache()


def driver_root_files(root: Path) -> DriverFiles | None:
    """:func:`scan_driver_root`, cached."""
    return _CACHE.get(root)
