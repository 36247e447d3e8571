"""The ValidatingAdmissionPolicy of deviceclasses/sharing-policy.yaml: bad gpudra.io configs fail at apply.

Its CEL is evaluated with celpy plus Kubernetes' quantity library (:mod:`gpudra.devtools.cel_k8s`) on the
AdmissionRequest shapes the apiserver hands it: ``request`` (operation, resource), ``object`` and
``oldObject`` as unstructured JSON, and the policy's own ``variables``, each evaluated in order. The cases are
the decoder's (tests/unit/sharing_cases.py), in a ResourceClaim, a ResourceClaimTemplate and a DeviceClass;
hypothesis puts random JSON at every field and checks that the policy and the plugin's decoder agree on the
verdict and the message. As with selectors, this is an emulation of the apiserver, not the apiserver.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("gpudra.devtools.cel", reason="the CEL emulation (celpy) is not installed")
celpy = pytest.importorskip("celpy")
from celpy import celtypes  # noqa: E402
from celpy.adapter import json_to_cel  # noqa: E402
from celpy.evaluation import CELEvalError  # noqa: E402

from gpudra.devtools.cel_k8s import FUNCTIONS  # noqa: E402
from gpudra.planning import config  # noqa: E402
from gpudra.planning.configfields import ConfigFieldError  # noqa: E402
from tests.unit.manifest_tools import load_documents  # noqa: E402
from tests.unit.sharing_cases import BAD, GOOD, Case, gpu, mps  # noqa: E402
from tests.unit.sharing_shapes import OBJECTS, PLACES, put  # noqa: E402

POLICY_FILE = Path(__file__).resolve().parents[2] / "deviceclasses" / "sharing-policy.yaml"
POLICY, BINDING = load_documents(POLICY_FILE)
_SPEC: dict[str, Any] = POLICY["spec"]
_ENV = celpy.Environment()
_PROGRAMS: dict[str, Any] = {}
OTHER = {"opaque": {"driver": "other.example.com", "parameters": {"kind": 7, "sharing": "whatever"}}}
BASES = {
    "resourceclaims": "spec.devices.config",
    "resourceclaimtemplates": "spec.spec.devices.config",
    "deviceclasses": "spec.config",
}


def _eval(expression: str, activation: dict[str, Any]) -> Any:
    if expression not in _PROGRAMS:
        _PROGRAMS[expression] = _ENV.program(_ENV.compile(expression), functions=FUNCTIONS)
    value = _PROGRAMS[expression].evaluate(activation)
    _no_error_inside(value, expression)
    return value


def _no_error_inside(value: object, expression: str) -> None:
    """A CEL error anywhere in a value would make the apiserver fail the request (failurePolicy: Fail)."""
    if isinstance(value, CELEvalError):
        raise AssertionError(f"CEL error {value!r} in {expression}")
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for item in items:
        _no_error_inside(item, expression)


def admit(
    resource: str, obj: dict[str, Any], operation: str = "CREATE", old: Any = None
) -> tuple[bool, list[str]]:
    """(allowed, messages of the failed validations) for one request, as the policy decides."""
    request = {
        "operation": operation,
        "resource": {"group": "resource.k8s.io", "version": "v1", "resource": resource},
    }
    activation: dict[str, Any] = {
        "request": json_to_cel(request),
        "object": json_to_cel(obj),
        "oldObject": json_to_cel(old),
    }
    if not all(bool(_eval(c["expression"], activation)) for c in _SPEC["matchConditions"]):
        return True, []
    variables: dict[Any, Any] = {}
    for var in _SPEC["variables"]:  # a variable may read the ones before it
        activation["variables"] = celtypes.MapType(variables)
        variables[celtypes.StringType(var["name"])] = _eval(var["expression"], activation)
    activation["variables"] = celtypes.MapType(variables)
    messages = []
    for check in _SPEC["validations"]:
        if not bool(_eval(check["expression"], activation)):
            messages.append(str(_eval(check["messageExpression"], activation)))
    return not messages, messages


def holding(resource: str, *configs: dict[str, Any]) -> dict[str, Any]:
    """A ``resource`` object whose config list is ``configs``."""
    entries = [{"requests": ["gpu"], **c} if resource != "deviceclasses" else c for c in configs]
    if resource == "deviceclasses":
        return {"metadata": {"name": "shared.example.com"}, "spec": {"config": entries}}
    devices = {
        "requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.gpudra.io"}}],
        "config": entries,
    }
    if resource == "resourceclaimtemplates":
        return {"metadata": {"name": "t"}, "spec": {"spec": {"devices": devices}}}
    return {"metadata": {"name": "c"}, "spec": {"devices": devices}}


def ours(params: object) -> dict[str, Any]:
    return {"opaque": {"driver": "gpudra.io", "parameters": params}}


# ---- the shared table ---------------------------------------------------------------------------------


@pytest.mark.parametrize("resource", sorted(BASES))
@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_good_configs_are_admitted(case: Case, resource: str) -> None:
    assert admit(resource, holding(resource, OTHER, ours(case.params))) == (True, [])


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_configs_in_claims_are_refused_naming_the_field(case: Case) -> None:
    allowed, messages = admit("resourceclaims", holding("resourceclaims", OTHER, ours(case.params)))
    assert not allowed
    assert messages == [f"spec.devices.config[1].opaque.parameters{case.error}"]


@pytest.mark.parametrize("resource", ["resourceclaimtemplates", "deviceclasses"])
@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_configs_in_templates_and_classes_are_refused(case: Case, resource: str) -> None:
    allowed, messages = admit(resource, holding(resource, OTHER, ours(case.params)))
    assert not allowed
    assert messages == [f"{BASES[resource]}[1].opaque.parameters{case.error}"]


# ---- which configs, which requests ----------------------------------------------------------------------


@pytest.mark.parametrize("resource", sorted(BASES))
def test_objects_without_our_configs_are_admitted(resource: str) -> None:
    assert admit(resource, holding(resource)) == (True, [])
    assert admit(resource, holding(resource, OTHER, OTHER)) == (True, [])
    bare = {"metadata": {"name": "x"}, "spec": {}}
    assert admit(resource, bare) == (True, [])


def test_every_bad_config_is_counted_and_the_first_named() -> None:
    good = ours(gpu())
    bad_percentage = ours(mps(defaultActiveThreadPercentage=0))
    bad_kind = ours({"apiVersion": "gpudra.io/v1alpha1", "kind": "X"})
    allowed, messages = admit(
        "deviceclasses", holding("deviceclasses", good, OTHER, bad_percentage, bad_kind)
    )
    assert not allowed
    assert messages == [
        "spec.config[2].opaque.parameters.sharing.mpsConfig.defaultActiveThreadPercentage: "
        "0 is out of range 1-100 (and 1 more gpudra.io configs with problems)"
    ]


def test_update_with_an_unchanged_spec_is_admitted_even_if_the_config_is_bad() -> None:
    """An object created before the policy can still lose its finalizers and be deleted."""
    old = holding("resourceclaims", ours(mps(defaultActiveThreadPercentage=0)))
    new = json.loads(json.dumps(old))
    new["metadata"]["finalizers"] = []
    assert admit("resourceclaims", new, "UPDATE", old) == (True, [])


def test_update_that_makes_a_class_config_bad_is_refused() -> None:
    old = holding("deviceclasses", ours(gpu(sharing={"strategy": "MPS"})))
    new = holding("deviceclasses", ours(gpu(sharing={"strategy": "MPS", "mpsConfig": {"multiUser": True}})))
    allowed, messages = admit("deviceclasses", new, "UPDATE", old)
    assert not allowed
    assert messages[0].startswith(
        "spec.config[0].opaque.parameters.sharing.mpsConfig.multiUser: unknown field"
    )
    assert admit("deviceclasses", old, "UPDATE", new) == (True, [])


def test_policy_matches_claims_templates_and_classes_on_create_and_update() -> None:
    (rule,) = _SPEC["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["resource.k8s.io"]
    assert sorted(rule["resources"]) == sorted(BASES)
    assert rule["operations"] == ["CREATE", "UPDATE"]
    assert POLICY["kind"] == "ValidatingAdmissionPolicy"
    assert POLICY["apiVersion"] == BINDING["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert BINDING["kind"] == "ValidatingAdmissionPolicyBinding"
    assert BINDING["spec"] == {"policyName": POLICY["metadata"]["name"], "validationActions": ["Deny"]}


# ---- agreement with the decoder on random shapes --------------------------------------------------------

# Strings that JSON and CEL quote alike (the decoder writes json.dumps(s), the policy '"' + s + '"'), without
# newlines: celpy's matches() lets '$' match before a final newline, RE2 (the apiserver's) does not.
_TEXT = st.text(alphabet=sorted(set(string.printable) - set(string.whitespace + '"\\') | {" "}), max_size=10)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)  # what Go's JSON decoding keeps as an int64
    | st.floats(allow_nan=False, allow_infinity=False)
    | _TEXT
    | st.sampled_from(
        ["1Gi", "1Mi", "1.5Gi", "10G", "1e6", "0", "GpuConfig", "MPS", "TimeSlicing", "Long", "7"]
    )
)
JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_TEXT, inner, max_size=3),
    max_leaves=6,
)


_GOT = re.compile(r", got (null|bool|number|string|list|object)$")


def decoder_says(params: dict[str, Any]) -> str | None:
    """The plugin decoder's message relative to the parameters, without its ``, got`` tail; None: good."""
    try:
        config.KNOWN_KINDS[(params["apiVersion"], params["kind"])](params)
    except ConfigFieldError as err:
        return _GOT.sub("", f".{err.path}: {err.problem}")
    return None


def agree(params: dict[str, Any]) -> None:
    expected = decoder_says(params)
    allowed, messages = admit("resourceclaims", holding("resourceclaims", ours(params)))
    if expected is None:
        assert (allowed, messages) == (True, [])
    else:
        assert messages == [f"spec.devices.config[0].opaque.parameters{expected}"]


@settings(max_examples=200, deadline=None)
@given(place=st.sampled_from(PLACES), value=JSON)
def test_policy_and_decoder_agree_on_random_values(
    place: tuple[dict[str, Any], tuple[str, ...]], value: object
) -> None:
    params, path = place
    agree(put(params, path, value))


@settings(max_examples=100, deadline=None)
@given(place=st.sampled_from(OBJECTS), key=_TEXT, value=JSON)
def test_policy_and_decoder_agree_on_extra_fields(
    place: tuple[dict[str, Any], tuple[str, ...]], key: str, value: object
) -> None:
    params, path = place
    agree(put(params, (*path, key), value))
