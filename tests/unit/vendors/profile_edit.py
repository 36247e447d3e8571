"""A running mock's profile file, edited the way an admin (or an integration test) changes its hardware."""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .helpers import builtin_json

Json = dict[str, Any]


class ProfileFileEditor:
    """A profile JSON file: starts as a built-in profile, then each edit rewrites it whole (as editors do)."""

    def __init__(self, path: Path, data: Json) -> None:
        self.path = path
        self.original = copy.deepcopy(data)
        self._data = copy.deepcopy(data)
        self._mtime_ns = 0
        self.write_text(json.dumps(data, indent=1))

    @classmethod
    def builtin(cls, name: str, folder: Path) -> ProfileFileEditor:
        """A copy of built-in profile ``name`` in ``folder/<name>.json``."""
        return cls(folder / f"{name}.json", builtin_json(name))

    @property
    def data(self) -> Json:
        """The JSON the file holds now (a copy)."""
        return copy.deepcopy(self._data)

    def edit(self, change: Callable[[Json], None]) -> None:
        """Apply ``change`` to the file's JSON and write it."""
        data = self.data
        change(data)
        self._data = data
        self.write_text(json.dumps(data, indent=1))

    def restore(self) -> None:
        """Write the profile the file started as."""
        self._data = copy.deepcopy(self.original)
        self.write_text(json.dumps(self._data, indent=1))

    def write_text(self, text: str) -> None:
        """Replace the file with ``text`` (written aside, renamed over it), with a newer modification time
        than any before even when two writes fall within one file-system timestamp tick."""
        aside = self.path.with_name(f".{self.path.name}.new")
        aside.write_text(text, encoding="utf-8")
        self._mtime_ns = max(time.time_ns(), self._mtime_ns + 1_000_000)
        os.utime(aside, ns=(self._mtime_ns, self._mtime_ns))
        os.replace(aside, self.path)


def gi_profile_row(device: Json, name: str) -> Json:
    """The row of a GPU's own GPU-instance profile table named ``name`` ("MIG 1g.10gb")."""
    rows = [r for r in device["gpu_instance_profiles"] if r["name"] == name]
    assert len(rows) == 1, f"{name!r} is not in this GPU's table"
    return dict(rows[0])


def mig_device(row: Json, uuid: str, gi_id: int, placement: tuple[int, int], ci_profile_id: int) -> Json:
    """A MIG device of GPU-instance profile ``row`` at memory-slice ``placement`` (start, size), holding one
    compute instance spanning it (id 0, CI profile ``ci_profile_id``), with the values that row implies."""
    slices = row["sliceCount"]
    start, size = placement
    return {
        "uuid": uuid,
        "memory_bytes": row["memorySizeMB"] << 20,
        "gpu_instance": {"id": gi_id, "profile_id": row["id"], "placement": {"start": start, "size": size}},
        "compute_instance": {"id": 0, "profile_id": ci_profile_id, "placement": {"start": 0, "size": slices}},
        "attributes": {
            "multiprocessorCount": row["multiprocessorCount"],
            "sharedCopyEngineCount": row["copyEngineCount"], "sharedDecoderCount": row["decoderCount"],
            "sharedEncoderCount": row["encoderCount"], "sharedJpegCount": row["jpegCount"],
            "sharedOfaCount": row["ofaCount"],
            "gpuInstanceSliceCount": slices, "computeInstanceSliceCount": slices,
            "memorySizeMB": row["memorySizeMB"],
        },
    }  # fmt: skip
