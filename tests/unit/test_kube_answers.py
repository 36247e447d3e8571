"""Answers that are not the API server's: every client call fails with one line that says what came back.

A load balancer, ingress or authenticating proxy in front of the API server answers with a 404 and no
Content-Type, an HTML page, a text body labelled JSON, or a body cut short. Each call of
:class:`gpudra.kube.client.KubeClient` (lightkube requests, the stdlib claim GET, the watch stream) raises a
:class:`KubeError` with the HTTP status, the Content-Type and an excerpt of the body on one line; the
publisher logs one warning line per retry and no traceback.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.kube.client import KubeClient, KubeError, load_config
from gpudra.kube.publisher import Backoff, Publisher
from gpudra.model.k8stypes import ResourceSlice
from gpudra.planning.offer import plan_offer
from gpudra.state.node import NodeStateStore
from tests.unit.test_kube_http import write_kubeconfig
from tests.unit.test_publisher import NODE, gpus, wait_for

# status, Content-Type (None: no header), body, and what the error message must say about it
Bad = tuple[int, str | None, bytes, str]
BAD: dict[str, Bad] = {
    "proxy-404": (
        404,
        None,
        b"404 page not found\n",
        "HTTP 404 Not Found, not a Kubernetes Status (no Content-Type): 404 page not found",
    ),
    "html-502": (
        502,
        "text/html",
        b"<html>\n<head><title>502 Bad Gateway</title></head>\n</html>\n",
        "HTTP 502 Bad Gateway, not a Kubernetes Status (text/html): <html> <head><title>502",
    ),
    "text-as-json-503": (
        503,
        "application/json",
        b"upstream connect error\n",
        "HTTP 503 Service Unavailable, not a Kubernetes Status (application/json): upstream connect error",
    ),
    "json-not-status-500": (
        500,
        "application/json",
        b'{"error": "boom"}',
        'HTTP 500 Internal Server Error, not a Kubernetes Status (application/json): {"error": "boom"}',
    ),
    "cut-short-200": (
        200,
        "application/json",
        b'{"kind": "Node", "metadata": {"na',
        "the answer is not a Kubernetes object",
    ),
}
NODE_PATH = f"/api/v1/nodes/{NODE}"
Answer = tuple[int, str | None, bytes]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        code, content_type, body = self.server.answer(self.command, self.path)
        self.send_response(code)
        if content_type is not None:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer: Callable[[str, str], Answer]) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serving(answer: Callable[[str, str], Answer], tmp_path: Path) -> Iterator[KubeClient]:
    server = _Server(answer)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    kube = KubeClient(load_config(write_kubeconfig(tmp_path / "kc", server.url)), timeout_s=5)
    try:
        yield kube
    finally:
        kube.close()
        server.shutdown()
        server.server_close()


def a_slice() -> ResourceSlice:
    return {"apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice", "metadata": {"name": "s"}}


CALLS: dict[str, Callable[[KubeClient], object]] = {
    "get Node (lightkube)": lambda k: k.get_node_uid(NODE),
    "list ResourceSlices (lightkube)": lambda k: k.list_slices(NODE),
    "create ResourceSlice (lightkube)": lambda k: k.create_slice(a_slice()),
    "delete ResourceSlice (lightkube)": lambda k: k.delete_slice("s"),
    "get ResourceClaim (stdlib GET)": lambda k: k.get_claim("default", "c"),
    "watch ResourceSlices (stream)": lambda k: next(iter(k.watch_slices(NODE, "1"))),
}


# Every call against every bad answer, except a delete answered 200: it does not read its answer.
CASES = [(c, b) for c in CALLS for b in BAD if not (BAD[b][0] == 200 and c.startswith("delete"))]


@pytest.mark.parametrize(("call", "bad"), CASES)
def test_every_call_fails_in_one_line_naming_what_answered(call: str, bad: str, tmp_path: Path) -> None:
    code, content_type, body, said = BAD[bad]
    if code == 200 and call.startswith("watch"):
        said = "a line that is not a watch event: {"
    with (
        serving(lambda method, path: (code, content_type, body), tmp_path) as kube,
        pytest.raises(KubeError) as err,
    ):
        CALLS[call](kube)
    message = str(err.value)
    assert "\n" not in message
    assert said in message
    assert err.value.code == (None if code == 200 else code)
    assert not err.value.not_found  # only the API server's own Status says an object does not exist


def test_a_status_404_is_still_not_found(tmp_path: Path) -> None:
    with FakeApiServer() as api:
        kube = KubeClient(load_config(api.write_kubeconfig(tmp_path / "kc")))
        try:
            for call in (lambda: kube.get_node_uid("nowhere"), lambda: kube.get_claim("default", "nowhere")):
                with pytest.raises(KubeError) as err:
                    call()
                assert (err.value.code, err.value.reason, err.value.not_found) == (404, "NotFound", True)
        finally:
            kube.close()


class _Stream(BaseHTTPRequestHandler):
    """A watch that sends the lines it is given, then ends."""

    protocol_version = "HTTP/1.1"
    lines: ClassVar[list[bytes]] = []

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in self.lines:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line) + 1, line + b"\n"))
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


_BOOKMARK = b'{"type": "BOOKMARK", "object": {"kind": "ResourceSlice", "metadata": {"resourceVersion": "5"}}}'
_EXPIRED = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old resource version: 1 (7)"}


@pytest.mark.parametrize(
    ("lines", "said", "code"),
    [
        ([_BOOKMARK, b'{"type": "ADDED", "object": {"metadata": {"na'], 'not a watch event: {"type"', None),
        ([_BOOKMARK, b"<html>oops</html>"], "a line that is not a watch event: <html>oops</html>", None),
        ([_BOOKMARK, b'{"type": "ADDED", "object": []}'], "a line that is not a watch event", None),
        ([_BOOKMARK, json.dumps({"type": "ERROR", "object": _EXPIRED}).encode()], "1 (7)", 410),
        ([], "watch ResourceSlices: the server ended the watch at once, without a word", None),
    ],
)
def test_a_watch_that_sends_no_events_fails_in_one_line(
    lines: list[bytes], said: str, code: int | None, tmp_path: Path
) -> None:
    handler = type("H", (_Stream,), {"lines": lines})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    kube = KubeClient(load_config(write_kubeconfig(tmp_path / "kc", url)), timeout_s=5)
    raised: list[BaseException] = []

    def drain() -> None:
        try:
            list(kube.watch_slices(NODE, "1"))  # a bookmark before the bad line is read, not handed out
        except BaseException as e:
            raised.append(e)

    consumer = threading.Thread(target=drain, daemon=True)
    consumer.start()
    consumer.join(5)
    ended = not consumer.is_alive()
    kube.close()  # ends a watch that would go on forever
    server.shutdown()
    server.server_close()
    assert ended, "the watch did not end"
    [err] = raised
    assert isinstance(err, KubeError)
    assert said in str(err)
    assert "\n" not in str(err)
    assert err.code == code


def _node_then(bad: Bad) -> Callable[[str, str], Answer]:
    """The Node answers; everything else is the bad answer (so the publisher reaches its list)."""
    node = json.dumps({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE, "uid": "u-1"}}).encode()

    def answer(method: str, path: str) -> Answer:
        return (200, "application/json", node) if path == NODE_PATH else bad[:3]

    return answer


@pytest.mark.parametrize("bad", BAD)
def test_the_publisher_logs_one_warning_line_per_retry_and_no_traceback(
    bad: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gpudra.kube")
    with serving(_node_then(BAD[bad]), tmp_path) as kube:
        p = Publisher(kube, NODE, NodeStateStore(plan_offer(gpus(1))), backoff=Backoff(0.02, 0.05))
        p.start()
        try:
            assert wait_for(lambda: len([r for r in caplog.records if r.levelno >= logging.WARNING]) >= 3)
            assert p.alive
        finally:
            p.stop()
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    for r in records:
        assert (r.name, r.levelname, r.exc_info) == ("gpudra.kube.publisher", "WARNING", None)
        assert r.getMessage().startswith("ResourceSlice publishing: list ResourceSlices: ")
        assert BAD[bad][3] in r.getMessage()
        assert "\n" not in r.getMessage()
    assert "Traceback" not in caplog.text
