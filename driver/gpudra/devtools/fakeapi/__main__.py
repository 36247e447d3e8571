"""``python -m gpudra.devtools.fakeapi --port N --kubeconfig FILE [--gate Name=true] [--request-log FILE]``.

Serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import TextIO

from gpudra.devtools.fakeapi.gates import DEFAULT_GATES
from gpudra.devtools.fakeapi.server import FakeApiServer


def _gate(text: str) -> tuple[str, bool]:
    name, sep, value = text.partition("=")
    if not sep or value.lower() not in ("true", "false") or name not in DEFAULT_GATES:
        raise argparse.ArgumentTypeError(
            f"expected <gate>=true|false with a gate of {', '.join(DEFAULT_GATES)}"
        )
    return name, value.lower() == "true"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gpudra.devtools.fakeapi", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--kubeconfig", help="write a kubeconfig pointing at the server to this file")
    parser.add_argument(
        "--gate",
        type=_gate,
        action="append",
        default=[],
        metavar="NAME=BOOL",
        help="feature gate override (repeatable)",
    )
    parser.add_argument("--kube-version", default="1.34.0", help="version reported by /version")
    parser.add_argument(
        "--request-log", metavar="FILE", help="append one JSON line per answered request to FILE (hack/bench)"
    )
    return parser.parse_args(argv)


# ---- --request-log: the request log of a stand-in running in another process (used by hack/bench) ----


class _FileLoggingServer(FakeApiServer):
    """Also appends each answered request to a file as ``{"method", "path", "query", "status", "time"}``."""

    def __init__(
        self, host: str, port: int, gates: Mapping[str, bool], kube_version: str, log: TextIO
    ) -> None:
        super().__init__(host, port, gates, kube_version=kube_version)
        self._log = log
        self._log_lock = threading.Lock()

    def record(self, method: str, path: str, query: dict[str, str], status: int, started: float) -> None:
        super().record(method, path, query, status, started)
        line = json.dumps({"method": method, "path": path, "query": query, "status": status, "time": started})
        with self._log_lock:
            self._log.write(line + "\n")
            self._log.flush()


def _server(args: argparse.Namespace, log: TextIO | None) -> FakeApiServer:
    gates = dict(args.gate)
    if log is None:
        return FakeApiServer(args.host, args.port, gates, kube_version=args.kube_version)
    return _FileLoggingServer(args.host, args.port, gates, args.kube_version, log)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log = open(args.request_log, "a", encoding="utf-8") if args.request_log else None  # noqa: SIM115
    try:
        with _server(args, log) as server:
            if args.kubeconfig:
                server.write_kubeconfig(args.kubeconfig)
            print(server.url, flush=True)
            stop.wait()
    finally:
        if log is not None:
            log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
