"""Discovery timed in-process: ``backend.discover()`` on a freshly opened mock backend, as at plugin start.

The MIG row measures the heaviest discovery static MIG can present: at least 8 GPUs, every one MIG-enabled
and carved into as many GPU instances as its model holds at once (H100 80GB: 7 x 1g.10gb, every 1g.10gb
placement occupied; 56 MIG devices on a DGX H100). gpudra publishes the MIG devices that exist, never the
placements that could exist, so no node shows more. The per-GPU maximum comes from the profile's
GPU-instance profile table (the largest ``instanceCount``), not from a constant.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any, Final

from benchlib.stats import latency_ms
from gpudra.model.inventory import Device, DeviceKind, Inventory
from gpudra.vendors.mock.profile import ProfileError, load_profile
from gpudra.vendors.select import open_driver

#: The built-in profile the MIG row measures unless ``--mig-profile`` names another.
DEFAULT_MIG_PROFILE: Final = "dgx-h100-mig-all"
#: A DGX/HGX node: the row is about 8 fully carved GPUs.
MIN_GPUS: Final = 8
_SHOWN_SHORTFALLS: Final = 3


def _timed(profile: str, runs: int) -> tuple[dict[str, Any], Inventory]:
    samples: list[float] = []
    inv = None
    for _ in range(runs):
        backend = open_driver("mock", profile, Path("/sys"))
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


def mig_maxima(profile: str) -> dict[str, int]:
    """GPU UUID -> the most GPU instances its model holds at once: the largest ``instanceCount`` in the
    GPU's GPU-instance profile table (7, of 1g.10gb, on an H100 80GB). GPUs without a table are left out;
    a profile that is not an NVML profile (an AMD one) gives an empty mapping."""
    try:
        node = load_profile(profile)
    except ProfileError:
        return {}
    return {
        d.uuid: max(row.values["instanceCount"] for row in d.gpu_instance_profiles)
        for d in node.devices
        if d.uuid is not None and d.gpu_instance_profiles
    }


def _gpu_instances(inv: Inventory, gpus: list[Device]) -> dict[str, int]:
    """GPU UUID -> distinct GPU instances among its MIG devices (a GI split into several CIs counts once)."""
    seen = {(d.parent_uuid, d.mig.gi_id) for d in inv.devices if d.kind == DeviceKind.MIG and d.mig}
    return {gpu.uuid: sum(1 for parent, _ in seen if parent == gpu.uuid) for gpu in gpus}


def _shortfall(gpu: Device, instances: int, most: int | None) -> str | None:
    if not gpu.mig_enabled:
        return f"GPU {gpu.index}: MIG disabled"
    if most is None:
        return f"GPU {gpu.index}: MIG maximum unknown (no GPU-instance profile table)"
    if instances < most:
        return f"GPU {gpu.index}: {instances} of {most} GPU instances"
    return None


def why_not_full_mig(inv: Inventory, maxima: dict[str, int]) -> str | None:
    """Why ``inv`` is not >= 8 GPUs all carved to their maximum GPU-instance count; None when it is."""
    gpus = [d for d in inv.devices if d.kind == DeviceKind.GPU]
    if len(gpus) < MIN_GPUS:
        return f"{len(gpus)} GPU(s); the row needs >= {MIN_GPUS}"
    instances = _gpu_instances(inv, gpus)
    short = [s for g in gpus if (s := _shortfall(g, instances[g.uuid], maxima.get(g.uuid))) is not None]
    if not short:
        return None
    shown = "; ".join(short[:_SHOWN_SHORTFALLS]) + ("; ..." if len(short) > _SHOWN_SHORTFALLS else "")
    return f"{len(short)} of {len(gpus)} GPUs not fully MIG-partitioned ({shown})"


def _mig_per_gpu(inv: Inventory) -> list[int]:
    per_gpu = {d.uuid: 0 for d in inv.devices if d.kind == DeviceKind.GPU}
    for d in inv.devices:
        if d.kind == DeviceKind.MIG and d.parent_uuid in per_gpu:
            per_gpu[d.parent_uuid] += 1
    return sorted(per_gpu.values(), reverse=True)


def mig_discovery(profile: str | None, runs: int) -> dict[str, Any]:
    """The "8 GPUs with every MIG placement" row: discovery of ``profile`` (default
    :data:`DEFAULT_MIG_PROFILE`), measurable only when its inventory has >= 8 GPUs, each MIG-enabled and
    holding its model's maximum number of GPU instances; otherwise the result says why not."""
    name = profile or DEFAULT_MIG_PROFILE
    result, inv = _timed(name, runs)
    maxima = mig_maxima(name)
    shape = {
        **result,
        "mig_devices_per_gpu": _mig_per_gpu(inv),
        "max_gpu_instances_per_gpu": sorted(set(maxima.values())),
    }
    why = why_not_full_mig(inv, maxima)
    if why is None:
        return {"measurable": True, **shape}
    return {"measurable": False, "why": f"{name}: {why}", "profiles_tried": [shape]}
