"""Dynamic MIG publishing (pure): counter sets, what each device consumes, the slices and their limits.

The H100 table (tests/unit/mig_tables.py) is the real one: shared/fixtures/hardware/nvidia-gpus.json,
H100-SXM5-80GB, from the capture-h100 NVML capture and `nvidia-smi mig -lgipp`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from gpudra.model import k8stypes, names
from gpudra.model.inventory import (
    Device,
    DeviceKind,
    EngineCounts,
    Inventory,
    MigInfo,
    PciPlacement,
    Vendor,
)
from gpudra.planning import slices
from gpudra.planning.offer import plan_offer
from gpudra.planning.partitions import MigPolicy
from tests.unit.mig_tables import H100_TABLE, MIB

DYNAMIC = MigPolicy(dynamic=True)


def h100(index: int, **changes: Any) -> Device:
    gpu = Device(
        kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid=f"GPU-0b100000-0000-0000-0000-00000000000{index}",
        product_name="NVIDIA H100 80GB HBM3", index=index, minor=index, architecture="Hopper",
        memory_bytes=85520809984, multiprocessors=132, pci=PciPlacement(f"0000:{0x1b + index:02x}:00.0"),
        mig_capable=True, mig_enabled=False, mig_profiles=H100_TABLE,
    )  # fmt: skip
    return dataclasses.replace(gpu, **changes)


def _counters(c: dict[str, k8stypes.Counter]) -> dict[str, int]:
    return {k: int(v["value"]) for k, v in c.items()}


def test_one_counter_set_per_gpu_with_memory_slices_compute_slices_memory_and_engines() -> None:
    offer = plan_offer(Inventory(devices=(h100(0), h100(1))), policy=DYNAMIC)
    assert len(offer.counter_sets) == 2
    gpu = h100(0)
    counters = _counters(offer.counter_sets[names.mig_counter_set_name(gpu.uuid)]["counters"])
    assert counters == {
        **{f"memory-slice-{i}": 1 for i in range(8)},
        "compute-slices": 7, "memory": 85520809984,
        "copy-engines": 8, "decoders": 7, "encoders": 0, "jpeg-engines": 7, "ofa-engines": 1,
    }  # fmt: skip
    assert len(counters) <= 32


def test_devices_are_the_whole_gpu_and_every_profile_placement() -> None:
    offer = plan_offer(Inventory(devices=(h100(0),)), policy=DYNAMIC)
    gpu = h100(0)
    expected = 7 + 3 + 2 + 1 + 1 + 7 + 4
    migs = [d for d in offer.devices.values() if d.kind is DeviceKind.MIG]
    assert len(migs) == expected
    assert len(offer.entries) == expected + 1
    whole = offer.entries[names.gpu_device_name(gpu.uuid)]
    assert (
        whole["consumesCounters"][0]["counters"]
        == offer.counter_sets[whole["consumesCounters"][0]["counterSet"]]["counters"]
    )
    assert "migEnabled" not in whole.get("attributes", {})  # changes with every prepare: not published
    name = names.mig_device_name(gpu.uuid, "3g.40gb", 9, 4)
    slot = offer.entries[name]
    use = slot["consumesCounters"]
    assert len(use) == 1
    assert use[0]["counterSet"] == names.mig_counter_set_name(gpu.uuid)
    assert _counters(use[0]["counters"]) == {
        "memory-slice-4": 1, "memory-slice-5": 1, "memory-slice-6": 1, "memory-slice-7": 1,
        "compute-slices": 3, "memory": 40448 * MIB, "copy-engines": 3, "decoders": 3, "jpeg-engines": 3,
    }  # fmt: skip
    attrs = slot["attributes"]
    assert attrs["type"] == {"string": "mig"}
    assert attrs["profile"] == {"string": "3g.40gb"}
    assert attrs["parentUUID"] == {"string": gpu.uuid}
    assert "uuid" not in attrs  # it has none until prepare creates it: never a made-up one
    assert slot["capacity"]["memory"] == {"value": str(40448 * MIB)}


def test_a_dynamic_device_is_named_and_described_like_the_static_device_of_that_placement() -> None:
    gpu = h100(0, mig_enabled=True)
    static = dataclasses.replace(
        gpu, kind=DeviceKind.MIG, uuid="MIG-0d100000-0000-5000-8000-000000000002", parent_uuid=gpu.uuid,
        parent_pci_bus_id=gpu.pci.bus_id if gpu.pci else None, memory_bytes=40448 * MIB, multiprocessors=60,
        mig=MigInfo("3g.40gb", 9, 4, 4, gi_id=2, ci_id=0, parent_minor=0, ci_spans_gpu_instance=True),
        mig_capable=None, mig_enabled=None, mig_profiles=(),
        engines=EngineCounts(copy_engines=3, decoders=3, encoders=0, jpeg_engines=3, ofa_engines=0),
    )  # fmt: skip
    static_offer = plan_offer(Inventory(devices=(gpu, static)))
    dynamic_offer = plan_offer(Inventory(devices=(h100(0),)), policy=DYNAMIC)
    name = names.mig_device_name(gpu.uuid, "3g.40gb", 9, 4)
    static_attrs = dict(static_offer.entries[name]["attributes"])
    assert static_attrs.pop("uuid") == {"string": static.uuid}
    assert dynamic_offer.entries[name]["attributes"] == static_attrs
    assert dynamic_offer.entries[name]["capacity"] == static_offer.entries[name]["capacity"]


def test_instances_a_claim_created_keep_the_gpu_dynamic_and_are_not_published_twice() -> None:
    gpu = h100(0, mig_enabled=True)
    made = dataclasses.replace(
        gpu, kind=DeviceKind.MIG, uuid="MIG-made", parent_uuid=gpu.uuid, mig_profiles=(),
        mig=MigInfo("1g.10gb", 19, 3, 1, gi_id=9, ci_id=0, ci_spans_gpu_instance=True),
    )  # fmt: skip
    name = names.mig_device_name(gpu.uuid, "1g.10gb", 19, 3)
    before = plan_offer(Inventory(devices=(h100(0),)), policy=DYNAMIC)
    for created in ({"MIG-made"}, {name}):  # known by UUID once done, by name while being created
        after = plan_offer(Inventory(devices=(gpu, made)), frozenset(created), DYNAMIC)
        assert set(after.entries) == set(before.entries)
        assert after.counter_sets == before.counter_sets


def test_a_gpu_with_mig_devices_someone_else_made_is_published_static() -> None:
    gpu = h100(0, mig_enabled=True)
    admin = dataclasses.replace(
        gpu, kind=DeviceKind.MIG, uuid="MIG-admin", parent_uuid=gpu.uuid, mig_profiles=(),
        mig=MigInfo("7g.80gb", 0, 0, 8, gi_id=0, ci_id=0, ci_spans_gpu_instance=True),
    )  # fmt: skip
    offer = plan_offer(Inventory(devices=(gpu, admin, h100(1))), policy=DYNAMIC)
    assert names.mig_counter_set_name(gpu.uuid) not in offer.counter_sets
    assert names.mig_device_name(gpu.uuid, "7g.80gb", 0, 0) in offer.entries
    assert names.gpu_device_name(gpu.uuid) not in offer.entries
    assert "consumesCounters" not in offer.entries[names.mig_device_name(gpu.uuid, "7g.80gb", 0, 0)]
    assert names.mig_counter_set_name(h100(1).uuid) in offer.counter_sets  # the other GPU stays dynamic


def test_static_policy_and_gpus_without_a_table_publish_as_before() -> None:
    static = plan_offer(Inventory(devices=(h100(0),)))
    assert not static.counter_sets
    assert list(static.entries) == [names.gpu_device_name(h100(0).uuid)]
    l4 = h100(1, mig_capable=False, mig_profiles=(), product_name="NVIDIA L4")
    no_table = h100(2, mig_profiles=())
    offer = plan_offer(Inventory(devices=(l4, no_table)), policy=DYNAMIC)
    assert not offer.counter_sets
    assert all("consumesCounters" not in e for e in offer.entries.values())
    assert len(offer.entries) == 2


def test_unknown_engine_counts_are_not_counted() -> None:
    table = tuple(dataclasses.replace(p, engines=dataclasses.replace(p.engines, decoders=None))
                  if p.name == "7g.80gb" else p for p in H100_TABLE)  # fmt: skip
    offer = plan_offer(Inventory(devices=(h100(0, mig_profiles=table),)), policy=DYNAMIC)
    (counter_set,) = offer.counter_sets.values()
    assert "decoders" not in counter_set["counters"]
    assert all("decoders" not in e["consumesCounters"][0]["counters"] for e in offer.entries.values())


def test_slices_respect_the_135_limits_on_a_dgx_h100() -> None:
    offer = plan_offer(Inventory(devices=tuple(h100(i) for i in range(8))), policy=DYNAMIC)
    pool = slices.plan_slices(offer, "node-a", None, 3)
    device_slices = [s for s in pool if "devices" in s["spec"]]
    counter_slices = [s for s in pool if "sharedCounters" in s["spec"]]
    assert all(("devices" in s["spec"]) != ("sharedCounters" in s["spec"]) for s in pool)
    assert sum(len(s["spec"]["devices"]) for s in device_slices) == 8 * 26
    assert all(len(s["spec"]["devices"]) <= 64 for s in device_slices)
    assert len(counter_slices) == 1
    assert len(counter_slices[0]["spec"]["sharedCounters"]) == 8
    assert all(s["spec"]["pool"]["resourceSliceCount"] == len(pool) for s in pool)
    assert len({s["metadata"]["name"] for s in pool}) == len(pool)
    for s in device_slices:
        for d in s["spec"]["devices"]:
            assert len(d["consumesCounters"]) <= 2
            assert len(d.get("attributes", {})) + len(d.get("capacity", {})) <= 32
    nine = plan_offer(Inventory(devices=tuple(h100(i) for i in range(9))), policy=DYNAMIC)
    sets = [s for s in slices.plan_slices(nine, "node-a", None, 1) if "sharedCounters" in s["spec"]]
    assert [len(s["spec"]["sharedCounters"]) for s in sets] == [8, 1]


def test_only_a_whole_gpu_published_as_partitionable_has_its_mig_mode_managed() -> None:
    name = names.gpu_device_name(h100(0).uuid)
    assert plan_offer(Inventory(devices=(h100(0),)), policy=DYNAMIC).devices[name].mig_managed
    assert not plan_offer(Inventory(devices=(h100(0),))).devices[name].mig_managed


def test_an_ampere_gpu_follows_the_mig_mode_the_admin_set() -> None:
    off = h100(0, architecture="Ampere", product_name="NVIDIA A100-SXM4-40GB")
    offer = plan_offer(Inventory(devices=(off,)), policy=DYNAMIC)
    assert not offer.counter_sets
    assert list(offer.entries) == [names.gpu_device_name(off.uuid)]
    on = dataclasses.replace(off, mig_enabled=True)
    offer = plan_offer(Inventory(devices=(on,)), policy=DYNAMIC)
    assert len(offer.counter_sets) == 1
    assert names.gpu_device_name(on.uuid) not in offer.entries  # leaving MIG mode needs a reset
    assert len(offer.entries) == 25
    assert all(e["consumesCounters"] for e in offer.entries.values())
