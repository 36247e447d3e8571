"""slicediff.slice_content_equal: what the publisher compares with the API's copy of a slice."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra.model.inventory import Inventory
from gpudra.model.quantity import canonical_quantity
from gpudra.planning import slices
from gpudra.planning.offer import plan_offer
from gpudra.planning.slicediff import slice_content_equal
from tests.unit.test_slices import H100, NV_INV, inventories


def server_copy(desired: Any) -> Any:
    """What the apiserver would return: canonical quantities, server metadata, empty fields omitted."""
    actual = json.loads(json.dumps(desired))
    actual["metadata"].update(uid="0f7c", resourceVersion="812", generation=1,
                              creationTimestamp="2026-01-01T00:00:00Z", managedFields=[{"manager": "gpudra"}])
    actual["metadata"]["labels"]["someone.else/label"] = "x"
    actual["metadata"].setdefault("ownerReferences", []).append(
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "other", "uid": "1"})
    for dev in actual["spec"]["devices"]:
        for cap in dev.get("capacity", {}).values():
            cap["value"] = canonical_quantity(cap["value"])
        dev["attributes"] = dict(reversed(dev.get("attributes", {}).items()))
    if not actual["spec"]["devices"]:
        del actual["spec"]["devices"]
    return actual


def test_canonical_quantities_compare_equal() -> None:
    gpu = dataclasses.replace(H100, memory_bytes=1048576000)
    desired = slices.plan_slices(plan_offer(dataclasses.replace(NV_INV, devices=(gpu,))), "n", "u", 1)[0]
    actual = server_copy(desired)
    assert actual["spec"]["devices"][0]["capacity"]["memory"]["value"] == "1048576k"
    assert slice_content_equal(desired, actual)


def test_empty_pool_compares_equal_when_the_server_omits_devices() -> None:
    desired = slices.plan_slices(plan_offer(Inventory()), "n", None, 1)[0]
    assert slice_content_equal(desired, server_copy(desired))


Mutation = Callable[[Any], None]


def set_in(path: list[Any], value: Any) -> Mutation:
    def mutate(obj: Any) -> None:
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return mutate


def delete_in(path: list[Any]) -> Mutation:
    def mutate(obj: Any) -> None:
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]
    return mutate


DEV0 = ["spec", "devices", 0]
MUTATIONS: dict[str, Mutation] = {
    "generation": set_in(["spec", "pool", "generation"], 2),
    "slice count": set_in(["spec", "pool", "resourceSliceCount"], 5),
    "pool name": set_in(["spec", "pool", "name"], "other"),
    "node name": set_in(["spec", "nodeName"], "other"),
    "driver": set_in(["spec", "driver"], "other.io"),
    "object name": set_in(["metadata", "name"], "other"),
    "our label": set_in(["metadata", "labels", "gpudra.io/node"], "other"),
    "label gone": delete_in(["metadata", "labels", "gpudra.io/node"]),
    "owner uid": set_in(["metadata", "ownerReferences", 0, "uid"], "other"),
    "owner gone": delete_in(["metadata", "ownerReferences"]),
    "device gone": delete_in([*DEV0[:-1], 0]),
    "device added": lambda s: s["spec"]["devices"].append({"name": "gpu-extra"}),
    "devices swapped": lambda s: s["spec"]["devices"].reverse(),
    "device renamed": set_in([*DEV0, "name"], "gpu-other"),
    "attribute value": set_in([*DEV0, "attributes", "productName", "string"], "other"),
    "attribute type": set_in([*DEV0, "attributes", "index"], {"string": "0"}),
    "int became bool": set_in([*DEV0, "attributes", "minor"], {"bool": False}),
    "0 became False": set_in([*DEV0, "attributes", "minor", "int"], False),
    "attribute gone": delete_in([*DEV0, "attributes", "brand"]),
    "attribute added": set_in([*DEV0, "attributes", "extra"], {"int": 1}),
    "two values": set_in([*DEV0, "attributes", "uuid", "version"], "1.0.0"),
    "capacity value": set_in([*DEV0, "capacity", "memory", "value"], "1500m"),
    "capacity junk": set_in([*DEV0, "capacity", "memory", "value"], "lots"),
    "capacity gone": delete_in([*DEV0, "capacity", "multiprocessors"]),
    "capacity added": set_in([*DEV0, "capacity", "extra"], {"value": "1"}),
    "all attributes gone": delete_in([*DEV0, "attributes"]),
}


def two_gpu_slice() -> Any:
    other = dataclasses.replace(H100, uuid="GPU-ffff0000-0000-0000-0000-000000000000", index=1)
    offer = plan_offer(dataclasses.replace(NV_INV, devices=(H100, other)))
    return slices.plan_slices(offer, "node-a", "uid-1", 1)[0]


@pytest.mark.parametrize("mutation", sorted(MUTATIONS))
def test_any_change_to_what_we_own_is_a_difference(mutation: str) -> None:
    desired = two_gpu_slice()
    actual = server_copy(desired)
    assert slice_content_equal(desired, actual)
    MUTATIONS[mutation](actual)
    assert not slice_content_equal(desired, actual)


def test_fields_we_do_not_set_are_ignored() -> None:
    desired = two_gpu_slice()
    actual = server_copy(desired)
    actual["spec"]["devices"][0]["allowMultipleAllocations"] = None
    actual["spec"]["devices"][0]["capacity"]["memory"]["requestPolicy"] = {"default": "1"}
    actual["status"] = {}
    assert slice_content_equal(desired, actual)


@settings(max_examples=40, deadline=None)
@given(inventories(max_size=6), st.sampled_from(sorted(MUTATIONS)))
def test_server_copy_is_equal_and_mutated_copy_is_not(inv: Inventory, mutation: str) -> None:
    desired = slices.plan_slices(plan_offer(inv), "node-a", "uid-1", 3)[0]
    actual = server_copy(desired)
    assert slice_content_equal(desired, actual)
    before = copy.deepcopy(actual)
    try:
        MUTATIONS[mutation](actual)
    except (KeyError, IndexError):
        return  # this random device lacks the field the mutation edits
    if actual != before:
        assert not slice_content_equal(desired, actual)


def test_a_taint_or_counter_use_the_api_holds_that_the_plan_dropped_is_a_difference() -> None:
    added = "2026-12-07T00:00:00Z"
    taint = {"key": "gpudra.io/xid", "value": "48", "effect": "NoExecute", "timeAdded": added}
    use = {"counterSet": "gpu-a", "counters": {"memory-slice-0": {"value": "1"}}}
    for key, value in (("taints", [taint]), ("consumesCounters", [use])):
        healed: dict[str, Any] = {"metadata": {"name": "s"}, "spec": {"devices": [{"name": "d"}]}}
        held: dict[str, Any] = {"metadata": {"name": "s"}, "spec": {"devices": [{"name": "d", key: value}]}}
        assert not slice_content_equal(healed, held)  # type: ignore[arg-type]
        assert slice_content_equal(held, held)  # type: ignore[arg-type]
