"""The health store: the vendor watcher's observations folded into each device's health, in the node state.

One thread runs the vendor driver's :meth:`~gpudra.vendors.base.HealthWatcher.watch_health`; it calls
:meth:`HealthStore.report` for every observation (from its own thread). A second thread applies the quiet
periods of :mod:`gpudra.planning.health` (a condition that did not recur clears) at the moment the next one
is due. After every change, the health of each published device (own and parent's) goes into the node state
(:meth:`~gpudra.state.node.NodeStateStore.set_health`): a new version only when some published device's
health changed, which the publisher turns into taints and the kubelet's health stream into a message.

Transitions are logged once each (a device going unhealthy, recovering, becoming unknown), counted by
``on_transition`` (metrics) and recorded as Node Events by ``on_event``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Final

from gpudra.model.health import DeviceHealth, HealthState, Observation
from gpudra.planning import health as rules
from gpudra.state.node import NodeStateStore
from gpudra.vendors.base import HealthWatcher

log = logging.getLogger(__name__)

EVENT_UNHEALTHY: Final = "GpudraDeviceUnhealthy"
EVENT_RECOVERED: Final = "GpudraDeviceRecovered"

Transition = Callable[[str, HealthState, HealthState], None]  # device name, before, after


class HealthStore:
    def __init__(
        self,
        node: NodeStateStore,
        policy: rules.HealthPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        on_transition: Transition | None = None,
        on_event: Callable[[str, str], None] | None = None,
    ) -> None:
        self._node = node
        self._policy = policy or rules.HealthPolicy()
        self._clock = clock
        self._on_transition = on_transition
        self._on_event = on_event
        self._lock = threading.Lock()
        self._by_identity: dict[str, DeviceHealth] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.reported = 0  # observations taken (tests, metrics)

    # ---- input ------------------------------------------------------------------------------------

    def report(self, obs: Observation) -> None:
        """One observation from the watcher's thread; the node state follows at once. Ignored once stopped
        (the driver is closing: a shut-down library is no lost GPU)."""
        if self._stop.is_set():
            return
        with self._lock:
            self._by_identity[obs.device] = rules.observe(self._by_identity.get(obs.device), obs)
            self.reported += 1
        self._publish()
        self._wake.set()  # the next quiet period may be sooner now

    def refresh(self) -> None:
        """Publish again for the current node state's devices (after a re-discovery changed them)."""
        self._publish()

    # ---- threads ----------------------------------------------------------------------------------

    def start(self, watcher: HealthWatcher) -> None:
        threading.Thread(target=self._watch, args=(watcher,), name="health-watch", daemon=True).start()
        threading.Thread(target=self._expire_loop, name="health-expiry", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _watch(self, watcher: HealthWatcher) -> None:
        try:
            watcher.watch_health(self.report, self._stop)
        except Exception:  # the watcher must not raise; if it does, health is Unknown, not stale Healthy
            log.exception("the health watcher failed; device health is unknown from now on")
            with self._lock:
                self._by_identity.clear()
            self._publish()

    def _expire_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._delay())
            self._wake.clear()
            if self._stop.is_set():
                return
            now = self._clock()
            with self._lock:
                expired = {k: rules.expire(h, now, self._policy) for k, h in self._by_identity.items()}
                changed = expired != self._by_identity
                self._by_identity = expired
            if changed:
                self._publish()

    def _delay(self) -> float:
        with self._lock:
            due = [t for h in self._by_identity.values() if (t := rules.next_expiry(h, self._policy))]
        return max(0.0, min(due) - self._clock()) + 0.01 if due else 60.0

    # ---- output -----------------------------------------------------------------------------------

    def _publish(self) -> None:
        with self._lock:
            by_identity = {k: _visible(h) for k, h in self._by_identity.items()}
        state = self._node.current
        health = rules.published_health(state.offer.devices, by_identity)
        before = state.health
        if self._node.set_health(health) is not None:
            self._transitions(before, health)

    def _transitions(self, before: Mapping[str, DeviceHealth], after: Mapping[str, DeviceHealth]) -> None:
        devices = self._node.current.offer.devices
        for name, now in after.items():
            device = devices.get(name)
            if device is not None and device.created_at_prepare:
                continue  # a dynamic MIG placement: its GPU's own transition says it (not 26 Events)
            old = before.get(name)
            was = old.state if old is not None else HealthState.UNKNOWN
            if was is now.state:
                continue
            quiet = (was, now.state) == (HealthState.UNKNOWN, HealthState.HEALTHY)  # monitoring began
            level = logging.DEBUG if quiet else logging.WARNING
            detail = f" ({now.message})" if now.message else ""
            log.log(level, "device %s: %s -> %s%s", name, was.value, now.state.value, detail)
            if self._on_transition is not None:
                self._on_transition(name, was, now.state)
            if self._on_event is not None and now.state is HealthState.UNHEALTHY:
                self._on_event(EVENT_UNHEALTHY, f"device {name} is unhealthy: {now.message}")
            elif self._on_event is not None and was is HealthState.UNHEALTHY:
                self._on_event(EVENT_RECOVERED, f"device {name} is {now.state.value.lower()} again")


def _visible(health: DeviceHealth) -> DeviceHealth:
    """``health`` as published: without when each condition was last seen (the store keeps that for the
    quiet periods), so a condition that keeps recurring - a burst of one Xid - makes no new node state."""
    if all(c.last_seen == c.since for c in health.conditions):
        return health
    return replace(health, conditions=tuple(replace(c, last_seen=c.since) for c in health.conditions))
