"""Wiring of device health: the health store over the vendor driver's watcher, the policy from the flags,
transitions to metrics and Node Events, and the report of taints the cluster drops (see docs/health.md)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from gpudra.model.health import ConditionKind, HealthState
from gpudra.planning.health import HealthPolicy
from gpudra.runtime.config import RunConfig
from gpudra.runtime.metrics import Metrics
from gpudra.runtime.taintgate import TaintGate
from gpudra.state.health import HealthStore
from gpudra.state.node import NodeStateStore
from gpudra.vendors.base import HealthWatcher

log = logging.getLogger(__name__)

NodeEvent = Callable[[str, str], None]  # reason, message


def policy(cfg: RunConfig) -> HealthPolicy:
    base = dict(HealthPolicy().quiet_s)
    base.update({ConditionKind(kind): s for kind, s in cfg.health_quiet_s.items()})
    return HealthPolicy(base)


def start_health(
    cfg: RunConfig, node: NodeStateStore, watcher: HealthWatcher, metrics: Metrics, event: NodeEvent
) -> HealthStore:
    """The health store, watching when ``--health-monitoring`` is on (off: every device stays Unknown)."""
    store = HealthStore(
        node, policy(cfg),
        on_transition=lambda name, before, after: _transition(metrics, name, before, after),
        on_event=event,
    )  # fmt: skip
    if cfg.health_monitoring:
        store.start(watcher)
    else:
        log.info("device health monitoring is off (--health-monitoring=false): every device is Unknown")
    return store


def _transition(metrics: Metrics, name: str, before: HealthState, after: HealthState) -> None:
    metrics.health_transition(name, before.value, after.value)


def taint_gate(metrics: Metrics, event: NodeEvent) -> TaintGate:
    return TaintGate(event, metrics.taints_kept)


def count_by_health(node: NodeStateStore) -> dict[str, int]:
    state = node.current
    counts: dict[str, int] = {}
    for name in state.offer.devices:
        key = state.health_of(name).state.value
        counts[key] = counts.get(key, 0) + 1
    return counts
