"""Static MIG discovery over the fake pynvml: the h100-mig-mixed profile exactly, and every failure path.

Values come from shared/fixtures/hardware/nvidia-systems.json systems["h100-mig-mixed"] (MIG and GPU UUIDs
there are synthetic; GI ids and CI placements are the fixture's inferences, the profile table is the H100
capture's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

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
from gpudra.planning.devices import device_name
from gpudra.planning.offer import plan_offer
from gpudra.vendors.mock.fake_nvml import FakeNvml
from gpudra.vendors.mock.profile import Profile, load_profile
from gpudra.vendors.nvidia.driver import NvidiaDriver

from .helpers import variant

OpenNvml = Callable[[Profile], tuple[NvidiaDriver, FakeNvml]]
PARENT = "GPU-0d100000-0000-0000-0000-000000000000"
MIG_3G = "MIG-0d100000-0000-5000-8000-000000000002"
MIB = 1 << 20


def _discover(open_nvml: OpenNvml, profile: Profile) -> Inventory:
    driver, _ = open_nvml(profile)
    return driver.discover()


def _migs(inventory: Inventory) -> list[Device]:
    return [d for d in inventory.devices if d.kind is DeviceKind.MIG]


def _edit_mig(index: int, **changes: Any) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["devices"][0]["mig_devices"][index].update(changes)

    return edit


def test_mig_mixed_discovered_exactly(open_nvml: OpenNvml) -> None:
    inventory = _discover(open_nvml, load_profile("h100-mig-mixed"))
    parent = inventory.devices[0]
    assert (parent.uuid, parent.mig_capable, parent.mig_enabled) == (PARENT, True, True)
    assert [d.kind for d in inventory.devices] == [DeviceKind.GPU] + [DeviceKind.MIG] * 3 + [
        DeviceKind.GPU
    ] * 7
    assert _migs(inventory)[0] == Device(
        kind=DeviceKind.MIG, vendor=Vendor.NVIDIA, uuid=MIG_3G, product_name="NVIDIA H100 80GB HBM3",
        index=0, minor=0, brand="Nvidia", architecture="Hopper", memory_bytes=42412802048, multiprocessors=60,
        cuda_compute_capability=Semver(9, 0, 0), pci=PciPlacement("0000:53:00.0"), parent_uuid=PARENT,
        parent_pci_bus_id="0000:53:00.0",
        mig=MigInfo(profile="3g.40gb", gi_profile_id=9, placement_start=4, placement_size=4, gi_id=2, ci_id=0,
                    ci_profile_id=2, parent_minor=0, ci_placement_start=0, ci_spans_gpu_instance=True),
        engines=EngineCounts(copy_engines=3, decoders=3, encoders=0, jpeg_engines=3, ofa_engines=0),
    )  # fmt: skip
    placements = [
        (m.mig.profile, m.mig.gi_profile_id, m.mig.placement_start) for m in _migs(inventory) if m.mig
    ]
    assert placements == [("3g.40gb", 9, 4), ("2g.20gb", 14, 0), ("2g.20gb", 14, 2)]
    assert [m.memory_bytes for m in _migs(inventory)] == [42412802048, 20096 * MIB, 20096 * MIB]
    assert inventory.warnings == ()


def test_mig_devices_are_published_and_their_parent_is_not(open_nvml: OpenNvml) -> None:
    offer = plan_offer(_discover(open_nvml, load_profile("h100-mig-mixed")))
    plan = slices.plan_pool(offer, "node-a", None, 1)
    names = [d["name"] for s in plan.slices for d in s["spec"]["devices"]]
    parent = "gpu-0d100000-0000-0000-0000-000000000000"
    assert parent not in names
    assert sorted(n for n in names if n.startswith(parent)) == [
        f"{parent}-mig-2g20gb-14-0", f"{parent}-mig-2g20gb-14-2", f"{parent}-mig-3g40gb-9-4",
    ]  # fmt: skip
    assert len(names) == 3 + 7
    assert plan.warnings == ()


def test_names_do_not_depend_on_mig_enumeration_order(open_nvml: OpenNvml) -> None:
    forward = _discover(open_nvml, load_profile("h100-mig-mixed"))
    backward = _discover(
        open_nvml, variant("h100-mig-mixed", lambda d: d["devices"][0]["mig_devices"].reverse())
    )
    assert sorted(map(device_name, _migs(forward))) == sorted(map(device_name, _migs(backward)))


def test_mig_enabled_without_instances_publishes_nothing_and_says_so(
    open_nvml: OpenNvml, caplog: pytest.LogCaptureFixture
) -> None:
    profile = variant("h100", lambda d: d["devices"][0].update(mig_mode=[1, 1], max_mig_device_count=7))
    inventory = _discover(open_nvml, profile)
    (gpu,) = inventory.devices
    assert (gpu.mig_capable, gpu.mig_enabled) == (True, True)
    assert len(inventory.warnings) == 1
    assert "MIG mode is enabled but no MIG device exists" in inventory.warnings[0]
    assert "no MIG device exists" in caplog.text
    plan = slices.plan_pool(plan_offer(inventory), "node-a", None, 1)
    assert [s["spec"]["devices"] for s in plan.slices] == [[]]


def test_pending_mig_mode_publishes_the_current_one_and_warns(open_nvml: OpenNvml) -> None:
    inventory = _discover(open_nvml, variant("h100", lambda d: d["devices"][0].update(mig_mode=[0, 1])))
    assert inventory.devices[0].mig_enabled is False
    assert "MIG mode change pending" in inventory.warnings[0]


def _split_gi(data: dict[str, Any]) -> None:
    """GI 2 (3g.40gb at slice 4) holds two compute instances: 1c at compute slice 0 and 2c at slice 1."""
    migs = data["devices"][0]["mig_devices"]
    base = migs[0]
    halves = []
    for ci_id, (profile_id, start, size) in enumerate([(0, 0, 1), (1, 1, 2)]):
        mig = {**base, "uuid": f"MIG-0d100000-0000-5000-8000-00000000020{ci_id}"}
        mig["compute_instance"] = {
            "id": ci_id,
            "profile_id": profile_id,
            "placement": {"start": start, "size": size},
        }
        mig["attributes"] = {
            **base["attributes"],
            "computeInstanceSliceCount": size,
            "multiprocessorCount": 20 * size,
        }
        halves.append(mig)
    migs[0:1] = halves


def test_compute_instances_sharing_a_gpu_instance_get_distinct_names(open_nvml: OpenNvml) -> None:
    inventory = _discover(open_nvml, variant("h100-mig-mixed", _split_gi))
    split = [m for m in _migs(inventory) if m.mig and m.mig.gi_id == 2]
    assert [(m.mig.profile, m.mig.ci_spans_gpu_instance, m.multiprocessors) for m in split if m.mig] == [
        ("1c.3g.40gb", False, 20), ("2c.3g.40gb", False, 40),
    ]  # fmt: skip
    names = [device_name(m) for m in split]
    assert names == [
        "gpu-0d100000-0000-0000-0000-000000000000-mig-1c3g40gb-9-4-0-0",
        "gpu-0d100000-0000-0000-0000-000000000000-mig-2c3g40gb-9-4-1-1",
    ]
    assert inventory.warnings == ()


@pytest.mark.parametrize(
    ("errors", "why"),
    [
        ({"nvmlDeviceGetUUID": "NVML_ERROR_NOT_SUPPORTED"}, "UUID unreadable"),
        ({"nvmlDeviceGetGpuInstanceId": "NVML_ERROR_NOT_SUPPORTED"}, "no stable name"),
        ({"nvmlDeviceGetGpuInstanceById": "NVML_ERROR_NO_PERMISSION"}, "no stable name"),
        ({"nvmlGpuInstanceGetInfo": "NVML_ERROR_NOT_SUPPORTED"}, "no stable name"),
        ({"nvmlDeviceGetAttributes": "NVML_ERROR_NOT_SUPPORTED",
          "nvmlComputeInstanceGetInfo": "NVML_ERROR_NOT_SUPPORTED"}, "compute instance placement unreadable"),
    ],
)  # fmt: skip
def test_mig_device_without_a_stable_name_is_skipped(
    open_nvml: OpenNvml, errors: dict[str, str], why: str
) -> None:
    inventory = _discover(open_nvml, variant("h100-mig-mixed", _edit_mig(1, errors=errors)))
    assert [m.uuid[-1] for m in _migs(inventory)] == ["2", "4"]
    assert "skipped" in inventory.warnings[-1]
    assert why in inventory.warnings[-1]
    if "NVML_ERROR_NO_PERMISSION" in errors.values():
        assert "needs a privileged user" in inventory.warnings[0]
    else:
        assert len(inventory.warnings) == 1
    assert len(inventory.devices) == 8 + 2


def test_unreadable_attributes_drop_capacities_and_name_the_compute_instance(open_nvml: OpenNvml) -> None:
    profile = variant(
        "h100-mig-mixed", _edit_mig(0, errors={"nvmlDeviceGetAttributes": "NVML_ERROR_NOT_SUPPORTED"})
    )
    mig = _migs(_discover(open_nvml, profile))[0]
    assert (mig.multiprocessors, mig.engines) == (None, EngineCounts())
    assert mig.memory_bytes == 42412802048  # nvmlDeviceGetMemoryInfo still answers
    assert mig.mig is not None
    assert (mig.mig.profile, mig.mig.ci_spans_gpu_instance) == ("3g.40gb", None)
    # whether the GI holds several compute instances is unknown, so the name says which one this is
    assert device_name(mig).endswith("-mig-3g40gb-9-4-2-0")


def test_memory_falls_back_to_the_attributes(open_nvml: OpenNvml) -> None:
    profile = variant(
        "h100-mig-mixed", _edit_mig(0, errors={"nvmlDeviceGetMemoryInfo": "NVML_ERROR_NOT_SUPPORTED"})
    )
    assert _migs(_discover(open_nvml, profile))[0].memory_bytes == 40448 * MIB


@pytest.mark.parametrize("where", ["mig", "parent"])
def test_a_lost_gpu_takes_its_mig_devices_with_it(open_nvml: OpenNvml, where: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        if where == "mig":
            data["devices"][0]["mig_devices"][2]["errors"] = {
                "nvmlDeviceGetAttributes": "NVML_ERROR_GPU_IS_LOST"
            }
        else:
            data["devices"][0]["errors"] = {"nvmlDeviceGetMaxMigDeviceCount": "NVML_ERROR_GPU_IS_LOST"}

    inventory = _discover(open_nvml, variant("h100-mig-mixed", edit))
    assert [d.index for d in inventory.devices] == list(range(1, 8))
    assert _migs(inventory) == []
    assert inventory.warnings[0].startswith("GPU index 0 skipped")


def test_unreadable_mig_device_count(open_nvml: OpenNvml) -> None:
    profile = variant(
        "h100-mig-mixed", lambda d: d["devices"][0].update(max_mig_device_count=None, mig_devices=[])
    )
    inventory = _discover(open_nvml, profile)
    assert _migs(inventory) == []
    assert "MIG device count is unreadable" in inventory.warnings[0]


def test_empty_mig_slots_are_skipped(open_nvml: OpenNvml) -> None:
    # slots 3..6 of max_mig_device_count 7 answer NOT_FOUND, as NVML does for unused MIG device indices
    driver, fake = open_nvml(load_profile("h100-mig-mixed"))
    assert len(_migs(driver.discover())) == 3
    assert fake.calls.count("nvmlDeviceGetMigDeviceHandleByIndex") == 7
