"""Command line: ``gpudra discover``, ``gpudra run``. (``gpudra-dev demo`` and the other development tools
live in :mod:`gpudra.devtools`.)

Every ``run`` flag has an environment twin (``NODE_NAME``, ``KUBECONFIG``, ``GPUDRA_*``) so a DaemonSet can
configure it from the downward API; a flag given on the command line wins over its twin.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path

from gpudra import __version__
from gpudra.runtime import logs
from gpudra.vendors.base import HostRoots, VendorDriver

BACKENDS = ("auto", "nvml", "amd", "mock")


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value else default


def _add_backend_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=_env("GPUDRA_BACKEND", "auto"),
        help="hardware backend [env GPUDRA_BACKEND] (default: auto)",
    )
    p.add_argument(
        "--profile",
        default=_env("GPUDRA_PROFILE"),
        help="mock hardware profile: a built-in name or a JSON file [env GPUDRA_PROFILE]",
    )
    p.add_argument(
        "--sysfs-root",
        type=Path,
        default=Path(_env("GPUDRA_SYSFS_ROOT", "/sys") or "/sys"),
        help="sysfs mount to read PCI/NUMA placement from [env GPUDRA_SYSFS_ROOT]",
    )


def _add_common_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=int(_env("GPUDRA_VERBOSITY", "0") or 0),
        help="more logging: -v info, -vv debug, -vvv library debug [env GPUDRA_VERBOSITY]",
    )
    p.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=_env("GPUDRA_LOG_FORMAT", "text"),
        help="log line format [env GPUDRA_LOG_FORMAT]",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gpudra", description="Kubernetes DRA driver for NVIDIA and AMD GPUs"
    )
    parser.add_argument("--version", action="version", version=f"gpudra {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("discover", help="show the GPUs found, or the ResourceSlices that would be published")
    _add_backend_flags(d)
    _add_common_flags(d)
    d.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    d.add_argument(
        "--node-name",
        default=_env("NODE_NAME", socket.gethostname()),
        help="node the slices are for (default: hostname) [env NODE_NAME]",
    )

    r = sub.add_parser("run", help="run the kubelet plugin")
    _add_backend_flags(r)
    _add_common_flags(r)
    r.add_argument("--node-name", default=_env("NODE_NAME"), help="this node's name [env NODE_NAME]")
    r.add_argument(
        "--kubeconfig",
        type=Path,
        default=_env("KUBECONFIG"),
        help="kubeconfig file; in-cluster config when unset [env KUBECONFIG]",
    )
    for flag, env, default, what in (
        (
            "--plugins-dir",
            "GPUDRA_PLUGINS_DIR",
            "/var/lib/kubelet/plugins",
            "kubelet plugins dir (DRA socket)",
        ),
        (
            "--registry-dir",
            "GPUDRA_REGISTRY_DIR",
            "/var/lib/kubelet/plugins_registry",
            "kubelet registry dir",
        ),
        ("--cdi-root", "GPUDRA_CDI_ROOT", "/var/run/cdi", "where CDI specs are written"),
        ("--state-dir", "GPUDRA_STATE_DIR", None, "checkpoint dir (default: <plugins-dir>/gpudra.io)"),
        (
            "--run-dir",
            "GPUDRA_RUN_DIR",
            None,
            "per-boot files containers mount; tmpfs is best, e.g. /var/run/gpudra.io (default: state dir)",
        ),
        ("--dev-root", "GPUDRA_DEV_ROOT", "/dev", "host /dev as this process sees it"),
        ("--proc-root", "GPUDRA_PROC_ROOT", "/proc", "host /proc (NVIDIA MIG capability minors)"),
        (
            "--driver-root",
            "GPUDRA_DRIVER_ROOT",
            "/",
            "NVIDIA driver root (/run/nvidia/driver with the operator)",
        ),
        (
            "--host-driver-root",
            "GPUDRA_HOST_DRIVER_ROOT",
            None,
            "the NVIDIA driver root as the host sees it, when mounted elsewhere here",
        ),
    ):
        value = _env(env, default)
        r.add_argument(flag, type=Path, default=Path(value) if value else None, help=f"{what} [env {env}]")
    r.add_argument(
        "--cdi-spec-dirs",
        default=_env("GPUDRA_CDI_SPEC_DIRS", "/etc/cdi:/var/run/cdi"),
        help="colon-separated dirs with the NVIDIA Container Toolkit's CDI specs [env GPUDRA_CDI_SPEC_DIRS]",
    )
    r.add_argument(
        "--amd-additional-gids",
        action=argparse.BooleanOptionalAction,
        default=(_env("GPUDRA_AMD_ADDITIONAL_GIDS", "true") or "true").lower() not in ("0", "false", "no"),
        help="AMD: add the render node's group via CDI additionalGids; needs a runtime that knows CDI "
        "0.7.0 (containerd >= 1.7.16 or 2.x, CRI-O >= 1.30) [env GPUDRA_AMD_ADDITIONAL_GIDS]",
    )
    r.add_argument(
        "--pod-uid",
        default=_env("GPUDRA_POD_UID"),
        help="per-pod socket names for rolling updates [env GPUDRA_POD_UID]",
    )
    r.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("GPUDRA_METRICS_PORT", "0") or 0),
        help="serve Prometheus metrics on this port; 0 disables [env GPUDRA_METRICS_PORT]",
    )
    r.add_argument(
        "--probe-port",
        type=int,
        default=int(_env("GPUDRA_PROBE_PORT", "0") or 0),
        help="serve grpc.health.v1 for kubelet gRPC probes on this port; 0 disables [env GPUDRA_PROBE_PORT]",
    )
    r.add_argument(
        "--rediscover-interval",
        type=float,
        default=float(_env("GPUDRA_REDISCOVER_INTERVAL", "60") or 60),
        help="seconds between re-discovery passes, which republish changed hardware (a lost GPU, a new MIG "
        "layout); 0 turns them off (SIGHUP still triggers one) [env GPUDRA_REDISCOVER_INTERVAL]",
    )
    r.add_argument(
        "--rediscover-pending-interval",
        type=float,
        default=float(_env("GPUDRA_REDISCOVER_PENDING_INTERVAL", "15") or 15),
        help="while NVLink fabric registration is pending: seconds to the first re-discovery, doubling up "
        "to --rediscover-interval [env GPUDRA_REDISCOVER_PENDING_INTERVAL]",
    )
    r.add_argument(
        "--grpc-workers",
        type=int,
        default=int(_env("GPUDRA_GRPC_WORKERS", "4") or 4),
        help="kubelet calls served at once (default 4; see docs/benchmarks.md) [env GPUDRA_GRPC_WORKERS]",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logs.setup(args.verbose, args.log_format)
    from gpudra.vendors.base import DiscoveryError

    try:
        if args.command == "discover":
            return _discover(args)
        return _run(args)
    except DiscoveryError as e:
        print(f"gpudra: {e}", file=sys.stderr)
        return 2


def _open_driver(
    args: argparse.Namespace, roots: HostRoots | None = None, files_dir: Path | None = None
) -> VendorDriver:
    from gpudra.vendors.select import open_driver

    return open_driver(args.backend, args.profile, args.sysfs_root, roots, files_dir)


def _discover(args: argparse.Namespace) -> int:
    from gpudra.planning import slices
    from gpudra.planning.offer import plan_offer
    from gpudra.runtime.tables import inventory_table

    driver = _open_driver(args)
    try:
        inv = driver.discover()
    finally:
        driver.close()
    if args.output == "table":
        print(inventory_table(inv))
        for warning in inv.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    objs = slices.plan_slices(plan_offer(inv), args.node_name, None, 1)
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=2))
    else:
        import yaml  # only for this output: it costs ~30 ms at every plugin start

        print(yaml.safe_dump_all(objs, sort_keys=False), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    from gpudra.runtime.app import Plugin, serve
    from gpudra.runtime.config import RunConfig

    if not args.node_name:
        print("gpudra: --node-name (or NODE_NAME) is required", file=sys.stderr)
        return 2
    cfg = RunConfig(
        node_name=args.node_name,
        kubeconfig=args.kubeconfig,
        plugins_dir=args.plugins_dir,
        registry_dir=args.registry_dir,
        cdi_root=args.cdi_root,
        state_dir=args.state_dir,
        run_dir=args.run_dir,
        dev_root=args.dev_root,
        proc_root=args.proc_root,
        driver_root=args.driver_root,
        host_driver_root=args.host_driver_root,
        cdi_spec_dirs=tuple(Path(d) for d in args.cdi_spec_dirs.split(":") if d),
        amd_additional_gids=args.amd_additional_gids,
        pod_uid=args.pod_uid,
        metrics_port=args.metrics_port,
        grpc_workers=max(1, args.grpc_workers),
        probe_port=args.probe_port,
        rediscover_interval_s=max(0.0, args.rediscover_interval),
        rediscover_initial_s=max(0.01, args.rediscover_pending_interval),
    )
    driver = _open_driver(args, cfg.host_roots, cfg.effective_run_dir / "claims")
    code = serve(Plugin(cfg, driver))
    # Everything that matters is on disk (atomic writes) and the sockets are gone. Skip the interpreter's
    # teardown of gRPC and its threads, which costs ~100 ms: the DaemonSet budget for SIGTERM is 25 ms.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)
