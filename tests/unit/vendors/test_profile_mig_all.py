"""The ``dgx-h100-mig-all`` profile: a DGX H100 with all 8 GPUs carved into 7 x 1g.10gb (56 MIG devices),
the heaviest static-MIG discovery the node can present, and the benchmark row that measures it.

Expected values are the H100 80GB rows of shared/fixtures/hardware/nvidia-gpus.json; one test re-reads
that file when it is mounted. The UUIDs are the profile's synthetic ones (system code 0e10).
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpudra.model.inventory import Device, DeviceKind, Inventory
from gpudra.planning.devices import device_name
from gpudra.vendors.select import open_driver
from tests.unit.test_slices import check_pool
from tests.unit.vendors.test_profile_slices import MIG_CAPACITIES, _discover

NAME = "dgx-h100-mig-all"
REPO = Path(__file__).resolve().parents[3]
FIXTURES = Path("/work/shared/fixtures/hardware")
MIB = 1 << 20
#: nvidia-gpus.json models['H100-SXM5-80GB'].mig: the 1g.10gb GPU-instance profile and its full-size CI
ONE_G = {
    "gi_profile_id": 19, "instances": 7, "memory_mib": 9984, "multiprocessors": 16, "ci_profile_id": 0,
    "copy_engines": 1, "decoders": 1, "encoders": 0, "jpeg_engines": 1, "ofa_engines": 0,
}  # fmt: skip


def _inventory() -> Inventory:
    backend = open_driver("mock", NAME, Path("/sys"))
    try:
        return backend.discover()
    finally:
        backend.close()


def _kind(inv: Inventory, kind: DeviceKind) -> list[Device]:
    return [d for d in inv.devices if d.kind == kind]


def test_discovers_8_gpus_and_56_mig_devices_with_distinct_stable_names() -> None:
    inv = _inventory()
    gpus, migs = _kind(inv, DeviceKind.GPU), _kind(inv, DeviceKind.MIG)
    assert (len(gpus), len(migs), len(inv.devices)) == (8, 56, 64)
    assert inv.warnings == ()
    assert all(g.mig_capable and g.mig_enabled for g in gpus)
    assert Counter(m.parent_uuid for m in migs) == {g.uuid: 7 for g in gpus}
    names = [device_name(m) for m in migs]
    assert len(set(names)) == 56
    assert len({m.uuid for m in migs}) == 56
    again = [device_name(m) for m in _kind(_inventory(), DeviceKind.MIG)]
    assert sorted(again) == sorted(names)


def test_gpus_keep_the_dgx_h100_layout_under_their_own_uuids() -> None:
    dgx = open_driver("mock", "dgx-h100", Path("/sys"))
    try:
        reference = _kind(dgx.discover(), DeviceKind.GPU)
    finally:
        dgx.close()
    gpus = _kind(_inventory(), DeviceKind.GPU)
    assert [g.pci for g in gpus] == [g.pci for g in reference]
    assert not {g.uuid for g in gpus} & {g.uuid for g in reference}


def test_each_gpu_has_every_1g_placement_exactly_once() -> None:
    inv = _inventory()
    for gpu in _kind(inv, DeviceKind.GPU):
        placed = [m.mig for m in _kind(inv, DeviceKind.MIG) if m.parent_uuid == gpu.uuid and m.mig]
        assert sorted(p.placement_start for p in placed) == list(range(7))
        assert {(p.profile, p.gi_profile_id, p.placement_size) for p in placed} == {("1g.10gb", 19, 1)}
        assert {(p.ci_profile_id, p.ci_placement_start, p.ci_spans_gpu_instance) for p in placed} == {
            (ONE_G["ci_profile_id"], 0, True)
        }
        assert len({p.gi_id for p in placed}) == 7
        assert {p.parent_minor for p in placed} == {gpu.minor}


def test_mig_capacities_are_the_1g_10gb_row() -> None:
    for mig in _kind(_inventory(), DeviceKind.MIG):
        assert mig.memory_bytes == ONE_G["memory_mib"] * MIB
        assert mig.multiprocessors == ONE_G["multiprocessors"]
        assert mig.engines is not None
        assert (
            mig.engines.copy_engines, mig.engines.decoders, mig.engines.encoders,
            mig.engines.jpeg_engines, mig.engines.ofa_engines,
        ) == (
            ONE_G["copy_engines"], ONE_G["decoders"], ONE_G["encoders"],
            ONE_G["jpeg_engines"], ONE_G["ofa_engines"],
        )  # fmt: skip


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared fixtures not mounted")
def test_expected_values_are_the_fixture_tables() -> None:
    model = json.loads((FIXTURES / "nvidia-gpus.json").read_text())["models"]["H100-SXM5-80GB"]
    row = next(p for p in model["mig"]["gpu_instance_profiles"] if p["name"] == "MIG 1g.10gb")
    ci = row["full_ci_profile"]
    assert row["placements"] == [{"start": s, "size": 1} for s in range(7)]
    assert model["mig"]["max_gpu_instances"] == row["instanceCount"] == ONE_G["instances"]
    assert (row["id"], row["memorySizeMB"], ci["id"]) == (
        ONE_G["gi_profile_id"], ONE_G["memory_mib"], ONE_G["ci_profile_id"],
    )  # fmt: skip
    assert (ci["multiprocessorCount"], ci["sharedCopyEngineCount"], ci["sharedDecoderCount"]) == (
        ONE_G["multiprocessors"], ONE_G["copy_engines"], ONE_G["decoders"],
    )  # fmt: skip
    assert (ci["sharedEncoderCount"], ci["sharedJpegCount"], ci["sharedOfaCount"]) == (
        ONE_G["encoders"], ONE_G["jpeg_engines"], ONE_G["ofa_engines"],
    )  # fmt: skip


def test_discover_yaml_respects_the_api_limits(capsys: pytest.CaptureFixture[str]) -> None:
    plan: list[Any] = list(yaml.safe_load_all(_discover(capsys, "--profile", NAME, "-o", "yaml")))
    check_pool(plan)
    devices = [d for s in plan for d in s["spec"]["devices"]]
    assert len(devices) == 56  # MIG-enabled GPUs are published as their MIG devices only
    for device in devices:
        attributes = device["attributes"]
        assert attributes["type"] == {"string": "mig"}
        assert attributes["profile"] == {"string": "1g.10gb"}
        assert "fabricDomain" not in attributes  # MIG does no P2P
        assert set(device["capacity"]) == MIG_CAPACITIES
        memory = str(ONE_G["memory_mib"] * MIB)
        assert device["capacity"]["memory"]["value"] == memory
        assert device["capacity"]["multiprocessors"]["value"] == str(ONE_G["multiprocessors"])
        # static MIG devices are shared by default (--fractional-gpus): a claim asking nothing takes it all
        assert device["allowMultipleAllocations"] is True
        assert device["capacity"]["memory"]["requestPolicy"]["default"] == memory
    parents = Counter(d["attributes"]["parentUUID"]["string"] for d in devices)
    assert sorted(parents.values()) == [7] * 8


def test_benchmark_mig_row_measures_this_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(REPO / "hack"))
    from benchlib.discovery import mig_discovery

    row = mig_discovery(None, 2)
    assert row["measurable"] is True
    assert row["profile"] == NAME
    assert row["n"] == 2
    assert row["by_type"] == {"gpu": 8, "mig": 56}
    assert row["mig_devices_per_gpu"] == [7] * 8
    assert row["max_gpu_instances_per_gpu"] == [ONE_G["instances"]]


@pytest.mark.parametrize(
    ("profile", "why"),
    [
        ("h100-mig-mixed", "GPU 0: 3 of 7 GPU instances; GPU 1: MIG disabled"),
        ("dgx-h100", "8 of 8 GPUs not fully MIG-partitioned (GPU 0: MIG disabled"),
        ("h100", "1 GPU(s); the row needs >= 8"),
    ],
)
def test_benchmark_mig_row_says_why_another_profile_does_not_qualify(
    monkeypatch: pytest.MonkeyPatch, profile: str, why: str
) -> None:
    monkeypatch.syspath_prepend(str(REPO / "hack"))
    from benchlib.discovery import mig_discovery

    row = mig_discovery(profile, 1)
    assert row["measurable"] is False
    assert row["why"].startswith(f"{profile}: ")
    assert why in row["why"]
