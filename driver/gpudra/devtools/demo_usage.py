"""The demo's usage step: the prepared claim's GPU made busy, its per-claim metrics scraped over HTTP.

While the demo claim is prepared, the mock GPU it holds is made 70 % busy through the mock's usage file in
the run dir (what a workload would do), and the plugin's /metrics is scraped until the claim's energy has
risen twice; the device's power and utilisation and the claim's energy and GPU share are printed. After
unprepare, the claim's series must be gone. Every wait is bounded; a step that does not happen is a
:class:`~gpudra.devtools.demo.DemoError`.
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Final

from prometheus_client.parser import text_string_to_metric_families

from gpudra.runtime.config import RunConfig
from gpudra.vendors.mock.fake_usage import USAGE_FILE, write_usage_file

BUSY: Final = 0.7
INTERVAL_S: Final = 0.2
Series = dict[str, dict[tuple[tuple[str, str], ...], float]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def make_busy(cfg: RunConfig, uuid: str) -> Path:
    """Make the mock GPU ``uuid`` busy; the usage file written."""
    path = cfg.effective_run_dir / USAGE_FILE
    write_usage_file(path, {uuid: BUSY})
    return path


def scrape(port: int) -> Series:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: Series = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def of_claim(series: Series, name: str, uid: str) -> float | None:
    return next((v for labels, v in series.get(name, {}).items() if ("claim_uid", uid) in labels), None)


def wait_scrape(port: int, check: Callable[[Series], bool], what: str, error: type[Exception]) -> Series:
    deadline = time.monotonic() + 10
    while True:
        series = scrape(port)
        if check(series):
            return series
        if time.monotonic() > deadline:
            raise error(f"{what} did not happen within 10 s")
        time.sleep(0.05)


def show(port: int, uid: str, error: type[Exception]) -> list[str]:
    """Lines describing the claim's usage once its energy rose twice (its attribution starts at 0)."""
    def energy(s: Series) -> float:
        return of_claim(s, "gpudra_claim_energy_joules_total", uid) or 0.0

    busy = wait_scrape(port, lambda s: of_claim(s, "gpudra_claim_utilization_ratio", uid) == BUSY,
                       "the claim's utilisation series", error)  # fmt: skip
    first = wait_scrape(port, lambda s: energy(s) > energy(busy), "a rise of the claim's energy", error)
    last = wait_scrape(port, lambda s: energy(s) > energy(first), "a second rise of its energy", error)
    power = of_claim(last, "gpudra_claim_power_watts", uid) or 0.0
    labels = next(k for k in last["gpudra_claim_energy_joules_total"] if ("claim_uid", uid) in k)
    named = dict(labels)
    return [
        f"    device {named['device']} ({named['type']}, {named['vendor']}), pods: {named['pods'] or '-'}",
        f"    power {power:.0f} W, utilisation {BUSY:.0%} (the mock's model: 60 W idle to 400 W busy)",
        f"    energy attributed to {named['namespace']}/{named['claim']}: {energy(first):.1f} J, then "
        f"{energy(last):.1f} J; GPUs held: {of_claim(last, 'gpudra_claim_gpus', uid):g}",
        f"    sampler: {last['gpudra_usage_devices_read'][()]:.0f} devices per sample, "
        f"{last['gpudra_usage_sample_duration_seconds'][()] * 1000:.1f} ms for the last one",
    ]


def wait_gone(port: int, uid: str, error: type[Exception]) -> None:
    def gone(series: Series) -> bool:
        return not any(("claim_uid", uid) in labels for values in series.values() for labels in values)

    wait_scrape(port, gone, "the removal of the claim's usage series", error)
