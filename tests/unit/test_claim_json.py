"""The claim JSON prepare reads: every field of the wrong shape is a PlanError naming the field, never another
exception; every name the plugin records or builds a path from has its API format."""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from typing import Any, Final, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra.model import names
from gpudra.model.inventory import Device, DeviceKind, Vendor
from gpudra.model.k8stypes import ResourceClaim
from gpudra.planning import claimjson, config
from gpudra.planning.devicemeta import POD_CLAIM_NAME_ANNOTATION
from gpudra.planning.plan import ClaimPlan, ClaimRef, PlanError, plan_claim

UID: Final = "0f1e2d3c-0000-4000-8000-000000000001"
SHARE: Final = "5e0c1a9e-0000-4000-8000-000000000007"
REF: Final = ClaimRef("team", "train", UID)
POOL: Final = "node-a"
API: Final = "gpudra.io/v1alpha1"
DEVICES: Mapping[str, Device] = {
    f"gpu-{n}": Device(kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid=f"GPU-{n}", product_name="T", index=n)
    for n in range(2)
}
KINDS: Mapping[tuple[str, str], config.Decoder] = {(API, "Alpha"): lambda params: dict(params)}
RESULTS: Final = "status.allocation.devices.results"
CONFIG: Final = "status.allocation.devices.config"

Path = tuple[str | int, ...]


def base_claim() -> dict[str, Any]:
    """A claim that uses every field prepare reads, with results and configs of another driver in between."""
    ours: dict[str, object] = {"request": "gpus/big", "driver": names.DRIVER_NAME, "pool": POOL}
    ours |= {"device": "gpu-1", "adminAccess": False, "shareID": SHARE}
    theirs = {"request": "nic", "driver": "net.example.com", "pool": "p", "device": "nic-0"}
    our_config = {
        "source": "FromClass",
        "requests": ["gpus"],
        "opaque": {"driver": names.DRIVER_NAME, "parameters": {"apiVersion": API, "kind": "Alpha", "x": 1}},
    }
    their_config = {"source": "FromClaim", "opaque": {"driver": "net.example.com", "parameters": {}}}
    return {
        "metadata": {
            "name": "train",
            "namespace": "team",
            "uid": UID,
            "annotations": {POD_CLAIM_NAME_ANNOTATION: "gpu", "other": "x"},
        },
        "status": {
            "allocation": {"devices": {"results": [theirs, ours], "config": [their_config, our_config]}}
        },
    }


def plan(claim: object) -> ClaimPlan:
    return plan_claim(REF, cast(ResourceClaim, claim), DEVICES, POOL, KINDS)


def render(path: Path) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif "/" in part:
            out += f"[{part}]"  # a map key: the apiserver's field.Path.Key
        else:
            out += f".{part}" if out else part
    return out


def with_value(path: Path, value: object) -> dict[str, Any]:
    claim = base_claim()
    node: Any = claim
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return claim


def without(path: Path) -> dict[str, Any]:
    claim = base_claim()
    node: Any = claim
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return claim


def test_the_base_claim_is_valid() -> None:
    (device,) = plan(base_claim()).devices
    assert (device.request, device.name, device.share_id, device.admin_access) == (
        "gpus/big",
        "gpu-1",
        SHARE,
        False,
    )
    assert device.configs == ({"apiVersion": API, "kind": "Alpha", "x": 1},)
    assert plan(base_claim()).pod_claim_name == "gpu"


# ---- wrong JSON types ----------------------------------------------------------------------------------

_R, _C = ("status", "allocation", "devices", "results"), ("status", "allocation", "devices", "config")
_OBJ, _LIST, _STR, _BOOL = dict, list, str, bool
#: Every field prepare reads, with the JSON type it must have.
FIELDS: list[tuple[Path, type]] = [
    (("metadata",), _OBJ),
    (("metadata", "uid"), _STR),
    (("metadata", "name"), _STR),
    (("metadata", "namespace"), _STR),
    (("metadata", "annotations"), _OBJ),
    (("metadata", "annotations", POD_CLAIM_NAME_ANNOTATION), _STR),
    (("status",), _OBJ),
    (("status", "allocation"), _OBJ),
    (("status", "allocation", "devices"), _OBJ),
    (_R, _LIST),
    ((*_R, 0), _OBJ),
    ((*_R, 0, "driver"), _STR),
    ((*_R, 1), _OBJ),
    ((*_R, 1, "driver"), _STR),
    ((*_R, 1, "request"), _STR),
    ((*_R, 1, "pool"), _STR),
    ((*_R, 1, "device"), _STR),
    ((*_R, 1, "adminAccess"), _BOOL),
    ((*_R, 1, "shareID"), _STR),
    (_C, _LIST),
    ((*_C, 0), _OBJ),
    ((*_C, 0, "opaque"), _OBJ),
    ((*_C, 0, "opaque", "driver"), _STR),
    ((*_C, 1), _OBJ),
    ((*_C, 1, "source"), _STR),
    ((*_C, 1, "requests"), _LIST),
    ((*_C, 1, "requests", 0), _STR),
    ((*_C, 1, "opaque"), _OBJ),
    ((*_C, 1, "opaque", "driver"), _STR),
    ((*_C, 1, "opaque", "parameters"), _OBJ),
    ((*_C, 1, "opaque", "parameters", "apiVersion"), _STR),
    ((*_C, 1, "opaque", "parameters", "kind"), _STR),
]
REQUIRED: list[Path] = [
    (*_R, 0, "driver"),
    (*_R, 1, "driver"),
    (*_R, 1, "request"),
    (*_R, 1, "pool"),
    (*_R, 1, "device"),
    (*_C, 0, "opaque", "driver"),
    (*_C, 1, "source"),
    (*_C, 1, "opaque", "driver"),
    (*_C, 1, "opaque", "parameters"),
    (*_C, 1, "opaque", "parameters", "apiVersion"),
    (*_C, 1, "opaque", "parameters", "kind"),
]

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _is(value: object, kind: type) -> bool:
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def _expected_a(kind: type) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a bool"}[kind]


@pytest.mark.parametrize(("path", "kind"), FIELDS, ids=[render(p) for p, _ in FIELDS])
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_a_field_of_the_wrong_type_is_a_plan_error_naming_it(
    path: Path, kind: type, data: st.DataObject
) -> None:
    value = data.draw(JSON_VALUES.filter(lambda v: not _is(v, kind)), label="value")
    with pytest.raises(PlanError) as err:
        plan(with_value(path, value))
    assert err.value.kind == "invalid"
    assert f"malformed: {render(path)}: expected {_expected_a(kind)}, got " in str(err.value)


@pytest.mark.parametrize("path", REQUIRED, ids=[render(p) for p in REQUIRED])
def test_a_missing_required_field_is_named(path: Path) -> None:
    with pytest.raises(PlanError) as err:
        plan(without(path))
    assert f"malformed: {render(path)}: required value is missing" in str(err.value)


@pytest.mark.parametrize("value", [None, [], "claim", 7, True])
def test_a_claim_that_is_not_an_object(value: object) -> None:
    with pytest.raises(PlanError, match=r"is malformed: the claim: expected an object, got ") as err:
        plan(value)
    assert err.value.kind == "invalid"


# ---- the twelve shapes seen in the campaign, one by one --------------------------------------------------

CAMPAIGN: list[tuple[str, Path, object, str]] = [
    ("null allocation", ("status", "allocation"), None, "status.allocation: expected an object, got null"),
    ("null devices", (*_R[:3],), None, "status.allocation.devices: expected an object, got null"),
    ("results string", _R, "x", f"{RESULTS}: expected a list, got string"),
    ("results dict", _R, {"a": 1}, f"{RESULTS}: expected a list, got object"),
    ("results int", _R, 3, f"{RESULTS}: expected a list, got number"),
    ("results null", _R, None, f"{RESULTS}: expected a list, got null"),
    ("result null", (*_R, 1), None, f"{RESULTS}[1]: expected an object, got null"),
    ("device list", (*_R, 1, "device"), ["gpu-1"], f"{RESULTS}[1].device: expected a string, got list"),
    ("request null", (*_R, 1, "request"), None, f"{RESULTS}[1].request: expected a string, got null"),
    ("request int", (*_R, 1, "request"), 3, f"{RESULTS}[1].request: expected a string, got number"),
    ("config dict", _C, {}, f"{CONFIG}: expected a list, got object"),
    ("config null entry", (*_C, 1), None, f"{CONFIG}[1]: expected an object, got null"),
    (
        "annotations list",
        ("metadata", "annotations"),
        ["a"],
        "metadata.annotations: expected an object, got list",
    ),
    ("shareID number", (*_R, 1, "shareID"), 7, f"{RESULTS}[1].shareID: expected a string, got number"),
    (
        "adminAccess string",
        (*_R, 1, "adminAccess"),
        "false",
        f"{RESULTS}[1].adminAccess: expected a bool, got string",
    ),
    (
        "config requests string",
        (*_C, 1, "requests"),
        "gpus",
        f"{CONFIG}[1].requests: expected a list, got string",
    ),
]


@pytest.mark.parametrize(
    ("path", "value", "message"), [c[1:] for c in CAMPAIGN], ids=[c[0] for c in CAMPAIGN]
)
def test_campaign_shapes(path: Path, value: object, message: str) -> None:
    with pytest.raises(PlanError) as err:
        plan(with_value(path, value))
    assert str(err.value) == f"ResourceClaim team/train is malformed: {message}"
    assert err.value.kind == "invalid"


# ---- formats of what is recorded or becomes a path -----------------------------------------------------

FORMATTED: list[tuple[Path, str]] = [
    ((*_R, 1, "request"), "a request name"),
    ((*_R, 1, "pool"), "a pool name"),
    ((*_R, 1, "device"), "a DNS label"),
    ((*_R, 1, "shareID"), "a UID in RFC 4122 normalized form"),
    (("metadata", "annotations", POD_CLAIM_NAME_ANNOTATION), "a DNS label"),
    ((*_C, 1, "requests", 0), "a request name"),
]
ODD = [
    "..",
    ".",
    "../../../../etc",
    "a/../b",
    "/abs",
    "a%2fb",
    "A",
    "a b",
    "a\x00b",
    "gpu\n",
    "é",
    "-a",
    "a" * 254,
]


@pytest.mark.parametrize(("path", "rule"), FORMATTED, ids=[render(p) for p, _ in FORMATTED])
@pytest.mark.parametrize("odd", ODD, ids=repr)
def test_odd_names_are_refused_naming_the_field(path: Path, rule: str, odd: str) -> None:
    with pytest.raises(PlanError) as err:
        plan(with_value(path, odd))
    assert err.value.kind == "invalid"
    assert f"{render(path)}: invalid value {json.dumps(odd)}: must be {rule}" in str(err.value)


@pytest.mark.parametrize(
    "share",
    ["", "7", "share-7", SHARE.upper(), "{" + SHARE + "}", f"urn:uuid:{SHARE}", SHARE.replace("-", "")],
)
def test_share_ids_are_normalized_uids(share: str) -> None:
    with pytest.raises(PlanError, match=r"results\[1\]\.shareID: invalid value .*: must be a UID"):
        plan(with_value((*_R, 1, "shareID"), share))


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ((*_R, 1, "request"), "gpus"),
        ((*_R, 1, "request"), "a-1/b-2"),
        ((*_C, 1, "requests", 0), "gpus/big"),
        (("metadata", "annotations", POD_CLAIM_NAME_ANNOTATION), "x" * 63),
    ],
)
def test_valid_names_pass(path: Path, value: str) -> None:
    plan(with_value(path, value))


@pytest.mark.parametrize("bad", ["", "FromDriver", "fromclass"])
def test_config_source_is_one_of_two(bad: str) -> None:
    with pytest.raises(
        PlanError, match=rf'config\[1\]\.source: unsupported value "{bad}": must be "FromClass" or'
    ):
        plan(with_value((*_C, 1, "source"), bad))


@pytest.mark.parametrize("key", ["apiVersion", "kind"])
def test_config_api_version_and_kind_are_not_empty(key: str) -> None:
    with pytest.raises(PlanError, match=rf"config\[1\]\.opaque\.parameters\.{key}: must not be empty"):
        plan(with_value((*_C, 1, "opaque", "parameters", key), ""))


# ---- what may be left out ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        ("metadata", "annotations"),
        ("metadata", "annotations", POD_CLAIM_NAME_ANNOTATION),
        (*_R, 1, "adminAccess"),
        (*_R, 1, "shareID"),
        (*_C, 1, "requests"),
        _C,
        ("metadata", "name"),
        ("metadata", "namespace"),
    ],
    ids=render,
)
def test_optional_fields_may_be_absent(path: Path) -> None:
    (device,) = plan(without(path)).devices
    assert device.name == "gpu-1"


def test_an_empty_pod_claim_name_is_none() -> None:
    assert plan(with_value(("metadata", "annotations", POD_CLAIM_NAME_ANNOTATION), "")).pod_claim_name is None


def test_other_drivers_fields_are_not_ours_to_check() -> None:
    claim = base_claim()
    claim["status"]["allocation"]["devices"]["results"][0] |= {"device": ["x"], "shareID": 7, "request": ".."}
    claim["status"]["allocation"]["devices"]["config"][0] |= {"source": 1, "requests": "x"}
    claim["status"]["allocation"]["devices"]["config"][0]["opaque"]["parameters"] = "junk"
    claim["status"]["allocation"]["devices"]["config"].append({"source": "FromClaim"})  # not opaque at all
    assert [d.name for d in plan(claim).devices] == ["gpu-1"]


@pytest.mark.parametrize(("field", "value"), [("name", "someone-else"), ("namespace", "elsewhere")])
def test_the_api_must_answer_for_the_claim_the_kubelet_named(field: str, value: str) -> None:
    with pytest.raises(PlanError, match=rf'metadata\.{field} is "{value}", the kubelet asked for'):
        plan(with_value(("metadata", field), value))


# ---- anything else: a PlanError or a plan, never another exception ------------------------------------


def _paths(node: object, prefix: Path = ()) -> list[Path]:
    out: list[Path] = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


ALL_PATHS = _paths(base_claim())


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(ALL_PATHS), st.none() | JSON_VALUES | st.just(claimjson)), max_size=4)
)
def test_any_damage_is_a_plan_or_a_plan_error(damage: list[tuple[Path, object]]) -> None:
    claim = base_claim()
    for path, value in damage:
        node: Any = claim
        try:
            for part in path[:-1]:
                node = node[part]
            if value is claimjson:  # stands for "delete the field"
                del node[path[-1]]
            else:
                node[path[-1]] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced a parent: this path is gone
    kind = "planned"
    try:
        plan(claim)
    except PlanError as e:
        kind = e.kind
    assert kind in {"planned", "invalid", "uid_mismatch", "not_allocated", "unknown_device", "config"}
