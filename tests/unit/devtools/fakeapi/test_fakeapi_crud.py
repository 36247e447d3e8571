"""CRUD, optimistic concurrency, generateName, selectors, claim status, discovery and the request log."""

from __future__ import annotations

import re
import threading

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from tests.unit.devtools.fakeapi.fakeapi_helpers import CLAIMS, SLICES, Api, claim, device, resource_slice

NAME = "node-1-gpudra.io-abcde"


def test_create_fills_system_metadata(api: Api) -> None:
    reply = api.post(SLICES, resource_slice())
    assert reply.status == 201
    meta = reply.body["metadata"]
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", meta["uid"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert api.get(f"{SLICES}/{NAME}").body == reply.body


def test_resource_versions_increase_across_resources(api: Api) -> None:
    first = api.post(SLICES, resource_slice("a")).body["metadata"]["resourceVersion"]
    second = api.post(CLAIMS, claim()).body["metadata"]["resourceVersion"]
    third = api.post(SLICES, resource_slice("b")).body["metadata"]["resourceVersion"]
    assert int(first) < int(second) < int(third)


def test_create_twice_is_already_exists(api: Api) -> None:
    api.post(SLICES, resource_slice())
    reply = api.post(SLICES, resource_slice())
    assert reply.status == 409
    assert reply.body == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": f'resourceslices.resource.k8s.io "{NAME}" already exists',
        "reason": "AlreadyExists",
        "details": {"name": NAME, "group": "resource.k8s.io", "kind": "resourceslices"},
        "code": 409,
    }


def test_get_missing_is_not_found(api: Api) -> None:
    reply = api.get(f"{SLICES}/missing")
    assert reply.status == 404
    assert reply.body["message"] == 'resourceslices.resource.k8s.io "missing" not found'
    assert reply.body["reason"] == "NotFound"
    node = api.get("/api/v1/nodes/missing")
    assert node.body["message"] == 'nodes "missing" not found'
    assert node.body["details"] == {"name": "missing", "kind": "nodes"}


def test_generate_name_adds_five_random_characters(api: Api) -> None:
    body = resource_slice()
    body["metadata"] = {"generateName": "node-1-gpudra.io-"}
    names = {api.post(SLICES, body).body["metadata"]["name"] for _ in range(3)}
    assert len(names) == 3
    assert all(re.fullmatch(r"node-1-gpudra\.io-[bcdfghjklmnpqrstvwxz2456789]{5}", n) for n in names)


def test_update_with_current_version_bumps_generation_on_spec_change(api: Api) -> None:
    created = api.post(SLICES, resource_slice()).body
    created["spec"]["pool"]["generation"] = 2
    updated = api.put(f"{SLICES}/{NAME}", created)
    assert updated.status == 200
    assert updated.body["metadata"]["generation"] == 2
    assert int(updated.body["metadata"]["resourceVersion"]) > int(created["metadata"]["resourceVersion"])
    assert updated.body["metadata"]["uid"] == created["metadata"]["uid"]


def test_update_with_stale_version_is_a_conflict(api: Api) -> None:
    created = api.post(SLICES, resource_slice()).body
    api.put(f"{SLICES}/{NAME}", {**created, "spec": {**created["spec"], "devices": [device("gpu-1")]}})
    reply = api.put(f"{SLICES}/{NAME}", created)  # still carries the old resourceVersion
    assert reply.status == 409
    assert reply.body["reason"] == "Conflict"
    assert reply.body["message"] == (
        f'Operation cannot be fulfilled on resourceslices.resource.k8s.io "{NAME}": the object has been '
        "modified; please apply your changes to the latest version and try again"
    )


def test_update_without_version_is_unconditional(api: Api) -> None:
    api.post(SLICES, resource_slice())
    body = resource_slice(devices=[device("gpu-7")])
    reply = api.put(f"{SLICES}/{NAME}", body)
    assert reply.status == 200
    assert [d["name"] for d in reply.body["spec"]["devices"]] == ["gpu-7"]


def test_unchanged_update_writes_nothing(api: Api, server: FakeApiServer) -> None:
    created = api.post(SLICES, resource_slice()).body
    again = api.put(f"{SLICES}/{NAME}", created).body
    assert again["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert again["metadata"]["generation"] == 1


def test_update_of_missing_object_and_name_mismatch(api: Api) -> None:
    assert api.put(f"{SLICES}/{NAME}", resource_slice()).status == 404
    reply = api.put(f"{SLICES}/other", resource_slice())
    assert reply.status == 400
    assert (
        reply.body["message"] == f"the name of the object ({NAME}) does not match the name on the URL (other)"
    )


def test_delete_returns_the_object_then_not_found(api: Api) -> None:
    api.post(SLICES, resource_slice())
    reply = api.delete(f"{SLICES}/{NAME}")
    assert reply.status == 200
    assert reply.body["metadata"]["name"] == NAME
    assert api.get(f"{SLICES}/{NAME}").status == 404
    assert api.delete(f"{SLICES}/{NAME}").status == 404


def test_delete_precondition_on_uid(api: Api) -> None:
    api.post(SLICES, resource_slice())
    reply = api.delete(f"{SLICES}/{NAME}", {"preconditions": {"uid": "not-the-uid"}})
    assert reply.status == 409
    assert "Precondition failed: UID in precondition: not-the-uid" in reply.body["message"]


def test_field_and_label_selectors(api: Api) -> None:
    for node, driver in (("node-1", "gpudra.io"), ("node-2", "gpudra.io"), ("node-1", "other.example.com")):
        body = resource_slice(f"{node}-{driver}", nodeName=node, driver=driver)
        body["metadata"]["labels"] = {"node": node}
        api.post(SLICES, body)

    def names(**params: str) -> list[str]:
        return [item["metadata"]["name"] for item in api.get(SLICES, **params).body["items"]]

    assert names(fieldSelector="spec.nodeName=node-1,spec.driver=gpudra.io") == ["node-1-gpudra.io"]
    assert names(fieldSelector="spec.driver==other.example.com") == ["node-1-other.example.com"]
    assert names(fieldSelector="spec.nodeName!=node-1") == ["node-2-gpudra.io"]
    assert names(labelSelector="node=node-2") == ["node-2-gpudra.io"]
    assert names(labelSelector="node in (node-1),!missing") == [
        "node-1-gpudra.io",
        "node-1-other.example.com",
    ]


def test_unknown_field_selector_is_a_bad_request(api: Api) -> None:
    reply = api.get(SLICES, fieldSelector="spec.pool.name=x")
    assert reply.status == 400
    assert reply.body["message"] == (
        "field label not supported for resource.k8s.io/v1, Kind=ResourceSlice: spec.pool.name"
    )


def test_list_shape_and_paging(api: Api) -> None:
    for index in range(5):
        api.post(SLICES, resource_slice(f"slice-{index}"))
    first = api.get(SLICES, limit="2").body
    assert first["kind"] == "ResourceSliceList"
    assert first["apiVersion"] == "resource.k8s.io/v1"
    assert "kind" not in first["items"][0]
    assert first["metadata"]["remainingItemCount"] == 3
    rest = api.get(SLICES, limit="10", **{"continue": first["metadata"]["continue"]}).body
    names = [i["metadata"]["name"] for i in first["items"] + rest["items"]]
    assert names == [f"slice-{i}" for i in range(5)]


def test_delete_collection_with_selector(api: Api) -> None:
    api.post(SLICES, resource_slice("a", nodeName="node-1"))
    api.post(SLICES, resource_slice("b", nodeName="node-2"))
    reply = api.delete(SLICES, fieldSelector="spec.nodeName=node-1")
    assert [i["metadata"]["name"] for i in reply.body["items"]] == ["a"]
    assert [i["metadata"]["name"] for i in api.get(SLICES).body["items"]] == ["b"]


def test_quantities_come_back_canonical(api: Api) -> None:
    capacity = {"memory": {"value": "1048576000"}, "bar": {"value": "1Gi"}, "sm": {"value": 132}}
    created = api.post(SLICES, resource_slice(devices=[device(capacity=capacity)])).body
    stored = created["spec"]["devices"][0]["capacity"]
    assert stored == {"memory": {"value": "1048576k"}, "bar": {"value": "1Gi"}, "sm": {"value": "132"}}


def test_claim_create_and_update_ignore_status(api: Api) -> None:
    body = claim()
    body["status"] = {"allocation": {"devices": {"results": []}}}
    created = api.post(CLAIMS, body).body
    assert created["status"] == {}
    assert created["spec"]["devices"]["requests"][0]["exactly"] == {
        "deviceClassName": "gpu.gpudra.io",
        "allocationMode": "ExactCount",
        "count": 1,
    }
    created["status"] = {"allocation": {}}
    assert api.put(f"{CLAIMS}/claim-1", created).body["status"] == {}


def test_claim_status_subresource_writes_only_status(api: Api) -> None:
    created = api.post(CLAIMS, claim()).body
    allocation = {
        "devices": {
            "results": [{"request": "gpu", "driver": "gpudra.io", "pool": "node-1", "device": "gpu-0"}]
        }
    }
    created["status"] = {"allocation": allocation}
    created["metadata"]["labels"] = {"ignored": "yes"}
    reply = api.put(f"{CLAIMS}/claim-1/status", created)
    assert reply.status == 200
    assert reply.body["status"]["allocation"] == allocation
    assert "labels" not in reply.body["metadata"]
    assert api.get(f"{CLAIMS}/claim-1").body["status"]["allocation"] == allocation


def test_claim_spec_is_immutable(api: Api) -> None:
    created = api.post(CLAIMS, claim()).body
    created["spec"]["devices"]["requests"][0]["name"] = "other"
    reply = api.put(f"{CLAIMS}/claim-1", created)
    assert reply.status == 422
    assert reply.body["message"].startswith(
        'ResourceClaim.resource.k8s.io "claim-1" is invalid: spec: Invalid'
    )
    assert reply.body["message"].endswith(": field is immutable")


def test_claim_namespace_must_match(api: Api) -> None:
    body = claim()
    body["metadata"]["namespace"] = "elsewhere"
    assert api.post(CLAIMS, body).status == 400


def test_nodes_and_events(api: Api) -> None:
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1", "labels": {"a": "b"}}}
    assert api.post("/api/v1/nodes", node).status == 201
    assert api.get("/api/v1/nodes/node-1").body["metadata"]["labels"] == {"a": "b"}
    assert [n["metadata"]["name"] for n in api.get("/api/v1/nodes").body["items"]] == ["node-1"]
    event = {
        "metadata": {"generateName": "gpudra-"},
        "reason": "Prepared",
        "type": "Normal",
        "involvedObject": {"kind": "ResourceClaim", "name": "claim-1", "namespace": "default"},
    }
    assert api.post("/api/v1/namespaces/default/events", event).status == 201
    events = api.get("/api/v1/namespaces/default/events", fieldSelector="reason=Prepared").body["items"]
    assert [e["involvedObject"]["name"] for e in events] == ["claim-1"]


def test_discovery(api: Api, server: FakeApiServer) -> None:
    assert api.get("/version").body["gitVersion"] == "v1.34.0"
    assert api.get("/api").body["versions"] == ["v1"]
    groups = api.get("/apis").body["groups"]
    assert [g["name"] for g in groups] == ["resource.k8s.io"]
    resources = {r["name"]: r for r in api.get("/apis/resource.k8s.io/v1").body["resources"]}
    assert resources["resourceslices"]["namespaced"] is False
    assert resources["resourceclaims"]["namespaced"] is True
    assert "resourceclaims/status" in resources
    assert "watch" in resources["resourceslices"]["verbs"]
    core = {r["name"] for r in api.get("/api/v1").body["resources"]}
    assert core == {"nodes", "events", "pods", "pods/status"}


@pytest.mark.parametrize("path", ["/apis/resource.k8s.io/v1/widgets", "/nope", "/api/v1/namespaces/x/nodes"])
def test_unknown_paths_are_not_found(api: Api, path: str) -> None:
    reply = api.get(path)
    assert reply.status == 404
    assert reply.body["message"] == "the server could not find the requested resource"


def test_request_log(api: Api, server: FakeApiServer) -> None:
    server.clear_requests()
    api.post(SLICES, resource_slice())
    api.get(f"{SLICES}/{NAME}")
    api.get(f"{SLICES}/missing")
    api.get(SLICES, fieldSelector="spec.nodeName=node-1")
    assert server.count() == 4
    assert server.count("GET") == 3
    assert server.count("POST", SLICES) == 1
    assert server.count(path_prefix=f"{SLICES}/") == 2
    last = server.requests[-1]
    assert (last.method, last.path, last.query, last.status) == (
        "GET",
        SLICES,
        {"fieldSelector": "spec.nodeName=node-1"},
        200,
    )
    assert [r.status for r in server.requests] == [201, 200, 404, 200]
    server.clear_requests()
    assert server.requests == []


def test_direct_store_access(api: Api, server: FakeApiServer) -> None:
    body = claim()
    body["status"] = {"allocation": {"devices": {"results": []}}}
    stored = server.put_object(body)
    assert stored["metadata"]["namespace"] == "default"
    assert api.get(f"{CLAIMS}/claim-1").body["status"] == body["status"]
    server.put_object({**stored, "status": {}})
    assert server.get_object("ResourceClaim", "claim-1")["status"] == {}  # type: ignore[index]
    assert [o["metadata"]["name"] for o in server.list_objects("ResourceClaim")] == ["claim-1"]
    assert server.delete_object("ResourceClaim", "claim-1") is True
    assert server.delete_object("ResourceClaim", "claim-1") is False
    assert server.get_object("resourceclaims", "claim-1") is None


def test_optimistic_concurrency_loses_no_update(api: Api) -> None:
    api.post(SLICES, resource_slice())

    def increment() -> None:
        for _ in range(10):
            while True:
                current = api.get(f"{SLICES}/{NAME}").body
                current["spec"]["pool"]["generation"] += 1
                if api.put(f"{SLICES}/{NAME}", current).status == 200:
                    break

    workers = [threading.Thread(target=increment) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    final = api.get(f"{SLICES}/{NAME}").body
    assert final["spec"]["pool"]["generation"] == 41
    assert final["metadata"]["generation"] == 41


def test_empty_lists_and_maps_are_omitted_like_omitempty(api: Api) -> None:
    gpu = {"name": "gpu-0", "attributes": {}, "capacity": {"memory": {"value": "1Gi"}}}
    body = resource_slice(devices=[gpu])
    del body["spec"]["pool"]["generation"]
    created = api.post(SLICES, body).body
    assert created["spec"]["devices"] == [{"name": "gpu-0", "capacity": {"memory": {"value": "1Gi"}}}]
    assert created["spec"]["pool"]["generation"] == 0
    empty = api.put(f"{SLICES}/{NAME}", {**created, "spec": {**created["spec"], "devices": []}}).body
    assert "devices" not in empty["spec"]
    again = api.put(f"{SLICES}/{NAME}", {**empty, "spec": {**empty["spec"], "devices": []}}).body
    assert again["metadata"]["resourceVersion"] == empty["metadata"]["resourceVersion"]
    assert again["metadata"]["generation"] == empty["metadata"]["generation"] == 2


def test_resource_version_on_create_is_refused(api: Api) -> None:
    body = resource_slice()
    body["metadata"]["resourceVersion"] = "5"
    reply = api.post(SLICES, body)
    assert reply.status == 500
    assert reply.body["message"] == "resourceVersion should not be set on objects to be created"
