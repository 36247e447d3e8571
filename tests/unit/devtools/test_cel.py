"""gpudra's emulation of the scheduler's CEL selectors, and the cookbook evaluated on published devices."""

from __future__ import annotations

import re
from collections import defaultdict
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra.devtools import cel
from gpudra.devtools.fakeapi.quantity import parse_quantity
from gpudra.model import k8stypes, names
from gpudra.vendors.select import list_profiles
from tests.unit.test_deviceclasses import (
    CLASS_FILES,
    attribute,
    class_selectors,
    published,
    publishes,
    undiscoverable,
)

REPO = Path(__file__).resolve().parents[3]
COOKBOOK = yaml.safe_load((REPO / "docs" / "cel-cookbook.yaml").read_text())["entries"]
DOC = (REPO / "docs" / "cel-cookbook.md").read_text()

DEVICE: k8stypes.Device = {
    "name": "gpu-0",
    "attributes": {
        "type": {"string": "gpu"},
        "productName": {"string": "NVIDIA H100 80GB HBM3"},
        "index": {"int": 3},
        "migCapable": {"bool": True},
        "driverVersion": {"version": "580.105.8"},
        "resource.kubernetes.io/pciBusID": {"string": "0000:1b:00.0"},
        "resource.kubernetes.io/numaNode": {"int": 1},
    },
    "capacity": {"memory": {"value": "85520809984"}, "multiprocessors": {"value": "132"}},
}
A = "device.attributes['gpudra.io']"
C = "device.capacity['gpudra.io']"


def ev(expression: str, device: k8stypes.Device = DEVICE, driver: str = names.DRIVER_NAME) -> bool:
    return cel.evaluate_selector(expression, device, driver)


# ---- the device variable -------------------------------------------------------------------------------

TRUE_ON_DEVICE = [
    "device.driver == 'gpudra.io'",
    f"{A}.type == 'gpu' && {A}['type'] == 'gpu'",
    f"{A}.index == 3 && {A}.index > 2 && {A}.migCapable",
    f"{A}.driverVersion == semver('580.105.8')",
    "device.attributes['resource.kubernetes.io'].pciBusID == '0000:1b:00.0'",
    "device.attributes['resource.kubernetes.io'].numaNode == 1",
    f"{C}.memory == quantity('85520809984') && {C}.multiprocessors.asInteger() == 132",
    f"'memory' in {C} && !('decoders' in {C})",
    f"has({A}.migCapable) && !has({A}.profile)",
    "!('numaNode' in device.attributes['gpudra.io'])",
    "'pciBusID' in device.attributes['resource.kubernetes.io']",
    "size(device.attributes['other.example.com']) == 0",  # an unknown domain is an empty map
    "!('x' in device.attributes['other.example.com'])",
    f"{A}.productName.startsWith('NVIDIA H100') && {A}.productName.endsWith('HBM3')",
    f"{A}.productName.contains('80GB') && {A}.productName.matches('^NVIDIA H[0-9]+ ')",
    f"{A}.productName.lowerAscii() == 'nvidia h100 80gb hbm3' && {A}.type.upperAscii() == 'GPU'",
    f"{A}.productName.indexOf('H100') == 7 && {A}.productName.split(' ').size() == 4",
    f"{A}.productName.replace('NVIDIA ', '') == 'H100 80GB HBM3' && ' x '.trim() == 'x'",
    f"[{A}.index, 4].exists(i, i == 3) && [1, 2].all(i, i > 0) && [1, 2].map(i, i * 2) == [2, 4]",
]


@pytest.mark.parametrize("expression", TRUE_ON_DEVICE)
def test_selector_is_true(expression: str) -> None:
    assert ev(expression) is True


def test_unqualified_names_belong_to_the_publishing_driver() -> None:
    assert ev("device.attributes['example.com'].type == 'gpu'", driver="example.com")
    assert ev("'memory' in device.capacity['example.com']", driver="example.com")
    assert ev("!('type' in device.attributes['gpudra.io'])", driver="example.com")


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        (f"{C}.decoders.compareTo(quantity('1')) >= 0", "no such key: decoders"),
        (f"{C}['decoders'] == quantity('1')", "no such key: decoders"),
        (f"{A}.profile == '1g.10gb'", "no such key: profile"),
        ("device.capacity['gpu.nvidia.com'].memory.isGreaterThan(quantity('1'))", "no such key: memory"),
        (f"{A}.type == 'gpu' && {A}.profile == 'x'", "no such key: profile"),
        (f"{A}.productName.startsWith(1)", "no such overload"),
        (f"{A}.index.startsWith('1')", "no such overload"),
        (f"{C}.memory > quantity('1')", "no such overload: _>_"),
        ("quantity('1') < 2", "no such overload: _<_"),
        ("quantity('12 Gi') == quantity('1')", "invalid quantity '12 Gi'"),
        ("semver('580.105.08') == semver('1.0.0')", "invalid semantic version '580.105.08'"),
        ("quantity('0.5').asInteger() == 0", "cannot convert value to integer"),
        ("quantity('10E').asInteger() == 0", "cannot convert value to integer"),
    ],
)
def test_runtime_errors_read_like_the_schedulers(expression: str, message: str) -> None:
    with pytest.raises(cel.CelRuntimeError) as caught:
        ev(expression)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (f"false && {A}.nope", False),
        (f"{A}.nope && false", False),  # CEL's && and || are commutative over errors
        (f"{A}.nope || true", True),
        (f"true || {A}.nope", True),
    ],
)
def test_logical_operators_absorb_errors(expression: str, expected: bool) -> None:
    assert ev(expression) is expected


@pytest.mark.parametrize("expression", [f"true && {A}.nope", f"{A}.nope || false", f"!{A}.nope"])
def test_errors_that_are_not_absorbed(expression: str) -> None:
    with pytest.raises(cel.CelRuntimeError, match=r"^no such key: nope$"):
        ev(expression)


@pytest.mark.parametrize(
    ("expression", "kind"),
    [
        ("device.driver", "string"),
        (f"{C}.memory", "kubernetes.Quantity"),
        (f"{A}.driverVersion", "kubernetes.Semver"),
    ],
)
def test_a_non_bool_result_is_a_runtime_error(expression: str, kind: str) -> None:
    with pytest.raises(cel.CelRuntimeError) as caught:
        ev(expression)
    assert str(caught.value) == f"CEL result of type {kind} could not be converted to bool"


def test_an_invalid_published_value_fails_before_evaluation() -> None:
    bad: k8stypes.Device = {"name": "d", "attributes": {"driverVersion": {"version": "580.105.08"}}}
    with pytest.raises(cel.CelRuntimeError, match="attribute driverVersion: parse semantic version"):
        ev("true", bad)


def test_class_selectors_run_first_and_stop_at_the_first_false() -> None:
    unguarded = f"{A}.profile == '2g.20gb'"
    assert cel.device_matches([f"{A}.type == 'mig'", unguarded], DEVICE) is False
    with pytest.raises(cel.CelRuntimeError, match="no such key: profile"):
        cel.device_matches([f"{A}.type == 'gpu'", unguarded], DEVICE)


# ---- compile errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("device.attributes['gpudra.io'].type ==", "ERROR: <input>:1:"),
        ("gpu.type == 'gpu'", "ERROR: <input>:1:1: undeclared reference to 'gpu'"),
        ("memory(device) > 1", "undeclared reference to 'memory'"),
        (f"{A}.type.toLower() == 'gpu'", "undeclared reference to 'toLower'"),
        ("device.capacities['gpudra.io'].size() > 0", "ERROR: <input>:1:8: undefined field 'capacities'"),
        (f"cel.bind(a, {A}, a.type == 'gpu')", "cel.bind is not supported"),
        (".device.driver == 'x'", "not supported"),
        ("[1].all(x, y > 0)", "undeclared reference to 'y'"),
    ],
)
def test_compile_errors(expression: str, message: str) -> None:
    with pytest.raises(cel.CelCompileError) as caught:
        cel.compile_selector(expression)
    assert message in str(caught.value)


def test_type_names_and_macro_variables_compile() -> None:
    assert ev(f"type({A}.index) == int && {A}.productName.split(' ').exists(w, w == 'H100')")


# ---- Kubernetes' quantity and semver libraries ---------------------------------------------------------

QUANTITY_TRUE = [
    "quantity('1Gi') == quantity('1024Mi') && quantity('1Gi') != quantity('1G')",
    "quantity('200M').compareTo(quantity('0.2G')) == 0 && quantity('50M').compareTo(quantity('50Mi')) == -1",
    "quantity('150Mi').isGreaterThan(quantity('100Mi')) && quantity('50M').isLessThan(quantity('100M'))",
    "!quantity('1').isGreaterThan(quantity('1')) && !quantity('1').isLessThan(quantity('1'))",
    "quantity('1.5').asApproximateFloat() == 1.5 && quantity('1k').asInteger() == 1000",
    "quantity('1.5').isInteger() == false && quantity('2e3').isInteger()",
    "quantity('-3').sign() == -1 && quantity('0').sign() == 0 && sign(quantity('5m')) == 1",
    "quantity('50k').add(quantity('20k')) == quantity('70k') && quantity('50k').add(20) == quantity('50020')",
    "quantity('50k').sub(20000) == quantity('30k') && quantity('1').sub(quantity('2')).sign() == -1",
    "isQuantity('40Gi') && !isQuantity('40GiB') && !isQuantity('')",
    "quantity('1n').isGreaterThan(quantity('0.1n')) == false",  # stored values round up to 1n
]
SEMVER_TRUE = [
    "semver('1.2.3').major() == 1 && semver('1.2.3').minor() == 2 && semver('1.2.3').patch() == 3",
    "semver('1.2.3').compareTo(semver('2.0.0')) == -1 && semver('1.2.3').compareTo(semver('0.1.2')) == 1",
    "semver('10.0.0').isGreaterThan(semver('9.0.0'))",
    "semver('1.0.0-alpha').isLessThan(semver('1.0.0'))",
    "semver('1.0.0-alpha').isLessThan(semver('1.0.0-alpha.1'))",
    "semver('1.0.0-alpha.1').isLessThan(semver('1.0.0-alpha.beta'))",
    "semver('1.0.0-beta.2').isLessThan(semver('1.0.0-beta.11'))",
    "semver('1.0.0+build.1') == semver('1.0.0+build.2')",
    "semver('v1.2', true) == semver('1.2.0') && semver('01.01.01', true) == semver('1.1.1')",
    "isSemver('1.0.0') && !isSemver('v1.0.0') && isSemver('v1.0', true) && !isSemver('1.0-rc1', true)",
    "!isSemver('01.0.0') && !isSemver('1.0') && !isSemver('Three')",
]


@pytest.mark.parametrize("expression", QUANTITY_TRUE + SEMVER_TRUE)
def test_kubernetes_library_functions(expression: str) -> None:
    assert ev(expression) is True


QUANTITY_TEXT = st.builds(
    lambda sign, whole, frac, suffix: f"{sign}{whole}{frac}{suffix}",
    st.sampled_from(["", "+", "-"]),
    st.integers(0, 10**12).map(str),
    st.one_of(st.just(""), st.integers(0, 10**6).map(lambda n: f".{n}")),
    st.sampled_from(["", "n", "u", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti", "e3", "E-2", "e0"]),
)


@settings(max_examples=60, deadline=None)
@given(QUANTITY_TEXT, QUANTITY_TEXT)
def test_quantity_comparison_agrees_with_the_api_servers_parser(a: str, b: str) -> None:
    difference = Fraction(parse_quantity(a)) - Fraction(parse_quantity(b))
    expected = (difference > 0) - (difference < 0)
    assert ev(f"quantity('{a}').compareTo(quantity('{b}')) == {expected}")
    assert ev(f"quantity('{a}').isGreaterThan(quantity('{b}'))") is (expected == 1)
    assert ev(f"quantity('{a}') == quantity('{b}')") is (expected == 0)


@settings(max_examples=40, deadline=None)
@given(st.tuples(*[st.integers(0, 2**40)] * 3), st.tuples(*[st.integers(0, 2**40)] * 3))
def test_semver_core_compares_like_tuples(a: tuple[int, int, int], b: tuple[int, int, int]) -> None:
    expected = (a > b) - (a < b)
    assert ev(f"semver('{'.'.join(map(str, a))}').compareTo(semver('{'.'.join(map(str, b))}')) == {expected}")


@settings(max_examples=40, deadline=None)
@given(st.text(st.characters(min_codepoint=32, max_codepoint=126, exclude_characters="'\\"), max_size=20))
def test_ascii_case_functions(text: str) -> None:
    assert ev(f"'{text}'.lowerAscii() == '{text.lower()}' && '{text}'.upperAscii() == '{text.upper()}'")


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (f"{A}.index == 'a'", False),
        (f"{A}.index != 'a'", True),
        (f"{A}.index == 3.0", True),
        (f"{A}.index < 3.5", True),
        (f"{A}.migCapable == 1", False),
        (f"{A}.type in ['mig', 'gpu']", True),
        (f"{C}.memory == 85520809984", False),
    ],
)
def test_dyn_values_compare_as_in_cel_go(expression: str, expected: bool) -> None:
    """Attribute values are dyn: mixed-type == is false (not an error), numbers compare across types."""
    assert ev(expression) is expected


# ---- the cookbook, on devices published exactly as the driver does -------------------------------------

ENTRIES = {entry["id"]: entry for entry in COOKBOOK}
CHECKS = [(entry["id"], index) for entry in COOKBOOK for index, _ in enumerate(entry["checks"])]


def _check_id(case: tuple[str, int]) -> str:
    return f"{case[0]}@{ENTRIES[case[0]]['checks'][case[1]]['profile']}"


def _skip_reason(entry: dict[str, Any], check: dict[str, Any]) -> str | None:
    requires = [*entry.get("requires", []), *check.get("requires", [])]
    profile = check["profile"]
    if profile not in list_profiles() or undiscoverable(profile):
        assert profile in requires, f"profile {profile!r} is not available and not declared in requires"
        return undiscoverable(profile) if profile in list_profiles() else f"needs mock profile {profile!r}"
    for need in requires:
        if "/" in need and not any(publishes(d, need) for d in published(profile)):
            return f"needs attribute {need!r} on profile {profile!r}"
        if "/" not in need and (need not in list_profiles() or undiscoverable(need)):
            return f"needs mock profile {need!r}"
    return None


def _outcome(selectors: list[str], device: k8stypes.Device) -> bool | str:
    try:
        return cel.device_matches(selectors, device)
    except cel.CelRuntimeError as err:
        return f"error: {err}"


def _groups(entry: dict[str, Any], matched: list[k8stypes.Device]) -> list[list[str]]:
    """Candidates grouped by the constraint's attribute; groups big enough for the request's count."""
    (constraint,) = entry["constraints"]
    groups: dict[str, list[str]] = defaultdict(list)
    for device in matched:
        if publishes(device, constraint["matchAttribute"]):
            groups[repr(attribute(device, constraint["matchAttribute"]))].append(device["name"])
    return sorted(sorted(g) for g in groups.values() if len(g) >= entry.get("count", 1))


@pytest.mark.parametrize("case", CHECKS, ids=_check_id)
def test_cookbook_entry(case: tuple[str, int]) -> None:
    entry = ENTRIES[case[0]]
    check = entry["checks"][case[1]]
    reason = _skip_reason(entry, check)
    if reason:
        pytest.skip(reason)
    in_class = class_selectors(entry["deviceClassName"])
    devices = [d for d in published(check["profile"]) if cel.device_matches(in_class, d)]
    outcomes = {d["name"]: _outcome(entry.get("selectors", []), d) for d in devices}
    if entry.get("kind") == "pitfall":
        _check_pitfall(entry, check, devices, outcomes)
        return
    assert not [o for o in outcomes.values() if isinstance(o, str)], outcomes
    matched = sorted(name for name, outcome in outcomes.items() if outcome is True)
    if "matches" in check:
        assert matched == sorted(check["matches"])
    if "count" in check:
        assert len(matched) == check["count"]
    if "constraints" in entry:
        groups = _groups(entry, [d for d in devices if outcomes[d["name"]] is True])
        if "groups" in check:
            assert groups == sorted(sorted(g) for g in check["groups"])
        if "group_sizes" in check:
            assert sorted(len(g) for g in groups) == sorted(check["group_sizes"])


def _check_pitfall(entry: dict[str, Any], check: dict[str, Any], devices: list[k8stypes.Device],
                   outcomes: dict[str, bool | str]) -> None:
    guarded = ENTRIES[entry["guarded"]]["selectors"] if "guarded" in entry else None
    for device in devices:
        outcome = outcomes[device["name"]]
        if not publishes(device, entry["missing"]):
            assert outcome in (False, f"error: {entry['error']}"), (device["name"], outcome)
        else:
            assert guarded is not None, f"{device['name']} has {entry['missing']}: name a guarded twin"
            assert outcome == _outcome(guarded, device), (device["name"], outcome)
    if "error_count" in check:
        assert sum(isinstance(o, str) for o in outcomes.values()) == check["error_count"]


def test_cookbook_is_well_formed() -> None:
    assert len(ENTRIES) == len(COOKBOOK)
    classes = {p.name.removesuffix(".yaml") for p in CLASS_FILES}
    for entry in COOKBOOK:
        assert entry["deviceClassName"] in classes, entry["id"]
        assert entry["checks"], entry["id"]
        assert "selectors" in entry or "constraints" in entry, entry["id"]
        for selector in entry.get("selectors", []):
            cel.compile_selector(selector)
        for check in entry["checks"]:
            keys = set(check) - {"profile", "requires"}
            pitfall = entry.get("kind") == "pitfall"
            expectations = {"error_count"} if pitfall else {"matches", "count", "groups", "group_sizes"}
            assert keys <= expectations, (entry["id"], check)
            assert keys or pitfall, (entry["id"], check)


def _normalize(expression: str) -> str:
    return re.sub(r"\s+", " ", expression).strip()


def _doc_values(node: object, key: str) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == key and isinstance(v, str)] + [
            x for v in node.values() for x in _doc_values(v, key)]
    if isinstance(node, list):
        return [x for v in node for x in _doc_values(v, key)]
    return []


def test_the_markdown_cookbook_shows_only_tested_selectors_and_every_entry() -> None:
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", DOC, re.DOTALL)]
    shown = {_normalize(e) for b in blocks for e in _doc_values(b, "expression")}
    tested = {_normalize(s) for e in COOKBOOK for s in e.get("selectors", [])}
    tested |= {_normalize(s) for p in CLASS_FILES for s in class_selectors(p.name.removesuffix(".yaml"))}
    assert shown
    assert shown <= tested, shown - tested
    attributes = {a for b in blocks for a in _doc_values(b, "matchAttribute")}
    assert attributes == {c["matchAttribute"] for e in COOKBOOK for c in e.get("constraints", [])}
    for entry in COOKBOOK:
        assert f'<a id="{entry["id"]}"></a>' in DOC, entry["id"]
