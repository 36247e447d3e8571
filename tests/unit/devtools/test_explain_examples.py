"""``gpudra explain`` on every example under deviceclasses/examples/, against the mock profiles it targets.

The example file is read as ``-f`` reads it (Pods skipped, a template's claim spec explained as a claim);
the devices are what the driver publishes for the profile under the MIG and fractional-GPU policy the
example targets (as ``tests/unit/test_examples_allocate.py`` has them). Every claim must be allocatable,
each request allocated on devices its selectors match, and the claims of one example, explained in order,
fit together. Under the driver's default flags a fractional example is pending on a DGX H100, and explain
says why: with dynamic MIG its GPUs are partitionable, never shared.
"""

from __future__ import annotations

import pytest

from gpudra.devtools.explain_eval import explain_claims
from gpudra.devtools.explain_inputs import load_documents
from gpudra.devtools.explain_json import as_json
from tests.unit.devtools.explain_rig import REPO, classes, target
from tests.unit.test_examples_allocate import DYNAMIC, FRACTIONAL, PROFILES

EXAMPLES = REPO / "deviceclasses" / "examples"
CASES = [(scenario, profile) for scenario in sorted(PROFILES) for profile in PROFILES[scenario]]


def test_every_example_is_covered() -> None:
    assert {p.name for p in EXAMPLES.iterdir() if p.is_dir()} == set(PROFILES)


@pytest.mark.parametrize(("scenario", "profile"), CASES, ids=[f"{s}@{p}" for s, p in CASES])
def test_example_is_explained_as_allocatable(scenario: str, profile: str) -> None:
    docs = load_documents([str(EXAMPLES / scenario / "example.yaml")])
    assert docs.claims
    assert not docs.held
    devices = target(profile, dynamic=scenario in DYNAMIC, fractional=scenario in FRACTIONAL)
    document = as_json(explain_claims(docs.claims, classes(), [devices]))
    assert document["verdict"] == "allocatable", document["claims"][0]["summary"]
    shares: list[str] = []
    for claim in document["claims"]:
        assert claim["verdict"] == "allocatable"
        (node,) = claim["nodes"]
        assert node["reasons"] == []
        for request in node["requests"]:
            if request["subrequest"] is None:
                assert request["verdict"] == "allocated", request["summary"]
            by_name = {d["device"]: d for d in request["devices"]}
            for name in request["allocated"]:
                assert by_name[name]["selected"]
                assert by_name[name]["available"]
                assert all(s["result"] == "match" for s in by_name[name]["selectors"])
        shares += [r["device"] for r in node["allocation"] if "shareID" in r]
    if scenario in FRACTIONAL:  # every claim of the example takes a share of the same device
        assert len(shares) == len(document["claims"]) > 1
        assert len(set(shares)) == 1


def test_dynamic_mig_example_gets_a_placement_of_a_whole_gpu() -> None:
    docs = load_documents([str(EXAMPLES / "dynamic-mig-1g10gb" / "example.yaml")])
    document = as_json(explain_claims(docs.claims, classes(), [target("dgx-h100")]))
    (node,) = document["claims"][0]["nodes"]
    (request,) = node["requests"]
    assert request["matching"] == 56  # 7 placements of 1g.10gb on each of 8 GPUs
    (device,) = request["allocated"]
    assert "-mig-1g10gb-19-" in device
    counters = next(d for d in request["devices"] if d["device"] == device)["counters"]
    assert counters
    assert all(c["fits"] for c in counters)
    assert {c["counter"] for c in counters} >= {"memory-slice-0", "compute-slices"}


def test_fractional_example_under_dynamic_mig_is_pending_and_says_why() -> None:
    docs = load_documents([str(EXAMPLES / "fractional-gpu-three-claims" / "example.yaml")])
    document = as_json(explain_claims(docs.claims, classes(), [target("dgx-h100")]))
    assert [c["verdict"] for c in document["claims"]] == ["pending"] * 3
    (node,) = document["claims"][0]["nodes"]
    assert node["reasons"] == [
        "request gpu: no device matches class gpu.gpudra.io and the request's selectors "
        "(8 of 208 devices match the class)"
    ]
    (request,) = node["requests"]
    in_class = [d for d in request["devices"] if d["selectors"][0]["result"] == "match"]
    assert len(in_class) == 8
    for device in in_class:  # each whole GPU: the class matches, the request's selector does not
        assert [s["result"] for s in device["selectors"]] == ["match", "no-match"]
