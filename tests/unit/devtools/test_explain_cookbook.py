"""``gpudra explain`` on every recipe of docs/cel-cookbook.yaml, against every mock profile its checks name.

Each recipe becomes a claim (one request of its class, selectors, count and constraints) and is explained
against the devices the driver publishes for the profile as the cookbook's checks see them (static MIG, no
fractional GPUs). The verdicts must be the cookbook's: the matching devices (``matches``/``count``), the
constraint's groups big enough for the count, allocatable exactly when there are enough; for a pitfall the
devices whose evaluation fails (``error_count``), a claim the scheduler aborts, and the guarded form of the
selector for each of them.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from gpudra.vendors.select import list_profiles
from tests.unit.devtools.explain_rig import REPO, claim, exactly, explain, node_of, only_request, target

COOKBOOK: list[dict[str, Any]] = yaml.safe_load((REPO / "docs" / "cel-cookbook.yaml").read_text())["entries"]
ENTRIES = {entry["id"]: entry for entry in COOKBOOK}
CHECKS = [(entry["id"], index) for entry in COOKBOOK for index, _ in enumerate(entry["checks"])]


def _id(case: tuple[str, int]) -> str:
    return f"{case[0]}@{ENTRIES[case[0]]['checks'][case[1]]['profile']}"


def _explain(entry: dict[str, Any], profile: str) -> dict[str, Any]:
    count = entry.get("count", 1)
    request = exactly("req", entry["deviceClassName"], *entry.get("selectors", []), count=count)
    document = claim(entry["id"], request, constraints=entry.get("constraints", []))
    return explain([document], target(profile, dynamic=False, fractional=False))


def _big_groups(request: dict[str, Any], count: int) -> list[list[str]]:
    (constraint,) = request["constraints"]
    return sorted(sorted(g["devices"]) for g in constraint["groups"] if len(g["devices"]) >= count)


def _check_pitfall(entry: dict[str, Any], check: dict[str, Any], doc: dict[str, Any]) -> None:
    request = only_request(doc)
    failing = [d for d in request["devices"] if d["selected"] is False and any(
        s["result"] == "error" for s in d["selectors"])]  # fmt: skip
    assert len(failing) == check.get("error_count", 0)
    domain, _, key = entry["missing"].rpartition("/")
    field = (
        "capacity" if f"device.capacity['{domain}'].{key}" in " ".join(entry["selectors"]) else "attributes"
    )
    for device in failing:
        (error,) = [s for s in device["selectors"] if s["result"] == "error"]
        assert error["error"] == f"CEL runtime error: {entry['error']}"
        assert error["guarded"].startswith(f"'{key}' in device.{field}['{domain}'] && ")
    if failing:
        assert doc["claims"][0]["verdict"] == "error"
        assert request["verdict"] == "error"
        assert "aborts the allocation of the whole claim" in request["summary"]
    elif "guarded" in entry:  # without errors it decides as the guarded recipe does
        twin = _explain(ENTRIES[entry["guarded"]], check["profile"])
        assert doc["claims"][0]["verdict"] == twin["claims"][0]["verdict"]
        assert request["matching"] == only_request(twin)["matching"]


@pytest.mark.parametrize("case", CHECKS, ids=_id)
def test_cookbook_recipe_is_explained_with_the_right_verdict(case: tuple[str, int]) -> None:
    entry = ENTRIES[case[0]]
    check = entry["checks"][case[1]]
    if check["profile"] not in list_profiles():
        pytest.skip(f"needs mock profile {check['profile']!r}")
    doc = _explain(entry, check["profile"])
    if entry.get("kind") == "pitfall":
        _check_pitfall(entry, check, doc)
        return
    request = only_request(doc)
    count = entry.get("count", 1)
    assert request["errors"] == 0
    matched = sorted(d["device"] for d in request["devices"] if d["selected"])
    if "matches" in check:
        assert matched == sorted(check["matches"])
    if "count" in check:
        assert len(matched) == check["count"]
    fits = len(matched) >= count
    if "constraints" in entry:
        groups = _big_groups(request, count)
        if "groups" in check:
            assert groups == sorted(sorted(g) for g in check["groups"])
        if "group_sizes" in check:
            assert sorted(len(g) for g in groups) == sorted(check["group_sizes"])
        fits = bool(groups)
        assert request["constraints"][0]["satisfiable"] is fits
    expected = "allocatable" if fits else "pending"
    assert doc["claims"][0]["verdict"] == expected
    assert request["verdict"] == ("allocated" if fits else "unsatisfiable")
    if fits:
        assert len(request["allocated"]) == count
        assert set(request["allocated"]) <= set(matched)
    else:
        assert node_of(doc)["reasons"], "a pending claim names why"
