"""The network between the plugin and the API server fails; the real ``gpudra run`` keeps its slices up.

The plugin reaches the stand-in API server through a FaultProxy. A slice deleted through the API must come
back: after a half-open watch (the established connection silently dead, new ones fine), and after phases in
which the network refuses, stalls or blackholes (issue 13, item 5). An API answer that is no Kubernetes
Status (a proxy's 404 without Content-Type, an HTML page, a body cut short) is one warning line per retry,
never a traceback (item 11).

The plugin's watch and request timeouts are shortened through its hidden environment variables
(:mod:`gpudra.kube.watch`), and the stand-in sends a BOOKMARK more often than the watch's read timeout, as the
real API server does (every minute, against a default read timeout of two).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.devtools.faultproxy import FaultProxy, Mode
from tests.integration.conftest import NODE, PluginProcess, make_claim, node_slices, pool_complete

pytestmark = pytest.mark.integration

FAST = {"GPUDRA_WATCH_IDLE_S": "1", "GPUDRA_API_TIMEOUT_S": "2", "GPUDRA_WATCH_TIMEOUT_S": "60"}
RETRY = "ResourceSlice publishing:"
PUBLISHED = re.compile(r"\bpublished \d+ ResourceSlice")


def wait_for(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


@pytest.fixture
def bookmarked() -> Iterator[FakeApiServer]:
    """The stand-in API server, with a BOOKMARK every 0.2 s on watches that ask for them."""
    server = FakeApiServer(bookmark_interval=0.2).start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    yield server
    server.stop()


@pytest.fixture
def proxy(bookmarked: FakeApiServer) -> Iterator[FaultProxy]:
    host, port = bookmarked.url.removeprefix("http://").rsplit(":", 1)
    p = FaultProxy(host, int(port)).start()
    yield p
    p.stop()


@pytest.fixture
def plugin(bookmarked: FakeApiServer, proxy: FaultProxy, short_tmp: Path) -> Iterator[PluginProcess]:
    p = PluginProcess(short_tmp, bookmarked, server=proxy.url(), env=FAST)
    p.start()
    try:
        assert bookmarked.wait_for(lambda: pool_complete(bookmarked), timeout=20), p.log()
        yield p
        p.assert_alive()
    finally:
        proxy.set_mode("pass")
        p.terminate()


def delete_a_slice(api: FakeApiServer) -> Callable[[], bool]:
    """Delete one of the node's slices through the API; returns the check that it is back."""
    name = str(node_slices(api)[0]["metadata"]["name"])
    assert api.delete_object("ResourceSlice", name)
    return lambda: api.get_object("ResourceSlice", name) is not None


def test_a_half_open_watch_is_replaced_and_a_deleted_slice_restored(
    bookmarked: FakeApiServer, proxy: FaultProxy, plugin: PluginProcess
) -> None:
    assert wait_for(lambda: PUBLISHED.search(plugin.log()) is not None, 5), plugin.log()  # start-up publish
    published = len(PUBLISHED.findall(plugin.log()))
    restored = delete_a_slice(bookmarked)  # a healthy watch: back at once
    assert wait_for(restored, 5), plugin.log()
    # The server stores the slice before its answer reaches the plugin: orphaning the connections before
    # the plugin has read that answer would end the restore with a read timeout, not the watch.
    assert wait_for(lambda: len(PUBLISHED.findall(plugin.log())) > published, 5), plugin.log()
    assert proxy.orphan_established() >= 1  # the watch's connection: silently dead; new ones work
    restored = delete_a_slice(bookmarked)
    started = time.monotonic()
    # the watch's read timeout (1 s here, 120 s by default) ends it; the publisher lists again and restores
    assert wait_for(restored, 6), f"not restored after a half-open watch:\n{plugin.log()}"
    assert time.monotonic() - started < 6
    assert "the connection is presumed dead" in plugin.log(), plugin.log()
    plugin.assert_alive()


@pytest.mark.parametrize("mode", ["refuse", "stall", "blackhole"])
def test_the_publisher_recovers_when_the_network_passes_again(
    bookmarked: FakeApiServer, proxy: FaultProxy, plugin: PluginProcess, mode: Mode
) -> None:
    proxy.set_mode(mode)
    proxy.orphan_established()  # the fault reaches the watch too (a blackhole does that by itself)
    retries = plugin.log().count(RETRY)
    restored = delete_a_slice(bookmarked)
    # the plugin notices (a failed attempt, and it retries), and cannot restore the slice meanwhile
    assert wait_for(lambda: plugin.log().count(RETRY) > retries, 8), plugin.log()
    assert not restored()
    plugin.assert_alive()
    proxy.set_mode("pass")
    assert wait_for(restored, 6), f"not restored after the {mode} phase:\n{plugin.log()}"
    plugin.assert_alive()


# ---- answers that are not the API server's -------------------------------------------------------------

_BAD_ANSWERS: list[tuple[int, str | None, bytes]] = [
    (404, None, b"404 page not found\n"),  # a proxy's 404: no Content-Type at all
    (502, "text/html", b"<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>\n"),
    (503, "application/json", b"upstream connect error or disconnect/reset before headers"),
    (200, "application/json", b'{"kind": "ResourceSliceList", "items": [{"metadata": '),  # cut short
]


class _Proxyish(BaseHTTPRequestHandler):
    """Answers every request with the next of the bad answers, in turn."""

    protocol_version = "HTTP/1.1"
    server: _BadServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        code, content_type, body = self.server.next_answer()
        self.send_response(code)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _BadServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Proxyish)
        self._lock = threading.Lock()
        self._count = 0

    def next_answer(self) -> tuple[int, str | None, bytes]:
        with self._lock:
            self._count += 1
            return _BAD_ANSWERS[(self._count - 1) % len(_BAD_ANSWERS)]


@pytest.fixture
def bad_server() -> Iterator[_BadServer]:
    server = _BadServer()
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_answers_that_are_not_the_api_servers_are_one_warning_line_each(
    api: FakeApiServer, bad_server: _BadServer, short_tmp: Path
) -> None:
    url = f"http://127.0.0.1:{bad_server.server_address[1]}"
    plugin = PluginProcess(short_tmp, api, server=url, env={"GPUDRA_API_TIMEOUT_S": "2"}).start()
    try:
        claim = make_claim(api, "c1", ["gpu-0"])  # the plugin cannot read it: every answer is a bad one
        for _ in range(2):
            with plugin.client() as client:
                assert client.prepare([claim]).claims[claim.uid].error
        # the publisher retries, 0.2 s, 0.4 s, ... apart; with the two claim GETs, every bad answer came round
        assert wait_for(lambda: plugin.log().count(RETRY) >= 3, 10), plugin.log()
        plugin.assert_alive()
    finally:
        plugin.terminate()
    log = plugin.log()
    assert "Traceback" not in log
    for line in log.splitlines():  # every line is a log record: none is a piece of a traceback or a body
        assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWEC] \S+: ", line), line
    retries = [line for line in log.splitlines() if RETRY in line]
    prepares = [line for line in log.splitlines() if "cannot read ResourceClaim default/c1" in line]
    assert all(" W gpudra.kube.publisher: " in line for line in retries)
    assert len(prepares) == 2, log  # one line per failed prepare
    assert all(" W gpudra.state.prepare: " in line for line in prepares)
    text = "\n".join(line for line in log.splitlines() if " W " in line)  # every API failure: a warning
    assert "HTTP 404 Not Found, not a Kubernetes Status (no Content-Type): 404 page not found" in text
    assert "HTTP 502 Bad Gateway, not a Kubernetes Status (text/html): <html> <head><title>502" in text
    assert "HTTP 503 Service Unavailable, not a Kubernetes Status (application/json): upstream" in text
    assert "the answer is not a Kubernetes object" in text
