"""Unix socket paths for the kubelet: names per pod during rolling updates, and the sun_path limit.

Pure, and free of grpc, so that the configuration can name its sockets before gRPC is imported.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

#: sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107


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
