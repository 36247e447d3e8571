"""The ResourceSlice watch cannot hang: a server timeout, bookmarks, a read timeout and TCP keepalive.

The publisher and the real client against the stand-in API server over real HTTP, with a FaultProxy in
between where the network is the fault. Timeouts are shortened through the client's hidden environment
variables, as an operator never needs to (:mod:`gpudra.kube.watch`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.devtools.faultproxy import FaultProxy
from gpudra.kube.client import KubeClient, load_config
from gpudra.kube.publisher import Backoff, Publisher
from gpudra.kube.watch import ApiTimeouts
from gpudra.planning.offer import plan_offer
from gpudra.state.node import NodeStateStore
from tests.unit.test_publisher import NODE, gpus, pool, wait_for

SLICES = "/apis/resource.k8s.io/v1/resourceslices"
_HIDDEN = ("GPUDRA_API_TIMEOUT_S", "GPUDRA_WATCH_TIMEOUT_S", "GPUDRA_WATCH_IDLE_S")


@pytest.fixture(autouse=True)
def _no_hidden_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _HIDDEN:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer(bookmark_interval=0.1).start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    yield server
    server.stop()


def kube_at(url: str, api: FakeApiServer, tmp_path: Path) -> KubeClient:
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    kubeconfig.write_text(kubeconfig.read_text().replace(api.url, url))
    return KubeClient(load_config(kubeconfig))


def publish(kube: KubeClient, backoff: Backoff) -> Publisher:
    p = Publisher(kube, NODE, NodeStateStore(plan_offer(gpus(2))), backoff=backoff)
    p.start()
    assert p.synced.wait(10)
    return p


def lists(api: FakeApiServer) -> int:
    return sum(1 for r in api.requests if r.path == SLICES and r.method == "GET" and "watch" not in r.query)


def watches(api: FakeApiServer) -> list[dict[str, str]]:
    return [r.query for r in api.requests if r.path == SLICES and r.query.get("watch") == "true"]


def restores_a_deleted_slice(api: FakeApiServer) -> bool:
    """Delete one of the node's slices; True when the publisher puts it back (it acts)."""
    name = str(pool(api)[0]["metadata"]["name"])
    assert api.delete_object("ResourceSlice", name)
    return wait_for(lambda: api.get_object("ResourceSlice", name) is not None, 5)


def publisher_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "gpudra.kube.publisher" and r.levelno >= 30]


def test_defaults_follow_client_go_and_outlast_the_bookmark_interval() -> None:
    t = ApiTimeouts.from_env({})
    assert (t.request_s, t.watch_server_s, t.watch_idle_s) == (10.0, 300.0, 120.0)
    assert t.watch_idle_s > 60  # the API server's bookmark interval: a healthy watch is never that silent
    assert all(300 <= t.server_timeout() < 600 for _ in range(200))
    tuned = ApiTimeouts.from_env({"GPUDRA_WATCH_IDLE_S": "0.5", "GPUDRA_API_TIMEOUT_S": " 2 "})
    assert (tuned.watch_idle_s, tuned.request_s, tuned.watch_server_s) == (0.5, 2.0, 300.0)


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "inf"])
def test_a_bad_hidden_setting_is_logged_and_the_default_kept(
    text: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="gpudra.kube.watch"):
        assert ApiTimeouts.from_env({"GPUDRA_WATCH_IDLE_S": text}).watch_idle_s == 120.0
    assert [r.getMessage() for r in caplog.records] == [
        f"GPUDRA_WATCH_IDLE_S={text!r} is not a positive number of seconds; ignored"
    ]


def test_the_watch_asks_for_bookmarks_and_a_server_timeout(api: FakeApiServer, tmp_path: Path) -> None:
    kube = kube_at(api.url, api, tmp_path)
    p = publish(kube, Backoff())
    try:
        assert wait_for(lambda: len(watches(api)) == 1, 5)
        [query] = watches(api)
        assert query["allowWatchBookmarks"] == "true"
        assert 300 <= int(query["timeoutSeconds"]) < 600
        assert query["fieldSelector"] == f"spec.nodeName={NODE},spec.driver=gpudra.io"
        assert restores_a_deleted_slice(api)
    finally:
        p.stop()
        kube.close()


def test_a_watch_the_server_ends_is_followed_by_a_list_at_once(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GPUDRA_WATCH_TIMEOUT_S", "0.5")  # timeoutSeconds=1: the server ends each watch
    kube = kube_at(api.url, api, tmp_path)
    caplog.set_level(logging.INFO, logger="gpudra.kube")
    p = publish(kube, Backoff(initial_s=30, max_s=60))  # a backoff delay would hold the next list 30 s
    try:
        assert wait_for(lambda: lists(api) >= 2, 5), api.requests
        assert publisher_warnings(caplog) == []
        assert all(q["timeoutSeconds"] == "1" for q in watches(api))
        assert p.alive
        assert restores_a_deleted_slice(api)
    finally:
        p.stop()
        kube.close()


def test_a_healthy_quiet_watch_is_kept_by_its_bookmarks(
    api: FakeApiServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("GPUDRA_WATCH_IDLE_S", "0.5")  # five bookmark intervals of the stand-in
    kube = kube_at(api.url, api, tmp_path)
    caplog.set_level(logging.INFO, logger="gpudra.kube")
    p = publish(kube, Backoff(initial_s=0.05, max_s=0.2))
    try:
        assert wait_for(lambda: len(watches(api)) == 1, 5)
        assert not wait_for(lambda: len(watches(api)) > 1, 1.2)  # over two read timeouts: never silent
        assert (lists(api), publisher_warnings(caplog)) == (1, [])
        assert restores_a_deleted_slice(api)  # over that same watch
        assert len(watches(api)) == 1
    finally:
        p.stop()
        kube.close()


@pytest.fixture
def proxy(api: FakeApiServer) -> Iterator[FaultProxy]:
    host, port = api.url.removeprefix("http://").rsplit(":", 1)
    p = FaultProxy(host, int(port)).start()
    yield p
    p.stop()


def _delays(warnings: list[str]) -> list[float]:
    return [float(m.group(1)) for w in warnings if (m := re.search(r"retrying in ([\d.]+)s$", w))]


def test_a_failure_after_a_healthy_sync_waits_only_the_first_backoff_delay(
    api: FakeApiServer,
    proxy: FaultProxy,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("GPUDRA_WATCH_IDLE_S", "0.5")
    monkeypatch.setenv("GPUDRA_API_TIMEOUT_S", "0.5")
    kube = kube_at(proxy.url(), api, tmp_path)
    caplog.set_level(logging.INFO, logger="gpudra.kube")
    p = publish(kube, Backoff(initial_s=0.05, max_s=30))
    try:
        proxy.set_mode("refuse")
        proxy.orphan_established()
        # failures double the delay: 0.05, 0.1, 0.2, 0.4 s
        assert wait_for(lambda: len(publisher_warnings(caplog)) >= 4, 8), caplog.text
        assert max(_delays(publisher_warnings(caplog))) >= 0.3
        watched = len(watches(api))
        proxy.set_mode("pass")
        assert wait_for(lambda: len(watches(api)) > watched, 5)  # the API answers again: listed, watching
        before = len(publisher_warnings(caplog))
        proxy.orphan_established()  # the new watch dies silently; its read timeout ends it
        assert wait_for(lambda: len(publisher_warnings(caplog)) > before, 5), caplog.text
        warning = publisher_warnings(caplog)[before]
        assert "no event and no bookmark for 0.5 s: the connection is presumed dead" in warning
        assert _delays([warning])[0] <= 0.1  # the first delay (0.05 s), not the next the backoff reached
        assert restores_a_deleted_slice(api)
    finally:
        p.stop()
        kube.close()


def _keepalive_connections(port: int) -> list[bool]:
    """For each established TCP connection to ``port`` on 127.0.0.1: whether its keepalive timer runs."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote, state, timer = fields[2], fields[3], fields[5]
        if state == "01" and int(remote.split(":")[1], 16) == port:  # 01: ESTABLISHED
            found.append(timer.split(":")[0] == "02")  # 02: the keepalive timer
    return found


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads the kernel's TCP table (Linux)")
def test_the_watch_connection_has_tcp_keepalive(api: FakeApiServer, tmp_path: Path) -> None:
    kube = kube_at(api.url, api, tmp_path)
    p = publish(kube, Backoff())
    try:
        assert wait_for(lambda: len(watches(api)) == 1, 5)
        # one connection with keepalive (the watch); lightkube's pooled connection, if still open, has none
        assert wait_for(lambda: True in _keepalive_connections(api.port), 5)
        assert _keepalive_connections(api.port).count(True) == 1
        assert restores_a_deleted_slice(api)
    finally:
        p.stop()
        kube.close()
