"""Device taints the cluster drops: told once, in a log line, a metric and a Node Event.

Device health is published as device taints (KEP-5055: alpha and off in Kubernetes 1.34 and 1.35, beta and
on in 1.36, GA in 1.37). With the ``DRADeviceTaints`` gate off the API server drops them silently: the
scheduler then keeps placing pods on a broken device. Prepare still refuses an unhealthy device and the
kubelet's health stream still reports it, so nothing else changes; but the admin must know.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Final

log = logging.getLogger(__name__)

EVENT_REASON: Final = "GpudraDeviceTaintsDropped"


class TaintGate:
    def __init__(self, event: Callable[[str, str], None], metric: Callable[[bool], None]) -> None:
        self._event = event
        self._metric = metric
        self._lock = threading.Lock()
        self._told = False

    def on_dropped(self, fields: Sequence[str]) -> bool:
        """The publisher's report of dropped fields; never asks for a new plan (returns False)."""
        lost = [f for f in fields if f.endswith(".taints")]
        if not lost:
            return False
        with self._lock:
            first, self._told = not self._told, True
        if first:
            message = (
                f"the API server dropped the device taints gpudra wrote ({', '.join(lost[:3])}): the "
                "cluster's DRADeviceTaints feature gate is off (alpha and off in Kubernetes 1.34 and 1.35). "
                "The scheduler cannot see unhealthy devices; gpudra still refuses them at prepare and "
                "reports them in the kubelet's health stream. Enable DRADeviceTaints to keep pods off them"
            )
            log.error("%s", message)
            self._metric(False)
            self._event(EVENT_REASON, message)
        return False
