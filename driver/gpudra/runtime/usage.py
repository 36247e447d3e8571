"""The usage sampler: a thread that reads every device's usage each ``--usage-interval`` and updates the
per-device and per-claim usage metrics (docs/metrics.md).

Each sample, in the sampler's own thread and never on the prepare path: the published devices from the node
state, the prepared claims from the checkpoint (read under its shared lock, changed never), the pods prepare
saw reserving them (:mod:`gpudra.runtime.claimpods`), one reading per device from the vendor driver
(:class:`~gpudra.vendors.base.UsageReader`), then the pure attribution (:mod:`gpudra.planning.usage`),
whose snapshot the Prometheus collector (:mod:`gpudra.runtime.usage_metrics`) serves until the next sample.
The first sample is taken one interval after start, so start-up and the first prepares do not wait on it.

A sample that fails (the checkpoint unreadable, a bug) is skipped with one log line per distinct failure;
the series keep their last values until a sample succeeds. :meth:`UsageSampler.stop` does not wait: a sample
in flight ends on its own (the thread is a daemon).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

from gpudra.model.inventory import Device
from gpudra.planning import usage
from gpudra.planning.usage import Holding, Ledger, UsageSnapshot
from gpudra.runtime.claimpods import ClaimPods
from gpudra.runtime.usage_metrics import SamplerStats, UsageCollector
from gpudra.state.checkpoint import PREPARE_COMPLETED, ClaimRecord
from gpudra.state.node import NodeStateStore
from gpudra.vendors.base import UsageReader

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_S: Final = 10.0

Sink = Callable[[UsageSnapshot, SamplerStats], None]


class UsageSampler:
    """Samples ``reader`` for the devices of ``node`` and the claims ``prepared()`` returns (claim UID ->
    record), handing each snapshot to ``sink``."""

    def __init__(
        self,
        reader: UsageReader,
        node: NodeStateStore,
        prepared: Callable[[], Mapping[str, ClaimRecord]],
        pods: ClaimPods,
        sink: Sink,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
    ) -> None:
        self._reader = reader
        self._node = node
        self._prepared = prepared
        self._pods = pods
        self._sink = sink
        self.interval_s = interval_s
        self._ledger = Ledger()
        self._stats = SamplerStats()
        self._stop = threading.Event()
        self._failed: str | None = None  # the last failure logged (one line per distinct failure)

    def start(self) -> None:
        threading.Thread(target=self._run, name="usage-sampler", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()

    def sample(self) -> UsageSnapshot:
        """One sample now (the sampler's thread; tests and benchmarks call it directly)."""
        t0, cpu0 = time.monotonic(), time.thread_time()
        offer = self._node.current.offer
        records = self._prepared()
        held = holdings(records, offer.devices, self._pods)
        infos = usage.describe(offer.devices, held)
        readings = self._reader.read_usage(infos.keys())
        snapshot, self._ledger = usage.step(self._ledger, infos, held, readings)
        self._pods.keep(records.keys())
        self._stats = SamplerStats(
            samples=self._stats.samples + 1,
            cpu_seconds=self._stats.cpu_seconds + time.thread_time() - cpu0,
            last_seconds=time.monotonic() - t0,
            devices=len(readings),
        )
        self._sink(snapshot, self._stats)
        return snapshot

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.sample()
            except Exception as e:  # a sample is never worth the thread: the next one may work
                text = f"{type(e).__name__}: {e}"
                if text != self._failed:
                    self._failed = text
                    log.warning("usage sample failed (%s); the usage metrics keep their last values", text)
            else:
                if self._failed is not None:
                    log.info("usage samples work again")
                    self._failed = None


def holdings(
    records: Mapping[str, ClaimRecord], published: Mapping[str, Device], pods: ClaimPods
) -> list[Holding]:
    """The published devices completed prepares hold, once per claim and device, by UUID: a MIG device the
    claim's prepare created by the one its recorded change holds."""
    out: list[Holding] = []
    for rec in records.values():
        if rec.state != PREPARE_COMPLETED:
            continue
        reserved = pods.pods(rec.uid)
        seen: set[str] = set()
        for d in rec.devices:
            dev = published.get(d.device)
            if dev is None or d.device in seen:
                continue
            seen.add(d.device)
            made = (c.get("uuid") for c in rec.applied.changes if c.device == d.device)
            uuid = next((u for u in made if isinstance(u, str) and u), dev.uuid)
            if uuid:  # empty: a MIG device whose creation is not recorded (yet)
                out.append(Holding(rec.namespace, rec.name, rec.uid, d.device, uuid,
                                   admin_access=d.admin_access, pods=reserved))  # fmt: skip
    return out


def serve_usage(
    reader: UsageReader,
    node: NodeStateStore,
    prepared: Callable[[], Mapping[str, ClaimRecord]],
    pods: ClaimPods,
    interval_s: float,
) -> UsageSampler:
    """Register the usage collector with prometheus_client's default registry (metrics are on) and start
    the sampler."""
    import prometheus_client

    collector = UsageCollector()
    prometheus_client.REGISTRY.register(collector)
    sampler = UsageSampler(reader, node, prepared, pods, collector.update, interval_s=interval_s)
    sampler.start()
    log.info("usage metrics: sampling every %g s", interval_s)
    return sampler
