"""Names from the API never move a file or a mount out of its directory (issue 13, item 10).

Through the real Preparer over the mock driver: a claim whose name, namespace, UID, pod claim name or
request is a traversal or holds odd characters is refused with the field named, writes nothing, and its
well-formed neighbour in the same call is prepared with every host file and container path in its place.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.planning.devicemeta import CONTAINER_ROOT, POD_CLAIM_NAME_ANNOTATION
from gpudra.planning.plan import ClaimRef
from tests.unit.preparer_rig import Rig, mock_rig

GOOD_UID = "9d000000-0000-4000-8000-000000000001"
BAD_UID = "9d000000-0000-4000-8000-000000000002"
TRAVERSALS = ["..", "../../../../etc", "a/../../../b", "x/..", ".", "A B", "a%2f..", "tab\there"]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with mock_rig(tmp_path / "node") as r:
        yield r


def _claim(
    ref: ClaimRef, device: str, request: str = "gpu", annotations: dict[str, str] | None = None
) -> Any:
    result = {"request": request, "driver": "gpudra.io", "pool": "node", "device": device}
    return {
        "metadata": {
            "name": ref.name,
            "namespace": ref.namespace,
            "uid": ref.uid,
            "annotations": annotations or {},
        },
        "status": {"allocation": {"devices": {"results": [result]}}},
    }


def _prepare_with_neighbour(rig: Rig, bad: ClaimRef, bad_json: Any) -> tuple[str | None, Any]:
    """Prepare ``bad`` and a good claim in one call; the bad one's error and the good one's CDI spec."""
    first, second = list(rig.node.current.offer.devices)[:2]
    good = ClaimRef("ns", "good", GOOD_UID)
    rig.claims.by_name = {"good": _claim(good, first), bad.name: bad_json}
    bad_json["status"]["allocation"]["devices"]["results"][0]["device"] = second
    results = rig.preparer.prepare([bad, good])
    assert results[good.uid].error is None
    return results[bad.uid].error, json.loads(rig.cdi.path_for(good.uid).read_text())


def _assert_in_place(tmp_path: Path, good_spec: Any) -> None:
    """Only the good claim's files exist, all under the node's directory; its mounts stay in their roots."""
    assert [p.name for p in tmp_path.iterdir()] == ["node"]
    node = tmp_path / "node"
    files = sorted(str(p.relative_to(node)) for p in node.rglob("*") if p.is_file())
    assert all(GOOD_UID in f or f.startswith("cp.") for f in files), files
    for device in good_spec["devices"]:
        for mount in device["containerEdits"]["mounts"]:
            assert Path(mount["hostPath"]).resolve().is_relative_to(node.resolve())
            inside = mount["containerPath"]
            assert posixpath.normpath(inside) == inside
            if inside.startswith(CONTAINER_ROOT):
                assert inside.startswith(f"{CONTAINER_ROOT}/resourceclaims/good/gpu/")


@pytest.mark.parametrize("odd", TRAVERSALS, ids=repr)
def test_a_traversal_in_the_pod_claim_name_is_refused(tmp_path: Path, rig: Rig, odd: str) -> None:
    bad = ClaimRef("ns", "bad", BAD_UID)
    error, spec = _prepare_with_neighbour(
        rig, bad, _claim(bad, "", annotations={POD_CLAIM_NAME_ANNOTATION: odd})
    )
    assert error is not None
    assert f"metadata.annotations[{POD_CLAIM_NAME_ANNOTATION}]: invalid value {json.dumps(odd)}" in error
    _assert_in_place(tmp_path, spec)


@pytest.mark.parametrize("odd", [*TRAVERSALS, "gpu/..", "gpu/a/b"], ids=repr)
def test_a_traversal_in_the_request_name_is_refused(tmp_path: Path, rig: Rig, odd: str) -> None:
    bad = ClaimRef("ns", "bad", BAD_UID)
    error, spec = _prepare_with_neighbour(rig, bad, _claim(bad, "", request=odd))
    assert error is not None
    assert f"status.allocation.devices.results[0].request: invalid value {json.dumps(odd)}" in error
    _assert_in_place(tmp_path, spec)


@pytest.mark.parametrize("field", ["name", "namespace", "uid"])
@pytest.mark.parametrize("odd", TRAVERSALS, ids=repr)
def test_a_traversal_in_the_claim_reference_is_refused(
    tmp_path: Path, rig: Rig, field: str, odd: str
) -> None:
    """The kubelet's reference (checked at the gRPC edge too): the plan refuses it on its own."""
    values = {"namespace": "ns", "name": "bad", "uid": BAD_UID} | {field: odd}
    bad = ClaimRef(values["namespace"], values["name"], values["uid"])
    error, spec = _prepare_with_neighbour(rig, bad, _claim(bad, ""))
    assert error is not None
    assert f"the kubelet's claim reference: {field}: invalid value {json.dumps(odd)}" in error
    _assert_in_place(tmp_path, spec)
