"""gRPC servers on unix sockets: bind (replacing a stale socket file), stop, and clean up."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

log = logging.getLogger(__name__)

#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107

Registrar = Callable[[grpc.Server], None]


def socket_name(stem: str, pod_uid: str | None, suffix: str = ".sock") -> str:
    """``<stem>.sock``, or ``<stem>-<podUID>.sock`` in rolling-update mode (two instances serve at once)."""
    if not pod_uid:
        return f"{stem}{suffix}"
    return f"{stem}-{pod_uid}{suffix}"


def fit_socket_path(directory: Path, name: str) -> Path:
    """The socket path, with the name shortened by a hash when the whole path would exceed sun_path."""
    path = directory / name
    if len(str(path).encode()) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    short = directory / f"gpudra-{digest}.sock"
    if len(str(short).encode()) > MAX_SOCKET_PATH:
        raise ValueError(f"socket directory {directory} is too long for a unix socket path")
    return short


class UnixServer:
    """One grpc.Server listening on one unix socket path."""

    def __init__(self, path: Path, registrars: list[Registrar], max_workers: int = 8) -> None:
        self.path = path
        self._registrars = registrars
        self._max_workers = max_workers
        self._server: grpc.Server | None = None

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.unlink(missing_ok=True)  # a stale socket from a previous run blocks bind()
        server = grpc.server(ThreadPoolExecutor(max_workers=self._max_workers, thread_name_prefix="grpc"))
        for register in self._registrars:
            register(server)
        if server.add_insecure_port(f"unix://{self.path}") == 0:
            raise OSError(f"cannot listen on {self.path}")
        server.start()
        self._server = server
        log.debug("serving on %s", self.path)

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls; with ``grace``, let calls in flight finish for up to that long (no call in
        flight: returns at once). The socket file is removed first, so no new client can connect."""
        server, self._server = self._server, None
        self.path.unlink(missing_ok=True)
        if server is not None:
            done = server.stop(grace)
            if grace:
                done.wait(grace)

    @property
    def running(self) -> bool:
        return self._server is not None
