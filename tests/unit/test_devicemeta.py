"""The KEP-5304 metadata stream: one DeviceMetadata object per API version, same body, one per line."""

from __future__ import annotations

import json
import posixpath
from pathlib import PurePosixPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.planning.devicemeta import (
    API_VERSIONS,
    CONTAINER_ROOT,
    MetadataDevice,
    container_path,
    metadata_stream,
    top_request,
)


def test_stream_has_one_object_per_version_with_the_same_body() -> None:
    devices = [
        MetadataDevice("gpu", "node-a", "gpu-1", {"gpudra.io/uuid": {"string": "GPU-1"}}),
        MetadataDevice("gpu", "node-a", "gpu-2", {}),
    ]
    data = metadata_stream("ns", "claim", "uid-1", pod_claim_name="train", devices=devices, generation=3)
    objects = [json.loads(line) for line in data.decode().splitlines()]
    assert [o["apiVersion"] for o in objects] == list(API_VERSIONS)
    assert all(o["kind"] == "DeviceMetadata" for o in objects)
    bodies = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in objects]
    assert bodies[0] == bodies[1] == {
        "metadata": {"name": "claim", "namespace": "ns", "uid": "uid-1", "generation": 3},
        "podClaimName": "train",
        "requests": [
            {
                "name": "gpu",
                "devices": [
                    {"driver": "gpudra.io", "pool": "node-a", "name": "gpu-1",
                     "attributes": {"gpudra.io/uuid": {"string": "GPU-1"}}},
                    {"driver": "gpudra.io", "pool": "node-a", "name": "gpu-2"},
                ],
            }
        ],
    }
    assert data.endswith(b"\n")
    assert data.count(b"\n") == len(API_VERSIONS)


def test_without_a_pod_claim_name_and_with_subrequests() -> None:
    devices = [MetadataDevice("gpus/big", "p", "d", {})]
    [first, _] = metadata_stream("ns", "c", "u", pod_claim_name=None, devices=devices).decode().splitlines()
    obj = json.loads(first)
    assert "podClaimName" not in obj
    device = {"driver": "gpudra.io", "pool": "p", "name": "d"}
    assert obj["requests"] == [{"name": "gpus/big", "devices": [device]}]
    assert top_request("gpus/big") == "gpus"
    assert container_path("c", None, "gpus/big").endswith("/resourceclaims/c/gpus/gpudra.io-metadata.json")
    in_template = container_path("c", "tmpl", "gpus")
    assert in_template.endswith("/resourceclaimtemplates/tmpl/gpus/gpudra.io-metadata.json")


# ---- every name is one path component under the root ---------------------------------------------------

TRAVERSALS = ["..", ".", "../../../../etc", "a/../../b", "/etc", "a/b", "", "A", "a\x00", "a%2f.."]


@pytest.mark.parametrize("odd", TRAVERSALS, ids=repr)
def test_a_name_that_is_not_one_component_is_refused(odd: str) -> None:
    cases: list[tuple[str, str | None, str]] = [(odd, None, "gpu")]
    if odd:  # an empty pod claim name is no pod claim name
        cases.append(("claim", odd, "gpu"))
    if top_request(odd) != "a":  # the request's first part is the component ("a/b" -> "a")
        cases += [("claim", None, odd), ("claim", "tmpl", f"{odd}/sub")]
    for args in cases:
        with pytest.raises(ValueError, match="device metadata path: invalid value"):
            container_path(*args)


_NAMES = st.text(alphabet=st.sampled_from("ab./-%A\x00"), max_size=8)


@given(_NAMES, st.none() | _NAMES, _NAMES)
def test_a_container_path_never_leaves_its_root(claim: str, pod_claim: str | None, request: str) -> None:
    try:
        path = container_path(claim, pod_claim, request)
    except ValueError:
        return
    assert posixpath.normpath(path) == path
    parts = PurePosixPath(path).relative_to(CONTAINER_ROOT).parts
    assert len(parts) == 4
    assert parts[0] == ("resourceclaimtemplates" if pod_claim else "resourceclaims")
    assert parts[1] == (pod_claim or claim)
    assert parts[2] == top_request(request)
    assert all(p not in {".", ".."} for p in parts)
