"""What the node offers: the one place "published = allocatable" is decided (publisher and preparer)."""

from __future__ import annotations

import dataclasses

import pytest

from gpudra.model.inventory import Device, DeviceKind, Inventory, MigInfo, Vendor
from gpudra.model.k8stypes import DeviceRequestAllocationResult, ResourceClaim
from gpudra.planning.devices import device_name
from gpudra.planning.offer import plan_offer
from gpudra.planning.plan import ClaimRef, PlanError, plan_claim
from gpudra.planning.slices import plan_slices

GPU = Device(kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid="GPU-00000000-0000-0000-0000-000000000001",
             product_name="NVIDIA H100 80GB HBM3", index=0, memory_bytes=80 * 2**30)  # fmt: skip
MIG_PARENT = dataclasses.replace(GPU, uuid="GPU-00000000-0000-0000-0000-000000000002", index=1,
                                 mig_capable=True, mig_enabled=True)  # fmt: skip
MIG = Device(kind=DeviceKind.MIG, vendor=Vendor.NVIDIA, uuid="MIG-1", product_name="NVIDIA H100 80GB HBM3",
             index=0, parent_uuid=MIG_PARENT.uuid,
             mig=MigInfo(profile="1g.10gb", gi_profile_id=19, placement_start=0, placement_size=1, gi_id=9,
                         ci_id=0))  # fmt: skip
NO_UUID = dataclasses.replace(GPU, uuid="", index=2)
TWIN = dataclasses.replace(GPU, index=3)  # the same UUID twice: the name would clash
MADE = dataclasses.replace(
    MIG, uuid="MIG-made-for-a-claim", mig=MigInfo(profile="1g.10gb", gi_profile_id=19, placement_start=1,
                                                  placement_size=1, gi_id=10, ci_id=0)
)  # fmt: skip
INV = Inventory(devices=(GPU, MIG_PARENT, MIG, NO_UUID, TWIN, MADE))


def _claim(device: str) -> ResourceClaim:
    result: DeviceRequestAllocationResult = {"request": "r", "driver": "gpudra.io", "pool": "node"}
    result["device"] = device
    return {"metadata": {"uid": "u"}, "status": {"allocation": {"devices": {"results": [result]}}}}


def test_published_and_allocatable_are_the_same_devices() -> None:
    offer = plan_offer(INV, claim_created=frozenset({MADE.uuid}))
    published = [d["name"] for s in plan_slices(offer, "node", None, 1) for d in s["spec"]["devices"]]
    assert published == list(offer.devices) == [device_name(MIG)]
    assert any("no UUID" in w for w in offer.warnings)
    assert any("share a device name" in w for w in offer.warnings)
    for refused in (MIG_PARENT, GPU, MADE):  # MIG-mode parent, a clashing name, a claim's own device
        claim = _claim(device_name(refused))
        with pytest.raises(PlanError, match="not on this node") as caught:
            plan_claim(ClaimRef("ns", "c", "u"), claim, offer.devices, "node")
        assert caught.value.kind == "unknown_device"


def test_the_attributes_prepare_copies_are_the_published_ones() -> None:
    offer = plan_offer(INV, claim_created=frozenset({MADE.uuid}))
    [mig_slice] = plan_slices(offer, "node", None, 1)
    [published] = [d for d in mig_slice["spec"]["devices"] if d["name"] == device_name(MIG)]
    assert offer.attributes(device_name(MIG)) == published["attributes"]
    assert offer.attributes("no-such-device") == {}


def test_same_offer_compares_content_not_discovery_noise() -> None:
    a = plan_offer(Inventory(devices=(GPU,)))
    b = plan_offer(Inventory(devices=(GPU,), warnings=("a warning this pass",)))
    c = plan_offer(Inventory(devices=(dataclasses.replace(GPU, memory_bytes=40 * 2**30),)))
    assert a.same_offer(b)
    assert not a.same_offer(c)
