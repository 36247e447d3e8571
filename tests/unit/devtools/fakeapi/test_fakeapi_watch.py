"""Watch streams: initial state, resume from a resourceVersion, 410 Expired, selectors, timeout and stop."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

from gpudra.devtools.fakeapi import FakeApiServer
from tests.unit.devtools.fakeapi.fakeapi_helpers import SLICES, Api, device, resource_slice

JSON = dict[str, Any]


def summary(events: Iterator[JSON] | list[JSON]) -> list[tuple[str, str]]:
    return [(e["type"], e["object"]["metadata"].get("name", "")) for e in events]


def test_watch_without_version_starts_with_the_current_state(api: Api) -> None:
    api.post(SLICES, resource_slice("a"))
    api.post(SLICES, resource_slice("b"))
    events = list(api.watch(SLICES, timeoutSeconds="0"))
    assert summary(events) == [("ADDED", "a"), ("ADDED", "b")]
    assert events[0]["object"]["kind"] == "ResourceSlice"
    assert events[0]["object"]["apiVersion"] == "resource.k8s.io/v1"


def test_watch_from_a_version_replays_later_events(api: Api) -> None:
    api.post(SLICES, resource_slice("a"))
    version = api.get(SLICES).body["metadata"]["resourceVersion"]
    created = api.post(SLICES, resource_slice("b")).body
    api.put(f"{SLICES}/b", {**created, "spec": {**created["spec"], "devices": [device("gpu-9")]}})
    api.delete(f"{SLICES}/a")
    events = list(api.watch(SLICES, resourceVersion=version, timeoutSeconds="0"))
    assert summary(events) == [("ADDED", "b"), ("MODIFIED", "b"), ("DELETED", "a")]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert versions[0] > int(version)


def test_watch_receives_live_events(api: Api) -> None:
    received: list[JSON] = []
    stream = api.watch(SLICES, resourceVersion="0", timeoutSeconds="5")

    def consume() -> None:
        for event in stream:
            received.append(event)
            if event["type"] == "DELETED":
                return

    consumer = threading.Thread(target=consume)
    consumer.start()
    created = api.post(SLICES, resource_slice("live")).body
    api.put(f"{SLICES}/live", {**created, "spec": {**created["spec"], "devices": [device("gpu-2")]}})
    api.delete(f"{SLICES}/live")
    consumer.join(timeout=10)
    assert summary(received) == [("ADDED", "live"), ("MODIFIED", "live"), ("DELETED", "live")]


def test_too_old_version_is_an_expired_error_event() -> None:
    with FakeApiServer(history_size=2) as server:
        api = Api(server.url)
        for name in ("a", "b", "c", "d"):
            api.post(SLICES, resource_slice(name))
        events = list(api.watch(SLICES, resourceVersion="1", timeoutSeconds="1"))
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"] == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "too old resource version: 1 (2)",
        "reason": "Expired",
        "code": 410,
    }


def test_field_selector_turns_moves_into_added_and_deleted(api: Api) -> None:
    created = api.post(SLICES, resource_slice("x", nodeName="node-1")).body
    version = created["metadata"]["resourceVersion"]
    moved = api.put(f"{SLICES}/x", {**created, "spec": {**created["spec"], "nodeName": "node-2"}})
    assert moved.status == 422  # nodeName is immutable: no event
    relabelled = {**created, "metadata": {**created["metadata"], "labels": {"pool": "blue"}}}
    api.put(f"{SLICES}/x", relabelled)
    api.put(
        f"{SLICES}/x",
        {
            **relabelled,
            "metadata": {**relabelled["metadata"], "resourceVersion": None, "labels": {"pool": "green"}},
        },
    )
    events = list(api.watch(SLICES, resourceVersion=version, labelSelector="pool=blue", timeoutSeconds="0"))
    assert summary(events) == [("ADDED", "x"), ("DELETED", "x")]
    other = list(
        api.watch(SLICES, resourceVersion=version, fieldSelector="spec.nodeName=node-2", timeoutSeconds="0")
    )
    assert other == []
    # the same replay with the slice's own node delivers both updates: the empty answer is the selector's
    same = list(
        api.watch(SLICES, resourceVersion=version, fieldSelector="spec.nodeName=node-1", timeoutSeconds="0")
    )
    assert summary(same) == [("MODIFIED", "x"), ("MODIFIED", "x")]


def test_send_initial_events_ends_with_a_bookmark(api: Api) -> None:
    api.post(SLICES, resource_slice("a"))
    events = list(
        api.watch(
            SLICES,
            sendInitialEvents="true",
            allowWatchBookmarks="true",
            resourceVersionMatch="NotOlderThan",
            timeoutSeconds="0",
        )
    )
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    bookmark = events[1]["object"]
    assert bookmark["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert bookmark["metadata"]["resourceVersion"] == events[0]["object"]["metadata"]["resourceVersion"]


def test_periodic_bookmarks() -> None:
    with FakeApiServer(bookmark_interval=0.05) as server:
        api = Api(server.url)
        events = list(api.watch(SLICES, allowWatchBookmarks="true", timeoutSeconds="1"))
    assert events
    assert {e["type"] for e in events} == {"BOOKMARK"}


def test_stop_ends_open_watches() -> None:
    server = FakeApiServer().start()
    api = Api(server.url)
    api.post(SLICES, resource_slice("a"))
    received: list[JSON] = []
    started = threading.Event()

    def consume() -> None:
        for event in api.watch(SLICES):
            received.append(event)
            started.set()

    consumer = threading.Thread(target=consume)
    consumer.start()
    assert started.wait(5)
    server.stop()
    consumer.join(timeout=5)
    assert not consumer.is_alive()
    assert summary(received) == [("ADDED", "a")]


def test_watch_is_counted_in_the_request_log(api: Api, server: FakeApiServer) -> None:
    list(api.watch(SLICES, timeoutSeconds="0"))
    [request] = server.requests
    assert request.query["watch"] == "true"
    assert request.status == 200


def test_a_closed_idle_watch_releases_its_thread(server: FakeApiServer) -> None:
    before = threading.active_count()
    with socket.create_connection((server.host, server.port)) as conn:
        conn.sendall(f"GET {SLICES}?watch=true HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert conn.recv(1024).startswith(b"HTTP/1.1 200")
        assert server.wait_for(lambda: threading.active_count() > before)
    assert server.wait_for(lambda: threading.active_count() <= before, timeout=10)
    assert Api(server.url).get(SLICES).status == 200  # fewer threads, and the server still answers
