"""Re-discovery: the one writer of the node state, so hardware that changes is republished without a restart.

A GPU falls off the bus (NVML ``GPU_IS_LOST``), an admin changes a MIG layout or toggles MIG mode, the AMD
compute or memory partition mode is switched, NVLink fabric registration finishes: one loop notices each of
these by discovering again, and offers the result to the node state (:mod:`gpudra.state.node`), which makes
a new version only when what the node offers changed; the publisher follows it.

When it runs:

- every ``interval_s`` (the ``--rediscover-interval`` flag; 0 turns the periodic pass off);
- on demand (:meth:`Rediscovery.trigger`: SIGHUP, or a later caller such as the health monitor);
- while NVLink fabric registration is pending (NOT_STARTED / IN_PROGRESS), sooner: after ``fabric_initial_s``,
  doubling up to the interval (or ``fabric_max_s`` when the periodic pass is off), until it settles.

Devices prepare created for claims (dynamic MIG) are told apart by ``claim_created`` and never published as
devices of their own; ``policy`` is the node's MIG management in effect (it falls back to static when the
cluster drops counters). One thread: passes never overlap. A failed pass keeps the current state and logs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from collections.abc import Set as AbstractSet

from gpudra.model.inventory import Inventory
from gpudra.planning.offer import plan_offer
from gpudra.planning.partitions import MigPolicy
from gpudra.state.node import NodeState, NodeStateStore
from gpudra.vendors.base import Discoverer

log = logging.getLogger(__name__)


class Rediscovery:
    def __init__(
        self,
        driver: Discoverer,
        node: NodeStateStore,
        *,
        claim_created: Callable[[], AbstractSet[str]] = frozenset,
        policy: Callable[[], MigPolicy] = lambda: MigPolicy(dynamic=False),
        interval_s: float = 60.0,
        fabric_initial_s: float = 15.0,
        fabric_max_s: float = 300.0,
        on_pass: Callable[[float, Inventory], None] | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._driver = driver
        self._node = node
        self._claim_created = claim_created
        self._policy = policy
        self._interval_s = interval_s
        self._fabric_initial_s = fabric_initial_s
        self._fabric_max_s = min(fabric_max_s, interval_s) if interval_s > 0 else fabric_max_s
        self._on_pass = on_pass
        self._on_change = on_change  # after a pass made a new node state (device health follows it)
        self._pending = node.current.offer.inventory.fabric_pending
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.passes = 0  # completed passes (tests and logs)
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="rediscovery", daemon=True)
        self.thread.start()

    def trigger(self) -> None:
        """Discover again now (returns at once; the pass runs on the loop's thread)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run_once(self) -> NodeState | None:
        """One pass on the caller's thread: the new node state, or None when nothing changed or it failed."""
        t0 = time.monotonic()
        try:
            inv = self._driver.discover()
        except Exception as e:  # the library or the hardware failed as a whole: keep what is published
            log.warning("re-discovery failed, keeping the published devices: %s", e)
            return None
        self.passes += 1
        if self._on_pass is not None:
            self._on_pass(time.monotonic() - t0, inv)
        before = self._node.current.offer
        state = self._node.offer(plan_offer(inv, self._claim_created(), self._policy()))
        took_ms = (time.monotonic() - t0) * 1000
        outcome = "changed" if state is not None else "unchanged"
        log.debug("re-discovery pass: %d device(s) in %.1f ms, %s", len(inv.devices), took_ms, outcome)
        if state is not None:
            if self._on_change is not None:
                self._on_change()
            _log_change(before.devices.keys(), state.offer.devices.keys(), state.version)
            for warning in state.offer.warnings:  # the vendor driver has logged the inventory's
                log.warning("discovery: %s", warning)
        self._pending = inv.fabric_pending
        return state

    def _run(self) -> None:
        fabric_delay = self._fabric_initial_s
        if self._pending:
            log.info("NVLink fabric registration pending: discovering again in %.0f s", fabric_delay)
        while not self._stop.is_set():
            delay = fabric_delay if self._pending else (self._interval_s or None)
            self._wake.wait(delay)
            if self._stop.is_set():
                return
            self._wake.clear()
            was_pending = self._pending
            self.run_once()
            if was_pending and not self._pending:
                log.info("NVLink fabric registration settled")
            grown = min(fabric_delay * 2, self._fabric_max_s)
            fabric_delay = grown if self._pending else self._fabric_initial_s


def _log_change(before: AbstractSet[str], after: AbstractSet[str], version: int) -> None:
    gone, new = sorted(before - after), sorted(after - before)
    what = []
    if new:
        what.append(f"{len(new)} new ({', '.join(new[:8])}{', ...' if len(new) > 8 else ''})")
    if gone:
        what.append(f"{len(gone)} gone ({', '.join(gone[:8])}{', ...' if len(gone) > 8 else ''})")
    log.info("hardware changed: %s; node state version %d", "; ".join(what) or "devices changed", version)
