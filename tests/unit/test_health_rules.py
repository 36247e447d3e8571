"""Device health rules (pure) and the health store over a real node state: folding observations, recovery
by quiet period or by evidence, inheritance by MIG devices, taints, and what the node state publishes."""

from __future__ import annotations

import dataclasses
import threading

from gpudra.model import names
from gpudra.model.health import (
    ConditionKind,
    DeviceHealth,
    Effect,
    HealthState,
    Observation,
)
from gpudra.model.inventory import Inventory, MigInfo
from gpudra.planning import health as rules
from gpudra.planning.offer import plan_offer
from gpudra.planning.partitions import MigPolicy
from gpudra.state.health import EVENT_RECOVERED, EVENT_UNHEALTHY, HealthStore
from gpudra.state.node import NodeStateStore
from tests.unit.test_partitions import h100

GPU = "GPU-0b100000-0000-0000-0000-000000000000"
POLICY = rules.HealthPolicy({ConditionKind.XID: 100.0, ConditionKind.ECC: 200.0})


def _obs(
    kind: ConditionKind, value: str, at: float, *, cleared: bool = False, device: str = GPU
) -> Observation:
    effect = Effect.NO_EXECUTE if kind in (ConditionKind.LOST, ConditionKind.ECC) else Effect.NO_SCHEDULE
    return Observation(device, kind, value, effect, f"{kind.value} {value}", at, cleared)


def _monitored(at: float = 0.0) -> DeviceHealth:
    return rules.observe(None, _obs(ConditionKind.UNMONITORED, "", at, cleared=True))


def test_never_healthy_unchecked() -> None:
    assert rules.observe(None, _obs(ConditionKind.UNMONITORED, "no events", 1.0)).state is HealthState.UNKNOWN
    assert _monitored().state is HealthState.HEALTHY


def test_an_xid_makes_the_device_unhealthy_until_it_has_not_recurred_for_its_quiet_period() -> None:
    h = rules.observe(_monitored(), _obs(ConditionKind.XID, "48", 10.0))
    assert h.state is HealthState.UNHEALTHY
    assert h.since == 10.0
    h = rules.observe(h, _obs(ConditionKind.XID, "48", 50.0))  # recurs: the quiet period starts again
    assert rules.next_expiry(h, POLICY) == 150.0
    assert rules.expire(h, 149.0, POLICY).state is HealthState.UNHEALTHY
    healed = rules.expire(h, 150.0, POLICY)
    assert (healed.state, healed.conditions, healed.since) == (HealthState.HEALTHY, (), 150.0)


def test_a_lost_gpu_recovers_only_on_evidence() -> None:
    h = rules.observe(_monitored(), _obs(ConditionKind.LOST, "true", 5.0))
    assert rules.next_expiry(h, POLICY) is None
    assert rules.expire(h, 10**9, POLICY).state is HealthState.UNHEALTHY
    back = rules.observe(h, _obs(ConditionKind.LOST, "true", 20.0, cleared=True))
    assert back.state is HealthState.HEALTHY


def test_taints_name_each_condition_most_severe_first() -> None:
    h = rules.observe(_monitored(), _obs(ConditionKind.XID, "94", 1.0))
    h = rules.observe(h, _obs(ConditionKind.ECC, "uncorrectable", 2.0))
    assert [(t["key"], t["value"], t["effect"]) for t in rules.taints(h)] == [
        ("gpudra.io/ecc", "uncorrectable", "NoExecute"),
        ("gpudra.io/xid", "94", "NoSchedule"),
    ]
    assert rules.taints(h)[0]["timeAdded"] == "1970-01-01T00:00:02Z"
    assert rules.taints(rules.observe(None, _obs(ConditionKind.UNMONITORED, "x", 1.0))) == []


def test_mig_devices_share_their_parents_health() -> None:
    gpu = h100(0, mig_enabled=True)
    mig = dataclasses.replace(
        gpu, kind=gpu.kind.MIG, uuid="MIG-1", parent_uuid=gpu.uuid, mig_profiles=(),
        mig=MigInfo("1g.10gb", 19, 0, 1, gi_id=7, ci_id=0, ci_spans_gpu_instance=True),
    )  # fmt: skip
    offer = plan_offer(Inventory(devices=(h100(1), gpu, mig)))
    lost = rules.observe(_monitored(), _obs(ConditionKind.LOST, "true", 1.0, device=gpu.uuid))
    health = rules.published_health(offer.devices, {gpu.uuid: lost, h100(1).uuid: _monitored()})
    mig_name = names.mig_device_name(gpu.uuid, "1g.10gb", 19, 0)
    assert health[mig_name].state is HealthState.UNHEALTHY
    assert health[names.gpu_device_name(h100(1).uuid)].state is HealthState.HEALTHY
    dynamic = plan_offer(Inventory(devices=(h100(1),)), policy=MigPolicy(dynamic=True))
    slots = rules.published_health(dynamic.devices, {h100(1).uuid: lost})
    assert {h.state for h in slots.values()} == {HealthState.UNHEALTHY}  # slots without a UUID: the parent's


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_store_publishes_health_and_taints_through_the_node_state() -> None:
    node = NodeStateStore(plan_offer(Inventory(devices=(h100(0), h100(1)))))
    events: list[tuple[str, str]] = []
    clock = _Clock()
    recovered = threading.Event()

    def on_event(reason: str, message: str) -> None:
        events.append((reason, message))
        if reason == EVENT_RECOVERED:
            recovered.set()

    store = HealthStore(node, POLICY, clock=clock, on_event=on_event)
    name = names.gpu_device_name(h100(0).uuid)
    assert node.current.health_of(name).state is HealthState.UNKNOWN
    for i in (0, 1):
        store.report(_obs(ConditionKind.UNMONITORED, "", clock.now, cleared=True, device=h100(i).uuid))
    assert node.current.health_of(name).state is HealthState.HEALTHY
    version = node.current.version
    store.report(_obs(ConditionKind.XID, "79", clock.now, device=h100(0).uuid))
    assert node.current.version == version + 1
    assert node.current.health_of(name).state is HealthState.UNHEALTHY
    assert [r for r, _ in events] == [EVENT_UNHEALTHY]
    store.report(_obs(ConditionKind.XID, "79", clock.now + 1, device=h100(0).uuid))
    assert node.current.version == version + 1  # it recurs: nothing published changes (a burst is cheap)
    stop = threading.Event()
    clock.now += 200
    store.start(_Watcher(stop))
    try:
        assert node.wait_newer(version + 1, timeout=10) is not None
        assert node.current.health_of(name).state is HealthState.HEALTHY
        assert recovered.wait(10)  # recorded by the expiry thread right after the new version
        assert [r for r, _ in events] == [EVENT_UNHEALTHY, EVENT_RECOVERED]
    finally:
        store.stop()
        stop.set()


class _Watcher:
    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop

    def watch_health(self, report: object, stop: threading.Event) -> None:
        stop.wait(30)


def test_a_stopped_store_drops_what_a_closing_watcher_still_reports() -> None:
    node = NodeStateStore(plan_offer(Inventory(devices=(h100(0),))))
    store = HealthStore(node, POLICY)
    store.report(_obs(ConditionKind.UNMONITORED, "", 1.0, cleared=True, device=h100(0).uuid))
    version = node.current.version
    store.stop()
    store.report(_obs(ConditionKind.LOST, "true", 2.0, device=h100(0).uuid))  # NVML shut down under it
    assert node.current.version == version
    assert node.current.health_of(names.gpu_device_name(h100(0).uuid)).state is HealthState.HEALTHY
