"""The real ``lightkube`` client (generic resources) against the stand-in API server."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import ApiError, Client
from lightkube.config.kubeconfig import KubeConfig
from lightkube.generic_resource import (
    GenericGlobalResource,
    GenericNamespacedResource,
    create_global_resource,
    create_namespaced_resource,
)
from lightkube.models.meta_v1 import ObjectMeta

from gpudra.devtools.fakeapi import FakeApiServer
from tests.unit.devtools.fakeapi.fakeapi_helpers import claim, device, resource_slice

ResourceSlice = create_global_resource("resource.k8s.io", "v1", "ResourceSlice", "resourceslices")
ResourceClaim = create_namespaced_resource("resource.k8s.io", "v1", "ResourceClaim", "resourceclaims")


@pytest.fixture
def client(server: FakeApiServer, tmp_path: Path) -> Iterator[Client]:
    config = KubeConfig.from_file(server.write_kubeconfig(tmp_path / "kubeconfig"))
    with Client(config, field_manager="gpudra") as kube:
        yield kube


def new_slice(name: str, **spec: Any) -> GenericGlobalResource:
    return ResourceSlice(**resource_slice(name, **spec))


def meta(obj: GenericGlobalResource | GenericNamespacedResource) -> ObjectMeta:
    assert obj.metadata is not None
    return obj.metadata


def test_kubeconfig_points_at_the_server(server: FakeApiServer, tmp_path: Path) -> None:
    config = KubeConfig.from_file(server.write_kubeconfig(tmp_path / "config")).get()
    assert config is not None
    assert config.cluster.server == server.url
    assert config.namespace == "default"


def test_create_get_list_replace_delete(client: Client) -> None:
    created = client.create(new_slice("node-1-a"))
    assert created["spec"]["devices"][0]["capacity"]["memory"]["value"] == "80Gi"
    assert meta(created).resourceVersion

    created["spec"]["pool"]["generation"] = 2
    replaced = client.replace(created)
    assert meta(replaced).generation == 2

    client.create(new_slice("node-2-a", nodeName="node-2"))
    names = [meta(s).name for s in client.list(ResourceSlice, fields={"spec.nodeName": "node-2"})]
    assert names == ["node-2-a"]
    assert len(list(client.list(ResourceSlice, chunk_size=1))) == 2

    client.delete(ResourceSlice, "node-1-a")
    assert [meta(s).name for s in client.list(ResourceSlice)] == ["node-2-a"]


def test_get_claim_with_status(client: Client, server: FakeApiServer) -> None:
    body = claim("gpu-claim")
    body["status"] = {
        "allocation": {
            "devices": {
                "results": [{"request": "gpu", "driver": "gpudra.io", "pool": "node-1", "device": "gpu-0"}]
            }
        }
    }
    server.put_object(body)
    fetched = client.get(ResourceClaim, "gpu-claim", namespace="default")
    assert fetched["status"]["allocation"]["devices"]["results"][0]["device"] == "gpu-0"
    assert meta(fetched).uid


def test_watch_receives_added_modified_deleted(client: Client) -> None:
    events: queue.Queue[tuple[str, str]] = queue.Queue()
    watching = threading.Event()

    def consume() -> None:
        for kind, obj in client.watch(ResourceSlice, server_timeout=5):
            name = meta(obj).name
            assert name is not None
            events.put((kind, name))
            watching.set()
            if kind == "DELETED":
                return

    client.create(new_slice("existing"))
    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    assert watching.wait(5)
    created = client.create(new_slice("watched"))
    created["spec"]["devices"] = [device("gpu-1")]
    client.replace(created)
    client.delete(ResourceSlice, "watched")
    consumer.join(timeout=10)
    seen = [events.get_nowait() for _ in range(events.qsize())]
    assert seen == [
        ("ADDED", "existing"),
        ("ADDED", "watched"),
        ("MODIFIED", "watched"),
        ("DELETED", "watched"),
    ]


def test_api_errors_carry_the_status_code(client: Client) -> None:
    with pytest.raises(ApiError) as missing:
        client.get(ResourceSlice, "missing")
    assert missing.value.status.code == 404
    assert missing.value.status.reason == "NotFound"

    created = client.create(new_slice("dup"))
    with pytest.raises(ApiError) as exists:
        client.create(new_slice("dup"))
    assert exists.value.status.code == 409
    assert exists.value.status.reason == "AlreadyExists"

    client.replace(created)  # unchanged: same resourceVersion, still current
    created["spec"]["devices"] = [device("gpu-5")]
    client.replace(created)
    with pytest.raises(ApiError) as stale:
        client.replace(created)
    assert stale.value.status.code == 409
    assert stale.value.status.reason == "Conflict"

    with pytest.raises(ApiError) as invalid:
        client.create(new_slice("bad", devices=[device("gpu.0")]))
    assert invalid.value.status.code == 422
    message = invalid.value.status.message
    assert message is not None
    assert message.endswith('spec.devices[0].name: Invalid value: "gpu.0": must not contain dots')
