"""``gpudra explain`` names each way a claim fails: wrong class, unguarded key, type error, not enough
devices on one NVLink domain, counters exhausted (dynamic MIG), capacity exhausted (shared GPUs), a tainted
device; and a ``firstAvailable`` request falling through. Devices are what the driver publishes for a mock
profile (or a profile file changed at the NVML level), never hand-made slices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpudra.devtools.explain_eval import explain_claims
from gpudra.devtools.explain_inputs import claim_input
from gpudra.devtools.explain_model import Target
from gpudra.devtools.explain_text import render_text
from gpudra.model.k8stypes import DeviceTaint
from tests.unit.devtools.explain_rig import (
    NODE,
    REPO,
    claim,
    classes,
    exactly,
    explain,
    node_of,
    only_request,
    published,
    target,
)

UNGUARDED = (
    "device.attributes['gpudra.io'].migCapable && "
    "device.capacity['gpudra.io'].memory.compareTo(quantity('40Gi')) >= 0"
)


def _text(docs: list[dict[str, Any]], devices: Target) -> str:
    items = [claim_input(d, "test") for d in docs]
    return render_text(explain_claims(items, classes(), [devices]))


def test_a_class_that_matches_nothing_here() -> None:
    doc = explain([claim("amd", exactly("gpu", "amd.gpudra.io"))], target("dgx-h100", dynamic=False))
    assert doc["claims"][0]["verdict"] == "pending"
    assert node_of(doc)["reasons"] == [
        "request gpu: no device matches class amd.gpudra.io (8 devices checked)"
    ]
    request = only_request(doc)
    assert request["verdict"] == "unsatisfiable"
    assert request["matching"] == 0
    for device in request["devices"]:
        assert [s["result"] for s in device["selectors"]] == ["no-match"]


def test_an_unknown_class_is_the_schedulers_error() -> None:
    doc = explain([claim("typo", exactly("gpu", "gpu.gpudra.com"))], target("h100"))
    node = node_of(doc)
    assert node["verdict"] == "error"
    assert node["reasons"] == [
        "claim default/typo, request gpu: could not retrieve device class gpu.gpudra.com: "
        'deviceclass.resource.k8s.io "gpu.gpudra.com" not found'
    ]
    assert node["requests"] == []


def test_an_unguarded_key_aborts_the_claim_and_the_guarded_form_is_shown() -> None:
    docs = [claim("big", exactly("gpu", "gpu.gpudra.io", UNGUARDED))]
    doc = explain(docs, target("mi300x-8-spx-nps1"))
    assert doc["verdict"] == "error"
    assert node_of(doc)["reasons"] == [
        "claim default/big: selector #0: CEL runtime error: no such key: migCapable"
    ]
    request = only_request(doc)
    assert request["verdict"] == "error"
    assert request["errors"] == 8 == len(request["devices"])
    assert "aborts the allocation of the whole claim" in request["summary"]
    for device in request["devices"]:
        class_result, request_result = device["selectors"]
        assert class_result == {"source": "class", "index": 0, "result": "match"}
        assert request_result["result"] == "error"
        assert request_result["error"] == "CEL runtime error: no such key: migCapable"
        assert request_result["guarded"] == f"'migCapable' in device.attributes['gpudra.io'] && {UNGUARDED}"
        assert "not a non-match" in request_result["hint"]
    text = _text(docs, target("mi300x-8-spx-nps1"))
    assert "8 devices, class #0 match, request #0 ERROR: " in text
    assert f"guarded: 'migCapable' in device.attributes['gpudra.io'] && {UNGUARDED}" in text


def test_the_guarded_form_works_where_the_key_is_missing() -> None:
    first = explain([claim("big", exactly("gpu", "gpu.gpudra.io", UNGUARDED))], target("mi300x-8-spx-nps1"))
    guarded = only_request(first)["devices"][0]["selectors"][1]["guarded"]
    doc = explain([claim("fixed", exactly("gpu", "gpu.gpudra.io", guarded))], target("mi300x-8-spx-nps1"))
    assert doc["verdict"] == "pending"
    assert only_request(doc)["errors"] == 0
    doc = explain(
        [claim("fixed", exactly("gpu", "gpu.gpudra.io", guarded))], target("dgx-h100", dynamic=False)
    )
    assert doc["verdict"] == "allocatable"


def test_a_selector_copied_from_another_driver_points_at_the_right_domain() -> None:
    expression = "device.capacity['gpu.nvidia.com'].memory.compareTo(quantity('40Gi')) >= 0"
    doc = explain([claim("copied", exactly("gpu", "gpu.gpudra.io", expression))], target("h100"))
    (device,) = [d for d in only_request(doc)["devices"] if d["selectors"][0]["result"] == "match"]
    result = device["selectors"][1]
    assert result["error"] == "CEL runtime error: no such key: memory"
    assert "it has 'memory' in domain 'gpudra.io': device.capacity['gpudra.io'].memory" in result["hint"]


def test_a_type_error_aborts_the_claim_and_says_how_to_compare() -> None:
    expression = "device.capacity['gpudra.io'].memory >= quantity('40Gi')"
    doc = explain([claim("typed", exactly("gpu", "gpu.gpudra.io", expression))], target("h100"))
    assert doc["verdict"] == "error"
    assert node_of(doc)["reasons"] == [
        "claim default/typed: selector #0: CEL runtime error: no such overload: _>=_"
    ]
    (device,) = [d for d in only_request(doc)["devices"] if d["selectors"][0]["result"] == "match"]
    result = device["selectors"][1]
    assert result["result"] == "error"
    assert "guarded" not in result
    assert ".compareTo(quantity('40Gi')) >= 0" in result["hint"]


def _two_cliques(tmp_path: Path) -> str:
    """The GB200 tray with its 4th GPU in another NVLink clique (what NVML's fabric info would say)."""
    profile = json.loads((REPO / "driver/gpudra/vendors/mock/profiles/gb200-nvl72-tray.json").read_text())
    profile["devices"][3]["fabric"]["cliqueId"] = 3
    path = tmp_path / "gb200-split.json"
    path.write_text(json.dumps(profile))
    return str(path)


def test_not_enough_devices_on_one_nvlink_domain(tmp_path: Path) -> None:
    gpus = exactly("gpus", "gpu.gpudra.io", count=4)
    docs = [claim("four", gpus, constraints=[{"matchAttribute": "gpudra.io/fabricDomain"}])]
    devices = target(_two_cliques(tmp_path))
    doc = explain(docs, devices)
    assert doc["verdict"] == "pending"
    (reason,) = node_of(doc)["reasons"]
    assert reason.startswith("constraint #0 (matchAttribute gpudra.io/fabricDomain, requests all): no choice")
    request = only_request(doc)
    assert request["verdict"] == "unsatisfiable"
    assert request["available"] == 4
    (constraint,) = request["constraints"]
    sizes = {g["value"]: len(g["devices"]) for g in constraint["groups"]}
    assert sizes == {
        "'5ca1ab1e-0000-4000-8000-00000000b200.2'": 3,
        "'5ca1ab1e-0000-4000-8000-00000000b200.3'": 1,
    }
    assert (constraint["needed"], constraint["satisfiable"]) == (4, False)
    text = _text(docs, devices)
    assert (
        "constraint #0 matchAttribute gpudra.io/fabricDomain: 3 on '5ca1ab1e-0000-4000-8000-00000000b200.2', "
        "1 on '5ca1ab1e-0000-4000-8000-00000000b200.3'; 4 needed on one value — cannot hold"
    ) in text


def test_dynamic_mig_counters_exhausted_by_an_earlier_claim() -> None:
    small = claim(
        "small", exactly("slice", "mig.gpudra.io", "device.attributes['gpudra.io'].profile == '3g.40gb'")
    )
    whole = claim("whole", exactly("gpu", "gpu.gpudra.io"))
    doc = explain([small, whole], target("h100"))
    assert [c["verdict"] for c in doc["claims"]] == ["allocatable", "pending"]
    node = node_of(doc, 1)
    (slice_name,) = only_request(doc, 0)["allocated"]
    assert node["held"] == [{"claim": "default/small", "devices": [slice_name]}]
    (gpu,) = [d for d in only_request(doc, 1)["devices"] if d["selected"]]
    assert gpu["available"] is False
    assert gpu["unavailable"].startswith(f"counter set {gpu['device']} counter ")
    short = {c["counter"] for c in gpu["counters"] if not c["fits"]}
    assert {"compute-slices", "memory-slice-0"} <= short
    compute = next(c for c in gpu["counters"] if c["counter"] == "compute-slices")
    assert (compute["consumes"], compute["left"], compute["total"]) == ("7", "4", "7")


def test_shared_gpu_capacity_exhausted_by_another_claims_share() -> None:
    first = claim("a", exactly("gpu", "gpu.gpudra.io", capacity={"requests": {"memory": "60Gi"}}))
    second = claim("b", exactly("gpu", "gpu.gpudra.io", capacity={"requests": {"memory": "30Gi"}}))
    doc = explain([first, second], target("h100", dynamic=False))
    assert [c["verdict"] for c in doc["claims"]] == ["allocatable", "pending"]
    (gpu,) = [d for d in only_request(doc, 1)["devices"] if d["selected"]]
    memory = next(c for c in gpu["capacity"] if c["name"] == "memory")
    assert memory == {"name": "memory", "consumes": "30Gi", "used": "60Gi", "total": "81559Mi",
                      "holders": ["default/a"], "fits": False}  # fmt: skip
    assert gpu["unavailable"] == (
        "capacity exhausted: memory 60Gi of 81559Mi consumed by claims default/a (request gpu needs 30Gi)"
    )


def _tainted(*, effect: str) -> Target:
    taint: DeviceTaint = {
        "key": "gpudra.io/xid",
        "value": "48",
        "effect": effect,
        "timeAdded": "2026-01-01T00:00:00Z",
    }
    return Target(NODE, "tainted", tuple(published("dgx-h100", taints={0: [taint]})))


def test_a_tainted_device_is_refused_unless_tolerated() -> None:
    eight = exactly("gpus", "gpu.gpudra.io", count=8)
    doc = explain([claim("all", eight)], _tainted(effect="NoExecute"))
    assert doc["verdict"] == "pending"
    request = only_request(doc)
    (tainted,) = [d for d in request["devices"] if d["taints"]]
    assert tainted["unavailable"] == "taint gpudra.io/xid=48:NoExecute not tolerated"
    assert tainted["taints"] == [
        {"key": "gpudra.io/xid", "value": "48", "effect": "NoExecute", "tolerated": False, "blocks": True}
    ]
    assert node_of(doc)["reasons"][0].startswith("request gpus: 8 device(s) needed, 7 of 8 matching devices")
    tolerant = exactly(
        "gpus", "gpu.gpudra.io", count=8, tolerations=[{"key": "gpudra.io/xid", "operator": "Exists"}]
    )
    doc = explain([claim("all", tolerant)], _tainted(effect="NoExecute"))
    assert doc["verdict"] == "allocatable"
    (tainted,) = [d for d in only_request(doc)["devices"] if d["taints"]]
    assert tainted["taints"][0]["tolerated"] is True
    assert tainted["allocated"] is True


def test_a_taint_with_effect_none_does_not_block() -> None:
    doc = explain([claim("all", exactly("gpus", "gpu.gpudra.io", count=8))], _tainted(effect="None"))
    assert doc["verdict"] == "allocatable"


def test_first_available_falls_through_and_says_why() -> None:
    request = {"name": "gpu", "firstAvailable": [
        {"name": "mig", "deviceClassName": "mig.gpudra.io"},
        {"name": "whole", "deviceClassName": "gpu.gpudra.io"},
        {"name": "amd", "deviceClassName": "amd.gpudra.io"},
    ]}  # fmt: skip
    doc = explain([claim("fa", request)], target("dgx-a100", dynamic=False, fractional=False))
    node = node_of(doc)
    assert [(r["name"], r["verdict"]) for r in node["requests"]] == [
        ("gpu/mig", "unsatisfiable"),
        ("gpu/whole", "allocated"),
        ("gpu/amd", "not-needed"),
    ]
    assert node["requests"][0]["summary"] == (
        "no device matches class mig.gpudra.io (8 devices checked); the scheduler took gpu/whole"
    )
    assert [r["request"] for r in node["allocation"]] == ["gpu/whole"]


def test_requests_that_fit_alone_but_not_together() -> None:
    many = exactly("many", "gpu.gpudra.io", count=1)
    rest = exactly("rest", "gpu.gpudra.io", count=2)
    doc = explain([claim("two", many, rest)], target("pcie-l4-x2", fractional=False))
    assert doc["verdict"] == "pending"
    assert [r["verdict"] for r in node_of(doc)["requests"]] == ["satisfiable", "satisfiable"]
    assert "each can be allocated alone, but not all together" in node_of(doc)["reasons"][0]


def test_an_error_the_search_does_not_reach_is_still_named() -> None:
    """The scheduler evaluates devices lazily: this claim gets the first GPU, but the same selector aborts
    it the day that GPU is taken and a MIG placement (without ``fabricDomain``) is evaluated."""
    every = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": "every.example.com"},
        "spec": {"selectors": [{"cel": {"expression": "device.driver == 'gpudra.io'"}}]},
    }
    fabric = "device.attributes['gpudra.io'].fabricDomain != ''"
    doc = explain([claim("any", exactly("gpu", "every.example.com", fabric))], target("gb200-nvl72-tray"),
                  extra_classes=[every])  # fmt: skip
    assert doc["verdict"] == "allocatable"
    request = only_request(doc)
    assert request["verdict"] == "allocated"
    assert request["errors"] == len(request["devices"]) - 4  # every device but the 4 whole GPUs
    assert f"selector errors on {request['errors']} device(s)" in request["summary"]
    failing = next(d for d in request["devices"] if d["selectors"][1]["result"] == "error")
    guard = "'fabricDomain' in device.attributes['gpudra.io']"
    assert failing["selectors"][1]["guarded"] == f"{guard} && {fabric}"
