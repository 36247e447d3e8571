"""The node state: versions only for changed offers; readers see one whole version; waiting and stopping."""

from __future__ import annotations

import threading

from gpudra.model.inventory import Device, DeviceKind, Inventory, Vendor
from gpudra.planning.offer import plan_offer
from gpudra.state.node import NodeStateStore

GPU = Device(kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid="GPU-1", product_name="H100", index=0)
GPU2 = Device(kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid="GPU-2", product_name="H100", index=1)


def test_a_new_version_only_when_the_offer_changes() -> None:
    store = NodeStateStore(plan_offer(Inventory(devices=(GPU,))))
    assert store.current.version == 1
    assert store.offer(plan_offer(Inventory(devices=(GPU,), warnings=("noise",)))) is None
    state = store.offer(plan_offer(Inventory(devices=(GPU, GPU2))))
    assert state is not None
    assert state.version == 2
    assert store.current is state
    assert list(state.offer.devices) == sorted(state.offer.entries)


def test_wait_newer_returns_the_new_state_or_none() -> None:
    store = NodeStateStore(plan_offer(Inventory(devices=(GPU,))))
    assert store.wait_newer(1, timeout=0.01) is None
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(store.wait_newer(1, timeout=5)))
    waiter.start()
    store.offer(plan_offer(Inventory(devices=(GPU2,))))
    waiter.join(5)
    assert not waiter.is_alive()
    assert got == [store.current]


def test_stop_and_wake_release_a_waiter() -> None:
    store = NodeStateStore(plan_offer(Inventory(devices=(GPU,))))
    stop = threading.Event()
    got: list[object] = ["not yet"]
    waiter = threading.Thread(target=lambda: got.append(store.wait_newer(1, stop=stop)))
    waiter.start()
    stop.set()
    store.wake()
    waiter.join(5)
    assert not waiter.is_alive()
    assert got[-1] is None
