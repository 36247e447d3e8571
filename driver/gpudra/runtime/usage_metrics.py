"""The usage metrics as Prometheus sees them: a collector that renders the sampler's latest snapshot.

The series exist exactly as long as the snapshot has them, so a claim's disappear with the first sample after
it is unprepared, and their number is bounded by devices x claims holding them. Device series are labelled
``device`` (the published name), ``uuid``, ``vendor`` and ``type``; a claim's series add ``namespace``,
``claim``, ``claim_uid`` and ``pods``. A value the hardware does not report for a device has no sample
(a MIG device has no power). docs/metrics.md describes each metric.

prometheus_client is imported by the caller (only with metrics on); this module imports it lazily too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from gpudra.model.usage import DeviceUsage
from gpudra.planning.usage import DeviceSeries, HolderSeries, UsageSnapshot

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

DEVICE_LABELS: Final = ("device", "uuid", "vendor", "type")
HOLDER_LABELS: Final = (*DEVICE_LABELS, "namespace", "claim", "claim_uid", "pods")

#: (metric suffix, help, the reading's value): the gauges every device and every holder gets.
_GAUGES: Final[tuple[tuple[str, str, Callable[[DeviceUsage], float | int | None]], ...]] = (
    ("power_watts", "Power drawn now, in watts (GPUs only: NVML and amdsmi report it per GPU)",
     lambda u: u.power_watts),
    ("utilization_ratio", "Fraction of the last sample period the device was busy (0-1; none with MIG on)",
     lambda u: u.utilization),
    ("memory_used_bytes", "Device memory in use, in bytes", lambda u: u.memory_used_bytes),
    ("memory_total_bytes", "Device memory as the library counts it, in bytes",
     lambda u: u.memory_total_bytes),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class SamplerStats:
    samples: int = 0
    cpu_seconds: float = 0.0  # the sampler thread's CPU time, all samples
    last_seconds: float = 0.0  # wall time of the last sample
    devices: int = 0  # devices read by the last sample


class UsageCollector:
    """Register with ``prometheus_client.REGISTRY.register``; :meth:`update` from the sampler thread."""

    def __init__(self) -> None:
        self._snapshot = UsageSnapshot()
        self._stats = SamplerStats()

    def update(self, snapshot: UsageSnapshot, stats: SamplerStats) -> None:
        self._snapshot, self._stats = snapshot, stats  # replaced whole, never changed: a scrape reads one

    def describe(self) -> list[Metric]:
        return []  # the series change with every sample: the registry must not collect to describe them

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshot, stats = self._snapshot, self._stats
        for suffix, text, value in _GAUGES:
            device = GaugeMetricFamily(f"gpudra_device_{suffix}", text, labels=DEVICE_LABELS)
            _add(device, ((_device_labels(d), value(d.usage)) for d in snapshot.devices))
            yield device
            claim = GaugeMetricFamily(f"gpudra_claim_{suffix}", f"{text}, of a device the claim holds",
                                      labels=HOLDER_LABELS)  # fmt: skip
            _add(claim, ((_holder_labels(h), value(h.device.usage)) for h in snapshot.holders))
            yield claim
        energy = CounterMetricFamily(
            "gpudra_device_energy_joules",
            "Energy the GPU used since its driver loaded, in joules (GPUs only)",
            labels=DEVICE_LABELS,
        )
        _add(energy, ((_device_labels(d), d.usage.energy_joules) for d in snapshot.devices))
        yield energy
        claimed = CounterMetricFamily(
            "gpudra_claim_energy_joules",
            "Energy of the device's GPU attributed to the claim since it was seen holding the device, in "
            "joules (a GPU's energy is split by device share and among the claims sharing a device)",
            labels=HOLDER_LABELS,
        )
        _add(claimed, ((_holder_labels(h), h.energy_joules) for h in snapshot.holders))
        yield claimed
        gpus = GaugeMetricFamily(
            "gpudra_claim_gpus",
            "GPUs the claim holds through the device: 1 for a whole GPU, the share of its GPU for a MIG "
            "device or partition, divided among the claims sharing the device",
            labels=HOLDER_LABELS,
        )
        _add(gpus, ((_holder_labels(h), h.gpu_fraction) for h in snapshot.holders))
        yield gpus
        yield from _sampler(stats)


def _sampler(stats: SamplerStats) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield CounterMetricFamily("gpudra_usage_samples", "Usage samples taken", value=stats.samples)
    yield CounterMetricFamily(
        "gpudra_usage_sampler_cpu_seconds", "CPU time the usage sampler thread used", value=stats.cpu_seconds
    )
    yield GaugeMetricFamily(
        "gpudra_usage_sample_duration_seconds", "Wall time of the last usage sample", value=stats.last_seconds
    )
    yield GaugeMetricFamily(
        "gpudra_usage_devices_read", "Devices the last usage sample read", value=stats.devices
    )


def _add(family: Any, samples: Iterator[tuple[list[str], float | int | None]]) -> None:
    for labels, value in samples:
        if value is not None:
            family.add_metric(labels, value)


def _device_labels(d: DeviceSeries) -> list[str]:
    i = d.info
    return [i.name, i.uuid, i.vendor, i.kind]


def _holder_labels(h: HolderSeries) -> list[str]:
    c = h.holding
    return [*_device_labels(h.device), c.namespace, c.claim, c.claim_uid, ",".join(c.pods)]
