"""Fake NVIDIA host trees for prepare tests: /dev, /proc, a driver root and the Toolkit's CDI spec.

Shapes follow a real H100 host (/work/shared/fixtures/nvml/h100-80gb-hbm3.json: ``dev_nodes``, ``ls_dev``,
``proc_caps``) and the layout the driver uses for ``mig-minors`` (config 1, monitor 2, then per GPU 15 GPU
instances of one access minor followed by 8 compute-instance minors). Device nodes are plain files: prepare
only checks that they exist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

VERSION = "580.105.08"
OLD_VERSION = "535.104.05"
CAPS_MAJOR = 241
LIB = "usr/lib/x86_64-linux-gnu"
LIBS = ("libcuda", "libnvidia-ml", "libnvidia-ptxjitcompiler", "libnvidia-nvvm")
BINS = ("nvidia-smi", "nvidia-debugdump")
FIRMWARE = f"lib/firmware/nvidia/{VERSION}"


def gi_minor(gpu: int, gi: int) -> int:
    return 3 + gpu * 135 + gi * 9


def ci_minor(gpu: int, gi: int, ci: int) -> int:
    return gi_minor(gpu, gi) + 1 + ci


def mig_minors_text(gpus: int = 8) -> str:
    lines = ["config 1", "monitor 2"]
    for gpu in range(gpus):
        for gi in range(15):
            lines.append(f"gpu{gpu}/gi{gi}/access {gi_minor(gpu, gi)}")
            lines += [f"gpu{gpu}/gi{gi}/ci{ci}/access {ci_minor(gpu, gi, ci)}" for ci in range(8)]
    return "\n".join(lines) + "\n"


PROC_DEVICES = """Character devices:
  1 mem
  4 /dev/vc/0
195 nvidia-frontend
195 nvidia
238 nvidia-uvm
241 nvidia-caps
242 nvidia-caps-imex-channels

Block devices:
  7 loop
241 not-nvidia-caps
"""


def make_dev(root: Path, minors: range = range(8), *, uvm_tools: bool = True) -> Path:
    """``/dev`` with ``nvidia<minor>``, the control nodes and the two management caps (no MIG access caps)."""
    dev = root / "dev"
    (dev / "nvidia-caps").mkdir(parents=True)
    names = [f"nvidia{m}" for m in minors] + ["nvidiactl", "nvidia-uvm", "nvidia-modeset"]
    names += ["nvidia-uvm-tools"] if uvm_tools else []
    names += ["nvidia-caps/nvidia-cap1", "nvidia-caps/nvidia-cap2"]
    for name in names:
        (dev / name).touch()
    return dev


def make_proc(root: Path, *, minors: str | None = None, devices: str = PROC_DEVICES) -> Path:
    proc = root / "proc"
    (proc / "driver" / "nvidia-caps").mkdir(parents=True)
    (proc / "devices").write_text(devices)
    text = mig_minors_text() if minors is None else minors
    (proc / "driver" / "nvidia-caps" / "mig-minors").write_text(text)
    return proc


def make_driver_root(root: Path, *, hook: bool = False, old_version: bool = True) -> Path:
    """A driver root with versioned libraries and their SONAME/dev links, binaries and GSP firmware."""
    drv = root / "driver"
    lib = drv / LIB
    lib.mkdir(parents=True)
    for name in LIBS:
        (lib / f"{name}.so.{VERSION}").write_bytes(b"\x7fELF")
        (lib / f"{name}.so.1").symlink_to(f"{name}.so.{VERSION}")
    (lib / "libcuda.so").symlink_to("libcuda.so.1")
    (lib / "libnvidia-ml.so.2").symlink_to("missing.so")  # dangling: never mounted
    (lib / "libcudart.so.12").write_bytes(b"")  # not a driver library
    if old_version:  # left behind by an upgrade: not the version libcuda.so.1 points to
        (lib / f"libcuda.so.{OLD_VERSION}").write_bytes(b"")
    (drv / "usr/bin").mkdir(parents=True)
    for name in (*BINS, *(["nvidia-cdi-hook"] if hook else [])):
        (drv / "usr/bin" / name).write_bytes(b"#!")
    (drv / FIRMWARE).mkdir(parents=True)
    (drv / FIRMWARE / "gsp_ga10x.bin").write_bytes(b"")
    return drv


def toolkit_spec(version: str = VERSION, lib_root: str = "") -> dict[str, Any]:
    """What ``nvidia-ctk cdi generate`` writes (index device names, common edits at the spec level)."""
    ro = ["ro", "nosuid", "nodev", "bind"]
    files = [f"{LIB}/{n}.so.{version}" for n in LIBS] + [f"usr/bin/{b}" for b in BINS]
    mounts = [{"hostPath": f"{lib_root}/{f}", "containerPath": f"/{f}", "options": ro} for f in files]
    nodes = ("/dev/nvidia-modeset", "/dev/nvidia-uvm-tools", "/dev/nvidia-uvm", "/dev/nvidiactl")
    link = f"libcuda.so.1::/{LIB}/libcuda.so"
    hook = "/usr/bin/nvidia-cdi-hook"
    return {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [
            {"name": "0", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}},
            {"name": "all", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}]}},
        ],
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [{"path": p} for p in nodes],
            "hooks": [
                {"hookName": "createContainer", "path": hook,
                 "args": ["nvidia-cdi-hook", "create-symlinks", "--link", link]},
                {"hookName": "createContainer", "path": hook,
                 "args": ["nvidia-cdi-hook", "update-ldcache", "--folder", f"/{LIB}"]},
            ],
            "mounts": mounts,
        },
    }


def write_toolkit_spec(
    directory: Path, spec: dict[str, Any] | None = None, name: str = "nvidia.yaml"
) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(yaml.safe_dump(spec if spec is not None else toolkit_spec()))
    return path
