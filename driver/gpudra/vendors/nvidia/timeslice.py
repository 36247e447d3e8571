"""The whole-GPU settings sharing changes: the compute time-slice and the compute mode.

- **Time-slice** (how long a context runs before the GPU switches to the next: ``Default``, ``Short``,
  ``Medium``, ``Long``, levels 0-3). NVML has no public call for it; NVIDIA's own DRA driver runs
  ``nvidia-smi compute-policy -i <uuid> --set-timeslice <level>`` from the driver root, and so does
  :class:`NvidiaSmiTimeSlicer`, behind the :class:`TimeSlicer` protocol (the mock supplies a fake that keeps
  the setting in its hardware state). nvidia-smi does not report the setting back in a form gpudra reads, so
  the real time-slicer cannot tell the value it replaces: that is put back as ``Default``.
- **Compute mode** (``DEFAULT``: any number of processes; ``EXCLUSIVE_PROCESS``: one process, an MPS server
  owning the GPU): ``nvmlDeviceGetComputeMode`` / ``nvmlDeviceSetComputeMode``; needs root.

:class:`GpuSettings` reads and sets both by GPU UUID; it is the one place where their failures (an
:class:`~gpudra.vendors.nvidia.calls.NvmlError`, a :class:`TimeSliceError`) become
:class:`~gpudra.vendors.base.ApplyError` with a message for the claim.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from gpudra.planning.sharing_plan import COMPUTE_MODE, TIMESLICE, shown
from gpudra.vendors.base import ApplyError
from gpudra.vendors.nvidia.calls import Nvml, NvmlError
from gpudra.vendors.nvidia.driver_root import BIN_DIR, LIB_DIRS
from gpudra.vendors.nvidia.sharing_options import TimeSliceError, TimeSlicer

__all__ = ["GpuSettings", "NvidiaSmiTimeSlicer", "TimeSliceError", "TimeSlicer"]

SMI: Final = "nvidia-smi"
LEVELS: Final = range(4)
_EXCERPT: Final = 300
_WHY: Final = {
    "NO_PERMISSION": "the plugin is not privileged (setting a compute mode needs root)",
    "NOT_SUPPORTED": "this GPU or its driver does not support it",
    "GPU_IS_LOST": "the GPU is lost (fallen off the bus)",
}


class NvidiaSmiTimeSlicer:
    """``nvidia-smi compute-policy`` of the driver under ``driver_root`` (as this process sees it), with the
    driver's libraries first on the library path."""

    def __init__(self, driver_root: Path, *, timeout_s: float = 30.0) -> None:
        self.driver_root = driver_root
        self.timeout_s = timeout_s

    def argv(self, uuid: str, level: int) -> list[str]:
        binary = self.driver_root / BIN_DIR / SMI
        return [str(binary), "compute-policy", "-i", uuid, "--set-timeslice", str(level)]

    def set_timeslice(self, uuid: str, level: int) -> None:
        if level not in LEVELS:
            raise TimeSliceError(f"time-slice level {level} is not 0-3")
        argv = self.argv(uuid, level)
        libs = ":".join(str(self.driver_root / d) for d in LIB_DIRS)
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = ":".join(p for p in (libs, env.get("LD_LIBRARY_PATH", "")) if p)
        try:
            done = subprocess.run(argv, capture_output=True, text=True, errors="replace", env=env,
                                  timeout=self.timeout_s, check=False)  # fmt: skip
        except subprocess.TimeoutExpired as e:
            raise TimeSliceError(f"{SMI} compute-policy gave no answer within {self.timeout_s:g}s") from e
        except OSError as e:
            raise TimeSliceError(f"cannot run {argv[0]}: {e.strerror or e}") from e
        if done.returncode != 0:
            out = " ".join(f"{done.stdout} {done.stderr}".split())[:_EXCERPT] or "no output"
            raise TimeSliceError(f"{SMI} compute-policy --set-timeslice failed ({done.returncode}): {out}")

    def timeslice(self, uuid: str) -> int | None:
        return None


class GpuSettings:
    """Reads and sets a GPU's sharing settings by UUID (``handle`` gives the NVML handle of a GPU the last
    discovery found)."""

    def __init__(self, nvml: Nvml, handle: Callable[[str], Any | None], timeslicer: TimeSlicer) -> None:
        self._nvml = nvml
        self._handle = handle
        self._timeslicer = timeslicer

    def read(self, uuid: str, name: str) -> int | None:
        """The value set now; None when it cannot be read (a GPU gone, NVML not answering, nvidia-smi)."""
        if name == TIMESLICE:
            try:
                return self._timeslicer.timeslice(uuid)
            except TimeSliceError:
                return None
        handle = self._handle(uuid)
        if handle is None:
            return None
        try:
            return int(self._nvml.call("nvmlDeviceGetComputeMode", handle))
        except NvmlError:
            return None

    def set(self, uuid: str, name: str, value: int) -> None:
        """Set it; :class:`ApplyError` naming the GPU and the setting when that fails."""
        doing = f"GPU {uuid}: setting the {_label(name)} to {shown(name, value)}"
        if name == TIMESLICE:
            try:
                self._timeslicer.set_timeslice(uuid, value)
            except TimeSliceError as e:
                raise ApplyError(f"{doing} failed: {e}") from e
            return
        if name != COMPUTE_MODE:
            raise ApplyError(f"GPU {uuid}: unknown setting {name!r}")
        handle = self._handle(uuid)
        if handle is None:
            raise ApplyError(f"{doing} failed: the GPU is not in the last discovery (gone from the node)")
        try:
            self._nvml.call("nvmlDeviceSetComputeMode", handle, value)
        except NvmlError as e:
            why = _WHY.get(e.name)
            reason = f"{why} (NVML {e.name}: {e.message})" if why else f"NVML {e.name}: {e.message}"
            raise ApplyError(f"{doing} failed: {reason}") from e


def _label(name: str) -> str:
    return "compute time-slice" if name == TIMESLICE else "compute mode"
