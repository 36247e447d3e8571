"""The example claims in deviceclasses/examples/: one folder per scenario, consistent with the driver's public
vocabulary (DeviceClass, attribute and capacity names in gpudra.model.names) and with themselves (every pod
claim
names a claim or template of its folder, every container claim a pod claim). That the objects deserialise into
the official models is checked with the other manifests in test_manifests.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gpudra.model import names
from tests.unit.manifest_tools import load_documents

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "deviceclasses" / "examples"
SCENARIOS = {
    "one-gpu",
    "gpu-40gi-any-vendor",
    "mig-slice-by-profile",
    "two-mig-slices-one-parent",
    "four-gpus-one-nvlink-domain",
    "shared-claim-two-pods",
    "amd-partition",
    "dynamic-mig-1g10gb",
    "time-slicing-shared-claim",
    "mps-shared-claim",
    "fractional-gpu-three-claims",
    "fractional-amd-memory",
}
CLASSES = {names.CLASS_GPU, names.CLASS_NVIDIA, names.CLASS_MIG, names.CLASS_AMD, names.CLASS_AMD_PARTITION}
ATTRIBUTES = {v for k, v in vars(names).items() if k.startswith("ATTR_") and "/" not in v}
CAPACITIES = {v for k, v in vars(names).items() if k.startswith("CAP_")}
#: Attributes every device carries (slices.py publishes them unconditionally): readable without a guard.
#: Not ``uuid``: a MIG device published for dynamic MIG has none until prepare creates it.
ALWAYS = {names.ATTR_VENDOR, names.ATTR_TYPE}
ACCESS = re.compile(r"device\.(attributes|capacity)\['gpudra\.io'\]\.(\w+)")


def _load(scenario: str) -> list[dict[str, Any]]:
    return load_documents(EXAMPLES / scenario / "example.yaml")


def _requests(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["spec"] if obj["kind"] == "ResourceClaimTemplate" else obj["spec"]
    return list(spec["devices"]["requests"])


def _constraints(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["spec"] if obj["kind"] == "ResourceClaimTemplate" else obj["spec"]
    return list(spec["devices"].get("constraints", []))


def test_one_folder_per_scenario_with_a_readme() -> None:
    folders = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert folders == SCENARIOS
    for scenario in SCENARIOS:
        assert (EXAMPLES / scenario / "README.md").read_text().startswith("# ")
        assert {p.name for p in (EXAMPLES / scenario).iterdir()} == {"README.md", "example.yaml"}
    index = (EXAMPLES / "README.md").read_text()
    assert all(f"[{s}]({s}/)" in index for s in SCENARIOS)


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pods_use_the_claims_of_their_folder(scenario: str) -> None:
    objs = _load(scenario)
    assert {o["kind"] for o in objs} <= {"ResourceClaimTemplate", "ResourceClaim", "Pod"}
    assert all("namespace" not in o["metadata"] for o in objs)  # applied into a namespace of your choice
    templates = {o["metadata"]["name"] for o in objs if o["kind"] == "ResourceClaimTemplate"}
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "ResourceClaim"}
    pods = [o for o in objs if o["kind"] == "Pod"]
    assert pods
    used: set[str] = set()
    for pod in pods:
        pod_claims = {c["name"]: c for c in pod["spec"]["resourceClaims"]}
        for c in pod_claims.values():
            assert c.get("resourceClaimTemplateName") in templates or c.get("resourceClaimName") in claims
            used.add(c.get("resourceClaimTemplateName") or c["resourceClaimName"])
        wanted = {c["name"] for ctr in pod["spec"]["containers"] for c in ctr["resources"]["claims"]}
        assert wanted == set(pod_claims)
        for ctr in pod["spec"]["containers"]:
            assert re.fullmatch(r"[a-z0-9./-]+:\d[\w.-]*", ctr["image"]), ctr["image"]  # a pinned tag
    assert used == templates | claims


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_requests_use_the_public_vocabulary(scenario: str) -> None:
    for obj in _load(scenario):
        if obj["kind"] == "Pod":
            continue
        requests = _requests(obj)
        for request in requests:
            exactly = request["exactly"]
            assert exactly["deviceClassName"] in CLASSES
            for selector in exactly.get("selectors", []):
                _check_selector(selector["cel"]["expression"])
        for constraint in _constraints(obj):
            assert set(constraint["requests"]) <= {r["name"] for r in requests}
            domain, _, attr = constraint["matchAttribute"].partition("/")
            assert domain == names.DRIVER_NAME
            assert attr in ATTRIBUTES


def _check_selector(expression: str) -> None:
    """Known names only; optional ones read behind an ``'x' in ...`` guard placed before the read."""
    for match in ACCESS.finditer(expression):
        kind, name = match.groups()
        assert name in (ATTRIBUTES if kind == "attributes" else CAPACITIES), name
        if kind == "attributes" and name in ALWAYS:
            continue
        guard = f"'{name}' in device.{kind}['gpudra.io']"
        assert guard in expression[: match.start()], f"unguarded read of {name}: {expression}"


def test_shared_claim_is_one_claim_for_two_pods() -> None:
    objs = _load("shared-claim-two-pods")
    [claim] = [o for o in objs if o["kind"] == "ResourceClaim"]
    pods = [o for o in objs if o["kind"] == "Pod"]
    assert len(pods) == 2
    for pod in pods:
        assert [c["resourceClaimName"] for c in pod["spec"]["resourceClaims"]] == [claim["metadata"]["name"]]


@pytest.mark.parametrize(
    ("scenario", "count", "attribute"),
    [
        ("two-mig-slices-one-parent", 2, names.ATTR_PARENT_UUID),
        ("four-gpus-one-nvlink-domain", 4, names.ATTR_FABRIC_DOMAIN),
    ],
)
def test_grouped_requests_constrain_the_group(scenario: str, count: int, attribute: str) -> None:
    [template] = [o for o in _load(scenario) if o["kind"] == "ResourceClaimTemplate"]
    [request] = _requests(template)
    assert (request["exactly"]["allocationMode"], request["exactly"]["count"]) == ("ExactCount", count)
    assert _constraints(template) == [
        {"requests": [request["name"]], "matchAttribute": f"{names.DRIVER_NAME}/{attribute}"}
    ]


def _selectors() -> list[tuple[str, str]]:
    return [
        (scenario, s["cel"]["expression"])
        for scenario in sorted(SCENARIOS)
        for obj in _load(scenario)
        if obj["kind"] != "Pod"
        for r in _requests(obj)
        for s in r["exactly"].get("selectors", [])
    ]


@pytest.mark.parametrize(("scenario", "expression"), _selectors())
def test_selectors_compile_under_the_cel_emulation(scenario: str, expression: str) -> None:
    cel = pytest.importorskip("gpudra.devtools.cel", reason="the CEL emulation (celpy) is not installed")
    assert cel.compile_selector(expression).expression == expression, scenario


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_device_classes_the_examples_use_are_shipped(scenario: str) -> None:
    used = {
        r["exactly"]["deviceClassName"] for o in _load(scenario) if o["kind"] != "Pod" for r in _requests(o)
    }
    missing = sorted(c for c in used if not (ROOT / "deviceclasses" / f"{c}.yaml").is_file())
    if missing:
        pytest.skip(f"DeviceClass {', '.join(missing)} is not in deviceclasses/ yet")
    for name in used:
        [cls] = load_documents(ROOT / "deviceclasses" / f"{name}.yaml")
        assert (cls["kind"], cls["metadata"]["name"]) == ("DeviceClass", name)
