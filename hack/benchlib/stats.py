"""Latency summaries: nearest-rank percentiles over every sample (no interpolation, no outlier removal)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def nearest_rank(values: Sequence[float], pct: float) -> float:
    """The ``pct``-th percentile by the nearest-rank method: the smallest sample >= pct% of all samples."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def latency_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """n, p50/p90/p99, min, max and mean of samples given in seconds, reported in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(nearest_rank(ms, 50), 3),
        "p90_ms": round(nearest_rank(ms, 90), 3),
        "p99_ms": round(nearest_rank(ms, 99), 3),
        "min_ms": round(min(ms), 3),
        "max_ms": round(max(ms), 3),
        "mean_ms": round(sum(ms) / len(ms), 3),
    }


def throughput(claims: int, wall_s: float) -> dict[str, Any]:
    """Claims per second over the wall time of a whole phase."""
    return {"claims": claims, "wall_s": round(wall_s, 4), "claims_per_s": round(claims / wall_s, 1)}


def trend_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """Mean of the first and the last tenth of the calls: does a call get slower as claims pile up?"""
    tenth = max(1, len(seconds) // 10)
    first, last = seconds[:tenth], seconds[-tenth:]
    return {
        "first_tenth_mean_ms": round(1000 * sum(first) / len(first), 3),
        "last_tenth_mean_ms": round(1000 * sum(last) / len(last), 3),
    }
