"""A real container runtime for the tests of this folder: containerd 2.x and runc from Debian, set up by
``hack/containerd-env``, one daemon per pytest worker. Each container is the busybox test image running
:data:`PROBE`, which prints what the container got: groups, environment, character devices, mounts and the
files a test names.

Skipped, with the reason, where this machine cannot run containers at all (not root, no overlayfs, no cgroup
hierarchy, no ``unshare``). A failure to fetch or start the runtime skips elsewhere but fails under
``CI=true``: CI must not turn green by not running these tests.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn

import pytest

REPO: Final = Path(__file__).resolve().parents[2]
SCRIPT: Final = REPO / "hack" / "containerd-env"

#: Run by ``sh -c`` in the container; its arguments are files to print.
PROBE: Final = r"""
echo "@@id $(id)"
echo @@env; env
echo @@dev; find /dev -type c | while read -r f; do stat -c '%n %t %T %g' "$f"; done
echo @@mounts; cat /proc/self/mountinfo
for f in "$@"; do echo "@@file $f"; cat "$f"; done
"""


class RuntimeRefused(Exception):
    """``ctr run`` failed: containerd, the CDI library in ctr or runc refused the container."""


@dataclass(frozen=True)
class Seen:
    """What a container saw: its groups, environment, character devices (path -> (major, minor, gid)),
    mounts (mount point -> options) and the text of the files asked for."""

    groups: frozenset[int]
    env: dict[str, str]
    devices: dict[str, tuple[int, int, int]]
    mounts: dict[str, frozenset[str]]
    files: dict[str, str]


def parse(out: str) -> Seen:
    groups = re.search(r"groups=(\S+)", out)
    assert groups is not None, out
    section, env, devices, mounts, files = "", {}, {}, {}, {}
    for line in out.splitlines():
        if line.startswith("@@file "):
            section = line.removeprefix("@@file ")
            files[section] = ""
        elif line.startswith("@@"):
            section = line.split()[0]
        elif section == "@@env" and "=" in line:
            key, _, value = line.partition("=")
            env[key] = value
        elif section == "@@dev":
            path, major, minor, gid = line.split()
            devices[path] = (int(major, 16), int(minor, 16), int(gid))
        elif section == "@@mounts":
            fields = line.split()
            mounts[fields[4]] = frozenset(fields[5].split(","))
        elif section in files:
            files[section] += line + "\n"
    ids = frozenset(int(g) for g in re.findall(r"(\d+)(?:\([^)]*\))?", groups.group(1)))
    return Seen(ids, env, devices, mounts, files)


@dataclass(frozen=True)
class Runtime:
    """A running containerd (its directory as ``hack/containerd-env start`` made it)."""

    dir: Path
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def run(self, spec_dir: Path, cdi_ids: Sequence[str], files: Sequence[str] = ()) -> Seen:
        """Run :data:`PROBE` in a new container given ``cdi_ids``, resolved from the specs in ``spec_dir``."""
        devices = [arg for i in cdi_ids for arg in ("--device", i)]
        name = f"gpudra-test-{os.getpid()}-{next(self._ids)}"
        probe = ["sh", "-c", PROBE, "sh"]
        cmd = [str(SCRIPT), "run", str(self.dir), str(spec_dir), name, *devices, "--", *probe]
        done = subprocess.run(cmd + list(files), capture_output=True, text=True, timeout=60, check=False)
        if done.returncode != 0:
            raise RuntimeRefused(f"ctr run exited {done.returncode}: {done.stderr.strip()}\n{done.stdout}")
        return parse(done.stdout)


def _cannot_run() -> str | None:
    """Why this machine cannot run containers at all, or None."""
    if os.geteuid() != 0:
        return "running containers needs root (containerd, runc, mount namespaces)"
    if shutil.which("unshare") is None:
        return "no unshare (util-linux): ctr cannot be given its own CDI directories"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "the kernel has no overlayfs for containerd's snapshotter"
    cgroups = Path("/sys/fs/cgroup")
    if not (cgroups / "cgroup.controllers").exists() and not (cgroups / "devices").is_dir():
        return "no cgroup hierarchy (v2, or v1 with the devices controller) for runc"
    return None


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"the container runtime could not be set up under CI: {reason}")
    pytest.skip(reason)


def _script(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            [str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        _unavailable(f"hack/containerd-env {args[0]} took over {timeout:.0f} s")


@pytest.fixture(scope="session")
def runtime() -> Iterator[Runtime]:
    reason = _cannot_run()
    if reason is not None:
        pytest.skip(reason)
    fetched = _script("fetch", timeout=600)  # a no-op once .cache/containerd holds it (CI fetches first)
    if fetched.returncode != 0:
        _unavailable(f"hack/containerd-env fetch failed: {fetched.stderr.strip()[-2000:]}")
    root = Path(tempfile.mkdtemp(prefix="ctrd-"))  # short: the daemon's socket path
    started = _script("start", str(root / "c"), str(root / "cdi"), timeout=60)
    try:
        if started.returncode != 0:
            _unavailable(f"containerd did not start: {started.stderr.strip()[-2000:]}")
        yield Runtime(root / "c")
    finally:
        _script("stop", str(root / "c"), timeout=30)
        shutil.rmtree(root, ignore_errors=True)
