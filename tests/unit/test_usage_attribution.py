"""The pure half of the usage metrics: which devices get series, and how each GPU's energy is split among
the claims holding it so that no joule is counted twice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace

import pytest

from gpudra.model import names
from gpudra.model.inventory import Device, DeviceKind, Vendor
from gpudra.model.usage import DeviceUsage
from gpudra.planning.usage import Holding, Ledger, UsageSnapshot, describe, step

GIB = 1 << 30


def gpu(uuid: str, memory: int | None = 80 * GIB) -> Device:
    return Device(DeviceKind.GPU, Vendor.NVIDIA, uuid, "H100", 0, memory_bytes=memory)


def mig(uuid: str, parent: str, memory: int) -> Device:
    return Device(DeviceKind.MIG, Vendor.NVIDIA, uuid, "H100 MIG", 0, memory_bytes=memory, parent_uuid=parent)


def hold(claim: str, device: str, uuid: str, *, admin: bool = False, ns: str = "team-a") -> Holding:
    return Holding(ns, claim, f"uid-{claim}", device, uuid, admin_access=admin, pods=(f"{claim}-pod",))


def run(
    published: Mapping[str, Device],
    holdings: Sequence[Holding],
    energies: Sequence[Mapping[str, float]],
    extra: Mapping[str, DeviceUsage] | None = None,
) -> UsageSnapshot:
    """Samples with the GPUs' energy counters at ``energies[i]`` (and the other values of ``extra``); the last
    snapshot."""
    ledger, snapshot = Ledger(), UsageSnapshot()
    infos = describe(published, holdings)
    for energy in energies:
        readings = {u: DeviceUsage(energy_joules=e, power_watts=100.0) for u, e in energy.items()}
        for uuid, more in (extra or {}).items():
            values = {k: v for k, v in asdict(more).items() if v is not None}
            readings[uuid] = replace(readings.get(uuid, DeviceUsage()), **values)
        snapshot, ledger = step(ledger, infos, holdings, readings)
    return snapshot


def by_claim(snapshot: UsageSnapshot) -> dict[str, tuple[float, float]]:
    return {h.holding.claim: (h.energy_joules, h.gpu_fraction) for h in snapshot.holders}


def test_a_claim_holding_a_gpu_gets_its_energy_from_its_second_sample_on() -> None:
    published = {"gpu-a": gpu("GPU-a"), "gpu-b": gpu("GPU-b")}
    holdings = [hold("train", "gpu-a", "GPU-a")]
    assert by_claim(run(published, holdings, [{"GPU-a": 500.0}])) == {"train": (0.0, 1.0)}
    last = run(published, holdings, [{"GPU-a": 500.0, "GPU-b": 7.0}, {"GPU-a": 800.0, "GPU-b": 9.0},
                                     {"GPU-a": 1000.0, "GPU-b": 11.0}])  # fmt: skip
    assert by_claim(last) == {"train": (500.0, 1.0)}
    assert [(d.info.name, d.info.kind, d.usage.energy_joules) for d in last.devices] == [
        ("gpu-a", "gpu", 1000.0), ("gpu-b", "gpu", 11.0),
    ]  # fmt: skip
    (series,) = last.holders
    assert series.device.info.uuid == "GPU-a"
    assert series.holding.pods == ("train-pod",)


def test_a_shared_device_splits_its_energy_and_admin_access_pays_nothing() -> None:
    published = {"gpu-a": gpu("GPU-a")}
    holdings = [hold("one", "gpu-a", "GPU-a"), hold("two", "gpu-a", "GPU-a", ns="team-b"),
                hold("watch", "gpu-a", "GPU-a", admin=True)]  # fmt: skip
    result = by_claim(run(published, holdings, [{"GPU-a": 0.0}, {"GPU-a": 300.0}]))
    assert result == {"one": (150.0, 0.5), "two": (150.0, 0.5), "watch": (0.0, 0.0)}
    assert sum(energy for energy, _ in result.values()) == 300.0  # a sum over namespaces counts it once
    alone = by_claim(run(published, [holdings[2]], [{"GPU-a": 0.0}, {"GPU-a": 300.0}]))
    assert alone == {"watch": (300.0, 1.0)}  # an admin-access claim alone on the device pays


def test_mig_devices_take_their_memory_share_of_the_gpu_energy() -> None:
    published = {"mig-3g": mig("MIG-3g", "GPU-p", 40 * GIB), "mig-2g": mig("MIG-2g", "GPU-p", 20 * GIB),
                 "mig-2g-b": mig("MIG-2g-b", "GPU-p", 20 * GIB)}  # fmt: skip
    holdings = [hold("big", "mig-3g", "MIG-3g"), hold("small", "mig-2g", "MIG-2g")]
    infos = describe(published, holdings)
    parent = infos["GPU-p"]  # static MIG: the GPU is not published, but its energy is only reported for it
    assert (parent.name, parent.kind) == (names.gpu_device_name("GPU-p"), "gpu")
    energies = [{"GPU-p": 0.0}, {"GPU-p": 800.0}]
    # the GPU's memory from its reading; unused slices and the idle 2g keep their share unattributed
    reading = {"GPU-p": DeviceUsage(memory_total_bytes=80 * GIB)}
    expected = {"big": (400.0, 0.5), "small": (200.0, 0.25)}
    assert by_claim(run(published, holdings, energies, reading)) == expected
    # without the GPU's total: the memory of the MIG devices published on it (80 GiB here too)
    assert by_claim(run(published, holdings, energies)) == expected


def test_a_mig_device_created_at_prepare_is_shown_under_the_name_the_claim_holds() -> None:
    placement = Device(DeviceKind.MIG, Vendor.NVIDIA, "", "H100 MIG", 0, memory_bytes=10 * GIB,
                       parent_uuid="GPU-d")  # fmt: skip
    published = {"gpu-d": gpu("GPU-d"), "gpu-d-1g-slice-3": placement}
    holdings = [hold("tiny", "gpu-d-1g-slice-3", "MIG-made")]
    infos = describe(published, holdings)
    assert infos["MIG-made"].name == "gpu-d-1g-slice-3"
    assert infos["MIG-made"].gpu_uuid == "GPU-d"
    made = {"MIG-made": DeviceUsage(memory_used_bytes=GIB)}
    last = run(published, holdings, [{"GPU-d": 0.0}, {"GPU-d": 800.0}], made)
    assert by_claim(last) == {"tiny": (100.0, 0.125)}  # 10 GiB of the published GPU's 80
    assert last.holders[0].device.usage.memory_used_bytes == GIB


def test_a_counter_that_went_back_adds_nothing_and_a_missed_sample_is_caught_up() -> None:
    published = {"gpu-a": gpu("GPU-a")}
    holdings = [hold("train", "gpu-a", "GPU-a")]
    assert by_claim(run(published, holdings, [{"GPU-a": 900.0}, {"GPU-a": 100.0}])) == {"train": (0.0, 1.0)}
    missed = run(published, holdings, [{"GPU-a": 100.0}, {}, {"GPU-a": 400.0}])
    assert by_claim(missed) == {"train": (300.0, 1.0)}


def test_an_unprepared_claim_loses_its_series_and_a_new_one_starts_at_zero() -> None:
    published = {"gpu-a": gpu("GPU-a")}
    infos = describe(published, [])
    first = [hold("old", "gpu-a", "GPU-a")]
    snapshot, ledger = step(Ledger(), infos, first, {"GPU-a": DeviceUsage(energy_joules=0.0)})
    snapshot, ledger = step(ledger, infos, first, {"GPU-a": DeviceUsage(energy_joules=50.0)})
    assert by_claim(snapshot) == {"old": (50.0, 1.0)}
    snapshot, ledger = step(ledger, infos, [], {"GPU-a": DeviceUsage(energy_joules=80.0)})
    assert snapshot.holders == ()
    assert ledger.attributed == {}
    second = [hold("new", "gpu-a", "GPU-a")]
    snapshot, _ = step(ledger, infos, second, {"GPU-a": DeviceUsage(energy_joules=90.0)})
    assert by_claim(snapshot) == {"new": (0.0, 1.0)}


@pytest.mark.parametrize("memory", [None, 0])
def test_a_sub_device_of_unknown_memory_is_attributed_nothing(memory: int | None) -> None:
    part = Device(DeviceKind.PARTITION, Vendor.AMD, "AMD-1-p0", "MI300X", 0, memory_bytes=memory,
                  parent_uuid="AMD-1")  # fmt: skip
    snapshot = run({"p0": part}, [hold("x", "p0", "AMD-1-p0")], [{"AMD-1": 0.0}, {"AMD-1": 10.0}])
    assert by_claim(snapshot) == {"x": (0.0, 0.0)}


def test_claims_sharing_a_device_by_memory_pay_in_proportion_to_what_they_consumed() -> None:
    published = {"gpu-a": gpu("GPU-a")}
    holdings = [replace(hold("big", "gpu-a", "GPU-a"), consumed_bytes=30 * GIB),
                replace(hold("small", "gpu-a", "GPU-a"), consumed_bytes=10 * GIB)]  # fmt: skip
    assert by_claim(run(published, holdings, [{"GPU-a": 0.0}, {"GPU-a": 400.0}])) == {
        "big": (300.0, 0.75), "small": (100.0, 0.25),
    }  # fmt: skip
    unknown = [holdings[0], hold("other", "gpu-a", "GPU-a")]  # one without a figure: equal parts
    assert by_claim(run(published, unknown, [{"GPU-a": 0.0}, {"GPU-a": 400.0}])) == {
        "big": (200.0, 0.5), "other": (200.0, 0.5),
    }  # fmt: skip
