"""The fault proxy the reliability tests put between the plugin and the API server: each mode, on an echo
server over real TCP."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from gpudra.devtools.faultproxy import FaultProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(4096):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[FaultProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    p = FaultProxy("127.0.0.1", server.server_address[1]).start()
    yield p
    p.stop()
    server.shutdown()
    server.server_close()


def _connect(p: FaultProxy) -> socket.socket:
    s = socket.create_connection((p.host, p.port), timeout=2)
    s.settimeout(0.5)
    return s


def _echoes(s: socket.socket) -> bool:
    try:
        s.sendall(b"ping")
        return s.recv(16) == b"ping"
    except (TimeoutError, OSError):
        return False


def test_pass_forwards_both_ways(proxy: FaultProxy) -> None:
    with _connect(proxy) as s:
        assert _echoes(s)


def test_refuse_resets_new_connections(proxy: FaultProxy) -> None:
    proxy.set_mode("refuse")
    try:
        s = _connect(proxy)
    except ConnectionResetError:  # the reset can arrive before connect() returns
        pass
    else:
        with s:
            assert not _echoes(s)
    proxy.set_mode("pass")
    with _connect(proxy) as s:
        assert _echoes(s)


def test_stall_and_blackhole_forward_nothing_and_close_nothing(proxy: FaultProxy) -> None:
    established = _connect(proxy)
    assert _echoes(established)
    proxy.set_mode("stall")  # only new connections hang
    with _connect(proxy) as s:
        assert not _echoes(s)
    assert _echoes(established)
    proxy.set_mode("blackhole")  # everything hangs, nothing is closed
    assert not _echoes(established)
    established.close()


def test_orphaned_connections_die_silently_while_new_ones_work(proxy: FaultProxy) -> None:
    old = _connect(proxy)
    assert _echoes(old)
    assert proxy.orphan_established() == 1
    assert not _echoes(old)
    with _connect(proxy) as new:
        assert _echoes(new)
    old.close()
