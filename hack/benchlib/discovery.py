"""Discovery timed in-process: ``backend.discover()`` on a freshly opened mock backend, as at plugin start."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

from benchlib.stats import latency_ms
from gpudra.backends.profile import builtin_profile_names
from gpudra.backends.select import open_backend
from gpudra.inventory import DeviceKind, Inventory

#: An H100 can hold at most 7 MIG devices at once; more than that under one GPU means the backend lists
#: possible placements, not only the instances that exist.
MAX_MIG_INSTANCES_PER_GPU = 7


def _timed(profile: str, runs: int) -> tuple[dict[str, Any], Inventory]:
    samples: list[float] = []
    inv = None
    for _ in range(runs):
        backend = open_backend("mock", profile, Path("/sys"))
        try:
            t0 = time.perf_counter()
            inv = backend.discover()
            samples.append(time.perf_counter() - t0)
        finally:
            backend.close()
    assert inv is not None
    kinds = Counter(d.kind.value for d in inv.devices)
    return {
        "profile": profile,
        "devices": len(inv.devices),
        "by_type": dict(kinds),
        **latency_ms(samples),
    }, inv


def time_discovery(profile: str, runs: int) -> dict[str, Any]:
    return _timed(profile, runs)[0]


def _mig_per_gpu(inv: Inventory) -> dict[str, int]:
    per_gpu = {d.uuid: 0 for d in inv.devices if d.kind == DeviceKind.GPU}
    for d in inv.devices:
        if d.kind == DeviceKind.MIG and d.parent_uuid in per_gpu:
            per_gpu[d.parent_uuid] += 1
    return per_gpu


def mig_discovery(profile: str | None, runs: int) -> dict[str, Any]:
    """The "8 GPUs with every MIG placement enumerated" row: measured only on a profile whose inventory has
    >= 8 GPUs, each with more MIG devices than can exist at once (so placements are enumerated)."""
    candidates = [profile] if profile else [p for p in builtin_profile_names() if "mig" in p.lower()]
    seen = []
    for name in candidates:
        result, inv = _timed(name, runs)
        per_gpu = _mig_per_gpu(inv)
        seen.append({**result, "mig_devices_per_gpu": sorted(per_gpu.values(), reverse=True)})
        if len(per_gpu) >= 8 and min(per_gpu.values()) > MAX_MIG_INSTANCES_PER_GPU:
            return {"measurable": True, **seen[-1]}
    shapes = "; ".join(f"{s['profile']}: MIG devices per GPU {s['mig_devices_per_gpu']}" for s in seen)
    why = "no mock profile enumerates every MIG placement on 8 GPUs" + (f" ({shapes})" if shapes else "")
    return {"measurable": False, "why": why, "profiles_tried": seen}
