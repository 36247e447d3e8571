"""The kubelet's side: prepare/unprepare calls over the real DRA socket, in the shapes the budget names."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchlib import claims as bc
from benchlib.stats import latency_ms, throughput, trend_ms
from gpudra.devtools import kubeletsim

Answers = dict[str, Any]
Call = Callable[[Sequence[bc.BenchClaim]], tuple[Answers, float]]


class Kubelet:
    """One gRPC channel to the plugin's DRA socket (as the kubelet keeps one), counting every call."""

    def __init__(self, endpoint: str) -> None:
        self.client = kubeletsim.DraClient(endpoint, "v1")
        self.calls = 0
        self._lock = threading.Lock()

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def prepare(self, claims: Sequence[bc.BenchClaim]) -> tuple[Answers, float]:
        t0 = time.perf_counter()
        resp = self.client.prepare([c.claim for c in claims])
        took = time.perf_counter() - t0
        self._count()
        return dict(resp.claims), took

    def unprepare(self, claims: Sequence[bc.BenchClaim]) -> tuple[Answers, float]:
        t0 = time.perf_counter()
        resp = self.client.unprepare([c.claim for c in claims])
        took = time.perf_counter() - t0
        self._count()
        return dict(resp.claims), took

    def close(self) -> None:
        self.client.close()


@dataclass(frozen=True, slots=True)
class Shape:
    """How a phase calls: ``per_call`` claims in each call, ``in_flight`` calls at once."""

    name: str
    per_call: int
    in_flight: int


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (all its threads), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed_cpu(
    fn: Callable[[], tuple[float, list[float], Answers]], pids: Mapping[str, int], claims: int
) -> tuple[tuple[float, list[float], Answers], dict[str, float]]:
    """``fn()`` and the CPU milliseconds per claim it cost each process in ``pids`` and this one (the
    kubelet's side, "client"). At 100 Hz clock ticks, a 200-claim phase resolves ~0.05 ms per claim."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    own = _own_cpu()
    out = fn()
    per_claim = {name: (cpu_seconds(pid) - before[name]) * 1000 / claims for name, pid in pids.items()}
    per_claim["client"] = (_own_cpu() - own) * 1000 / claims
    return out, {k: round(v, 3) for k, v in per_claim.items()}


def run_calls(
    call: Call, claims: Sequence[bc.BenchClaim], shape: Shape
) -> tuple[float, list[float], Answers]:
    """All of ``claims`` through ``call``; returns (wall seconds, per-call seconds, merged answers)."""
    batches = [claims[i : i + shape.per_call] for i in range(0, len(claims), shape.per_call)]
    t0 = time.perf_counter()
    if shape.in_flight == 1:
        results = [call(b) for b in batches]
    else:
        with ThreadPoolExecutor(shape.in_flight) as pool:
            results = list(pool.map(call, batches))
    wall = time.perf_counter() - t0
    answers: Answers = {}
    for got, _ in results:
        answers.update(got)
    return wall, [took for _, took in results], answers


def claim_phase(
    kubelet: Kubelet,
    claims: Sequence[bc.BenchClaim],
    shape: Shape,
    *,
    node: str,
    cdi_root: Path,
    v: bc.Validation,
    pids: Mapping[str, int] | None = None,
) -> dict[str, Any]:
    """Prepare every claim (all held at once), check the answers and the specs on disk, then unprepare all.
    With ``pids`` (name -> pid: the plugin, the API server), also the CPU each spent per claim."""
    n, who = len(claims), pids or {}
    (wall, lat, answers), cpu = timed_cpu(lambda: run_calls(kubelet.prepare, claims, shape), who, n)
    bc.check_prepared(v, answers, claims, node)
    bc.check_specs(v, answers, claims, cdi_root)
    (u_wall, u_lat, u_answers), u_cpu = timed_cpu(lambda: run_calls(kubelet.unprepare, claims, shape), who, n)
    bc.check_unprepared(v, u_answers, claims, cdi_root)
    return {
        "claims_per_call": shape.per_call,
        "calls_in_flight": shape.in_flight,
        "prepare": {**latency_ms(lat), **throughput(n, wall), **trend_ms(lat), "cpu_ms_per_claim": cpu},
        "unprepare": {
            **latency_ms(u_lat),
            **throughput(n, u_wall),
            **trend_ms(u_lat),
            "cpu_ms_per_claim": u_cpu,
        },
    }
