"""Consumable capacity (KEP-5075) in the allocation simulator: request policies, rounding, shares of one
device across claims, shareIDs and consumedCapacity, and why a share does not fit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.allocator import Allocation, Allocator
from gpudra.planning import slices as slice_plan
from gpudra.planning.offer import plan_offer
from gpudra.planning.partitions import MigPolicy
from gpudra.vendors.select import open_driver
from tests.unit.devtools.test_allocator import (
    CLASSES,
    attrs,
    claim,
    counter_set,
    device_class,
    exactly,
    failed,
    mig,
    ok,
    slices,
    take,
)

JSON = dict[str, Any]
UUID4 = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
RANGE = {"default": "80Gi", "validRange": {"min": "2Gi", "max": "80Gi", "step": "1Mi"}}
ZERO = {"default": "0", "validValues": ["0"]}


def shared_gpu(index: int, policy: JSON | None = None, **extra: Any) -> JSON:
    return {
        "name": f"gpu-{index}",
        "allowMultipleAllocations": True,
        "attributes": attrs(type="gpu", gpuIndex=index),
        "capacity": {
            "memory": {"value": "80Gi", "requestPolicy": policy or RANGE},
            "multiprocessors": {"value": "132", "requestPolicy": ZERO},
        },
        **extra,
    }


def node(*devices: JSON) -> Allocator:
    return Allocator(slices(list(devices), []), CLASSES)


def share(name: str, memory: str | None = None, request: str = "gpu", **caps: str) -> JSON:
    wanted = {**({"memory": memory} if memory else {}), **caps}
    return exactly(request, "gpu.gpudra.io", capacity={"requests": wanted}) if wanted else exactly(
        request, "gpu.gpudra.io"
    )


def results(allocation: Allocation) -> list[JSON]:
    return [dict(r) for r in allocation.as_dict()["devices"]["results"]]


# ---- rounding and the request policy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("asked", "consumed"),
    [
        ("20Gi", "20Gi"),  # on the grid
        ("20G", "19074Mi"),  # 20e9 bytes rounded up to min + n * 1Mi, written in the step's format
        ("1Gi", "2Gi"),  # below min: min
        ("2147483649", "2049Mi"),  # one byte above min: one step more
    ],
)
def test_requests_are_rounded_up_to_the_policy(asked: str, consumed: str) -> None:
    result = ok(node(shared_gpu(0)).allocate(claim("c", share("gpu", asked))))
    [entry] = results(result)
    assert entry["consumedCapacity"] == {"memory": consumed, "multiprocessors": "0"}
    assert UUID4.fullmatch(entry["shareID"])


def test_no_request_consumes_the_default_the_whole_memory() -> None:
    alloc = node(shared_gpu(0))
    [entry] = results(ok(alloc.allocate(claim("c", share("gpu")))))
    assert entry["consumedCapacity"] == {"memory": "80Gi", "multiprocessors": "0"}
    alloc.commit("whole", ok(alloc.allocate(claim("c", share("gpu")))))
    assert failed(alloc.allocate(claim("d", share("gpu", "2Gi")))).reasons == (
        "request gpu: 1 device(s) needed, 0 of 1 matching devices available: gpu-0: capacity exhausted: "
        "memory 80Gi of 80Gi consumed by claims whole (request gpu needs 2Gi)",
    )


def test_the_policy_refuses_more_than_max_and_capacities_it_keeps() -> None:
    alloc = node(shared_gpu(0))
    assert failed(alloc.allocate(claim("c", share("gpu", "81Gi")))).reasons == (
        "request gpu: 1 device(s) needed, 0 of 1 matching devices available: gpu-0: capacity request "
        "refused: memory 81Gi: more than the policy's max 80Gi",
    )
    assert failed(alloc.allocate(claim("c", share("gpu", "8Gi", multiprocessors="10")))).reasons == (
        "request gpu: 1 device(s) needed, 0 of 1 matching devices available: gpu-0: capacity request "
        "refused: multiprocessors 10: not one of the policy's validValues 0",
    )


def test_valid_values_round_up_to_the_next_value() -> None:
    policy = {"default": "40Gi", "validValues": ["10Gi", "20Gi", "40Gi"]}
    alloc = node(shared_gpu(0, policy))
    consumed = [
        results(ok(alloc.allocate(claim("c", share("gpu", asked)))))[0]["consumedCapacity"]["memory"]
        for asked in ("15Gi", "10Gi", None)
    ]
    assert consumed == ["20Gi", "10Gi", "40Gi"]
    assert "not one of the policy's validValues 10Gi, 20Gi, 40Gi" in failed(
        alloc.allocate(claim("c", share("gpu", "50Gi")))
    ).message


# ---- shares across claims -----------------------------------------------------------------------------


def test_three_claims_of_three_namespaces_share_one_gpu_until_it_is_full() -> None:
    alloc = node(shared_gpu(0), shared_gpu(1))
    held = []
    for uid, namespace, memory in (("a", "team-a", "20Gi"), ("b", "team-b", "20Gi"), ("c", "team-c", "40Gi")):
        request = claim(uid, share("gpu", memory))
        request["metadata"]["namespace"] = namespace
        result = ok(alloc.allocate(request))
        alloc.commit(uid, result)
        held.extend(results(result))
    assert [r["device"] for r in held] == ["gpu-0", "gpu-0", "gpu-0"]
    assert len({r["shareID"] for r in held}) == 3
    assert [r["consumedCapacity"]["memory"] for r in held] == ["20Gi", "20Gi", "40Gi"]
    assert take(alloc, "d", share("gpu", "20Gi")) == ("gpu-1",)  # gpu-0 is full


def test_explain_names_the_claims_whose_shares_exhaust_the_capacity() -> None:
    alloc = node(shared_gpu(0))
    take(alloc, "a", share("gpu", "30Gi"))
    take(alloc, "b", share("gpu", "40Gi"))
    assert failed(alloc.allocate(claim("c", share("gpu", "20Gi")))).reasons == (
        "request gpu: 1 device(s) needed, 0 of 1 matching devices available: gpu-0: capacity exhausted: "
        "memory 70Gi of 80Gi consumed by claims a, b (request gpu needs 20Gi)",
    )
    alloc.release("a")
    assert take(alloc, "c", share("gpu", "20Gi")) == ("gpu-0",)


def test_one_claim_may_take_two_shares_of_one_device_unless_a_constraint_says_otherwise() -> None:
    alloc = node(shared_gpu(0), shared_gpu(1))
    two = [share("gpu", "30Gi", request="x"), share("gpu", "30Gi", request="y")]
    picked = results(ok(alloc.allocate(claim("c", *two))))
    assert [r["device"] for r in picked] == ["gpu-0", "gpu-0"]
    assert picked[0]["shareID"] != picked[1]["shareID"]
    apart = [{"requests": ["x", "y"], "distinctAttribute": "gpudra.io/gpuIndex"}]
    assert ok(alloc.allocate(claim("c", *two, constraints=apart))).devices == ("gpu-0", "gpu-1")
    fifty = [share("gpu", "50Gi", request="x"), share("gpu", "50Gi", request="y")]
    assert ok(alloc.allocate(claim("c", *fifty))).devices == ("gpu-0", "gpu-1")  # 100Gi cannot share one


def test_a_claim_holding_a_shared_device_whole_keeps_shares_off() -> None:
    """An allocation from before the device was shared (no shareID) holds it whole, as in the scheduler."""
    alloc = node(shared_gpu(0))
    alloc.commit("old", {"devices": {"results": [
        {"request": "gpu", "driver": "gpudra.io", "pool": "node-a", "device": "gpu-0"},
    ]}})  # fmt: skip
    assert failed(alloc.allocate(claim("c", share("gpu", "2Gi")))).reasons == (
        "request gpu: 1 device(s) needed, 0 of 1 matching devices available: "
        "gpu-0: in use by claim old (whole, without a share)",
    )


def test_a_status_allocation_with_shares_is_committed_as_shares() -> None:
    alloc = node(shared_gpu(0))
    status = {"devices": {"results": [{
        "request": "gpu", "driver": "gpudra.io", "pool": "node-a", "device": "gpu-0",
        "shareID": "0d27f4a1-6a1e-4f3b-9a51-5c1f1e0a6b7e", "consumedCapacity": {"memory": "60Gi"},
    }]}}  # fmt: skip
    alloc.commit("theirs", status)
    assert failed(alloc.allocate(claim("c", share("gpu", "21Gi")))).message.endswith(
        "memory 60Gi of 80Gi consumed by claims theirs (request gpu needs 21Gi)"
    )
    assert take(alloc, "mine", share("gpu", "20Gi")) == ("gpu-0",)
    with pytest.raises(ValueError, match="is shared by claims theirs, mine: cannot be whole"):
        alloc.commit("whole", {"devices": {"results": [
            {"request": "gpu", "driver": "gpudra.io", "pool": "node-a", "device": "gpu-0"},
        ]}})  # fmt: skip


def test_an_exclusive_device_takes_a_capacity_request_as_a_minimum() -> None:
    exclusive = {"name": "gpu-0", "attributes": attrs(type="gpu"), "capacity": {"memory": {"value": "80Gi"}}}
    alloc = node(exclusive)
    assert failed(alloc.allocate(claim("c", share("gpu", "81Gi")))).reasons == (
        "request gpu: 1 device(s) needed, 0 of 1 matching devices available: "
        "gpu-0: capacity memory is 80Gi, request gpu needs 81Gi",
    )
    [entry] = results(ok(alloc.allocate(claim("c", share("gpu", "40Gi")))))
    assert "shareID" not in entry  # the whole device
    assert "consumedCapacity" not in entry
    take(alloc, "first", share("gpu", "40Gi"))
    assert "in use by claim first" in failed(alloc.allocate(claim("c", share("gpu", "40Gi")))).message


def test_a_shared_device_consumes_its_counters_for_its_first_share_only() -> None:
    whole = shared_gpu(0, consumesCounters=[{"counterSet": "gpu-0", "counters": counter_set(0)["counters"]}])
    alloc = Allocator(slices([whole, mig(0, "1g.10gb", 0, 1, 1)], [counter_set(0)]), CLASSES)
    take(alloc, "a", share("gpu", "10Gi"))
    assert take(alloc, "b", share("gpu", "10Gi")) == ("gpu-0",)  # no counter left, and none needed
    assert "counter set gpu-0" in failed(
        alloc.allocate(claim("m", exactly("mig", "mig.gpudra.io")))
    ).message


def test_a_class_can_select_shared_devices_only() -> None:
    exclusive = {"name": "gpu-9", "attributes": attrs(type="gpu"), "capacity": {"memory": {"value": "80Gi"}}}
    classes = [device_class("shared.gpudra.io", "device.allowMultipleAllocations == true")]
    alloc = Allocator(slices([exclusive, shared_gpu(0)], []), classes)
    wants = exactly("gpu", "shared.gpudra.io", capacity={"requests": {"memory": "8Gi"}})
    assert ok(alloc.allocate(claim("c", wants))).devices == ("gpu-0",)


def test_a_capacity_request_that_is_no_quantity_is_a_claim_error() -> None:
    result = failed(node(shared_gpu(0)).allocate(claim("c", share("gpu", "lots"))))
    assert result.error
    assert result.reasons[0].startswith("claim default/c, request gpu: capacity.requests[memory]: invalid")


# ---- what gpudra publishes --------------------------------------------------------------------------


def _published(profile: str) -> list[JSON]:
    backend = open_driver("mock", profile, Path("/sys"))
    try:
        inv = backend.discover()
    finally:
        backend.close()
    offer = plan_offer(inv, policy=MigPolicy(dynamic=False, fractional=True))
    return [dict(s) for s in slice_plan.plan_slices(offer, "node-a", None, 1)]


def test_a_published_h100_takes_20_20_39_gi_but_not_20_20_40() -> None:
    """An H100 80GB has 79.6 GiB (81559Mi): 20 + 20 + 40 GiB does not fit on one, 20 + 20 + 39 GiB does."""
    pool = _published("dgx-h100")
    one_gpu = [{**pool[0], "spec": {**pool[0]["spec"], "devices": pool[0]["spec"]["devices"][:1]}}]
    alloc = Allocator(one_gpu, CLASSES)
    take(alloc, "a", share("gpu", "20Gi"))
    take(alloc, "b", share("gpu", "20Gi"))
    assert failed(alloc.allocate(claim("c", share("gpu", "40Gi")))).message.endswith(
        "capacity exhausted: memory 40Gi of 81559Mi consumed by claims a, b (request gpu needs 40Gi)"
    )
    take(alloc, "c", share("gpu", "39Gi"))
    assert "memory 79Gi of 81559Mi consumed by claims a, b, c (request gpu needs 2Gi)" in failed(
        alloc.allocate(claim("d", share("gpu", "1Gi")))  # rounded up to the 2Gi minimum
    ).message
    whole = Allocator(one_gpu, CLASSES)
    [entry] = results(ok(whole.allocate(claim("x", share("gpu")))))  # a claim asking nothing: all of it
    assert entry["consumedCapacity"]["memory"] == "85520809984"


def test_a_published_mi300x_partition_shares_its_memory() -> None:
    alloc = Allocator(_published("mi300x-8-cpx-nps4"), CLASSES)
    [entry] = results(ok(alloc.allocate(claim("c", exactly("gpu", "any.gpudra.io")))))
    assert entry["consumedCapacity"] == {
        "computeUnits": "0", "memory": "24Gi", "memoryPool": "0", "simdUnits": "0",
    }  # fmt: skip
    assert take(alloc, "a", exactly("gpu", "any.gpudra.io", capacity={"requests": {"memory": "8Gi"}}))
