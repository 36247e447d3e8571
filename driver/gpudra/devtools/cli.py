"""``gpudra-dev``: the development tools, apart from the plugin (installed with ``gpudra[devtools]``).

- ``gpudra-dev demo [--profile NAME]``: the whole path on mock GPUs with an in-process stand-in API server;
  ``--scenario health``: a GPU goes unhealthy (an injected Xid) and recovers, on a mock DGX H100;
  ``--scenario sharing``: GPUs shared by claims (fractional shares enforced with MPS, time-slicing);
- ``gpudra-dev fakeapi ...``: the stand-in Kubernetes API server alone (also
  ``python -m gpudra.devtools.fakeapi``);
- ``gpudra-dev explain ...``: why a claim is pending (``gpudra explain`` hands over to it); see
  :mod:`gpudra.devtools.explain_cli`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from gpudra import __version__
from gpudra.runtime import logs


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpudra-dev", description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--version", action="version", version=f"gpudra-dev {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the whole path on mock GPUs with an in-process API server")
    demo.add_argument("--profile", default="dgx-h100", help="mock profile (default: dgx-h100)")
    demo.add_argument(
        "--scenario",
        choices=("basic", "health", "sharing"),
        default="basic",
        help="basic (default): publish, register, prepare and unprepare one claim; "
        "health: a GPU gets Xid 48, is tainted, refused and recovers (dgx-h100 only); "
        "sharing: three claims share one H100, each limited by its MPS daemon; time-slicing (dgx-h100 only)",
    )
    sub.add_parser("fakeapi", help="the stand-in API server (all further arguments go to it)", add_help=False)
    sub.add_parser("explain", help="why a claim is pending (all further arguments go to it)", add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.command == "explain":
        from gpudra.devtools.explain_cli import main as explain_main

        return explain_main(rest)
    if args.command == "fakeapi":
        from gpudra.devtools.fakeapi.__main__ import main as fakeapi_main

        return fakeapi_main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.scenario != "basic" and args.profile != "dgx-h100":
        parser.error(f"--scenario {args.scenario} runs on the dgx-h100 profile only")
    logs.setup(args.verbose, "text")
    if args.scenario == "health":
        from gpudra.devtools import demo_health

        return demo_health.run()
    if args.scenario == "sharing":
        from gpudra.devtools import demo_sharing

        return demo_sharing.run()
    from gpudra.devtools import demo as demo_module

    return demo_module.run(args.profile)


if __name__ == "__main__":
    sys.exit(main())
