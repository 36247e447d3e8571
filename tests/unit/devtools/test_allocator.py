"""The allocation simulator: partitionable devices, backtracking, constraints, and its failure texts."""

from __future__ import annotations

from typing import Any

import pytest

from gpudra.devtools.allocator import Allocation, AllocationFailure, Allocator

JSON = dict[str, Any]
NODE = "node-a"
GIB = 1024**3
A = "device.attributes['gpudra.io']"
MIG_3G = f"{A}.profile == '3g.40gb'"
MIG_1G = f"{A}.profile == '1g.10gb'"

# ---- hand-written slices: GPUs with a counter set each, as dynamic MIG publishes them ------------------


def attrs(**values: str | int) -> JSON:
    return {k: {"string": v} if isinstance(v, str) else {"int": v} for k, v in values.items()}


def counters(**values: int | str) -> JSON:
    return {k.replace("_", "-"): {"value": str(v)} for k, v in values.items()}


def memory_slices(start: int, size: int) -> JSON:
    return {f"memory-slice-{i}": {"value": "1"} for i in range(start, start + size)}


def counter_set(gpu: int) -> JSON:
    return {
        "name": f"gpu-{gpu}",
        "counters": {**memory_slices(0, 8), **counters(compute_slices=7, memory=80 * GIB)},
    }


def whole_gpu(gpu: int, **extra: str | int) -> JSON:
    return {
        "name": f"gpu-{gpu}",
        "attributes": attrs(type="gpu", gpuIndex=gpu, **extra),
        "capacity": {"memory": {"value": "80Gi"}},
        "consumesCounters": [
            {"counterSet": f"gpu-{gpu}", "counters": counter_set(gpu)["counters"]},
        ],
    }


def mig(gpu: int, profile: str, start: int, size: int, compute: int) -> JSON:
    memory = int(profile.split(".")[1].removesuffix("gb")) * GIB
    return {
        "name": f"gpu-{gpu}-mig-{profile.replace('.', '')}-{start}",
        "attributes": attrs(type="mig", gpuIndex=gpu, profile=profile, placementStart=start),
        "consumesCounters": [
            {
                "counterSet": f"gpu-{gpu}",
                "counters": {**memory_slices(start, size), **counters(compute_slices=compute, memory=memory)},
            },
        ],
    }


def gpu_devices(gpu: int) -> list[JSON]:
    return [
        whole_gpu(gpu),
        mig(gpu, "3g.40gb", 0, 4, 3),
        mig(gpu, "3g.40gb", 4, 4, 3),
        *(mig(gpu, "1g.10gb", start, 1, 1) for start in range(7)),
    ]


def slices(
    devices: list[JSON], sets: list[JSON], *, generation: int = 1, count: int | None = None
) -> list[JSON]:
    """The node's pool in the 1.35 layout: a device slice, then a slice with the counter sets."""
    total = count if count is not None else 1 + bool(sets)
    specs: list[JSON] = [{"devices": devices}] + ([{"sharedCounters": sets}] if sets else [])
    return [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": f"{NODE}-gpudra.io-{generation}-{i}"},
            "spec": {
                "driver": "gpudra.io",
                "nodeName": NODE,
                "pool": {"name": NODE, "generation": generation, "resourceSliceCount": total},
                **spec,
            },
        }
        for i, spec in enumerate(specs)
    ]


def mig_node(gpus: int = 2) -> list[JSON]:
    return slices([d for g in range(gpus) for d in gpu_devices(g)], [counter_set(g) for g in range(gpus)])


def device_class(name: str, *selectors: str, config: list[JSON] | None = None) -> JSON:
    spec: JSON = {"selectors": [{"cel": {"expression": s}} for s in selectors]}
    if config:
        spec["config"] = config
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": name},
        "spec": spec,
    }


def opaque(**parameters: str) -> JSON:
    return {"opaque": {"driver": "gpudra.io", "parameters": parameters}}


CLASSES = [
    device_class("gpu.gpudra.io", f"device.driver == 'gpudra.io' && {A}.type == 'gpu'"),
    device_class(
        "mig.gpudra.io", f"device.driver == 'gpudra.io' && {A}.type == 'mig'", config=[opaque(mps="off")]
    ),
    device_class("any.gpudra.io", "device.driver == 'gpudra.io'"),
]


def exactly(name: str, cls: str, *selectors: str, **fields: Any) -> JSON:
    spec: JSON = {"deviceClassName": cls, **fields}
    if selectors:
        spec["selectors"] = [{"cel": {"expression": s}} for s in selectors]
    return {"name": name, "exactly": spec}


def sub(name: str, cls: str, *selectors: str, **fields: Any) -> JSON:
    return {"name": name, **exactly(name, cls, *selectors, **fields)["exactly"]}


def claim(
    name: str, *requests: JSON, constraints: list[JSON] | None = None, config: list[JSON] | None = None
) -> JSON:
    devices: JSON = {"requests": list(requests)}
    if constraints:
        devices["constraints"] = constraints
    if config:
        devices["config"] = config
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}"},
        "spec": {"devices": devices},
    }


def ok(result: Allocation | AllocationFailure) -> Allocation:
    assert isinstance(result, Allocation), str(result)
    return result


def failed(result: Allocation | AllocationFailure) -> AllocationFailure:
    assert isinstance(result, AllocationFailure), f"unexpectedly allocated {result}"
    return result


def take(alloc: Allocator, name: str, *requests: JSON, **kwargs: Any) -> tuple[str, ...]:
    """Allocate and commit claim ``name``; its device names."""
    result = ok(alloc.allocate(claim(name, *requests, **kwargs)))
    alloc.commit(name, result)
    return result.devices


def three_g(name: str) -> tuple[str, JSON]:
    return name, exactly("mig", "mig.gpudra.io", MIG_3G)


# ---- partitionable devices ------------------------------------------------------------------------------


def test_two_3g_claims_get_disjoint_placements_then_the_second_gpu() -> None:
    alloc = Allocator(mig_node(), CLASSES)
    assert take(alloc, *three_g("c1")) == ("gpu-0-mig-3g40gb-0",)
    assert take(alloc, *three_g("c2")) == ("gpu-0-mig-3g40gb-4",)
    assert take(alloc, *three_g("c3")) == ("gpu-1-mig-3g40gb-0",)
    assert take(alloc, "c4", exactly("one", "mig.gpudra.io", MIG_1G)) == ("gpu-1-mig-1g10gb-4",)

    fifth = failed(alloc.allocate(claim("c5", exactly("mig", "mig.gpudra.io", MIG_3G))))
    assert fifth.claim == "default/c5"
    assert not fifth.error
    assert fifth.reasons == (
        "request mig: 1 device(s) needed, 0 of 4 matching devices available: "
        "gpu-0-mig-3g40gb-0: in use by claim c1; gpu-0-mig-3g40gb-4: in use by claim c2; "
        "gpu-1-mig-3g40gb-0: in use by claim c3; "
        "gpu-1-mig-3g40gb-4: counter set gpu-1 counter memory-slice-4: needs 1, 0 of 1 left "
        "(and 1 more counter)",
    )

    alloc.release("c4")
    assert take(alloc, *three_g("c5")) == ("gpu-1-mig-3g40gb-4",)
    sixth = failed(alloc.allocate(claim("c6", exactly("mig", "mig.gpudra.io", MIG_3G))))
    assert sixth.reasons[0].endswith("gpu-1-mig-3g40gb-4: in use by claim c5")


def test_whole_gpu_waits_until_its_slice_is_released() -> None:
    alloc = Allocator(mig_node(), CLASSES)
    assert take(alloc, "small", exactly("one", "mig.gpudra.io", MIG_1G)) == ("gpu-0-mig-1g10gb-0",)
    gpu0 = claim("whole", exactly("gpu", "gpu.gpudra.io", f"{A}.gpuIndex == 0"))
    assert failed(alloc.allocate(gpu0)).reasons == (
        "request gpu: 1 device(s) needed, 0 of 1 matching devices available: "
        "gpu-0: counter set gpu-0 counter memory-slice-0: needs 1, 0 of 1 left (and 2 more counters)",
    )
    assert ok(alloc.allocate(claim("any", exactly("gpu", "gpu.gpudra.io")))).devices == ("gpu-1",)
    alloc.release("small")
    assert ok(alloc.allocate(gpu0)).devices == ("gpu-0",)


def test_whole_gpu_takes_every_counter_so_no_slice_fits_beside_it() -> None:
    alloc = Allocator(mig_node(), CLASSES)
    assert take(alloc, "whole", exactly("gpu", "gpu.gpudra.io")) == ("gpu-0",)
    assert take(alloc, "small", exactly("one", "mig.gpudra.io", MIG_1G)) == ("gpu-1-mig-1g10gb-0",)


def test_seven_1g_fit_on_one_gpu_and_the_eighth_goes_elsewhere() -> None:
    alloc = Allocator(mig_node(), CLASSES)
    got = [take(alloc, f"c{i}", exactly("one", "mig.gpudra.io", MIG_1G))[0] for i in range(8)]
    assert got == [f"gpu-0-mig-1g10gb-{i}" for i in range(7)] + ["gpu-1-mig-1g10gb-0"]
    one_claim = Allocator(mig_node(), CLASSES).allocate(
        claim("c", exactly("m", "mig.gpudra.io", MIG_1G, count=8))
    )
    assert ok(one_claim).devices == (*(f"gpu-0-mig-1g10gb-{i}" for i in range(7)), "gpu-1-mig-1g10gb-0")


def test_counters_backtrack_within_one_request() -> None:
    """gpu-0 (whole) comes first but leaves no room for a second device: the two 3g placements do."""
    selector = f"{A}.gpuIndex == 0 && ({A}.type == 'gpu' || {A}.profile == '3g.40gb')"
    alloc = Allocator(mig_node(), CLASSES)
    two = alloc.allocate(claim("c", exactly("x", "any.gpudra.io", selector, count=2)))
    assert ok(two).devices == ("gpu-0-mig-3g40gb-0", "gpu-0-mig-3g40gb-4")
    three = failed(alloc.allocate(claim("c", exactly("x", "any.gpudra.io", selector, count=3))))
    assert three.reasons == (
        "request x: 3 device(s) needed and 3 matching devices available, but no 3 of them fit together: "
        "they consume the same counters (counter sets gpu-0)",
    )


def test_counters_and_constraint_backtrack_across_requests() -> None:
    """``a`` first takes 3g@0; ``b`` (1g at placement 2, same GPU) then fails on memory-slice-2 on gpu-0
    and on the constraint on gpu-1, so ``a`` moves to 3g@4."""
    alloc = Allocator(mig_node(), CLASSES)
    result = alloc.allocate(
        claim(
            "c",
            exactly("a", "mig.gpudra.io"),
            exactly("b", "mig.gpudra.io", f"{MIG_1G} && {A}.placementStart == 2"),
            constraints=[{"requests": ["a", "b"], "matchAttribute": "gpudra.io/gpuIndex"}],
        )
    )
    assert [(r.request, r.device) for r in ok(result).results] == [
        ("a", "gpu-0-mig-3g40gb-4"),
        ("b", "gpu-0-mig-1g10gb-2"),
    ]


def test_requests_that_fit_alone_but_not_together() -> None:
    alloc = Allocator(mig_node(1), CLASSES)
    result = alloc.allocate(
        claim("c", exactly("whole", "gpu.gpudra.io"), exactly("slice", "mig.gpudra.io", MIG_1G))
    )
    assert failed(result).reasons == (
        "requests whole, slice: each can be allocated alone, but not all together "
        "(they compete for the same devices or counters)",
    )


def test_all_mode_needs_every_matching_device() -> None:
    alloc = Allocator(mig_node(), CLASSES)
    every_3g = claim("all", exactly("mig", "mig.gpudra.io", MIG_3G, allocationMode="All"))
    placements = ("gpu-0-mig-3g40gb-0", "gpu-0-mig-3g40gb-4", "gpu-1-mig-3g40gb-0", "gpu-1-mig-3g40gb-4")
    assert ok(alloc.allocate(every_3g)).devices == placements
    take(alloc, "small", exactly("one", "mig.gpudra.io", MIG_1G))
    assert failed(alloc.allocate(every_3g)).reasons == (
        "request mig: allocationMode All needs all 4 matching devices, 1 unavailable: "
        "gpu-0-mig-3g40gb-0: counter set gpu-0 counter memory-slice-0: needs 1, 0 of 1 left",
    )


def test_admin_access_ignores_use_by_other_claims() -> None:
    alloc = Allocator(fabric_node(), CLASSES)
    gpu0 = f"{A}.gpuIndex == 0"
    take(alloc, "user", exactly("gpu", "gpu.gpudra.io", gpu0))
    admin = ok(alloc.allocate(claim("admin", exactly("gpu", "gpu.gpudra.io", gpu0, adminAccess=True))))
    assert admin.as_dict()["devices"]["results"] == [
        {"request": "gpu", "driver": "gpudra.io", "pool": NODE, "device": "gpu-0", "adminAccess": True}
    ]
    alloc.commit("admin", admin)  # holds nothing: gpu-0 stays the user's only
    assert alloc.usage().in_use == {("gpudra.io", NODE, "gpu-0"): "user"}
    twice = claim("admin", exactly("gpu", "gpu.gpudra.io", gpu0, adminAccess=True, count=2))
    assert failed(alloc.allocate(twice)).reasons == (
        "request gpu: 2 device(s) needed, 1 of 1 matching devices available",
    )


def test_admin_access_still_needs_counters_as_in_the_scheduler() -> None:
    """The scheduler checks an admin-access device's counters like any other's (only devices with
    allowMultipleAllocations skip that), so a partitionable device in use is refused."""
    alloc = Allocator(mig_node(), CLASSES)
    gpu0 = f"{A}.gpuIndex == 0"
    take(alloc, "user", exactly("gpu", "gpu.gpudra.io", gpu0))
    admin = alloc.allocate(claim("admin", exactly("gpu", "gpu.gpudra.io", gpu0, adminAccess=True)))
    assert failed(admin).reasons == (
        "request gpu: 1 device(s) needed, 0 of 1 matching devices available: "
        "gpu-0: counter set gpu-0 counter memory-slice-0: needs 1, 0 of 1 left (and 9 more counters)",
    )


# ---- constraints ----------------------------------------------------------------------------------------


def fabric_node() -> list[JSON]:
    """8 GPUs: domain a = 0, 2, 4; domain b = 1, 3, 5, 6; gpu-7 has no fabricDomain."""
    domains = ["a", "b", "a", "b", "a", "b", "b"]
    devices = [whole_gpu(i, fabricDomain=d) for i, d in enumerate(domains)] + [whole_gpu(7)]
    for device in devices:
        del device["consumesCounters"]
    return slices(devices, [])


def four_on_one_domain(name: str = "c") -> JSON:
    return claim(
        name,
        exactly("gpus", "gpu.gpudra.io", count=4),
        constraints=[{"requests": ["gpus"], "matchAttribute": "gpudra.io/fabricDomain"}],
    )


def test_match_attribute_finds_the_domain_that_has_four() -> None:
    alloc = Allocator(fabric_node(), CLASSES)
    assert ok(alloc.allocate(four_on_one_domain())).devices == ("gpu-1", "gpu-3", "gpu-5", "gpu-6")
    take(alloc, "other", exactly("gpu", "gpu.gpudra.io", f"{A}.gpuIndex == 5"))
    assert failed(alloc.allocate(four_on_one_domain())).reasons == (
        "constraint #0 (matchAttribute gpudra.io/fabricDomain, requests gpus): no choice of available "
        "devices can share one value; values of the available devices: "
        "'a' (3): gpu-0, gpu-2, gpu-4; 'b' (3): gpu-1, gpu-3, gpu-6; no value (1): gpu-7",
    )


def test_distinct_attribute_and_missing_attribute() -> None:
    alloc = Allocator(fabric_node(), CLASSES)
    distinct = [{"distinctAttribute": "gpudra.io/fabricDomain"}]
    two = alloc.allocate(claim("c", exactly("gpus", "gpu.gpudra.io", count=2), constraints=distinct))
    assert ok(two).devices == ("gpu-0", "gpu-1")
    three = alloc.allocate(claim("c", exactly("gpus", "gpu.gpudra.io", count=3), constraints=distinct))
    assert failed(three).reasons == (
        "constraint #0 (distinctAttribute gpudra.io/fabricDomain, requests all): no choice of available "
        "devices can have distinct values; values of the available devices: "
        "'a' (3): gpu-0, gpu-2, gpu-4; 'b' (4): gpu-1, gpu-3, gpu-5, gpu-6; no value (1): gpu-7",
    )


def test_search_bound_stops_with_an_error() -> None:
    alloc = Allocator(fabric_node(), CLASSES, max_steps=5)
    result = failed(alloc.allocate(four_on_one_domain()))
    assert result.error
    assert result.reasons == (
        "claim default/c: search stopped after 5 steps without an allocation (the simulator's bound on work)",
    )


# ---- requests ------------------------------------------------------------------------------------------


def test_first_available_falls_through_to_the_second_subrequest() -> None:
    alloc = Allocator(mig_node(), CLASSES)
    request = {
        "name": "gpu",
        "firstAvailable": [
            sub("h200", "gpu.gpudra.io", f"{A}.gpuIndex == 9"),
            sub("slice", "mig.gpudra.io", MIG_3G),
        ],
    }
    config = [{"requests": ["gpu/slice"], **opaque(sharing="timeslicing")}]
    result = ok(alloc.allocate(claim("c", request, config=config)))
    assert result.as_dict() == {
        "devices": {
            "results": [
                {"request": "gpu/slice", "driver": "gpudra.io", "pool": NODE, "device": "gpu-0-mig-3g40gb-0"}
            ],
            "config": [
                {"source": "FromClass", **opaque(mps="off")},
                {"source": "FromClaim", **opaque(sharing="timeslicing")},  # covers every request
            ],
        },
        "nodeSelector": {
            "nodeSelectorTerms": [
                {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [NODE]}]}
            ]
        },
    }
    for name in ("a", "b", "c", "d"):
        take(alloc, *three_g(name))
    assert failed(alloc.allocate(claim("e", request))).reasons == (
        "request gpu/h200: no device matches class gpu.gpudra.io and the request's selectors "
        "(2 of 20 devices match the class)",
        "request gpu/slice: 1 device(s) needed, 0 of 4 matching devices available: "
        "gpu-0-mig-3g40gb-0: in use by claim a; gpu-0-mig-3g40gb-4: in use by claim b; "
        "gpu-1-mig-3g40gb-0: in use by claim c; gpu-1-mig-3g40gb-4: in use by claim d",
    )


def test_config_of_a_class_used_by_two_requests_covers_both() -> None:
    alloc = Allocator(mig_node(), CLASSES)
    both = ok(alloc.allocate(claim("c", exactly("a", "mig.gpudra.io"), exactly("b", "mig.gpudra.io"))))
    assert both.as_dict()["devices"]["config"] == [{"source": "FromClass", **opaque(mps="off")}]
    mixed = claim("c", exactly("a", "mig.gpudra.io"), exactly("b", "gpu.gpudra.io"), config=[opaque(x="1")])
    assert ok(alloc.allocate(mixed)).as_dict()["devices"]["config"] == [
        {"source": "FromClass", "requests": ["a"], **opaque(mps="off")},
        {"source": "FromClaim", **opaque(x="1")},
    ]


def test_missing_attribute_in_a_selector_is_the_schedulers_cel_error() -> None:
    """gpu-0, the first device, has no ``profile``: the unguarded selector aborts the allocation."""
    alloc = Allocator(mig_node(), CLASSES)
    unguarded = f"{A}.profile == '1g.10gb'"
    result = failed(alloc.allocate(claim("c", exactly("gpu", "any.gpudra.io", unguarded))))
    assert result.error
    assert result.reasons == ("claim default/c: selector #0: CEL runtime error: no such key: profile",)
    guarded = f"'profile' in {A} && {unguarded}"
    assert ok(alloc.allocate(claim("c", exactly("gpu", "any.gpudra.io", guarded)))).devices == (
        "gpu-0-mig-1g10gb-0",
    )

    bad_class = device_class("bad.gpudra.io", f"{A}.nope == 1")
    with_bad = Allocator(mig_node(), [*CLASSES, bad_class])
    assert failed(with_bad.allocate(claim("c", exactly("gpu", "bad.gpudra.io")))).reasons == (
        "class bad.gpudra.io: selector #0: CEL runtime error: no such key: nope",
    )


def test_unknown_class_is_refused_and_an_unknown_capacity_matches_no_device() -> None:
    alloc = Allocator(mig_node(), CLASSES)
    assert failed(alloc.allocate(claim("c", exactly("gpu", "tpu.example.com")))).reasons == (
        "claim default/c, request gpu: could not retrieve device class tpu.example.com: "
        'deviceclass.resource.k8s.io "tpu.example.com" not found',
    )
    wants = exactly("gpu", "gpu.gpudra.io", capacity={"requests": {"bandwidth": "10G"}})
    assert failed(alloc.allocate(claim("c", wants))).reasons == (
        "request gpu: 1 device(s) needed, 0 of 2 matching devices available: "
        "gpu-0: capacity request refused: no capacity bandwidth; "
        "gpu-1: capacity request refused: no capacity bandwidth",
    )


# ---- pools and taints -----------------------------------------------------------------------------------


def test_incomplete_pool_is_not_used() -> None:
    devices_only = mig_node()[:1]  # the counter slice is missing: 1 of 2 slices
    alloc = Allocator(devices_only, CLASSES)
    assert failed(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io")))).reasons == (
        "resource pool gpudra.io/node-a is incomplete: 1 of 2 slices of generation 1 present; "
        "its devices are not used",
        "request gpu: no device in a usable resource pool",
    )
    everything = failed(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io", allocationMode="All"))))
    assert everything.error
    assert everything.reasons == (
        "claim default/c, request gpu: asks for all devices, but resource pool gpudra.io/node-a is "
        "currently being updated",
    )


def test_only_the_newest_generation_counts() -> None:
    old = slices([whole_gpu(0), whole_gpu(1)], [counter_set(0), counter_set(1)], generation=1)
    new = slices([whole_gpu(1)], [counter_set(1)], generation=2)
    alloc = Allocator([*old, *new], CLASSES)
    assert ok(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io")))).devices == ("gpu-1",)
    half_new = Allocator([*old, new[0]], CLASSES)  # generation 2 is still being written
    assert failed(half_new.allocate(claim("c", exactly("gpu", "gpu.gpudra.io")))).reasons[0] == (
        "resource pool gpudra.io/node-a is incomplete: 1 of 2 slices of generation 2 present; "
        "its devices are not used"
    )


def test_pool_with_an_undefined_counter_is_invalid() -> None:
    alloc = Allocator(slices([whole_gpu(0)], [counter_set(1)]), CLASSES)
    assert failed(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io")))).reasons[0] == (
        "resource pool gpudra.io/node-a is invalid: device gpu-0 consumes counter memory-slice-0 of counter "
        "set gpu-0, which the pool does not define; its devices are not used"
    )


def tainted_node(effect: str) -> list[JSON]:
    gpu0 = whole_gpu(0)
    gpu0["taints"] = [{"key": "gpudra.io/unhealthy", "value": "xid-79", "effect": effect}]
    return slices([gpu0, whole_gpu(1)], [counter_set(0), counter_set(1)])


def test_no_schedule_taint_refuses_the_device_unless_tolerated() -> None:
    alloc = Allocator(tainted_node("NoSchedule"), CLASSES)
    assert ok(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io")))).devices == ("gpu-1",)
    assert failed(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io", count=2)))).reasons == (
        "request gpu: 2 device(s) needed, 1 of 2 matching devices available: "
        "gpu-0: taint gpudra.io/unhealthy=xid-79:NoSchedule not tolerated",
    )
    tolerant = [{"key": "gpudra.io/unhealthy", "operator": "Exists", "effect": "NoSchedule"}]
    both = alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io", count=2, tolerations=tolerant)))
    assert ok(both).devices == ("gpu-0", "gpu-1")
    wrong_value = [{"key": "gpudra.io/unhealthy", "value": "xid-48"}]
    refused = alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io", count=2, tolerations=wrong_value)))
    failed(refused)


@pytest.mark.parametrize("effect", ["None", "PreferNoSchedule"])
def test_other_taint_effects_do_not_refuse(effect: str) -> None:
    alloc = Allocator(tainted_node(effect), CLASSES)
    assert ok(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io")))).devices == ("gpu-0",)


def test_no_execute_taint_refuses_too() -> None:
    alloc = Allocator(tainted_node("NoExecute"), CLASSES)
    assert ok(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io")))).devices == ("gpu-1",)


def test_a_shared_device_without_a_policy_is_consumed_whole_by_a_claim_asking_nothing() -> None:
    """(Consumable capacity has its own tests in test_allocator_capacity.py.)"""
    shared = whole_gpu(0)
    shared["allowMultipleAllocations"] = True
    alloc = Allocator(slices([shared], [counter_set(0)]), CLASSES)
    assert take(alloc, "first", exactly("gpu", "gpu.gpudra.io")) == ("gpu-0",)
    assert failed(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io")))).reasons == (
        "request gpu: 1 device(s) needed, 0 of 1 matching devices available: "
        "gpu-0: capacity exhausted: memory 80Gi of 80Gi consumed by claims first (request gpu needs 80Gi)",
    )


# ---- commit / release, nodes ---------------------------------------------------------------------------


def test_commit_takes_a_claims_status_allocation_and_refuses_double_use() -> None:
    alloc = Allocator(mig_node(), CLASSES)
    status = {
        "devices": {"results": [{"request": "r", "driver": "gpudra.io", "pool": NODE, "device": "gpu-0"}]}
    }
    alloc.commit("existing", status)
    assert take(alloc, "next", exactly("gpu", "gpu.gpudra.io")) == ("gpu-1",)
    with pytest.raises(
        ValueError, match=r"device gpudra.io/node-a/gpu-0 is already allocated to claim existing"
    ):
        alloc.commit("again", status)
    with pytest.raises(ValueError, match="claim next is already allocated"):
        alloc.commit("next", status)
    alloc.release("existing")
    alloc.commit("again", status)


def test_slices_of_several_nodes_need_a_node_name() -> None:
    other = [dict(s, spec=dict(s["spec"], nodeName="node-b")) for s in mig_node(1)]
    for s in other:
        s["spec"]["pool"] = dict(s["spec"]["pool"], name="node-b")
    with pytest.raises(ValueError, match=r"slices of several nodes \(node-a, node-b\): pass node_name"):
        Allocator([*mig_node(), *other], CLASSES)
    alloc = Allocator([*mig_node(), *other], CLASSES, node_name="node-b")
    result = ok(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io"))))
    assert (result.results[0].pool, result.node_name) == ("node-b", "node-b")


def test_all_nodes_slices_give_no_node_selector_and_failures_are_not_committed() -> None:
    everywhere = slices([whole_gpu(0)], [counter_set(0)])
    for s in everywhere:
        del s["spec"]["nodeName"]
        s["spec"]["allNodes"] = True
    alloc = Allocator(everywhere, CLASSES)
    result = ok(alloc.allocate(claim("c", exactly("gpu", "gpu.gpudra.io"))))
    assert result.node_name is None
    assert "nodeSelector" not in result.as_dict()
    alloc.commit("c", result)
    refused = failed(alloc.allocate(claim("d", exactly("gpu", "gpu.gpudra.io"))))
    with pytest.raises(TypeError, match="cannot commit a failed allocation"):
        alloc.commit("d", refused)  # type: ignore[arg-type]  # the runtime guard for untyped callers
