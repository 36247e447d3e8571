"""Slice planning for MIG devices and the NVIDIA topology attributes: exact shapes, names, limits, tables.

Device values are those of shared/fixtures/hardware/nvidia-systems.json systems["h100-mig-mixed"] (UUIDs
there are synthetic).
"""

from __future__ import annotations

import dataclasses

import pytest

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
from gpudra.planning import slices
from gpudra.planning.devices import build_device, device_entry, device_name
from gpudra.planning.offer import plan_offer
from gpudra.runtime.tables import inventory_table

PARENT_UUID = "GPU-0d100000-0000-0000-0000-000000000000"
PARENT = Device(
    kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid=PARENT_UUID, product_name="NVIDIA H100 80GB HBM3",
    index=0, minor=0, brand="Nvidia", architecture="Hopper", memory_bytes=85520809984, multiprocessors=132,
    cuda_compute_capability=Semver(9, 0, 0), pci=PciPlacement("0000:53:00.0", "pci0000:50", 0),
    mig_capable=True, mig_enabled=True, addressing_mode="HMM", nvlink_links=18,
)  # fmt: skip
MIG_3G = dataclasses.replace(
    PARENT, kind=DeviceKind.MIG, uuid="MIG-0d100000-0000-5000-8000-000000000002", memory_bytes=42412802048,
    multiprocessors=60, parent_uuid=PARENT_UUID, parent_pci_bus_id="0000:53:00.0", mig_capable=None,
    mig_enabled=None, nvlink_links=None,
    mig=MigInfo(profile="3g.40gb", gi_profile_id=9, placement_start=4, placement_size=4, gi_id=2, ci_id=0,
                ci_profile_id=2, parent_minor=0, ci_placement_start=0, ci_spans_gpu_instance=True),
    engines=EngineCounts(copy_engines=3, decoders=3, encoders=0, jpeg_engines=3, ofa_engines=0),
)  # fmt: skip
FULL = dataclasses.replace(
    PARENT, uuid="GPU-0d100000-0000-0000-0000-000000000001", index=1, minor=1, mig_enabled=False,
    fabric_domain="node-e8f72139f2dee15a", pci=PciPlacement("0000:64:00.0", "pci0000:60", 0),
)  # fmt: skip
INV = Inventory(
    devices=(PARENT, MIG_3G, FULL), driver_version=Semver(580, 105, 8), cuda_driver_version=Semver(13, 0, 0)
)


def _count(device: k8stypes.Device) -> int:
    return len(device.get("attributes", {})) + len(device.get("capacity", {}))


def test_mig_device_exact_shape() -> None:
    entry = build_device(MIG_3G, INV)
    assert entry.device == {
        "name": "gpu-0d100000-0000-0000-0000-000000000000-mig-3g40gb-9-4",
        "attributes": {
            "addressingMode": {"string": "HMM"},
            "architecture": {"string": "Hopper"},
            "brand": {"string": "Nvidia"},
            "cudaComputeCapability": {"version": "9.0.0"},
            "cudaDriverVersion": {"version": "13.0.0"},
            "driverVersion": {"version": "580.105.8"},
            "index": {"int": 0},
            "minor": {"int": 0},
            "parentPciBusID": {"string": "0000:53:00.0"},
            "parentUUID": {"string": PARENT_UUID},
            "productName": {"string": "NVIDIA H100 80GB HBM3"},
            "profile": {"string": "3g.40gb"},
            "resource.kubernetes.io/numaNode": {"int": 0},
            "resource.kubernetes.io/pcieRoot": {"string": "pci0000:50"},
            "type": {"string": "mig"},
            "uuid": {"string": "MIG-0d100000-0000-5000-8000-000000000002"},
            "vendor": {"string": "nvidia"},
        },
        "capacity": {
            "copyEngines": {"value": "3"},
            "decoders": {"value": "3"},
            "encoders": {"value": "0"},
            "jpegEngines": {"value": "3"},
            "memory": {"value": "42412802048"},
            "multiprocessors": {"value": "60"},
            "ofaEngines": {"value": "0"},
        },
    }
    assert _count(entry.device) == 24
    assert entry.warnings == ()


def test_full_gpu_carries_mig_mode_and_topology() -> None:
    attributes = device_entry(FULL, INV)["attributes"]
    assert {
        k: attributes[k]
        for k in ("migCapable", "migEnabled", "addressingMode", "fabricDomain", "nvlinkCount")
    } == {
        "migCapable": {"bool": True},
        "migEnabled": {"bool": False},  # a bool, never the int 0
        "addressingMode": {"string": "HMM"},
        "fabricDomain": {"string": "node-e8f72139f2dee15a"},
        "nvlinkCount": {"int": 18},
    }
    assert attributes["resource.kubernetes.io/pciBusID"] == {"string": "0000:64:00.0"}
    assert _count(device_entry(FULL, INV)) == 21


def test_every_field_at_once_stays_within_32() -> None:
    everything = dataclasses.replace(
        MIG_3G, kind=DeviceKind.GPU, mig_capable=True, mig_enabled=False, fabric_domain="d", nvlink_links=4
    )
    assert (
        _count(device_entry(everything, INV)) == 28
    )  # 21 attributes + 7 capacities, the most possible


def test_a_mig_enabled_gpu_is_published_as_its_mig_devices() -> None:
    plan = slices.plan_pool(plan_offer(INV), "node-a", None, 1)
    published = [d["name"] for d in plan.slices[0]["spec"]["devices"]]
    assert published == [
        "gpu-0d100000-0000-0000-0000-000000000000-mig-3g40gb-9-4",
        "gpu-0d100000-0000-0000-0000-000000000001",
    ]
    assert plan.warnings == ()


@pytest.mark.parametrize(
    ("spans", "ci_profile", "ci_start", "suffix"),
    [
        (True, 2, 0, "-mig-3g40gb-9-4"),
        (False, 0, 2, "-mig-3g40gb-9-4-0-2"),
        (None, 0, 2, "-mig-3g40gb-9-4-0-2"),  # unknown whether the GI is shared: name the compute instance
        (None, None, None, "-mig-3g40gb-9-4"),
    ],
)
def test_device_name_names_the_compute_instance_only_when_needed(
    spans: bool | None, ci_profile: int | None, ci_start: int | None, suffix: str
) -> None:
    assert MIG_3G.mig is not None
    mig = dataclasses.replace(
        MIG_3G.mig, ci_spans_gpu_instance=spans, ci_profile_id=ci_profile, ci_placement_start=ci_start
    )
    assert (
        device_name(dataclasses.replace(MIG_3G, mig=mig))
        == "gpu-0d100000-0000-0000-0000-000000000000" + suffix
    )


def test_device_name_of_full_gpus_is_unchanged() -> None:
    assert device_name(FULL) == names.gpu_device_name(FULL.uuid)
    assert device_name(dataclasses.replace(MIG_3G, mig=None)) == names.gpu_device_name(MIG_3G.uuid)


def test_mig_devices_without_a_name_or_sharing_one_are_left_out() -> None:
    twin = dataclasses.replace(MIG_3G, uuid="MIG-twin")
    lost = dataclasses.replace(MIG_3G, uuid="MIG-lost", parent_uuid=None)
    offer = plan_offer(dataclasses.replace(INV, devices=(MIG_3G, twin, lost, FULL)))
    plan = slices.plan_pool(offer, "node-a", None, 1)
    assert [d["name"] for d in plan.slices[0]["spec"]["devices"]] == [
        "gpu-0d100000-0000-0000-0000-000000000001"
    ]
    assert len(plan.warnings) == 2
    assert "MIG-lost" in plan.warnings[0]
    assert "-mig-3g40gb-9-4" in plan.warnings[1]


def test_table_lists_mig_devices_under_their_parent() -> None:
    lines = inventory_table(dataclasses.replace(INV, fabric_pending=True)).splitlines()
    assert lines[0].split() == [
        "DEVICE",
        "TYPE",
        "PRODUCT",
        "MEMORY",
        "PCI",
        "BUS",
        "ID",
        "NUMA",
        "FABRIC",
        "UUID",
    ]
    assert lines[1].startswith("gpu-0d100000-0000-0000-0000-000000000000  ")
    assert "gpu (MIG)" in lines[1]
    assert lines[2].startswith("gpu-0d100000-0000-0000-0000-000000000000-mig-3g40gb-9-4")
    assert "NVIDIA H100 80GB HBM3 MIG 3g.40gb" in lines[2]
    assert "node-e8f72139f2dee15a" in lines[3]
    assert lines[-1] == (
        "2 GPU(s), 1 MIG device(s); driver 580.105.8, CUDA 13.0.0; NVLink fabric registration pending "
        "(fabricDomain not yet known)"
    )
