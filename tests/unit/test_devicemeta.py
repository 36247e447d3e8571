"""The KEP-5304 metadata stream: one DeviceMetadata object per API version, same body, one per line."""

from __future__ import annotations

import json

from gpudra.planning.devicemeta import (
    API_VERSIONS,
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
