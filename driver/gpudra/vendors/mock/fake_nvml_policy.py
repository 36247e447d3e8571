"""The fake GPUs' compute policy: the compute mode (fake pynvml calls) and the compute time-slice (a fake of
``nvidia-smi compute-policy``), kept in the mock's hardware state.

Both are settings of the GPU, not of the process that set them: they stay until the GPU is reset or the
node reboots. So the fake keeps them per GPU UUID in :class:`GpuPolicyStore`, in memory or in a JSON file
beside the MIG state in the mock's run dir (``mock-gpu-policy.json``, written atomically after each change): a
plugin started again after ``kill -9`` reads back what it set, and tests and ``gpudra-dev demo`` read what a
real GPU would hold::

    {"version": 1, "gpus": {"GPU-0b10...": {"computeMode": 3, "timeslice": 2}}}

A GPU the file does not name has the defaults: compute mode DEFAULT (0) and time-slice Default (0).

- :class:`FakePolicyCalls`: ``nvmlDeviceGetComputeMode`` / ``nvmlDeviceSetComputeMode`` on a GPU's handle
  (NOT_SUPPORTED on a MIG device's: a compute mode belongs to the whole GPU; INVALID_ARGUMENT for a mode NVML
  does not have; NOT_SUPPORTED for the deprecated EXCLUSIVE_THREAD);
- :class:`FakeTimeSlicer`: the :class:`~gpudra.vendors.nvidia.timeslice.TimeSlicer` the mock's NVIDIA driver
  uses instead of nvidia-smi; it fails as nvidia-smi does for a GPU that is not there or a level not 0-3.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Final

import pynvml

from gpudra.fsutil import atomic_write
from gpudra.vendors.mock.fake_nvml_base import FakeNvmlBase, fail
from gpudra.vendors.mock.profile import ProfileError
from gpudra.vendors.nvidia.sharing_options import TimeSliceError

POLICY_FILE: Final = "mock-gpu-policy.json"
POLICY_VERSION: Final = 1
COMPUTE_MODE: Final = "computeMode"
TIMESLICE: Final = "timeslice"
_KEYS: Final = frozenset({COMPUTE_MODE, TIMESLICE})
_MODES: Final = frozenset({0, 2, 3})  # DEFAULT, PROHIBITED, EXCLUSIVE_PROCESS
_EXCLUSIVE_THREAD: Final = 1


class GpuPolicyStore:
    """The settings per GPU UUID; with ``path``, read from that file at every call and saved to it after
    every change (another plugin process on the node may have changed it: a rolling update)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._gpus = self._load()  # a damaged file is refused when the fake is made

    def get(self, uuid: str, key: str) -> int:
        with self._lock:
            return self._current().get(uuid, {}).get(key, 0)

    def set(self, uuid: str, key: str, value: int) -> None:
        """Record ``key`` = ``value`` for ``uuid`` (a default value leaves the file without it)."""
        with self._lock:
            gpus = {k: dict(v) for k, v in self._current().items()}
            entry = gpus.setdefault(uuid, {})
            entry[key] = value
            if not any(entry.values()):
                del gpus[uuid]
            self._save(gpus)
            self._gpus = gpus

    def _current(self) -> dict[str, dict[str, int]]:
        if self.path is not None:
            self._gpus = self._load()
        return self._gpus

    def _load(self) -> dict[str, dict[str, int]]:
        if self.path is None:
            return {}
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (FileNotFoundError, NotADirectoryError):
            return {}  # a directory that is a file is the plugin's start-up check to report
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ProfileError(f"GPU policy state file {str(self.path)!r}: {err}") from err
        return _decode(raw, str(self.path))

    def _save(self, gpus: dict[str, dict[str, int]]) -> None:
        if self.path is not None:
            doc = {"version": POLICY_VERSION, "gpus": gpus}
            atomic_write(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode(), mode=0o644)


def _decode(raw: object, where: str) -> dict[str, dict[str, int]]:
    gpus = raw.get("gpus") if isinstance(raw, dict) else None
    if not isinstance(raw, dict) or raw.get("version") != POLICY_VERSION or not isinstance(gpus, dict):
        raise ProfileError(f"GPU policy state file {where!r}: expected {{\"version\": 1, \"gpus\": {{...}}}}")
    out: dict[str, dict[str, int]] = {}
    for uuid, entry in gpus.items():
        if not isinstance(entry, dict) or not set(entry) <= _KEYS:
            raise ProfileError(f"GPU policy state file {where!r}: gpus.{uuid}: expected {sorted(_KEYS)}")
        for key, value in entry.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ProfileError(f"GPU policy state file {where!r}: gpus.{uuid}.{key}: not a setting")
        out[str(uuid)] = dict(entry)
    return out


def load_policy(path: Path) -> dict[str, dict[str, int]]:
    """What a policy file says, per GPU UUID (for tests and the demo); empty when there is none."""
    return GpuPolicyStore(path)._gpus


class FakePolicyCalls(FakeNvmlBase):
    policy: GpuPolicyStore  # set by FakeNvml's constructor

    def nvmlDeviceGetComputeMode(self, handle: Any) -> int:
        return self.policy.get(self._policy_gpu("nvmlDeviceGetComputeMode", handle), COMPUTE_MODE)

    def nvmlDeviceSetComputeMode(self, handle: Any, mode: int) -> None:
        uuid = self._policy_gpu("nvmlDeviceSetComputeMode", handle)
        if mode == _EXCLUSIVE_THREAD:
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if mode not in _MODES:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self.policy.set(uuid, COMPUTE_MODE, int(mode))

    def _policy_gpu(self, call: str, handle: Any) -> str:
        key = self.resolve(call, handle, ("gpu", "mig"))
        if key[0] == "mig":
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return self.gpu_uuid(self.index_of(key))

    def gpu_uuid(self, index: int) -> str:
        """The key a GPU's settings are kept under: its UUID (``#<index>`` when the profile has none)."""
        return self.profile.devices[index].uuid or f"#{index}"


class FakeTimeSlicer:
    """``nvidia-smi compute-policy --set-timeslice`` over a fake node (``nvml``: its fake pynvml)."""

    def __init__(self, nvml: FakePolicyCalls) -> None:
        self._nvml = nvml

    def set_timeslice(self, uuid: str, level: int) -> None:
        if level not in range(4):
            raise TimeSliceError(f"Invalid timeslice value {level}: expected 0-3")
        self._nvml.policy.set(self._present(uuid), TIMESLICE, level)

    def timeslice(self, uuid: str) -> int | None:
        return self._nvml.policy.get(self._present(uuid), TIMESLICE)

    def _present(self, uuid: str) -> str:
        try:
            self._nvml.nvmlDeviceGetHandleByUUID(uuid)
        except pynvml.NVMLError as err:
            raise TimeSliceError(f"No devices were found for {uuid} ({err})") from err
        return uuid
