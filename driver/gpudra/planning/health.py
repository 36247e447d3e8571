"""Device health rules (pure): observations in, each device's health out; recovery; health as taints.

**Folding.** An observation of a condition adds it to its device (or refreshes ``last_seen`` when the same
kind and value is active), unless it reports the condition ``cleared``: then the condition goes. The
UNMONITORED kind is special: ``cleared`` means "monitored" (the watcher can see this device), and an active
UNMONITORED condition makes the device Unknown rather than Unhealthy; a device no watcher ever spoke of is
Unknown too. Never Healthy unchecked.

**Recovery** (documented per condition in docs/health.md): LOST and UNMONITORED clear on evidence only (the
GPU answers again; monitoring works again). Every other kind clears when it has not been seen for its quiet
period (:class:`HealthPolicy`): an Xid that does not recur, ECC counters that stop rising, a reset or thermal
event that is not repeated. A device is Unhealthy while any condition other than UNMONITORED is active.

**Inheritance.** A MIG device (static or created at prepare) and an AMD partition have the health of their
parent GPU as well as their own: a lost GPU takes its MIG devices with it. A device published to be created
at prepare (no UUID yet) has its parent's health only.

**Taints** (KEP-5055): each active condition except UNMONITORED becomes ``gpudra.io/<kind>=<value>:<effect>``
with the time it was first seen; a runbook matches on the key (``gpudra.io/xid``, ``gpudra.io/ecc``,
``gpudra.io/lost``, ...). At most :data:`MAX_TAINTS` per device (the API's limit), the most severe first.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from gpudra.model import k8stypes, names
from gpudra.model.health import (
    UNKNOWN,
    Condition,
    ConditionKind,
    DeviceHealth,
    Effect,
    HealthState,
    Observation,
)
from gpudra.model.inventory import Device

MAX_TAINTS: Final = 16
#: Conditions that clear only on evidence (an observation with ``cleared``), never by quiet.
EVIDENCE_ONLY: Final = frozenset({ConditionKind.LOST, ConditionKind.UNMONITORED})
_DEFAULT_QUIET_S: Final = {
    ConditionKind.XID: 600.0,
    ConditionKind.ECC: 1800.0,
    ConditionKind.RESET: 600.0,
    ConditionKind.THERMAL: 300.0,
}


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Quiet periods, in seconds, after which a condition that was not seen again clears."""

    quiet_s: Mapping[ConditionKind, float] = field(default_factory=lambda: dict(_DEFAULT_QUIET_S))

    def quiet(self, kind: ConditionKind) -> float | None:
        return None if kind in EVIDENCE_ONLY else self.quiet_s.get(kind, 600.0)


def observe(health: DeviceHealth | None, obs: Observation) -> DeviceHealth:
    """``health`` (None: never heard of) after ``obs``."""
    conditions = {(c.kind, c.value): c for c in (health.conditions if health else ())}
    key = (obs.kind, obs.value)
    if obs.cleared:
        conditions = {k: c for k, c in conditions.items() if k[0] is not obs.kind}
    else:
        old = conditions.get(key)
        since = old.since if old is not None else obs.at
        conditions[key] = Condition(obs.kind, obs.value, obs.effect, obs.message, since, obs.at)
    monitored = health is not None or obs.cleared or obs.kind is not ConditionKind.UNMONITORED
    return _settle(health, tuple(conditions.values()), obs.at, monitored=monitored)


def expire(health: DeviceHealth, now: float, policy: HealthPolicy) -> DeviceHealth:
    """``health`` at ``now``: conditions past their quiet period are gone."""
    kept = tuple(c for c in health.conditions if not _quiet_over(c, now, policy))
    if len(kept) == len(health.conditions):
        return health
    return _settle(health, kept, now, monitored=True)


def next_expiry(health: DeviceHealth, policy: HealthPolicy) -> float | None:
    """When the earliest condition of ``health`` clears by quiet, if any does."""
    times = [c.last_seen + q for c in health.conditions if (q := policy.quiet(c.kind)) is not None]
    return min(times) if times else None


def _quiet_over(c: Condition, now: float, policy: HealthPolicy) -> bool:
    quiet = policy.quiet(c.kind)
    return quiet is not None and now >= c.last_seen + quiet


def _settle(
    before: DeviceHealth | None, conditions: tuple[Condition, ...], at: float, *, monitored: bool
) -> DeviceHealth:
    if not monitored or any(c.kind is ConditionKind.UNMONITORED for c in conditions):
        state = HealthState.UNKNOWN
    elif any(c.kind is not ConditionKind.UNMONITORED for c in conditions):
        state = HealthState.UNHEALTHY
    else:
        state = HealthState.HEALTHY
    since = before.since if before is not None and before.state is state else at
    ordered = tuple(sorted(conditions, key=lambda c: (c.kind.value, c.value)))
    return DeviceHealth(state, ordered, since)


def published_health(
    devices: Mapping[str, Device], by_identity: Mapping[str, DeviceHealth]
) -> dict[str, DeviceHealth]:
    """Each published device's health, by published name: its own and its parent GPU's, combined."""
    out: dict[str, DeviceHealth] = {}
    for name, dev in devices.items():
        parts = [h for h in (by_identity.get(dev.uuid), by_identity.get(dev.parent_uuid or "")) if h]
        out[name] = _combine(parts) if parts else UNKNOWN
    return out


def _combine(parts: Iterable[DeviceHealth]) -> DeviceHealth:
    items = list(parts)
    if len(items) == 1:
        return items[0]
    conditions = {(c.kind, c.value): c for h in items for c in h.conditions}
    states = {h.state for h in items}
    for state in (HealthState.UNHEALTHY, HealthState.UNKNOWN, HealthState.HEALTHY):
        if state in states:
            since = max(h.since for h in items if h.state is state)
            ordered = tuple(sorted(conditions.values(), key=lambda c: (c.kind.value, c.value)))
            return DeviceHealth(state, ordered, since)
    return UNKNOWN  # pragma: no cover - states is never empty


def taints(health: DeviceHealth) -> list[k8stypes.DeviceTaint]:
    """The device taints of ``health`` (KEP-5055 shape): NoExecute before NoSchedule, then by first seen."""
    active = [c for c in health.conditions if c.kind is not ConditionKind.UNMONITORED]
    active.sort(key=lambda c: (c.effect is not Effect.NO_EXECUTE, c.since))
    return [
        {
            "key": f"{names.DRIVER_NAME}/{c.kind.value}",
            "value": c.value,
            "effect": c.effect.value,
            "timeAdded": _rfc3339(c.since),
        }
        for c in active[:MAX_TAINTS]
    ]


def _rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(int(ts), datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

