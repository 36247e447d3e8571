"""gRPC servers on unix sockets: bind (replacing a stale socket file), stop, and clean up.

A socket gets mode 0600 before anyone can reach it, whatever the umask (see :mod:`gpudra.kubelet.unixbind`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from gpudra.fsutil import make_dirs
from gpudra.kubelet import unixbind
from gpudra.kubelet.paths import MAX_SOCKET_PATH, fit_socket_path, socket_name

__all__ = ["MAX_SOCKET_PATH", "Registrar", "UnixServer", "fit_socket_path", "socket_name"]

log = logging.getLogger(__name__)

Registrar = Callable[[grpc.Server], None]


class UnixServer:
    """One grpc.Server listening on one unix socket path."""

    def __init__(self, path: Path, registrars: list[Registrar], max_workers: int = 8) -> None:
        self.path = path
        self._registrars = registrars
        self._max_workers = max_workers
        self._server: grpc.Server | None = None

    def start(self) -> None:
        """Bind, then serve. Raises OSError (naming the path) when the socket cannot be offered."""
        make_dirs(self.path.parent, 0o700)  # only when missing: the start-up checks made ours already
        server = grpc.server(ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="grpc"))
        for register in self._registrars:
            register(server)
        bound = unixbind.private_socket(self.path.parent, self.path.name)
        try:
            unixbind.grpc_bind(server.add_insecure_port, bound)
            unixbind.publish(bound, self.path)  # replaces a stale socket from a previous run
        except OSError:
            unixbind.discard(bound)
            server.stop(0)
            raise
        server.start()
        self._server = server
        log.debug("serving on %s", self.path)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls; with ``grace``, let calls in flight finish for up to that long (no call in
        flight: returns at once). The socket file is removed first, so no new client can connect; a server
        that never started removes nothing (what is at its path is not its socket)."""
        server, self._server = self._server, None
        if server is not None:
            self.path.unlink(missing_ok=True)
            done = server.stop(grace)
            if grace:
                done.wait(grace)

    @property
    def running(self) -> bool:
        return self._server is not None
