"""Discovery again while the hardware's answer is still settling, then quiet.

NVLink fabric registration (GB200 NVL72 and other multi-node NVLink systems) can be NOT_STARTED or
IN_PROGRESS when the plugin starts: the devices are published without ``fabricDomain`` and the backend sets
``Inventory.fabric_pending``. This thread re-runs discovery with a growing interval until nothing is pending,
hands every changed inventory to the plugin, and then ends. One thread: discoveries never overlap.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from gpudra.model.inventory import Inventory
from gpudra.vendors.base import HardwareBackend

log = logging.getLogger(__name__)


class Rediscovery:
    def __init__(
        self,
        backend: HardwareBackend,
        on_change: Callable[[Inventory], None],
        initial_s: float = 15.0,
        max_s: float = 300.0,
    ) -> None:
        self._backend = backend
        self._on_change = on_change
        self._initial_s = initial_s
        self._max_s = max_s
        self._stop = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, current: Inventory) -> None:
        """Start only when something is pending; otherwise there is nothing to wait for."""
        if not current.fabric_pending:
            return
        log.info("NVLink fabric registration pending: discovering again in %.0f s", self._initial_s)
        self.thread = threading.Thread(target=self._run, args=(current,), name="rediscover", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, current: Inventory) -> None:
        delay = self._initial_s
        while not self._stop.wait(delay):
            try:
                fresh = self._backend.discover()
            except Exception:
                log.exception("re-discovery failed; trying again in %.0f s", delay)
                delay = min(delay * 2, self._max_s)
                continue
            if fresh.devices != current.devices:
                log.info("re-discovery found changed devices; publishing them")
                self._on_change(fresh)
                current = fresh
            if not fresh.fabric_pending:
                log.info("NVLink fabric registration settled; re-discovery stops")
                return
            delay = min(delay * 2, self._max_s)
