"""Device health: what vendor monitors observe, and what a device's health is made of (frozen, pure data).

A vendor monitor (NVML events, AMD RAS counters, presence checks) reports :class:`Observation` s: one
condition seen on one device at one moment. The health store (:mod:`gpudra.state.health`) folds them, with
the recovery rules of :mod:`gpudra.planning.health`, into one :class:`DeviceHealth` per published device:
healthy, unhealthy (with the conditions that make it so, each becoming a device taint), or unknown (not
monitored, or monitoring failed) - never "healthy" unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class HealthState(StrEnum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    UNKNOWN = "Unknown"


class Effect(StrEnum):
    """Device taint effects (KEP-5055): NoSchedule keeps new pods off, NoExecute evicts those running."""

    NO_SCHEDULE = "NoSchedule"
    NO_EXECUTE = "NoExecute"


class ConditionKind(StrEnum):
    """What was observed; each kind has its taint key (``gpudra.io/<kind>``) and its recovery rule."""

    XID = "xid"  # an NVIDIA Xid error (value: the Xid number)
    ECC = "ecc"  # uncorrectable (double-bit) ECC errors rose (value: "uncorrectable")
    LOST = "lost"  # the GPU fell off the bus / is gone (value: "true")
    RESET = "reset"  # AMD GPU reset or ring hang (value: what was reported)
    THERMAL = "thermal"  # thermal event (value: what was reported)
    UNMONITORED = "unmonitored"  # monitoring is not possible or failed: health Unknown (value: why)


@dataclass(frozen=True, slots=True)
class Observation:
    """One condition seen on one device. ``device`` is the vendor identity (GPU or MIG UUID, AMD unique id)
    the monitor knows; ``at`` is ``time.time()``. ``cleared`` reports that a condition is observed gone
    (the GPU answers again), for the conditions that clear on evidence rather than on quiet."""

    device: str
    kind: ConditionKind
    value: str
    effect: Effect
    message: str
    at: float
    cleared: bool = False


@dataclass(frozen=True, slots=True)
class Condition:
    """An active health problem of one device: a taint ``gpudra.io/<kind>=<value>:<effect>``."""

    kind: ConditionKind
    value: str
    effect: Effect
    message: str
    since: float  # first seen (time.time())
    last_seen: float  # most recent observation: the quiet period for recovery runs from here


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """One device's health: its state, the conditions behind it, and since when it is in that state."""

    state: HealthState
    conditions: tuple[Condition, ...] = ()
    since: float = 0.0

    @property
    def message(self) -> str:
        """For humans (the kubelet's health stream, Events): the conditions, newest first."""
        if not self.conditions:
            return "" if self.state is HealthState.HEALTHY else "not monitored"
        ordered = sorted(self.conditions, key=lambda c: c.last_seen, reverse=True)
        return "; ".join(c.message for c in ordered)


HEALTHY = DeviceHealth(HealthState.HEALTHY)
UNKNOWN = DeviceHealth(HealthState.UNKNOWN)
