"""Inventory -> ResourceSlice planning: attribute rules, API limits, splitting, and the publisher's diff."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpudra.model import k8stypes, names
from gpudra.model.inventory import (
    Device,
    DeviceKind,
    EngineCounts,
    Inventory,
    MigInfo,
    PciPlacement,
    Semver,
    Vendor,
)
from gpudra.planning import apirules, slices
from gpudra.planning.devices import build_device, device_entry, device_name
from gpudra.planning.offer import plan_offer

H100_UUID = "GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63"
H100 = Device(
    kind=DeviceKind.GPU,
    vendor=Vendor.NVIDIA,
    uuid=H100_UUID,
    product_name="NVIDIA H100 80GB HBM3",
    index=0,
    minor=0,
    brand="Nvidia",
    architecture="Hopper",
    memory_bytes=85520809984,
    multiprocessors=132,
    cuda_compute_capability=Semver(9, 0, 0),
    pci=PciPlacement("00000000:00:06.0", "pci0000:00", 0),
)
NV_INV = Inventory(
    devices=(H100,), driver_version=Semver.loose("580.159.04"), cuda_driver_version=Semver(13, 0, 0)
)


def minimal(uuid: str = "GPU-1", vendor: Vendor = Vendor.NVIDIA, index: int = 0) -> Device:
    return Device(kind=DeviceKind.GPU, vendor=vendor, uuid=uuid, product_name="Some GPU", index=index)


def attrs(dev: Device, inv: Inventory = NV_INV) -> dict[str, k8stypes.DeviceAttribute]:
    return dict(device_entry(dev, inv).get("attributes", {}))


def warnings_of(dev: Device, inv: Inventory = NV_INV) -> tuple[str, ...]:
    return build_device(dev, inv).warnings


# ---- one device ----------------------------------------------------------------------------------------


def test_h100_exact_shape() -> None:
    assert device_entry(H100, NV_INV) == {
        "name": "gpu-bb61b538-f5d8-b0ab-2cb5-fef794dece63",
        "attributes": {
            "architecture": {"string": "Hopper"},
            "brand": {"string": "Nvidia"},
            "cudaComputeCapability": {"version": "9.0.0"},
            "cudaDriverVersion": {"version": "13.0.0"},
            "driverVersion": {"version": "580.159.4"},
            "index": {"int": 0},
            "minor": {"int": 0},
            "productName": {"string": "NVIDIA H100 80GB HBM3"},
            "resource.kubernetes.io/numaNode": {"int": 0},
            "resource.kubernetes.io/pciBusID": {"string": "0000:00:06.0"},
            "resource.kubernetes.io/pcieRoot": {"string": "pci0000:00"},
            "type": {"string": "gpu"},
            "uuid": {"string": H100_UUID},
            "vendor": {"string": "nvidia"},
        },
        "capacity": {"memory": {"value": "85520809984"}, "multiprocessors": {"value": "132"}},
    }
    assert build_device(H100, NV_INV).warnings == ()


def test_minimal_device_publishes_only_what_is_known() -> None:
    entry = device_entry(minimal(), Inventory())
    assert entry == {
        "name": "gpu-1",
        "attributes": {
            "index": {"int": 0},
            "productName": {"string": "Some GPU"},
            "type": {"string": "gpu"},
            "uuid": {"string": "GPU-1"},
            "vendor": {"string": "nvidia"},
        },
    }


@pytest.mark.parametrize(
    ("unknown", "gone"),
    [
        pytest.param(dataclasses.replace(H100, brand=None), [names.ATTR_BRAND], id="brand"),
        pytest.param(
            dataclasses.replace(H100, architecture=None), [names.ATTR_ARCHITECTURE], id="architecture"
        ),
        pytest.param(dataclasses.replace(H100, minor=None), [names.ATTR_MINOR], id="minor"),
        pytest.param(
            dataclasses.replace(H100, cuda_compute_capability=None),
            [names.ATTR_CUDA_COMPUTE_CAPABILITY],
            id="cuda_compute_capability",
        ),
        pytest.param(
            dataclasses.replace(H100, pci=None),
            [names.ATTR_STD_PCI_BUS_ID, names.ATTR_STD_PCIE_ROOT, names.ATTR_STD_NUMA_NODE],
            id="pci",
        ),
        pytest.param(dataclasses.replace(H100, memory_bytes=None), [names.CAP_MEMORY], id="memory_bytes"),
        pytest.param(
            dataclasses.replace(H100, multiprocessors=None), [names.CAP_MULTIPROCESSORS], id="multiprocessors"
        ),
    ],
)
def test_each_unknown_device_value_leaves_exactly_its_entries_out(unknown: Device, gone: list[str]) -> None:
    full = device_entry(H100, NV_INV)
    entry = device_entry(unknown, NV_INV)
    keys = {*entry.get("attributes", {}), *entry.get("capacity", {})}
    assert keys == {*full.get("attributes", {}), *full.get("capacity", {})} - set(gone)
    assert build_device(unknown, NV_INV).warnings == ()


@pytest.mark.parametrize(
    ("unknown", "gone"),
    [
        pytest.param(
            dataclasses.replace(NV_INV, driver_version=None), names.ATTR_DRIVER_VERSION, id="driver_version"
        ),
        pytest.param(
            dataclasses.replace(NV_INV, cuda_driver_version=None),
            names.ATTR_CUDA_DRIVER_VERSION,
            id="cuda_driver_version",
        ),
    ],
)
def test_each_unknown_inventory_version_leaves_its_attribute_out(unknown: Inventory, gone: str) -> None:
    assert set(attrs(H100)) - set(attrs(H100, unknown)) == {gone}


BUS = {names.ATTR_STD_PCI_BUS_ID: {"string": "0000:1b:00.0"}}


@pytest.mark.parametrize(
    ("pci", "expected"),
    [
        (PciPlacement("0000:1b:00.0"), BUS),
        (PciPlacement("00000000:1B:00.0", "pci0"), {**BUS, names.ATTR_STD_PCIE_ROOT: {"string": "pci0"}}),
        (PciPlacement("0000:1b:00.0", None, -1), BUS),
        (PciPlacement("0000:1b:00.0", None, 1), {**BUS, names.ATTR_STD_NUMA_NODE: {"int": 1}}),
        (PciPlacement("0000:1b:00.0", ""), BUS),
    ],
)
def test_pci_placement_attributes(pci: PciPlacement, expected: dict[str, k8stypes.DeviceAttribute]) -> None:
    published = {k: v for k, v in attrs(dataclasses.replace(minimal(), pci=pci)).items() if "/" in k}
    assert published == expected


@pytest.mark.parametrize("bus_id", ["1b:00.0", "0000:1b:00", "0000:1b:00.8", "10000:00:00.0", "zzzz:00:00.0"])
def test_malformed_bus_id_is_omitted_with_a_warning(bus_id: str) -> None:
    dev = dataclasses.replace(minimal(), pci=PciPlacement(bus_id, "pci0000:00"))
    assert names.ATTR_STD_PCI_BUS_ID not in attrs(dev)
    assert attrs(dev)[names.ATTR_STD_PCIE_ROOT] == {"string": "pci0000:00"}
    assert any(names.ATTR_STD_PCI_BUS_ID in w for w in warnings_of(dev))


def test_amd_devices_carry_no_nvidia_versions() -> None:
    amd = dataclasses.replace(H100, vendor=Vendor.AMD, uuid="0x1234abcd", gfx_version="gfx942")
    published = attrs(amd)
    assert published[names.ATTR_VENDOR] == {"string": names.VENDOR_AMD}
    assert published[names.ATTR_DRIVER_VERSION] == {"version": "580.159.4"}  # the node's kernel driver
    assert published[names.ATTR_GFX_VERSION] == {"string": "gfx942"}
    assert names.ATTR_CUDA_DRIVER_VERSION not in published
    assert names.ATTR_CUDA_COMPUTE_CAPABILITY not in published


@pytest.mark.parametrize(
    ("version", "text"),
    [
        (Semver.loose("580.159.04"), "580.159.4"),
        (Semver.loose("9.0"), "9.0.0"),
        (Semver(13, 0, 0), "13.0.0"),
        (Semver(0, 0, 0), "0.0.0"),
    ],
)
def test_versions_are_strict_semver(version: Semver | None, text: str) -> None:
    inv = dataclasses.replace(NV_INV, driver_version=version)
    assert attrs(H100, inv)["driverVersion"] == {"version": text}


@pytest.mark.parametrize("version", [Semver(-1, 0, 0), Semver(10**70, 0, 0)])
def test_unpublishable_version_is_omitted_with_a_warning(version: Semver) -> None:
    dev = dataclasses.replace(H100, cuda_compute_capability=version)
    assert names.ATTR_CUDA_COMPUTE_CAPABILITY not in attrs(dev)
    assert any(names.ATTR_CUDA_COMPUTE_CAPABILITY in w for w in warnings_of(dev))


#: attribute name -> a copy of a device with that attribute's string field set to the given value
STRING_FIELDS: dict[str, Callable[[Device, str], Device]] = {
    "productName": lambda dev, text: dataclasses.replace(dev, product_name=text),
    "brand": lambda dev, text: dataclasses.replace(dev, brand=text),
    "architecture": lambda dev, text: dataclasses.replace(dev, architecture=text),
    "uuid": lambda dev, text: dataclasses.replace(dev, uuid=text),
}


@pytest.mark.parametrize("attr", list(STRING_FIELDS))
def test_strings_up_to_64_bytes_are_published_longer_ones_omitted_not_cut(attr: str) -> None:
    with_string = STRING_FIELDS[attr]
    fits = with_string(H100, "x" * 64)
    assert attrs(fits)[attr] == {"string": "x" * 64}
    for too_long in ("x" * 65, "\u00e9" * 33):  # 66 bytes in UTF-8: the limit counts bytes
        dev = with_string(H100, too_long)
        assert attr not in attrs(dev)
        assert any(f"attribute {attr} " in w for w in warnings_of(dev))


def test_ints_outside_int64_are_omitted_with_a_warning() -> None:
    dev = dataclasses.replace(H100, minor=2**63)
    assert names.ATTR_MINOR not in attrs(dev)
    assert any(names.ATTR_MINOR in w for w in warnings_of(dev))


def test_negative_capacity_is_omitted_with_a_warning() -> None:
    dev = dataclasses.replace(H100, memory_bytes=-1)
    assert names.CAP_MEMORY not in device_entry(dev, NV_INV).get("capacity", {})
    assert any(names.CAP_MEMORY in w for w in warnings_of(dev))


def test_mig_devices_without_placement_are_refused_clearly() -> None:
    with pytest.raises(ValueError, match="no parent or placement"):  # MIG devices: see test_slices_mig.py
        device_entry(dataclasses.replace(H100, kind=DeviceKind.MIG), NV_INV)


def test_device_without_uuid_is_refused() -> None:
    with pytest.raises(ValueError, match="no UUID"):
        device_entry(minimal(uuid=""), NV_INV)


def test_check_device_enforces_name_and_attribute_rules() -> None:
    many: dict[str, Any] = {f"a{i}": {"int": i} for i in range(32)}
    apirules.check_device({"name": "gpu-0", "attributes": many})
    bad: list[dict[str, Any]] = [
        {"name": "gpu.0"},
        {"name": ""},
        {"name": "x" * 64},
        {"name": "gpu-0", "attributes": {**many, "extra": {"int": 1}}},
        {"name": "gpu-0", "attributes": many, "capacity": {"memory": {"value": "1"}}},
        {"name": "gpu-0", "attributes": {"a" * 33: {"int": 1}}},
        {"name": "gpu-0", "attributes": {"9lives": {"int": 1}}},
        {"name": "gpu-0", "attributes": {"Bad_Domain/x": {"int": 1}}},
        {"name": "gpu-0", "attributes": {"x": {"int": 1, "bool": True}}},
        {"name": "gpu-0", "attributes": {"x": {"version": "580.159.04"}}},
        {"name": "gpu-0", "attributes": {"x": {"string": "y" * 65}}},
    ]
    for device in bad:
        with pytest.raises(ValueError, match=r"device name|attribute"):
            apirules.check_device(device)  # type: ignore[arg-type]


# ---- the pool ------------------------------------------------------------------------------------------


def inventory_of(n: int) -> Inventory:
    return Inventory(devices=tuple(minimal(uuid=f"GPU-{i:05d}", index=i) for i in range(n)))


def device_names(plan: list[Any]) -> list[str]:
    return [d["name"] for s in plan for d in s["spec"].get("devices", [])]


@pytest.mark.parametrize("n", [0, 1, 127, 128, 129, 256, 257])
def test_split_into_slices_of_at_most_128(n: int) -> None:
    plan = slices.plan_slices(plan_offer(inventory_of(n)), "node-a", "uid-1", 7)
    count = max(1, math.ceil(n / 128))
    assert len(plan) == count
    assert [s["metadata"]["name"] for s in plan] == [f"node-a-gpudra.io-{i}" for i in range(count)]
    for s in plan:
        assert s["spec"]["pool"] == {"name": "node-a", "generation": 7, "resourceSliceCount": count}
        assert s["spec"]["driver"] == "gpudra.io"
        assert s["spec"]["nodeName"] == "node-a"
        assert len(s["spec"]["devices"]) <= 128
    got = device_names(plan)
    assert got == sorted(got)
    assert sorted(got) == sorted(names.gpu_device_name(f"GPU-{i:05d}") for i in range(n))


def test_empty_inventory_yields_one_empty_slice() -> None:
    plan = slices.plan_slices(plan_offer(Inventory()), "node-a", None, 0)
    assert plan == [
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {"name": "node-a-gpudra.io-0", "labels": {"gpudra.io/node": "node-a"}},
            "spec": {
                "driver": "gpudra.io",
                "nodeName": "node-a",
                "pool": {"name": "node-a", "generation": 0, "resourceSliceCount": 1},
                "devices": [],
            },
        }
    ]


def test_smaller_chunks_on_request_and_bad_sizes_refused() -> None:
    plan = slices.plan_slices(plan_offer(inventory_of(25)), "n", None, 1, 10)
    assert [len(s["spec"]["devices"]) for s in plan] == [10, 10, 5]
    for size in (0, 129):
        with pytest.raises(ValueError, match="max_devices_per_slice"):
            slices.plan_slices(plan_offer(inventory_of(1)), "n", None, 1, size)


@pytest.mark.parametrize("field", ["taints", "consumesCounters"])
def test_64_per_slice_when_a_device_uses_taints_or_counters(field: str) -> None:
    devices: list[Any] = [device_entry(d, Inventory()) for d in inventory_of(129).devices]
    devices[5][field] = [{"key": "example.com/x", "effect": "NoSchedule"}]
    plan = slices.pool_slices(devices, "node-a", None, 1)
    assert [len(s["spec"]["devices"]) for s in plan] == [64, 64, 1]
    assert len(slices.pool_slices(devices, "node-a", None, 1, 32)[0]["spec"]["devices"]) == 32


def test_device_order_in_the_inventory_does_not_matter() -> None:
    inv = inventory_of(300)
    shuffled = dataclasses.replace(inv, devices=tuple(reversed(inv.devices)))
    forward = slices.plan_slices(plan_offer(inv), "n", "u", 1)
    assert forward == slices.plan_slices(plan_offer(shuffled), "n", "u", 1)


def test_owner_reference_only_with_a_node_uid() -> None:
    with_uid = slices.plan_slices(plan_offer(inventory_of(1)), "node-a", "6a1f-uid", 1)[0]["metadata"]
    assert with_uid["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": "node-a", "uid": "6a1f-uid", "controller": True}
    ]
    unowned = slices.plan_slices(plan_offer(inventory_of(1)), "node-a", None, 1)[0]
    assert "ownerReferences" not in unowned["metadata"]


@pytest.mark.parametrize(
    ("node", "uid", "generation"),
    [("Node_A", None, 1), ("", None, 1), ("n", "", 1), ("n", None, -1), ("a" * 254, None, 0)],
)
def test_bad_pool_arguments_are_refused(node: str, uid: str | None, generation: int) -> None:
    with pytest.raises(ValueError, match=r"node name|node_uid|generation"):
        slices.plan_slices(plan_offer(inventory_of(1)), node, uid, generation)


def test_unpublishable_devices_are_left_out_of_the_pool_with_warnings() -> None:
    inv = Inventory(
        devices=(
            minimal("GPU-ok"),
            dataclasses.replace(minimal("MIG-1"), kind=DeviceKind.MIG),
            minimal(""),
            minimal("GPU-abc"),
            minimal("gpu-ABC"),
        )
    )
    plan = slices.plan_pool(plan_offer(inv), "n", None, 1)
    assert device_names(list(plan.slices)) == ["gpu-ok"]
    assert len(plan.warnings) == 3
    assert "gpu-abc" in plan.warnings[-1]


def test_pool_slices_refuses_duplicate_names() -> None:
    dev = device_entry(minimal(), Inventory())
    with pytest.raises(ValueError, match="duplicate"):
        slices.pool_slices([dev, dev], "n", None, 1)


LONG_NODES = ["a" * 253, "a" * 240 + ".b", "x" * 63 + "." + "y" * 63 + "." + "z" * 63 + "." + "w" * 61]


@pytest.mark.parametrize("node", LONG_NODES)
def test_long_node_names_fold_into_valid_object_names_and_labels(node: str) -> None:
    plan = slices.plan_slices(plan_offer(inventory_of(200)), node, None, 1)
    for index, s in enumerate(plan):
        assert is_subdomain(s["metadata"]["name"])
        assert s["metadata"]["name"].endswith(f"-gpudra.io-{index}")
        assert is_label_value(s["metadata"]["labels"]["gpudra.io/node"])
        assert s["spec"]["nodeName"] == node
        assert s["spec"]["pool"]["name"] == node
    assert len({s["metadata"]["name"] for s in plan}) == len(plan)


def test_long_node_names_sharing_a_prefix_stay_distinct() -> None:
    a, b = "a" * 252 + "b", "a" * 252 + "c"
    assert slices.slice_name(a, 0) != slices.slice_name(b, 0)
    assert slices.node_label_value(a) != slices.node_label_value(b)
    assert slices.node_label_value("node-a") == "node-a"


# ---- independent validator of DRA-FACTS limits ---------------------------------------------------------

SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
QUANTITY = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([numkMGTPE]|[KMGTPE]i|[eE][+-]?[0-9]+)?")


def is_subdomain(s: str) -> bool:
    return len(s) <= 253 and SUBDOMAIN.fullmatch(s) is not None


def is_label_value(s: str) -> bool:
    return len(s) <= 63 and LABEL_VALUE.fullmatch(s) is not None


def is_strict_semver_core(s: str) -> bool:
    parts = s.split(".")
    return len(parts) == 3 and all(p.isascii() and p.isdigit() and (p == "0" or p[0] != "0") for p in parts)


def check_attribute_name(key: str) -> None:
    domain, _, ident = key.rpartition("/")
    assert IDENT.fullmatch(ident), key
    assert len(ident) <= 32, key
    assert not domain or (len(domain) <= 63 and is_subdomain(domain)), key


def check_device(dev: dict[str, Any]) -> None:
    assert len(dev["name"]) <= 63
    assert LABEL.fullmatch(dev["name"]), dev["name"]
    attributes, capacity = dev.get("attributes", {}), dev.get("capacity", {})
    assert len(attributes) + len(capacity) <= 32
    for key, value in attributes.items():
        check_attribute_name(key)
        assert len(value) == 1
        ((kind, v),) = value.items()
        assert kind in ("int", "bool", "string", "version")
        if kind == "int":
            assert type(v) is int
            assert -(2**63) <= v < 2**63
        if kind in ("string", "version"):
            assert isinstance(v, str)
            assert len(v.encode()) <= 64
        if kind == "version":
            assert is_strict_semver_core(v), v
    for key, value in capacity.items():
        check_attribute_name(key)
        assert QUANTITY.fullmatch(value["value"])


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def check_pool(plan: list[Any]) -> None:
    assert plan
    pools = {json.dumps(s["spec"]["pool"], sort_keys=True) for s in plan}
    assert len(pools) == 1
    assert plan[0]["spec"]["pool"]["resourceSliceCount"] == len(plan)
    assert len(plan[0]["spec"]["pool"]["name"]) <= 253
    for s in plan:
        assert s["apiVersion"] == "resource.k8s.io/v1"
        assert s["kind"] == "ResourceSlice"
        assert is_subdomain(s["metadata"]["name"])
        assert all(is_label_value(v) for v in s["metadata"]["labels"].values())
        spec = s["spec"]
        assert is_subdomain(spec["driver"])
        assert len(spec["driver"]) <= 63
        assert sum(k in spec for k in ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection")) == 1
        assert ("devices" in spec) != ("sharedCounters" in spec)  # 1.35+: one or the other, never both
        devices = spec.get("devices", [])
        restricted = any("taints" in d or "consumesCounters" in d for d in devices)
        assert len(devices) <= (64 if restricted else 128)
        for dev in devices:
            check_device(dev)
            assert len(dev.get("consumesCounters", [])) <= 2
        assert len(spec.get("sharedCounters", [])) <= 8
    all_names = device_names(plan)
    assert len(all_names) == len(set(all_names))
    _check_counters(plan)


def _check_counters(plan: list[Any]) -> None:
    """Counter sets: unique DNS-label names, <= 32 counters each; every consumption names a set and counters
    of the pool and takes no more than the set has."""
    sets = [c for s in plan for c in s["spec"].get("sharedCounters", [])]
    by_name = {c["name"]: c["counters"] for c in sets}
    assert len(by_name) == len(sets)
    for name, counters in by_name.items():
        assert DNS_LABEL.fullmatch(name)
        assert 0 < len(counters) <= 32
        assert all(DNS_LABEL.fullmatch(k) for k in counters)
    for s in plan:
        for dev in s["spec"].get("devices", []):
            for use in dev.get("consumesCounters", []):
                have = by_name[use["counterSet"]]
                for counter, value in use["counters"].items():
                    assert int(value["value"]) <= int(have[counter]["value"]), (dev["name"], counter)


def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


SEMVERS = st.builds(Semver, st.integers(0, 10**40), st.integers(0, 999), st.integers(0, 999))
#: The interesting lengths (0, 64 and 65 bytes, 66 bytes in 33 chars) or anything.
TEXT = st.one_of(st.sampled_from(["", "x" * 64, "x" * 65, "\u00e9" * 33]), st.text(max_size=80))
PCI = st.builds(
    PciPlacement,
    st.sampled_from(["0000:1b:00.0", "00000000:C1:00.0", "junk", "0001:ff:1f.7", "10000:00:00.0"]),
    opt(st.sampled_from(["pci0000:00", "pci0000:16", "", "p" * 70])),
    opt(st.integers(-1, 8)),
)


COUNT = opt(st.integers(-1, 2**64))
ENGINES = opt(st.builds(EngineCounts, COUNT, COUNT, COUNT, COUNT, COUNT))
MIG_INFO = st.builds(
    MigInfo, profile=st.sampled_from(["1g.10gb", "1g.10gb+me", "1c.7g.186gb", "x" * 70]),
    gi_profile_id=st.integers(0, 20), placement_start=st.integers(0, 7), placement_size=st.integers(1, 8),
    gi_id=st.integers(0, 14), ci_id=st.integers(0, 7), ci_profile_id=opt(st.integers(0, 8)),
    ci_placement_start=opt(st.integers(0, 7)), ci_spans_gpu_instance=opt(st.booleans()),
)  # fmt: skip


def devices_strategy(uuid: str) -> st.SearchStrategy[Device]:
    """A full GPU (every field drawn, MIG mode and fabric included) or a MIG device of some parent."""
    gpu = st.builds(
        Device,
        kind=st.just(DeviceKind.GPU),
        vendor=st.sampled_from(Vendor),
        uuid=st.just(uuid),
        product_name=TEXT,
        index=st.integers(0, 2**64),
        minor=opt(st.integers(-1, 2**64)),
        brand=opt(TEXT),
        architecture=opt(TEXT),
        memory_bytes=opt(st.integers(-1, 2**50)),
        multiprocessors=opt(st.integers(0, 200)),
        cuda_compute_capability=opt(SEMVERS),
        pci=opt(PCI),
        mig_capable=opt(st.booleans()),
        mig_enabled=opt(st.booleans()),
        addressing_mode=opt(TEXT),
        fabric_domain=opt(TEXT),
        nvlink_links=COUNT,
        engines=ENGINES,
    )
    mig = gpu.map(lambda d: dataclasses.replace(d, mig_enabled=None, mig_capable=None)).flatmap(
        lambda d: st.builds(
            dataclasses.replace, st.just(d), kind=st.just(DeviceKind.MIG), uuid=st.just(f"MIG-{uuid[4:]}"),
            parent_uuid=st.uuids().map(lambda u: f"GPU-{u}"), mig=MIG_INFO,
        )
    )  # fmt: skip
    return st.one_of(gpu, mig)


def published(dev: Device) -> bool:
    """A MIG-enabled GPU is published as its MIG devices, never itself."""
    return not (dev.kind is DeviceKind.GPU and dev.mig_enabled)


def _again(dev: Device, uuid: str) -> Device:
    """``dev`` with a fresh identity (a MIG device also gets a fresh parent, so its name stays unique)."""
    return dataclasses.replace(dev, uuid=uuid, parent_uuid=uuid if dev.parent_uuid else None)


@st.composite
def inventories(draw: st.DrawFn, max_size: int = 400) -> Inventory:
    """1..max_size devices. Up to 12 are drawn field by field; the rest repeat those with fresh UUIDs
    (drawing 400 devices field by field is too slow for a unit test)."""
    size = draw(st.integers(min_value=1, max_value=max_size))
    uuids = draw(st.lists(st.uuids(), min_size=size, max_size=size, unique=True))
    drawn = [draw(devices_strategy(f"GPU-{u}")) for u in uuids[:12]]
    extra = [_again(drawn[i % len(drawn)], f"GPU-{u}") for i, u in enumerate(uuids[12:])]
    devices = tuple(drawn + extra)
    versions = {"driver_version": draw(opt(SEMVERS)), "cuda_driver_version": draw(opt(SEMVERS))}
    return Inventory(devices=devices, **versions)


NODES = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,80}[a-z0-9])?(\.[a-z0-9]{1,60}){0,3}", fullmatch=True)
SLOW = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@SLOW
@given(inventories(), NODES, opt(st.uuids().map(str)), st.integers(0, 2**63 - 1))
def test_planned_slices_satisfy_the_api_limits(inv: Inventory, node: str, uid: str | None, gen: int) -> None:
    plan = slices.plan_pool(plan_offer(inv), node, uid, gen)
    check_pool(list(plan.slices))
    wanted = Counter(device_name(d) for d in inv.devices if published(d))
    clashes = {name for name, count in wanted.items() if count > 1}  # e.g. two MIG devices, one placement
    assert sorted(device_names(list(plan.slices))) == sorted(set(wanted) - clashes)
    assert all(any(name in w for w in plan.warnings) for name in clashes)
    for dev in filter(published, inv.devices):
        fits = 0 < len(dev.product_name.encode()) <= 64
        entry = device_entry(dev, inv)
        assert ("productName" in entry["attributes"]) == fits
        if len(dev.product_name.encode()) > 64:
            assert any(entry["name"] in w and "productName" in w for w in plan.warnings)
