"""Re-discovery while NVLink fabric registration is pending, over a backend fake at the Protocol seam."""

from __future__ import annotations

import dataclasses

from gpudra.model.inventory import Device, DeviceKind, Inventory, Vendor
from gpudra.state.rediscovery import Rediscovery

GPU = Device(kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid="GPU-1", product_name="GB200", index=0)


class Backend:
    """Answers each discover() with the next inventory of a script (the last one repeats)."""

    name = "scripted"

    def __init__(self, *answers: Inventory | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0

    def discover(self) -> Inventory:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1
        if isinstance(answer, Exception):
            raise answer
        return answer

    def close(self) -> None:
        return None


def pending(domain: str | None = None) -> Inventory:
    return Inventory(devices=(dataclasses.replace(GPU, fabric_domain=domain),), fabric_pending=domain is None)


def run(backend: Backend, first: Inventory) -> list[Inventory]:
    changes: list[Inventory] = []
    r = Rediscovery(backend, changes.append, initial_s=0.01, max_s=0.02)
    r.start(first)
    if r.thread is not None:
        r.thread.join(5)
        assert not r.thread.is_alive()
    return changes


def test_nothing_pending_starts_nothing() -> None:
    backend = Backend(pending("c.1"))
    assert run(backend, pending("c.1")) == []
    assert backend.calls == 0


def test_keeps_looking_until_the_fabric_registers_then_publishes_once() -> None:
    registered = pending("5ca1ab1e-0000-4000-8000-00000000b200.2")
    backend = Backend(pending(), RuntimeError("NVML hiccup"), pending(), registered)
    assert run(backend, pending()) == [registered]
    assert backend.calls == 4


def test_stop_ends_the_thread() -> None:
    backend = Backend(pending())
    changes: list[Inventory] = []
    r = Rediscovery(backend, changes.append, initial_s=0.01, max_s=0.01)
    r.start(pending())
    assert r.thread is not None
    r.stop()
    r.thread.join(5)
    assert not r.thread.is_alive()
    assert changes == []
