"""The re-discovery loop over a driver fake at the Discoverer seam: what reaches the node state, and when."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

from gpudra.model.inventory import Device, DeviceKind, Inventory, Vendor
from gpudra.planning.offer import plan_offer
from gpudra.state.node import NodeStateStore
from gpudra.state.rediscovery import Rediscovery

GPU = Device(kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid="GPU-1", product_name="GB200", index=0)
GPU2 = dataclasses.replace(GPU, uuid="GPU-2", index=1)


class Driver:
    """Answers each discover() with the next inventory of a script (the last one repeats)."""

    def __init__(self, *answers: Inventory | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.called = threading.Event()

    def discover(self) -> Inventory:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        self.called.set()
        if isinstance(answer, Exception):
            raise answer
        return answer


def pending(domain: str | None = None) -> Inventory:
    return Inventory(devices=(dataclasses.replace(GPU, fabric_domain=domain),), fabric_pending=domain is None)


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.005)
    return False


def loop(
    driver: Driver, first: Inventory, interval_s: float, fabric_initial_s: float = 15, fabric_max_s: float = 3
) -> tuple[Rediscovery, NodeStateStore]:
    node = NodeStateStore(plan_offer(first))
    r = Rediscovery(
        driver, node, interval_s=interval_s, fabric_initial_s=fabric_initial_s, fabric_max_s=fabric_max_s
    )
    r.start()
    return r, node


def test_pending_fabric_is_retried_until_registered_then_published_once() -> None:
    registered = pending("5ca1ab1e-0000-4000-8000-00000000b200.2")
    driver = Driver(pending(), RuntimeError("NVML hiccup"), pending(), registered)
    r, node = loop(driver, pending(), interval_s=0, fabric_initial_s=0.01, fabric_max_s=0.02)
    try:
        assert wait_for(lambda: node.current.version == 2)
        assert node.current.offer.inventory == registered
        calls = driver.calls
        time.sleep(0.1)  # settled, periodic passes off: nothing more is asked
        assert driver.calls == calls == 4
        assert r.thread is not None
        assert r.thread.is_alive()
    finally:
        r.stop()


def test_a_lost_gpu_leaves_the_offer_on_the_next_periodic_pass() -> None:
    both = Inventory(devices=(GPU, GPU2))
    driver = Driver(Inventory(devices=(GPU,), warnings=("GPU index 1 skipped: GPU_IS_LOST",)))
    r, node = loop(driver, both, interval_s=0.02)
    try:
        assert wait_for(lambda: node.current.version == 2)
        assert [d.uuid for d in node.current.offer.devices.values()] == ["GPU-1"]
        passes = r.passes
        assert wait_for(lambda: r.passes > passes + 2)  # keeps going; equal answers make no new version
        assert node.current.version == 2
    finally:
        r.stop()


def test_a_failed_pass_keeps_the_current_state() -> None:
    driver = Driver(RuntimeError("nvmlDeviceGetCount: Unknown Error"))
    r, node = loop(driver, Inventory(devices=(GPU,)), interval_s=0.01)
    try:
        assert wait_for(lambda: driver.calls >= 3)
        assert node.current.version == 1
        assert r.thread is not None
        assert r.thread.is_alive()
    finally:
        r.stop()


def test_trigger_runs_a_pass_when_periodic_passes_are_off() -> None:
    driver = Driver(Inventory(devices=(GPU, GPU2)))
    r, node = loop(driver, Inventory(devices=(GPU,)), interval_s=0)
    try:
        time.sleep(0.05)
        assert driver.calls == 0
        r.trigger()
        assert wait_for(lambda: node.current.version == 2)
        assert len(node.current.offer.devices) == 2
    finally:
        r.stop()


def test_devices_claims_created_are_not_offered() -> None:
    made = dataclasses.replace(GPU2, uuid="MIG-made-for-a-claim")
    driver = Driver(Inventory(devices=(GPU, made)))
    node = NodeStateStore(plan_offer(Inventory(devices=(GPU,))))
    r = Rediscovery(driver, node, claim_created=lambda: frozenset({made.uuid}), interval_s=0)
    assert r.run_once() is None  # the only new device is the claim's: nothing changed
    assert [d.uuid for d in node.current.offer.devices.values()] == ["GPU-1"]


def test_stop_ends_the_thread() -> None:
    driver = Driver(pending())
    r, node = loop(driver, pending(), interval_s=0, fabric_initial_s=0.01, fabric_max_s=0.01)
    assert driver.called.wait(5)
    r.stop()
    assert r.thread is not None
    r.thread.join(5)
    assert not r.thread.is_alive()
    assert node.current.version == 1
