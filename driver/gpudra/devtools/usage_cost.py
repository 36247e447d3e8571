"""What a usage sample costs: ``python -m gpudra.devtools.usage_cost [--samples N]``.

For each mock profile, the usage sampler (:class:`gpudra.runtime.usage.UsageSampler`) runs ``N`` samples in
a loop over the real vendor driver on the fake library, with one claim holding each of up to 8 devices, and
``time.process_time`` measures the CPU they take (this process does nothing else meanwhile). Printed: CPU per
sample and per device read per sample, and the share of it spent inside the fakes (``cProfile`` over a
separate run, time in ``gpudra.vendors.mock``), which a real library does not cost in Python but replaces
with its own call time. docs/metrics.md has the numbers.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

from gpudra.planning.offer import plan_offer
from gpudra.planning.usage import UsageSnapshot
from gpudra.runtime.claimpods import ClaimPods
from gpudra.runtime.usage import UsageSampler
from gpudra.runtime.usage_metrics import SamplerStats
from gpudra.state.checkpoint import ClaimRecord, PreparedDevice
from gpudra.state.node import NodeStateStore
from gpudra.vendors.mock.driver import open_mock_profile

PROFILES = ("dgx-h100", "dgx-h100-mig-all", "mi300x-8-spx-nps1", "mi300x-8-cpx-nps4")


def _sampler(profile: str, root: Path) -> tuple[UsageSampler, int]:
    driver = open_mock_profile(profile, root / "claims")
    node = NodeStateStore(plan_offer(driver.discover()))
    records = {}
    for i, name in enumerate(list(node.current.offer.devices)[:8]):
        uid = f"00000000-0000-4000-8000-{i:012d}"
        device = PreparedDevice("gpu", "node", name, (f"k8s.gpudra.io/claim={uid}-{name}",))
        records[uid] = ClaimRecord(uid, "bench", f"claim-{i}", "PrepareCompleted", (device,), None)

    def sink(snapshot: UsageSnapshot, stats: SamplerStats) -> None:
        return None

    sampler = UsageSampler(driver, node, lambda: records, ClaimPods(), sink)
    devices = len(sampler.sample().devices)
    return sampler, devices


def measure(profile: str, samples: int) -> tuple[float, int, float]:
    """(CPU seconds per sample, devices read per sample, share of the CPU inside the fakes)."""
    with tempfile.TemporaryDirectory(prefix="gpudra-usage-cost-") as tmp:
        sampler, devices = _sampler(profile, Path(tmp))
        for _ in range(max(1, samples // 20)):  # warm up (imports, caches)
            sampler.sample()
        t0 = time.process_time()
        for _ in range(samples):
            sampler.sample()
        per_sample = (time.process_time() - t0) / samples
        profiler = cProfile.Profile()
        profiler.enable()
        for _ in range(max(1, samples // 4)):
            sampler.sample()
        profiler.disable()
    stats = pstats.Stats(profiler)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())
    fake = sum(tt for (file, _, _), (_, _, tt, _, _) in entries.items() if "/vendors/mock/" in file)
    return per_sample, devices, fake / total if total else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=2000)
    args = parser.parse_args()
    print(f"{'profile':<22}{'devices':>8}{'CPU/sample':>14}{'CPU/device/sample':>20}{'in the fakes':>14}")
    for profile in PROFILES:
        per_sample, devices, fake = measure(profile, args.samples)
        per_device = per_sample / devices if devices else 0.0
        cost = f"{per_sample * 1e3:>11.3f} ms{per_device * 1e6:>17.1f} us"
        print(f"{profile:<22}{devices:>8}{cost}{fake:>13.0%}")


if __name__ == "__main__":
    main()
