"""The node state: one immutable, versioned snapshot of what this node offers, shared by every reader.

The re-discovery loop is its one writer (:meth:`NodeStateStore.offer`); the publisher and the preparer read
:attr:`NodeStateStore.current` — a single attribute read, so a reader always holds one whole version, never
half of an update. A new version exists only when what the node offers changed; readers that must act on a
change (the publisher) wait for it with :meth:`NodeStateStore.wait_newer`.

The health store (:mod:`gpudra.state.health`) is its second writer, of the devices' health only
(:meth:`NodeStateStore.set_health`): a new version when some published device's health changed. The health
of a device is published as its taints and streamed to the kubelet (KEP-4680).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from gpudra.model.health import UNKNOWN, DeviceHealth
from gpudra.planning.offer import Offer

_NO_HEALTH: Mapping[str, DeviceHealth] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class NodeState:
    version: int
    offer: Offer
    #: health by published device name; a device missing here is Unknown (not monitored)
    health: Mapping[str, DeviceHealth] = field(default_factory=lambda: _NO_HEALTH)

    def health_of(self, name: str) -> DeviceHealth:
        return self.health.get(name, UNKNOWN)


class NodeStateStore:
    """Holds the current :class:`NodeState`; thread-safe, one writer."""

    def __init__(self, offer: Offer) -> None:
        self._state = NodeState(1, offer)
        self._changed = threading.Condition()

    @property
    def current(self) -> NodeState:
        return self._state

    def offer(self, offer: Offer) -> NodeState | None:
        """Make ``offer`` current. Returns the new state, or None when it offers what the current one does
        (then nothing changes: no new version, nobody woken)."""
        with self._changed:
            if self._state.offer.same_offer(offer):
                return None
            self._state = state = NodeState(self._state.version + 1, offer, self._state.health)
            self._changed.notify_all()
        return state

    def set_health(self, health: Mapping[str, DeviceHealth]) -> NodeState | None:
        """Make ``health`` (by published device name) current. Returns the new state, or None when it is
        the health the current state has."""
        with self._changed:
            if dict(self._state.health) == dict(health):
                return None
            frozen = MappingProxyType(dict(health))
            self._state = state = NodeState(self._state.version + 1, self._state.offer, frozen)
            self._changed.notify_all()
        return state

    def wait_newer(
        self, version: int, timeout: float | None = None, stop: threading.Event | None = None
    ) -> NodeState | None:
        """The current state once its version is above ``version``; None when ``timeout`` passes or
        ``stop`` is set first (call :meth:`wake` after setting it)."""
        stopped = stop.is_set if stop is not None else lambda: False
        with self._changed:
            self._changed.wait_for(lambda: self._state.version > version or stopped(), timeout)
            return self._state if self._state.version > version else None

    def wake(self) -> None:
        """Make every waiter look at its stop flag again."""
        with self._changed:
            self._changed.notify_all()
