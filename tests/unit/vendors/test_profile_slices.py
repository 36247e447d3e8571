"""``gpudra discover --backend mock --profile <p> -o yaml`` prints slices within every API limit, per profile.

The YAML is checked by the independent validator of tests/unit/test_slices.py (written from DRA-FACTS, not
from slices.py). Expected device counts and fabric domains come from the fixture nodes the profiles cite.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import yaml

from gpudra import cli
from tests.unit.test_slices import check_pool

#: profile -> (published devices, MIG devices, distinct fabricDomain values among published devices)
EXPECTED = {
    "h100": (1, 0, 0),  # one GPU, no NVLink peer
    "dgx-h100": (8, 0, 1),  # NVSwitch, no clique: one node-local island
    "dgx-a100": (8, 0, 1),
    "h100-mig-mixed": (3 + 7, 3, 1),  # GPU 0 as its three MIG devices; GPUs 1-7 one island
    "gb200-nvl72-tray": (4, 0, 1),  # the rack's fabric clique
    "pcie-l4-x2": (2, 0, 0),  # no NVLink
}


MIG_CAPACITIES = {
    "memory", "multiprocessors", "copyEngines", "decoders", "encoders", "jpegEngines", "ofaEngines",
}  # fmt: skip


def _discover(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(["discover", "--backend", "mock", "--node-name", "node-a", *args]) == 0
    return capsys.readouterr().out


#: profile -> (devices, MIG devices, counter sets) with dynamic MIG (the default): every MIG-capable GPU
#: with a profile table offers itself whole and 25 MIG placements (the H100/GB200 tables: 7 + 3 + 2 + 1 + 1 +
#: 7 + 4); dgx-a100 is Ampere with MIG off (no reset at prepare: whole GPUs); h100-mig-mixed GPU 0 keeps the
#: admin's three MIG devices (static), its GPUs 1-7 are dynamic; L4 is not MIG-capable.
EXPECTED_DYNAMIC = {
    "h100": (26, 25, 1),
    "dgx-h100": (8 * 26, 8 * 25, 8),
    "dgx-a100": (8, 0, 0),
    "h100-mig-mixed": (3 + 7 * 26, 3 + 7 * 25, 7),
    "gb200-nvl72-tray": (4 * 26, 4 * 25, 4),
    "pcie-l4-x2": (2, 0, 0),
}


@pytest.mark.parametrize("profile", sorted(EXPECTED_DYNAMIC))
def test_discover_yaml_with_dynamic_mig(capsys: pytest.CaptureFixture[str], profile: str) -> None:
    plan: list[Any] = list(yaml.safe_load_all(_discover(capsys, "--profile", profile, "-o", "yaml")))
    check_pool(plan)
    devices = [d for s in plan for d in s["spec"].get("devices", [])]
    sets = [c for s in plan for c in s["spec"].get("sharedCounters", [])]
    count, migs, counter_sets = EXPECTED_DYNAMIC[profile]
    assert (len(devices), len(sets)) == (count, counter_sets)
    assert sum(d["attributes"]["type"]["string"] == "mig" for d in devices) == migs
    dynamic = [d for d in devices if "consumesCounters" in d]
    assert all("uuid" not in d["attributes"] for d in dynamic if d["attributes"]["type"]["string"] == "mig")
    assert all(
        "migEnabled" not in d["attributes"] for d in dynamic if d["attributes"]["type"]["string"] == "gpu"
    )


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_discover_yaml_respects_the_api_limits(capsys: pytest.CaptureFixture[str], profile: str) -> None:
    args = ("--profile", profile, "--mig-management", "static", "-o", "yaml")
    plan: list[Any] = list(yaml.safe_load_all(_discover(capsys, *args)))
    check_pool(plan)
    devices = [d for s in plan for d in s["spec"]["devices"]]
    count, migs, domains = EXPECTED[profile]
    assert len(devices) == count
    types = Counter(d["attributes"]["type"]["string"] for d in devices)
    assert types["mig"] == migs
    fabric = {d["attributes"]["fabricDomain"]["string"] for d in devices if "fabricDomain" in d["attributes"]}
    assert len(fabric) == domains
    for device in devices:
        assert device["attributes"]["vendor"] == {"string": "nvidia"}
        if device["attributes"]["type"]["string"] == "mig":
            assert {"profile", "parentUUID", "parentPciBusID"} <= set(device["attributes"])
            assert set(device["capacity"]) == MIG_CAPACITIES
        else:
            assert {"migCapable", "migEnabled"} <= set(device["attributes"])


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_discover_table(capsys: pytest.CaptureFixture[str], profile: str) -> None:
    out = _discover(capsys, "--profile", profile)
    assert out.splitlines()[0].startswith("DEVICE")
    assert "GPU(s)" in out.splitlines()[-1]


def test_discover_table_counts_partitions_as_partitions(capsys: pytest.CaptureFixture[str]) -> None:
    out = _discover(capsys, "--profile", "mi300x-8-cpx-nps4")
    assert out.splitlines()[-1].startswith("64 partition(s); driver 6.10.5")
