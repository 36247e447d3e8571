"""The ValidatingAdmissionPolicy the chart installs (as rendered in daemonset/overlays/mock/gpudra.yaml): the
plugin may write only its own node's ResourceSlices.

Its CEL expressions are evaluated with celpy (the library under gpudra.devtools.cel's emulation) on the
AdmissionRequest shapes the apiserver hands them: ``request`` (operation, userInfo with the node-name extra of
a node-bound service-account token), ``object`` (null on DELETE), ``oldObject`` (null on CREATE) and the
policy's own ``variables``. As with selectors, this is an emulation of the apiserver, not the apiserver.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("gpudra.devtools.cel", reason="the CEL emulation (celpy) is not installed")
celpy = pytest.importorskip("celpy")
from celpy import celtypes  # noqa: E402
from celpy.adapter import json_to_cel  # noqa: E402

from tests.unit.manifest_tools import DAEMONSET, load_documents  # noqa: E402

RENDERED = DAEMONSET / "overlays" / "mock" / "gpudra.yaml"
NODE_EXTRA = "authentication.kubernetes.io/node-name"
PLUGIN_USER = "system:serviceaccount:gpudra-system:gpudra-kubelet-plugin"

_ENV = celpy.Environment()
_SPEC: dict[str, Any] = next(
    d["spec"] for d in load_documents(RENDERED) if d["metadata"]["name"] == "gpudra-resourceslices-own-node"
)
_PROGRAMS: dict[str, Any] = {}


def _eval(expression: str, activation: dict[str, Any]) -> Any:
    if expression not in _PROGRAMS:
        _PROGRAMS[expression] = _ENV.program(_ENV.compile(expression))
    return _PROGRAMS[expression].evaluate(activation)


def _slice(node: str | None) -> dict[str, Any]:
    return {"spec": {"driver": "gpudra.io", **({"nodeName": node} if node else {"allNodes": True})}}


def admit(
    operation: str, user_node: str | None, new: str | None, old: str | None, user: str = PLUGIN_USER
) -> tuple[bool, list[str]]:
    """(allowed, messages of the failed validations) for one ResourceSlice request, as the policy decides."""
    user_info: dict[str, Any] = {"username": user}
    if user_node is not None:
        user_info["extra"] = {NODE_EXTRA: [user_node]}
    request = {"operation": operation, "userInfo": user_info}
    activation: dict[str, Any] = {
        "request": json_to_cel(request),
        "object": json_to_cel(None if operation == "DELETE" else _slice(new)),
        "oldObject": json_to_cel(None if operation == "CREATE" else _slice(old)),
    }
    if not all(bool(_eval(c["expression"], activation)) for c in _SPEC["matchConditions"]):
        return True, []  # the policy does not apply to this user
    variables: dict[Any, Any] = {}
    for var in _SPEC["variables"]:  # a variable may read the ones before it
        activation["variables"] = celtypes.MapType(variables)
        variables[celtypes.StringType(var["name"])] = _eval(var["expression"], activation)
    activation["variables"] = celtypes.MapType(variables)
    messages = []
    for check in _SPEC["validations"]:
        if not bool(_eval(check["expression"], activation)):
            message = _eval(check["messageExpression"], activation) if "messageExpression" in check else None
            messages.append(str(message if message is not None else check["message"]))
    return not messages, messages


nodes = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?", fullmatch=True)


@settings(max_examples=25, deadline=None)  # celpy evaluates slowly
@given(node=nodes)
def test_own_node_slices_may_be_created_updated_deleted(node: str) -> None:
    assert admit("CREATE", node, node, None) == (True, [])
    assert admit("UPDATE", node, node, node) == (True, [])
    assert admit("DELETE", node, None, node) == (True, [])


@settings(max_examples=25, deadline=None)
@given(node=nodes, other=nodes)
def test_another_nodes_slices_are_refused(node: str, other: str) -> None:
    assume(node != other)
    for operation, new, old in (
        ("CREATE", other, None),
        ("UPDATE", other, other),  # rewrite another node's devices
        ("UPDATE", node, other),  # take another node's slice over
        ("UPDATE", other, node),  # hand one's own slice to another node
        ("DELETE", None, other),
    ):
        allowed, messages = admit(operation, node, new, old)
        assert not allowed, (operation, new, old)
        assert any(f"on node {node} " in m for m in messages)


def test_slices_for_no_single_node_are_refused() -> None:
    allowed, messages = admit("CREATE", "node-a", None, None)  # allNodes: true
    assert not allowed
    assert messages == [
        "the gpudra kubelet plugin on node node-a may only write ResourceSlices whose "
        'spec.nodeName is node-a, not ""'
    ]


def test_a_token_without_node_claim_is_refused() -> None:
    allowed, messages = admit("CREATE", None, "node-a", None)
    assert not allowed
    assert "node-bound service account token" in messages[0]


def test_other_users_are_not_concerned() -> None:
    assert admit("CREATE", None, "node-b", None, user="system:node:node-a") == (True, [])
    assert admit("DELETE", None, None, "node-b", user="system:admin") == (True, [])
