"""``KubeClient.get_claim`` over the keep-alive stdlib transport (:mod:`gpudra.kube.http`), on real sockets.

The stand-in API server covers the happy path, its errors and concurrency; a small scripted HTTP(S) server
in this file covers what the stand-in cannot: connections, tokens, 401, a server that drops keep-alive
connections, and Status bodies of any code. TLS with a CA and client certificates is in
``test_kube_http_tls.py``, on the same scripted server.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.kube.client import KubeClient, KubeError, load_config
from gpudra.kube.http import BearerToken

CLAIMS = "/apis/resource.k8s.io/v1/namespaces"
Answer = tuple[int, Any, bool]  # status, JSON body (or raw bytes), close the connection after answering


def claim(name: str, namespace: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "gpu.gpudra.io"}}]}},
    }


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def write_kubeconfig(path: Path, server: str, cluster: dict[str, Any] | None = None, **user: Any) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server, **(cluster or {})}}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


@contextmanager
def client(kubeconfig: Path, timeout_s: float = 10.0) -> Iterator[KubeClient]:
    kube = KubeClient(load_config(kubeconfig), timeout_s=timeout_s)
    try:
        yield kube
    finally:
        kube.close()


# ---- a scripted HTTP(S) server -------------------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    path: str
    peer_port: int  # one per client connection
    auth: str | None
    user_agent: str | None
    client_cert: bytes | None  # DER


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Scripted

    def do_GET(self) -> None:
        auth = self.headers.get("Authorization")
        cert = self.connection.getpeercert(True) if isinstance(self.connection, ssl.SSLSocket) else None
        seen = Seen(self.path, self.client_address[1], auth, self.headers.get("User-Agent"), cert)
        with self.server.lock:
            self.server.seen.append(seen)
        code, body, close = self.server.answer(self.path, auth)
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        self.close_connection = close  # without a Connection header: the client believes it is kept alive

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Scripted(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, answer: Callable[[str, str | None], Answer], tls: ssl.SSLContext | None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer = answer
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that hang up mid-request are part of the script

    def connections(self) -> int:
        return len({s.peer_port for s in self.seen})


def claim_for(path: str, auth: str | None) -> Answer:
    parts = path.split("/")
    return 200, claim(parts[-1], parts[-3]), False


@contextmanager
def scripted(
    answer: Callable[[str, str | None], Answer] = claim_for, tls: ssl.SSLContext | None = None
) -> Iterator[Scripted]:
    server = Scripted(answer, tls)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# ---- against the stand-in API server -------------------------------------------------------------------


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer() as server:
        yield server


def test_get_claim_returns_the_stored_claim(api: FakeApiServer, tmp_path: Path) -> None:
    stored = api.put_object(claim("gpu-claim"))
    with client(api.write_kubeconfig(tmp_path / "kubeconfig")) as kube:
        got = kube.get_claim("default", "gpu-claim")
    assert got == stored
    assert type(got) is dict
    assert [(r.method, r.path, r.status) for r in api.requests] == [
        ("GET", f"{CLAIMS}/default/resourceclaims/gpu-claim", 200)
    ]


def test_missing_claim_is_not_found_with_the_servers_message(api: FakeApiServer, tmp_path: Path) -> None:
    with client(api.write_kubeconfig(tmp_path / "kubeconfig")) as kube, pytest.raises(KubeError) as err:
        kube.get_claim("default", "nope")
    assert err.value.not_found
    assert (err.value.code, err.value.reason) == (404, "NotFound")
    assert str(err.value) == 'get ResourceClaim default/nope: resourceclaims.resource.k8s.io "nope" not found'


def test_fast_path_and_lightkube_path_agree(api: FakeApiServer, tmp_path: Path) -> None:
    """Basic auth sends get_claim through lightkube (the stand-in ignores auth): same object, same error."""
    api.put_object(claim("c1"))
    fast = write_kubeconfig(tmp_path / "fast", api.url)
    slow = write_kubeconfig(tmp_path / "slow", api.url, username="u", password="p")
    with client(fast) as a, client(slow) as b:
        assert a.get_claim("default", "c1") == b.get_claim("default", "c1")
        errors = []
        for kube in (a, b):
            with pytest.raises(KubeError) as err:
                kube.get_claim("default", "gone")
            errors.append((str(err.value), err.value.code, err.value.reason))
    assert errors[0] == errors[1]


def test_eight_threads_at_once_each_get_their_own_claim(api: FakeApiServer, tmp_path: Path) -> None:
    for i in range(8):
        api.put_object(claim(f"claim-{i}", namespace=f"ns-{i}"))
    failures: list[str] = []
    finished: list[int] = []  # a worker that raised never gets here: no failure recorded, but not finished
    start = threading.Barrier(8)

    def worker(i: int, kube: KubeClient) -> None:
        start.wait()
        for _ in range(25):
            got = kube.get_claim(f"ns-{i}", f"claim-{i}")
            if got["metadata"]["name"] != f"claim-{i}" or got["metadata"]["namespace"] != f"ns-{i}":
                failures.append(f"thread {i} got {got['metadata']}")
        finished.append(i)

    with client(api.write_kubeconfig(tmp_path / "kubeconfig")) as kube:
        threads = [threading.Thread(target=worker, args=(i, kube)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []
    assert sorted(finished) == list(range(8))
    assert api.count("GET", CLAIMS) == 200


def test_unreachable_server_has_no_code(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again when the test connects: refused
    with (
        client(write_kubeconfig(tmp_path / "kc", f"http://127.0.0.1:{port}")) as kube,
        pytest.raises(KubeError) as err,
    ):
        kube.get_claim("default", "c1")
    assert err.value.code is None
    assert err.value.transient
    assert str(err.value).startswith("get ResourceClaim default/c1: ConnectionRefusedError")


# ---- connections, errors and auth against a scripted server ----------------------------------------------


def test_one_connection_serves_many_gets_and_segments_are_escaped(tmp_path: Path) -> None:
    with scripted() as server, client(write_kubeconfig(tmp_path / "kc", server.url + "/prefix/")) as kube:
        for _ in range(5):
            assert kube.get_claim("default", "c1")["metadata"]["name"] == "c1"
        odd = kube.get_claim("ns x", "a/b?c%d")
    assert server.connections() == 1
    assert odd["metadata"] == {"name": "a%2Fb%3Fc%25d", "namespace": "ns%20x"}  # as the server saw them
    prefix = "/prefix/apis/resource.k8s.io/v1/namespaces"
    assert server.seen[0].path == f"{prefix}/default/resourceclaims/c1"
    assert server.seen[-1].path == f"{prefix}/ns%20x/resourceclaims/a%2Fb%3Fc%25d"


def test_a_dropped_keep_alive_connection_is_retried_transparently(tmp_path: Path) -> None:
    def drop_every_connection(path: str, auth: str | None) -> Answer:
        code, body, _ = claim_for(path, auth)
        return code, body, True

    with (
        scripted(drop_every_connection) as server,
        client(write_kubeconfig(tmp_path / "kc", server.url)) as kube,
    ):
        names = [kube.get_claim("default", f"c{i}")["metadata"]["name"] for i in range(4)]
    assert names == ["c0", "c1", "c2", "c3"]
    assert [s.path.rsplit("/", 1)[1] for s in server.seen] == names  # every GET answered exactly once
    assert server.connections() == 4


@pytest.mark.parametrize(
    ("code", "body", "reason", "message"),
    [
        (403, status(403, "Forbidden", "no access"), "Forbidden", "no access"),
        (500, status(500, "InternalError", "it broke"), "InternalError", "it broke"),
        (
            502,
            b"<html>bad gateway</html>",
            "",
            "HTTP 502 Bad Gateway, not a Kubernetes Status (application/json): <html>bad gateway</html>",
        ),
    ],
)
def test_errors_keep_the_status_code_reason_and_message(
    tmp_path: Path, code: int, body: Any, reason: str, message: str
) -> None:
    with (
        scripted(lambda path, auth: (code, body, False)) as server,
        client(write_kubeconfig(tmp_path / "kc", server.url)) as kube,
        pytest.raises(KubeError) as err,
    ):
        kube.get_claim("ns", "c")
    assert (err.value.code, err.value.reason, err.value.transient) == (code, reason, code >= 500)
    assert str(err.value) == f"get ResourceClaim ns/c: {message}"


def test_a_server_slower_than_the_timeout_is_unreachable(tmp_path: Path) -> None:
    release = threading.Event()

    def stall(path: str, auth: str | None) -> Answer:
        release.wait(10)
        return claim_for(path, auth)

    with scripted(stall) as server:
        try:
            with (
                client(write_kubeconfig(tmp_path / "kc", server.url), timeout_s=0.2) as kube,
                pytest.raises(KubeError) as err,
            ):
                kube.get_claim("default", "c1")
        finally:
            release.set()
    assert err.value.code is None
    assert "TimeoutError" in str(err.value)


def test_a_rotated_token_file_is_sent_and_a_401_rereads_it(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t1\n")

    def only_current(path: str, auth: str | None) -> Answer:
        if auth != f"Bearer {token.read_text().strip()}":
            return 401, status(401, "Unauthorized", "Unauthorized"), False
        return claim_for(path, auth)

    with (
        scripted(only_current) as server,
        client(write_kubeconfig(tmp_path / "kc", server.url, token="stale", tokenFile=str(token))) as kube,
    ):
        kube.get_claim("default", "c1")
        token.write_text("t2\n")
        os.utime(token, ns=(1, 1))  # a new mtime: re-read before the next request
        kube.get_claim("default", "c1")
        token.write_text("t3\n")
        os.utime(token, ns=(1, 1))  # same mtime as before: only the 401 makes it re-read
        kube.get_claim("default", "c1")
    assert [s.auth for s in server.seen] == ["Bearer t1", "Bearer t2", "Bearer t2", "Bearer t3"]


def test_a_token_file_is_reread_after_its_max_age(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t1")
    now = [0.0]
    bearer = BearerToken(None, str(token), max_age_s=60.0, clock=lambda: now[0])
    assert bearer.header() == "Bearer t1"
    token.write_text("t2")
    os.utime(token, ns=(1, 1))
    assert bearer.header() == "Bearer t2"
    token.write_text("t3")
    os.utime(token, ns=(1, 1))
    now[0] = 59.0
    assert bearer.header() == "Bearer t2"
    now[0] = 60.0
    assert bearer.header() == "Bearer t3"
    token.unlink()
    now[0] = 120.0
    assert bearer.header() == "Bearer t3"  # an unreadable file keeps the last token


EXEC_PLUGIN = """
import json, sys
with open(sys.argv[1], "a") as f:
    f.write("ran\\n")
print(json.dumps({"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential",
                  "status": {"token": "from-exec"}}))
"""


@pytest.mark.parametrize("auth", ["exec", "basic"])
def test_auth_only_lightkube_does_keeps_get_claim_on_lightkube(tmp_path: Path, auth: str) -> None:
    runs = tmp_path / "exec-runs"
    plugin = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "command": sys.executable,
        "args": ["-c", EXEC_PLUGIN, str(runs)],
    }
    user: dict[str, Any] = {"exec": plugin} if auth == "exec" else {"username": "admin", "password": "secret"}
    with scripted() as server, client(write_kubeconfig(tmp_path / "kc", server.url, **user)) as kube:
        assert kube.get_claim("default", "c1")["metadata"]["name"] == "c1"
        assert kube.get_claim("default", "c1")["metadata"]["name"] == "c1"
    expected = "Bearer from-exec" if auth == "exec" else "Basic " + base64.b64encode(b"admin:secret").decode()
    assert [s.auth for s in server.seen] == [expected, expected]
    assert all(s.user_agent != "gpudra" for s in server.seen)
    if auth == "exec":
        assert runs.read_text() == "ran\n"
