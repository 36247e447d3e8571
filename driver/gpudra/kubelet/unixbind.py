"""Unix sockets that are never reachable with a wider mode than asked for, whatever the umask.

``bind()`` creates the socket file with mode ``0777 & ~umask``, and gRPC binds (and listens) itself, so the
mode can only be set afterwards. Until then the socket would be open to every local user: anyone able to
connect to the DRA socket can prepare and unprepare claims. So a socket is bound inside a fresh private
directory (``<dir>/.gd<hex>/s``, mode 0700: nobody else can reach what is inside), set to its mode there,
and only then renamed to its final name in ``<dir>`` — an atomic replace of a stale socket, too. The kubelet's
plugin watcher ignores names starting with a dot, so the private directory is never taken for a plugin.

The private path is never longer than the final one (``/.gd<hex>/s`` is at most as long as ``/<name>``), so
a path that :func:`gpudra.kubelet.paths.fit_socket_path` accepted binds. Free of gRPC: the start-up checks
use it before gRPC is imported.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

from gpudra.kubelet.paths import MAX_SOCKET_PATH

#: Mode of the sockets: the kubelet runs as root; nobody else may connect.
SOCKET_MODE: Final = 0o600
#: The private directories a socket is bound in before it gets its name.
PRIVATE_DIR: Final = re.compile(r"\.gd[0-9a-f]{3,12}")
_SOCKET: Final = "s"


def private_socket(directory: Path, final_name: str) -> Path:
    """A new private directory in ``directory`` (mode 0700) and the socket path inside it. Raises OSError."""
    room = MAX_SOCKET_PATH - len(str(directory).encode()) - len(f"/.gd/{_SOCKET}")
    digits = max(3, min(12, room, len(final_name) - 5))
    for _ in range(16):
        private = directory / f".gd{os.urandom(6).hex()[:digits]}"
        try:
            os.mkdir(private, 0o700)
        except FileExistsError:
            continue
        os.chmod(private, 0o700)  # the umask may have narrowed it further, never widened: keep it exact
        return private / _SOCKET
    raise FileExistsError(f"no free private directory name in {directory}")


def publish(bound: Path, final: Path, mode: int = SOCKET_MODE) -> None:
    """Give the socket bound at ``bound`` (from :func:`private_socket`) its mode, then its final name."""
    os.chmod(bound, mode)
    try:
        os.rename(bound, final)
    except IsADirectoryError as e:
        raise IsADirectoryError(e.errno, f"{final} is a directory, not a socket: move it away") from e
    finally:
        discard(bound)


def discard(bound: Path) -> None:
    """Remove a private directory and what is left in it (after a failed bind or a rename)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(bound)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(bound.parent)


def check_bindable(directory: Path, final_name: str) -> None:
    """Bind (and remove) a socket in ``directory`` the way the servers will. Raises OSError."""
    bound = private_socket(directory, final_name)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.bind(str(bound))
    finally:
        discard(bound)


def check_socket_path(path: Path) -> None:
    """Raise OSError when ``path`` exists and is not a socket (a stale socket is replaced; anything else
    would make the rename fail after the plugin has started publishing)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "a file that is not a socket"
        raise FileExistsError(errno.EEXIST, f"{path} is {kind}")


def remove_stale(directory: Path, min_age_s: float = 2.0) -> int:
    """Remove the private directories a killed process left behind (nothing in them but our socket name, and
    untouched for ``min_age_s``: another instance's bind in flight is kept). Returns how many went."""
    try:
        names = [n for n in os.listdir(directory) if PRIVATE_DIR.fullmatch(n)]
    except OSError:  # missing, or not readable: nothing to clean that we could clean
        return 0
    removed = 0
    before = time.time() - min_age_s
    for name in names:
        private = directory / name
        with contextlib.suppress(OSError):  # not a directory, not ours, or gone meanwhile: leave it
            if private.is_symlink() or private.lstat().st_mtime > before:
                continue
            if set(os.listdir(private)) <= {_SOCKET}:
                discard(private / _SOCKET)
                removed += 1
    return removed


def grpc_bind(add_port: Callable[[str], int], bound: Path) -> None:
    """Call a gRPC server's ``add_insecure_port`` for ``bound``; raise OSError when it cannot bind (gRPC says
    so with a 0 or, in newer versions, a RuntimeError)."""
    try:
        ok = add_port(f"unix://{bound}") != 0
    except RuntimeError as e:
        raise OSError(f"cannot listen on {bound}: {e}") from e
    if not ok:
        raise OSError(f"cannot listen on {bound}")
