"""``python -m gpudra.fakeapi --port N --kubeconfig FILE [--gate Name=true]``: serve until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from gpudra.fakeapi.gates import DEFAULT_GATES
from gpudra.fakeapi.server import FakeApiServer


def _gate(text: str) -> tuple[str, bool]:
    name, sep, value = text.partition("=")
    if not sep or value.lower() not in ("true", "false") or name not in DEFAULT_GATES:
        raise argparse.ArgumentTypeError(
            f"expected <gate>=true|false with a gate of {', '.join(DEFAULT_GATES)}"
        )
    return name, value.lower() == "true"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m gpudra.fakeapi", description=__doc__)
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with FakeApiServer(args.host, args.port, dict(args.gate), kube_version=args.kube_version) as server:
        if args.kubeconfig:
            server.write_kubeconfig(args.kubeconfig)
        print(server.url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
