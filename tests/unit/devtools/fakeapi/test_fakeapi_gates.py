"""Feature-gate emulation: gated ResourceSlice fields are dropped silently when the gate is off."""

from __future__ import annotations

from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from tests.unit.devtools.fakeapi.fakeapi_helpers import SLICES, Api, device, resource_slice

TAINT = {"key": "gpudra.io/unhealthy", "value": "xid-79", "effect": "NoSchedule"}
POLICY = {"default": "1Gi", "validRange": {"min": "1Gi", "step": "1Gi"}}


def gated_slice() -> dict[str, Any]:
    capacity = {"memory": {"value": "80Gi", "requestPolicy": POLICY}}
    gpu = device(
        taints=[TAINT],
        allowMultipleAllocations=True,
        capacity=capacity,
        consumesCounters=[{"counterSet": "gpu-0-counters", "counters": {"memory": {"value": "80Gi"}}}],
    )
    return resource_slice(devices=[gpu])


def stored_device(gates: dict[str, bool]) -> dict[str, Any]:
    with FakeApiServer(feature_gates=gates) as server:
        reply = Api(server.url).post(SLICES, gated_slice())
        assert reply.status == 201, reply.body
        spec = reply.body["spec"]
        assert "sharedCounters" not in spec
        return dict(spec["devices"][0])


def test_all_gates_off_by_default_drop_everything() -> None:
    gpu = stored_device({})
    assert "taints" not in gpu
    assert "consumesCounters" not in gpu
    assert "allowMultipleAllocations" not in gpu
    assert gpu["capacity"] == {"memory": {"value": "80Gi"}}


@pytest.mark.parametrize(
    ("gate", "kept"),
    [
        ("DRADeviceTaints", {"taints"}),
        ("DRAPartitionableDevices", {"consumesCounters"}),
        ("DRAConsumableCapacity", {"allowMultipleAllocations", "requestPolicy"}),
    ],
)
def test_one_gate_on_keeps_only_its_fields(gate: str, kept: set[str]) -> None:
    gpu = stored_device({gate: True})
    present: set[str] = {
        key for key in ("taints", "consumesCounters", "allowMultipleAllocations") if key in gpu
    }
    if "requestPolicy" in gpu["capacity"]["memory"]:
        present.add("requestPolicy")
    assert present == kept


def test_taints_get_time_added() -> None:
    gpu = stored_device({"DRADeviceTaints": True})
    taint = gpu["taints"][0]
    assert {k: taint[k] for k in ("key", "value", "effect")} == TAINT
    assert taint["timeAdded"].endswith("Z")


def test_shared_counters_dropped_with_partitionable_gate_off(api: Api) -> None:
    body = resource_slice(
        sharedCounters=[{"name": "gpu-0-counters", "counters": {"memory": {"value": "80Gi"}}}]
    )
    del body["spec"]["devices"]
    reply = api.post(SLICES, body)
    assert reply.status == 201
    assert "sharedCounters" not in reply.body["spec"]


def test_shared_counters_kept_and_canonical_with_gate_on() -> None:
    with FakeApiServer(feature_gates={"DRAPartitionableDevices": True}) as server:
        api = Api(server.url)
        counters = [{"name": "gpu-0-counters", "counters": {"memory": {"value": "85899345920"}}}]
        body = resource_slice(sharedCounters=counters)
        assert api.post(SLICES, body).status == 422  # devices and sharedCounters in one slice
        del body["spec"]["devices"]
        reply = api.post(SLICES, body)
        assert reply.status == 201
        assert reply.body["spec"]["sharedCounters"][0]["counters"]["memory"]["value"] == "85899345920"


def test_request_policy_needs_multiple_allocations() -> None:
    with FakeApiServer(feature_gates={"DRAConsumableCapacity": True}) as server:
        capacity = {"memory": {"value": "80Gi", "requestPolicy": POLICY}}
        reply = Api(server.url).post(SLICES, resource_slice(devices=[device(capacity=capacity)]))
        assert reply.status == 422
        assert reply.body["message"].endswith(
            "spec.devices[0].capacity[memory].requestPolicy: Forbidden: allowMultipleAllocations must be true"
        )


def test_unknown_gate_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown feature gate"):
        FakeApiServer(feature_gates={"DRANoSuchThing": True})


def test_fields_already_in_use_survive_an_update_with_the_gate_off(api: Api, server: FakeApiServer) -> None:
    seeded = resource_slice(devices=[device(taints=[TAINT])])
    server.put_object(seeded)  # as if written while the gate was on
    reply = api.put(
        f"{SLICES}/{seeded['metadata']['name']}", resource_slice(devices=[device(taints=[TAINT])])
    )
    assert reply.status == 200
    assert reply.body["spec"]["devices"][0]["taints"][0]["key"] == TAINT["key"]
