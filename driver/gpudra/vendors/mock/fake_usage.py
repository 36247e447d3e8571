"""The fake GPUs' usage: utilisation, power, an energy counter and memory in use that change plausibly.

The model, the same for the fake pynvml, the fake amdsmi and the fake sysfs tree:

* **utilisation** ``u`` (0 to 1) of a device is, first found: what a test set in-process
  (:meth:`UsageModel.set_utilization`), what the usage file says, the profile's ``usage.utilization``
  (:mod:`~gpudra.vendors.mock.profile_usage`), else 0 (idle);
* **power** is ``idle + (max - idle) * u`` watts (the profile's ``idle_watts`` and ``max_watts``);
* **energy** integrates that power over the model's clock (``time.monotonic`` unless a test gives another):
  each reading adds the power of the previous reading times the time since, so a utilisation change counts
  from the first reading after it. The counter starts at 0 when the fake starts (a real GPU's counts from
  when its driver loaded);
* **memory used** is the profile's idle figure plus ``0.85 * u`` of the rest.

**The usage file** lets another process set utilisation (tests of the real ``gpudra run``, the demo):
``<run dir>/mock-usage.json`` (:data:`USAGE_FILE`, beside the mock's MIG state), ``{"utilization": {KEY:
u}}``, where a KEY is a device UUID as gpudra publishes it (GPU, AMD partition), a PCI bus id
(``0000:1b:00.0``), or ``"*"`` for every device. The file is looked at no more often than every 50 ms of
the model's clock; a file that does not parse keeps the values it had (one warning). :func:`write_usage_file`
writes it atomically.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gpudra.fsutil import atomic_write
from gpudra.vendors.mock.profile_usage import UsageProfile

log = logging.getLogger(__name__)

USAGE_FILE: Final = "mock-usage.json"
#: The key of the usage file that sets every device.
ALL: Final = "*"
#: Of the memory a device does not use at idle, the share in use at full utilisation.
MEMORY_AT_FULL: Final = 0.85
_CHECK_S: Final = 0.05


@dataclass(frozen=True, slots=True)
class FakeReading:
    energy_joules: float
    power_watts: float
    utilization: float


@dataclass(frozen=True, slots=True)
class _Meter:
    at: float  # the model's clock at the last reading
    joules: float
    watts: float  # power at the last reading: what the time until the next one is integrated at


class UsageModel:
    """The usage of one fake node's devices; thread-safe. ``file``: the usage file (None: none)."""

    def __init__(self, file: Path | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._file = file
        self._clock = clock
        self._lock = threading.Lock()
        self._set: dict[str, float] = {}
        self._from_file: Mapping[str, float] = {}
        self._seen: tuple[int, int, int] | None = None  # the file's inode, mtime and size when read
        self._checked = -math.inf
        self._meters: dict[str, _Meter] = {}

    def set_utilization(self, key: str, value: float) -> None:
        """Make the device(s) ``key`` names (UUID, bus id or ``"*"``) this busy, from the next reading on;
        ValueError outside 0..1."""
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"utilisation must be from 0 to 1, got {value}")
        with self._lock:
            self._set[key] = value

    def refresh(self) -> None:
        """Read the usage file now if it changed (readings do so at most every 50 ms)."""
        with self._lock:
            self._check(force=True)

    def utilization(self, keys: Sequence[str], spec: UsageProfile) -> float:
        """The utilisation of the device known by ``keys`` (the first that is set wins; ``"*"`` last)."""
        with self._lock:
            self._check()
            return self._utilization(keys, spec)

    def reading(self, keys: Sequence[str], spec: UsageProfile) -> FakeReading:
        """Utilisation, power and the energy counter of the device known by ``keys`` (its meter is the first
        key's) now; advances its meter."""
        with self._lock:
            self._check()
            util = self._utilization(keys, spec)
            now = self._clock()
            watts = spec.watts(util)
            meter = self._meters.get(keys[0])
            joules = 0.0 if meter is None else meter.joules + meter.watts * max(0.0, now - meter.at)
            self._meters[keys[0]] = _Meter(now, joules, watts)
            return FakeReading(joules, watts, util)

    def _utilization(self, keys: Sequence[str], spec: UsageProfile) -> float:
        for source in (self._set, self._from_file):
            for key in (*keys, ALL):
                value = source.get(key)
                if value is not None:
                    return value
        return spec.utilization

    def _check(self, *, force: bool = False) -> None:
        if self._file is None:
            return
        now = self._clock()
        if not force and now - self._checked < _CHECK_S:
            return
        self._checked = now
        try:
            st = os.stat(self._file)
        except OSError:
            self._seen, self._from_file = None, {}
            return
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._seen:
            return
        self._seen = seen
        try:
            self._from_file = parse_usage_file(self._file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            log.warning("mock usage file %s not used (%s); the utilisation stays as it was", self._file, err)


def memory_used(total: int, idle_used: int, utilization: float) -> int:
    """Bytes in use: the idle figure plus :data:`MEMORY_AT_FULL` of the rest at full utilisation."""
    idle_used = min(max(idle_used, 0), total)
    return idle_used + int((total - idle_used) * MEMORY_AT_FULL * utilization)


def parse_usage_file(text: str) -> dict[str, float]:
    """``{"utilization": {KEY: u}}`` -> ``{KEY: u}``; ValueError says what is wrong."""
    raw = json.loads(text)
    values = raw.get("utilization") if isinstance(raw, dict) else None
    if not isinstance(values, dict):
        raise ValueError('expected {"utilization": {KEY: number from 0 to 1}}')
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise ValueError(f"utilization[{key!r}]: expected a number from 0 to 1, got {value!r}")
        out[str(key)] = float(value)
    return out


def write_usage_file(path: Path, utilization: Mapping[str, float]) -> None:
    """Write the usage file atomically (what a test or the demo does to make mock GPUs busy)."""
    text = json.dumps({"utilization": dict(utilization)}, indent=2, sort_keys=True)
    parse_usage_file(text)  # the same checks the reader makes
    atomic_write(str(path), (text + "\n").encode(), durable=False)
