"""The node's own resources at start-up: directories (created with exact modes, writable), the unix sockets'
directories (a socket binds there), the TCP ports (free), and the leftovers of a killed predecessor.

:func:`check` runs before the first ResourceSlice is published: once the scheduler sees our devices it
places claims on this node, so a plugin that cannot serve them must not get that far. Each check is a few
system calls (the slow parts of start-up are imports and the API). Every failure is a
:class:`~gpudra.runtime.errors.StartupError` naming the path or port and what to do.

Modes are set explicitly, whatever the umask: the state directory (the checkpoint) and the socket directory
are the plugin's alone (0700); the CDI root and the run directory must be readable by the container runtime
and by nobody else writable (0755; the files in them are 0644). A directory of ours (state, run, sockets)
that exists with another mode gets ours; the CDI root and the kubelet's registry directory are shared, so
they are only created when missing, and a warning says when others can write to them.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from gpudra.fsutil import check_writable, make_dirs, remove_stale_temps
from gpudra.kubelet import unixbind
from gpudra.model.cdi import SPEC_FILE_PREFIX
from gpudra.runtime.config import RunConfig
from gpudra.runtime.errors import StartupError

log = logging.getLogger(__name__)

PRIVATE: Final = 0o700
SHARED: Final = 0o755
_CHECK: Final = "gpudra-write-check"

#: What to do, by errno, for a directory that cannot be created or written.
_DIR_FIXES: Final = {
    errno.EROFS: "it is on a read-only file system: mount it read-write (a hostPath volume without readOnly)",
    errno.EACCES: "give the plugin write access (check the owner and the mode, and `lsattr -d {path}`)",
    errno.EPERM: "it is probably immutable: check `lsattr -d {path}` and clear the flag with `chattr -i`",
    errno.ENOTDIR: "a component of {path} is a file, not a directory: move it away or choose another path",
    errno.EEXIST: "{path} is a file, not a directory: move it away or choose another path",
    errno.ENOSPC: "free space on its file system",
    errno.EDQUOT: "raise the disk quota",
}
_PORT_FIXES: Final = {
    errno.EADDRINUSE: "another process listens there (`ss -ltnp 'sport = :{port}'`): stop it or choose "
    "another port",
    errno.EADDRNOTAVAIL: "{address} is not an address of this pod or node: set {address_flag} to one (the "
    "DaemonSet gives status.podIP)",
    errno.EACCES: "ports below 1024 need CAP_NET_BIND_SERVICE: choose a port above 1023",
}


def check(cfg: RunConfig) -> None:
    """Everything local ``gpudra run`` needs, before it publishes anything. Raises StartupError."""
    for path, mode, ours, flag in _directories(cfg):
        _directory(path, mode, ours, flag)
    for path, flag in (
        (cfg.effective_state_dir, "--state-dir"),
        (cfg.effective_run_dir, "--run-dir"),
        (cfg.cdi_root, "--cdi-root"),
    ):
        try:
            check_writable(path)
        except OSError as e:
            raise _dir_error(flag, path, "is not writable", e) from e
    for sock, flag in ((cfg.dra_socket, "--plugins-dir"), (cfg.registration_socket, "--registry-dir")):
        try:
            unixbind.check_socket_path(sock)
        except OSError as e:
            fix = "move it away: the plugin replaces nothing there but a stale socket"
            raise StartupError(f"{flag}: {e.strerror or e}", fix) from e
        try:
            unixbind.check_bindable(sock.parent, sock.name)
        except OSError as e:
            raise _dir_error(flag, sock.parent, "cannot hold a socket", e) from e
    for flag, address_flag, address, port in (
        ("--metrics-port", "--metrics-address", cfg.metrics_address, cfg.metrics_port),
        ("--probe-port", "--probe-address", cfg.probe_address, cfg.probe_port),
    ):
        if port:
            try:
                _bind_tcp(address, port)
            except OSError as e:
                raise port_error(flag, address_flag, address, port, e) from e


def _directories(cfg: RunConfig) -> Iterator[tuple[Path, int, bool, str]]:
    """(path, mode, ours, flag) of each directory, each once (the state dir is the run dir by default)."""
    seen: set[Path] = set()
    for entry in (
        (cfg.effective_state_dir, PRIVATE, True, "--state-dir"),
        (cfg.effective_run_dir, SHARED, True, "--run-dir"),
        (cfg.dra_socket.parent, PRIVATE, True, "--plugins-dir"),
        (cfg.cdi_root, SHARED, False, "--cdi-root"),
        (cfg.registration_socket.parent, PRIVATE, False, "--registry-dir"),
    ):
        if entry[0] not in seen:
            seen.add(entry[0])
            yield entry


def _directory(path: Path, mode: int, ours: bool, flag: str) -> None:
    try:
        if make_dirs(path, mode):
            return
        current = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as e:
        raise _dir_error(flag, path, "cannot be created", e) from e
    if ours and current != mode:
        try:
            os.chmod(path, mode)
        except OSError as e:
            if e.errno != errno.EROFS:  # read-only: the check for writing says so, as an error
                what = "%s %s: cannot set its mode to %04o (it is %04o): %s"
                log.warning(what, flag, path, mode, current, e)
            return
        log.info("%s %s: set its mode to %04o (it was %04o)", flag, path, mode, current)
    elif not ours and current & 0o022:
        log.warning(
            "%s %s is writable by group or others (mode %04o): whoever can write there decides what "
            "containers get; make it 0755 (chmod go-w)",
            flag,
            path,
            current,
        )


def _dir_error(flag: str, path: Path, what: str, e: OSError) -> StartupError:
    reason = e.strerror or str(e)
    fix = _DIR_FIXES.get(e.errno or 0, "check the directory and its file system").format(path=path)
    return StartupError(f"{flag} {path} {what}: {reason}", fix)


def _bind_tcp(address: str, port: int) -> None:
    """Bind and release ``address:port`` as the servers will (SO_REUSEADDR). Raises OSError."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
    except OSError as e:
        # All addresses where IPv6 is off: the servers fall back to IPv4's (gRPC does on its own).
        if address == "::" and e.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
            _bind_tcp("0.0.0.0", port)
            return
        raise


def port_error(flag: str, address_flag: str, address: str, port: int, e: OSError) -> StartupError:
    reason = e.strerror or str(e)
    fix = _PORT_FIXES.get(e.errno or 0, "choose another port, or 0 to turn it off")
    return StartupError(
        f"{flag} {port}: cannot listen on {address} port {port}: {reason}",
        fix.format(port=port, address=address, address_flag=address_flag),
    )


def remove_leftovers(cfg: RunConfig) -> int:
    """Remove what a killed predecessor left in our directories: temp files of interrupted atomic writes
    (ours only, by name, and none that a live writer holds) and private socket directories. Returns how
    many; never raises (a directory that cannot be read keeps its leftovers)."""
    run = cfg.effective_run_dir
    targets: dict[Path, set[str]] = {}
    sources: tuple[tuple[Path, tuple[str, ...]], ...] = (
        (cfg.effective_state_dir, ("checkpoint", _CHECK)),
        (run, (_CHECK,)),
        (run / "metadata", ("",)),  # per-claim files of ours only
        (run / "claims", ("",)),
        (cfg.cdi_root, (SPEC_FILE_PREFIX, _CHECK)),  # shared with other CDI writers: our names only
    )
    for directory, prefixes in sources:
        targets.setdefault(directory, set()).update(prefixes)
    removed = 0
    for directory, wanted in targets.items():
        try:
            removed += remove_stale_temps(directory, sorted(wanted))
        except OSError as e:
            log.warning("cannot clean temp files in %s: %s", directory, e)
    for directory in {cfg.dra_socket.parent, cfg.registration_socket.parent}:
        removed += unixbind.remove_stale(directory)
    return removed
