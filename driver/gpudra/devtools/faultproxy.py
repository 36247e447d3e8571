"""A TCP proxy that injects the network faults a node sees between the plugin and the API server.

Put it between ``gpudra run`` and the (stand-in) API server by pointing the plugin's kubeconfig at
:meth:`FaultProxy.url`, then change what the network does while the plugin runs:

- ``pass``: bytes flow both ways;
- ``refuse``: new connections are reset as soon as they arrive (the server is down, or a firewall rejects);
- ``stall``: new connections are accepted but nothing is forwarded either way (a hung load balancer);
- ``blackhole``: every connection, new and established, silently stops forwarding; nothing is closed (a
  network partition: TCP sees nothing until its own timeouts fire);

and, independent of the mode, :meth:`FaultProxy.orphan_established` silently kills the connections open now
while new ones work (a NAT or conntrack entry expired: the classic half-open watch). A development tool:
the plugin never imports it.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["pass", "refuse", "stall", "blackhole"]
_CHUNK = 65536


@dataclass
class _Link:
    client: socket.socket
    upstream: socket.socket | None
    dead: bool = False  # forwards nothing any more, closes nothing
    done: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, host: str = "127.0.0.1") -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server((host, 0))
        self._listener.settimeout(0.1)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._mode: Mode = "pass"
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.accepted = 0  # connections accepted so far (tests use it to see a reconnect)
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def url(self, scheme: str = "http") -> str:
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def mode(self) -> Mode:
        return self._mode

    def set_mode(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
            if mode == "blackhole":
                for link in self._links:
                    link.dead = True

    def orphan_established(self) -> int:
        """Silently kill the connections open now (no FIN, no RST); returns how many."""
        with self._lock:
            alive = [link for link in self._links if not link.dead]
            for link in alive:
                link.dead = True
        return len(alive)

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for link in self._links if not link.done.is_set())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            _close(link.client)
            if link.upstream is not None:
                _close(link.upstream)

    # ---- internals ----------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(client,), name="faultproxy-link", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        mode = self._mode
        if mode == "refuse":
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.close()  # RST
            return
        upstream = None
        if mode not in ("stall", "blackhole"):
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                client.close()
                return
        link = _Link(client, upstream, dead=mode in ("stall", "blackhole"))
        with self._lock:
            self._links.append(link)
        try:
            self._pump(link)
        finally:
            link.done.set()

    def _pump(self, link: _Link) -> None:
        ends = [link.client] + ([link.upstream] if link.upstream is not None else [])
        while not self._stop.is_set():
            if link.dead:  # hold the sockets open, forward nothing, until the proxy stops
                self._stop.wait(0.1)
                continue
            readable, _, _ = select.select(ends, [], [], 0.1)
            for src in readable:
                try:
                    data = src.recv(_CHUNK)
                except OSError:
                    data = b""
                if link.dead:
                    break
                if not data:
                    for end in ends:
                        _close(end)
                    return
                dst = link.upstream if src is link.client else link.client
                if dst is not None:
                    try:
                        dst.sendall(data)
                    except OSError:
                        for end in ends:
                            _close(end)
                        return


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()
