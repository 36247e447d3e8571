"""Prometheus metrics, served on ``--metrics-address``:``--metrics-port`` (off by default; loopback unless an
address is given, see :mod:`gpudra.runtime.config`).

prometheus-client is imported only when metrics are enabled: it costs ~14 MiB of RSS, which the plugin does
not pay when nobody scrapes it. With metrics off every call goes to :class:`NullMetrics`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from gpudra import __version__

log = logging.getLogger(__name__)

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics(Protocol):
    def call(self, method: str, seconds: float, ok: bool) -> None:
        """One gRPC call (NodePrepareResources / NodeUnprepareResources) and whether it completed."""

    def claims(self, method: str, succeeded: int, failed: int) -> None:
        """Per-claim outcomes inside one call."""

    def claim_error(self, method: str, kind: str) -> None:
        """One claim failed, by a short stable kind (not_found, uid_mismatch, device_in_use, ...)."""

    def prepared_devices(self, by_type: Mapping[str, int]) -> None:
        """Devices held by prepared claims now, by type (gpu, mig, partition)."""

    def slices_published(self, generation: int) -> None: ...

    def discovery(self, seconds: float, devices: Mapping[tuple[str, str], int]) -> None:
        """A discovery pass: its duration and the devices it found by (vendor, type)."""

    def publish_failed(self, reason: str) -> None:
        """Publishing the ResourceSlices failed once (``api``: the API server refused or did not answer;
        ``unexpected``: anything else); it is retried."""

    def mig_management(self, dynamic: bool, dynamic_gpus: int) -> None:
        """The MIG management in effect (dynamic, or static after a fall-back) and the GPUs it partitions."""

    def health_transition(self, device: str, before: str, after: str) -> None:
        """A published device's health changed (Healthy, Unhealthy, Unknown)."""

    def devices_by_health(self, counts: Mapping[str, int]) -> None:
        """Published devices by health state now."""

    def taints_kept(self, kept: bool) -> None:
        """Whether the API server keeps device taints (False: its DRADeviceTaints gate is off)."""

    def fractional_gpus(self, enabled: bool, shared_devices: int) -> None:
        """Whether devices are published for sharing (False: off, or fallen back) and how many are."""


class NullMetrics:
    def call(self, method: str, seconds: float, ok: bool) -> None:
        return None

    def claims(self, method: str, succeeded: int, failed: int) -> None:
        return None

    def claim_error(self, method: str, kind: str) -> None:
        return None

    def prepared_devices(self, by_type: Mapping[str, int]) -> None:
        return None

    def slices_published(self, generation: int) -> None:
        return None

    def discovery(self, seconds: float, devices: Mapping[tuple[str, str], int]) -> None:
        return None

    def publish_failed(self, reason: str) -> None:
        return None

    def mig_management(self, dynamic: bool, dynamic_gpus: int) -> None:
        return None

    def health_transition(self, device: str, before: str, after: str) -> None:
        return None

    def devices_by_health(self, counts: Mapping[str, int]) -> None:
        return None

    def taints_kept(self, kept: bool) -> None:
        return None

    def fractional_gpus(self, enabled: bool, shared_devices: int) -> None:
        return None


class PrometheusMetrics:
    def __init__(self, port: int, addr: str = "127.0.0.1") -> None:
        """Raises OSError when ``addr:port`` cannot be bound."""
        import prometheus_client as prom

        # No *_created series: one more series per counter, with a start time nobody queries.
        prom.disable_created_metrics()  # type: ignore[no-untyped-call]

        self._calls = prom.Histogram(
            "gpudra_grpc_call_duration_seconds",
            "Duration of kubelet calls by method and result",
            ["method", "result"],
            buckets=_BUCKETS,
        )
        self._claims = prom.Counter(
            "gpudra_claims_total", "Claims handled by method and result", ["method", "result"]
        )
        self._errors = prom.Counter(
            "gpudra_claim_errors_total", "Claims that failed, by method and kind", ["method", "kind"]
        )
        self._prepared = prom.Gauge("gpudra_prepared_devices", "Devices held by prepared claims", ["type"])
        self._publishes = prom.Counter("gpudra_slice_publishes_total", "ResourceSlice pool publications")
        self._generation = prom.Gauge("gpudra_slice_pool_generation", "Current ResourceSlice pool generation")
        self._discovery = prom.Gauge("gpudra_discovery_duration_seconds", "Duration of the last discovery")
        self._devices = prom.Gauge(
            "gpudra_devices", "Devices found by the last discovery", ["vendor", "type"]
        )
        self._device_kinds: set[tuple[str, str]] = set()
        self._publish_failures = prom.Counter(
            "gpudra_slice_publish_failures", "ResourceSlice publications that failed (retried)", ["reason"]
        )
        self._mig_dynamic = prom.Gauge(
            "gpudra_mig_dynamic",
            "1 while MIG devices are created at prepare (dynamic MIG), 0 with static MIG (configured, or "
            "fallen back because the cluster drops partitionable-device fields)",
        )
        self._mig_gpus = prom.Gauge("gpudra_mig_dynamic_gpus", "GPUs published as partitionable devices")
        self._health_transitions = prom.Counter(
            "gpudra_device_health_transitions_total",
            "Health changes of published devices, by the state entered",
            ["to"],
        )
        self._health = prom.Gauge("gpudra_devices_by_health", "Published devices by health state", ["state"])
        self._taints = prom.Gauge(
            "gpudra_device_taints_kept", "0 when the API server dropped device taints (DRADeviceTaints off)"
        )
        self._taints.set(1)
        self._fractional = prom.Gauge(
            "gpudra_fractional_gpus",
            "1 while devices are published for claims to share by memory (KEP-5075), 0 when off or fallen "
            "back because the cluster drops consumable-capacity fields",
        )
        self._shared = prom.Gauge("gpudra_shared_devices", "Devices published for sharing")
        prom.Info("gpudra_build", "Build information").info({"version": __version__})
        prom.start_http_server(port, addr)
        log.info("serving Prometheus metrics on %s:%d", addr, port)

    def call(self, method: str, seconds: float, ok: bool) -> None:
        self._calls.labels(method, "ok" if ok else "error").observe(seconds)

    def claims(self, method: str, succeeded: int, failed: int) -> None:
        if succeeded:
            self._claims.labels(method, "ok").inc(succeeded)
        if failed:
            self._claims.labels(method, "error").inc(failed)

    def claim_error(self, method: str, kind: str) -> None:
        self._errors.labels(method, kind).inc()

    def prepared_devices(self, by_type: Mapping[str, int]) -> None:
        for kind in ("gpu", "mig", "partition", *by_type):
            self._prepared.labels(kind).set(by_type.get(kind, 0))

    def slices_published(self, generation: int) -> None:
        self._publishes.inc()
        self._generation.set(generation)

    def discovery(self, seconds: float, devices: Mapping[tuple[str, str], int]) -> None:
        self._discovery.set(seconds)
        self._device_kinds |= set(devices)  # a kind no longer found reads 0, not its old count
        for vendor, kind in self._device_kinds:
            self._devices.labels(vendor, kind).set(devices.get((vendor, kind), 0))

    def publish_failed(self, reason: str) -> None:
        self._publish_failures.labels(reason).inc()

    def mig_management(self, dynamic: bool, dynamic_gpus: int) -> None:
        self._mig_dynamic.set(1 if dynamic else 0)
        self._mig_gpus.set(dynamic_gpus)

    def health_transition(self, device: str, before: str, after: str) -> None:
        self._health_transitions.labels(after).inc()

    def taints_kept(self, kept: bool) -> None:
        self._taints.set(1 if kept else 0)

    def fractional_gpus(self, enabled: bool, shared_devices: int) -> None:
        self._fractional.set(1 if enabled else 0)
        self._shared.set(shared_devices)

    def devices_by_health(self, counts: Mapping[str, int]) -> None:
        for state in ("Healthy", "Unhealthy", "Unknown", *counts):
            self._health.labels(state).set(counts.get(state, 0))


def create(port: int, address: str = "127.0.0.1") -> Metrics:
    """Raises OSError when the port cannot be bound."""
    return PrometheusMetrics(port, address) if port > 0 else NullMetrics()
