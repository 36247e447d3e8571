"""Command line: ``gpudra discover``, ``gpudra run``, ``gpudra explain``. (``gpudra-dev demo`` and the other
development tools live in :mod:`gpudra.devtools`; ``gpudra explain`` runs ``gpudra-dev explain`` instead.)

Every ``run`` flag has an environment twin (``NODE_NAME``, ``KUBECONFIG``, ``GPUDRA_*``) so a DaemonSet can
configure it from the downward API; a flag given on the command line wins over its twin, and both go through
the same validator (:mod:`gpudra.runtime.flags`). An error that stops the command is one line, ``gpudra:
<what> — <what to do>`` (JSON with ``--log-format json``): exit 2 for a bad flag, 1 when the node keeps the
plugin from starting (:mod:`gpudra.runtime.errors`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from gpudra import __version__
from gpudra.runtime import logs
from gpudra.runtime.errors import FatalError, UsageError
from gpudra.runtime.flags import (
    ABSOLUTE_PATH,
    ABSOLUTE_PATHS,
    BOOLEAN,
    FILE,
    IP_ADDRESS,
    NODE_NAME,
    POD_UID,
    QUIET_PERIODS,
    TEXT,
    XID_LIST,
    Opt,
    choice,
    count,
    port,
    resolve,
    seconds,
)
from gpudra.vendors.base import HostRoots, VendorDriver, WatchOptions

if TYPE_CHECKING:
    from gpudra.vendors.nvidia.sharing_options import MpsOptions

BACKENDS = ("auto", "nvml", "amd", "mock")
EXPLAIN_FIX: Final = "pip install 'gpudra[devtools]'"

COMMON_OPTS: Final = (
    Opt("--verbose", "GPUDRA_VERBOSITY", count(0, 9, "a verbosity"), "0",
        "more logging: -v info, -vv debug, -vvv library debug", action="count", short="-v"),
    Opt("--log-format", "GPUDRA_LOG_FORMAT", choice("text", "json"), "text", "log line format: text or json"),
)  # fmt: skip
BACKEND_OPTS: Final = (
    Opt("--backend", "GPUDRA_BACKEND", choice(*BACKENDS), "auto", "hardware backend: " + ", ".join(BACKENDS)),
    Opt("--profile", "GPUDRA_PROFILE", TEXT, None, "mock hardware profile: a built-in name or a JSON file"),
    Opt("--sysfs-root", "GPUDRA_SYSFS_ROOT", ABSOLUTE_PATH, "/sys",
        "sysfs mount to read PCI/NUMA placement from"),
    Opt("--mig-management", "GPUDRA_MIG_MANAGEMENT", choice("dynamic", "static"), "dynamic",
        "dynamic: publish MIG-capable GPUs whole and as every MIG placement, and create the MIG device a "
        "claim gets at prepare (needs the DRAPartitionableDevices gate, on from Kubernetes 1.36; falls back "
        "to static when the cluster drops counters); static: publish the MIG layout an admin made, never "
        "change it"),
    Opt("--fractional-gpus", "GPUDRA_FRACTIONAL_GPUS", choice("on", "off"), "on",
        "on: publish GPUs, static MIG devices and AMD partitions for several claims to share, each "
        "consuming part of the memory (KEP-5075; needs the DRAConsumableCapacity gate, on from Kubernetes "
        "1.36; falls back to exclusive devices when the cluster drops the fields). Devices of dynamic MIG "
        "stay exclusive. off: every device is exclusive"),
)  # fmt: skip
RUN_OPTS: Final = (
    Opt("--node-name", "NODE_NAME", NODE_NAME, None, "this node's name (required)"),
    Opt("--kubeconfig", "KUBECONFIG", FILE, None, "kubeconfig file; in-cluster config when unset"),
    Opt("--plugins-dir", "GPUDRA_PLUGINS_DIR", ABSOLUTE_PATH, "/var/lib/kubelet/plugins",
        "kubelet plugins dir (DRA socket)"),
    Opt("--registry-dir", "GPUDRA_REGISTRY_DIR", ABSOLUTE_PATH, "/var/lib/kubelet/plugins_registry",
        "kubelet registry dir"),
    Opt("--cdi-root", "GPUDRA_CDI_ROOT", ABSOLUTE_PATH, "/var/run/cdi", "where CDI specs are written"),
    Opt("--state-dir", "GPUDRA_STATE_DIR", ABSOLUTE_PATH, None,
        "checkpoint dir (default: <plugins-dir>/gpudra.io)"),
    Opt("--run-dir", "GPUDRA_RUN_DIR", ABSOLUTE_PATH, None,
        "per-boot files containers mount; tmpfs is best, e.g. /var/run/gpudra.io (default: state dir)"),
    Opt("--dev-root", "GPUDRA_DEV_ROOT", ABSOLUTE_PATH, "/dev", "host /dev as this process sees it"),
    Opt("--proc-root", "GPUDRA_PROC_ROOT", ABSOLUTE_PATH, "/proc",
        "host /proc (NVIDIA MIG capability minors)"),
    Opt("--driver-root", "GPUDRA_DRIVER_ROOT", ABSOLUTE_PATH, "/",
        "NVIDIA driver root (/run/nvidia/driver with the operator)"),
    Opt("--host-driver-root", "GPUDRA_HOST_DRIVER_ROOT", ABSOLUTE_PATH, None,
        "the NVIDIA driver root as the host sees it, when mounted elsewhere here"),
    Opt("--cdi-spec-dirs", "GPUDRA_CDI_SPEC_DIRS", ABSOLUTE_PATHS, "/etc/cdi:/var/run/cdi",
        "colon-separated dirs with the NVIDIA Container Toolkit's CDI specs"),
    Opt("--amd-additional-gids", "GPUDRA_AMD_ADDITIONAL_GIDS", BOOLEAN, "true",
        "AMD: add the render node's group via CDI additionalGids; needs a runtime that knows CDI 0.7.0 "
        "(containerd >= 1.7.16 or 2.x, CRI-O >= 1.30)", action="bool"),
    Opt("--mps-launcher", "GPUDRA_MPS_LAUNCHER", choice("pod", "process"), None,
        "how claims' MPS daemons run, outliving plugin restarts: pod (a Pod per daemon in the plugin's "
        "namespace, with its image; the default) or process (a detached process: for hosts without a "
        "container; the mock backend always uses it)"),
    Opt("--mig-destroy-unowned", "GPUDRA_MIG_DESTROY_UNOWNED", BOOLEAN, "false",
        "dynamic MIG: at start, destroy the MIG devices no claim of this node created (an old layout, or "
        "one a lost checkpoint left) on MIG-capable GPUs, so they are partitioned at prepare again; NVML "
        "refuses while processes use one. Off: such a GPU is published as its MIG devices, never changed",
        action="bool"),
    Opt("--health-monitoring", "GPUDRA_HEALTH_MONITORING", BOOLEAN, "true",
        "watch device health (NVML events and polls, AMD RAS counters and events): unhealthy devices get "
        "taints and are refused at prepare; off: every device's health is Unknown (docs/health.md)",
        action="bool"),
    Opt("--health-quiet", "GPUDRA_HEALTH_QUIET", QUIET_PERIODS, "xid=600,ecc=1800,reset=600,thermal=300",
        "seconds a condition must not recur before its taint goes, per condition (lost GPUs recover when "
        "they answer again)"),
    Opt("--ignored-xids", "GPUDRA_IGNORED_XIDS", XID_LIST, "13,31,43,45,68,109",
        "NVIDIA Xids that applications cause and that never taint a GPU: the whole list (NVIDIA's defaults; "
        "empty: none ignored)"),
    Opt("--health-poll-interval", "GPUDRA_HEALTH_POLL_INTERVAL",
        seconds(zero_ok=False, what="a number of seconds above 0"), "5",
        "seconds between polls of each GPU's presence and error counters (events arrive at once)"),
    Opt("--pod-uid", "GPUDRA_POD_UID", POD_UID, None, "per-pod socket names for rolling updates"),
    Opt("--metrics-port", "GPUDRA_METRICS_PORT", port("to turn metrics off"), "0",
        "serve Prometheus metrics on this port; 0 disables"),
    Opt("--metrics-address", "GPUDRA_METRICS_ADDRESS", IP_ADDRESS, "127.0.0.1",
        "address the metrics port listens on (default: loopback only; the DaemonSet gives the pod IP)"),
    Opt("--probe-port", "GPUDRA_PROBE_PORT", port("to turn the probe endpoint off"), "0",
        "serve grpc.health.v1 for kubelet gRPC probes on this port; 0 disables"),
    Opt("--probe-address", "GPUDRA_PROBE_ADDRESS", IP_ADDRESS, "::",
        "address the probe port listens on: where the kubelet connects, the pod IP (default: all)"),
    Opt("--rediscover-interval", "GPUDRA_REDISCOVER_INTERVAL",
        seconds(zero_ok=True, what="seconds between re-discovery passes, or 0 for none"), "60",
        "seconds between re-discovery passes, which republish changed hardware (a lost GPU, a new MIG "
        "layout); 0 turns them off (SIGHUP still triggers one)"),
    Opt("--rediscover-pending-interval", "GPUDRA_REDISCOVER_PENDING_INTERVAL",
        seconds(zero_ok=False, what="a number of seconds above 0"), "15",
        "while NVLink fabric registration is pending: seconds to the first re-discovery, doubling up to "
        "--rediscover-interval"),
    Opt("--grpc-workers", "GPUDRA_GRPC_WORKERS", count(1, 64, "kubelet calls served at once"), "4",
        "kubelet calls served at once (default 4; see docs/benchmarks.md)"),
    Opt("--usage-metrics", "GPUDRA_USAGE_METRICS", choice("on", "off"), "on",
        "with --metrics-port: sample every device's energy, power, utilisation and memory in use, and "
        "export them per device and per claim holding it (docs/metrics.md); off: no sampling"),
    Opt("--usage-interval", "GPUDRA_USAGE_INTERVAL",
        seconds(zero_ok=False, what="a number of seconds above 0"), "10", "seconds between usage samples"),
)  # fmt: skip


def _discover_opts() -> tuple[Opt, ...]:
    hostname = socket.gethostname()
    return (Opt("--node-name", "NODE_NAME", TEXT, hostname, "node the slices are for (default: hostname)"),)


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line (:class:`UsageError`) instead of the usage text and exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, f"see `{self.prog} --help`")


def _add(p: argparse.ArgumentParser, opts: Sequence[Opt]) -> None:
    for opt in opts:
        names = [opt.short, opt.flag] if opt.short else [opt.flag]
        help_text = f"{opt.help} [env {opt.env}]"
        if opt.action == "count":
            p.add_argument(*names, dest=opt.dest, action="count", default=None, help=help_text)
        elif opt.action == "bool":
            p.add_argument(*names, dest=opt.dest, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            p.add_argument(*names, dest=opt.dest, default=None, metavar=opt.dest.upper(), help=help_text)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpudra", description="Kubernetes DRA driver for NVIDIA and AMD GPUs")
    parser.add_argument("--version", action="version", version=f"gpudra {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("discover", help="show the GPUs found, or the ResourceSlices that would be published")
    _add(d, (*COMMON_OPTS, *BACKEND_OPTS, *_discover_opts()))
    d.add_argument("-o", "--output", choices=("table", "yaml", "json"), default="table")
    r = sub.add_parser("run", help="run the kubelet plugin")
    _add(r, (*COMMON_OPTS, *BACKEND_OPTS, *RUN_OPTS))
    sub.add_parser("explain", add_help=False, help="why is my claim pending? (gpudra-dev explain, from "
                   f"{EXPLAIN_FIX}; `gpudra explain --help`)")  # fmt: skip
    return parser


def parse_args(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> argparse.Namespace:
    """The command line, each option resolved from its flag, its environment twin or its default, and
    checked by one validator. Raises :class:`UsageError`."""
    env = os.environ if environ is None else environ
    args = _parser().parse_args(argv)
    command_opts = RUN_OPTS if args.command == "run" else _discover_opts()
    for opt in (*COMMON_OPTS, *BACKEND_OPTS, *command_opts):
        setattr(args, opt.dest, resolve(opt, getattr(args, opt.dest), env))
    return args


def _log_format_hint(argv: Sequence[str]) -> str:
    """The log format asked for, before the command line is known to parse (for the error saying it does
    not)."""
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--log-format="):
            return arg.partition("=")[2]
    return os.environ.get("GPUDRA_LOG_FORMAT") or "text"


def _explain(argv: Sequence[str]) -> int:
    """``gpudra explain ...`` is ``gpudra-dev explain ...`` (the development tools, which the product never
    imports): the ``gpudra-dev`` beside this Python, else the one on PATH, in place of this process."""
    beside = Path(sys.executable).parent / "gpudra-dev"
    tool = str(beside) if beside.is_file() and os.access(beside, os.X_OK) else shutil.which("gpudra-dev")
    if tool is None:
        logs.fatal("explain needs the development tools (gpudra-dev is not installed)", EXPLAIN_FIX)
        return 2
    sys.stdout.flush()
    os.execvp(tool, [tool, "explain", *argv])  # replaces this process: never returns
    return 2  # pragma: no cover


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["explain"]:
        return _explain(argv[1:])
    try:
        args = parse_args(argv)
    except UsageError as e:
        logs.fatal(e.what, e.fix, _log_format_hint(argv))
        return e.exit_code
    logs.setup(args.verbose, args.log_format)
    from gpudra.vendors.base import DiscoveryError

    try:
        if args.command == "discover":
            return _discover(args)
        return _run(args)
    except DiscoveryError as e:
        fix = "check --backend (GPUDRA_BACKEND) and the GPU driver on this node"
        logs.fatal(f"discovery failed: {e}", fix, args.log_format)
        return 2
    except FatalError as e:
        logs.fatal(e.what, e.fix, args.log_format)
        return e.exit_code


def _open_driver(
    args: argparse.Namespace,
    roots: HostRoots | None = None,
    files_dir: Path | None = None,
    health: WatchOptions | None = None,
    mps: MpsOptions | None = None,
) -> VendorDriver:
    from gpudra.vendors.select import open_driver

    return open_driver(args.backend, args.profile, args.sysfs_root, roots, files_dir, health=health, mps=mps)


def _discover(args: argparse.Namespace) -> int:
    from gpudra.planning import slices
    from gpudra.planning.offer import plan_offer
    from gpudra.planning.partitions import MigPolicy
    from gpudra.runtime.tables import inventory_table

    driver = _open_driver(args)
    try:
        inv = driver.discover()
    finally:
        driver.close()
    # The vendor driver has logged the inventory's warnings (stderr); the planner's are printed here.
    if args.output == "table":
        print(inventory_table(inv))
        return 0
    policy = MigPolicy(dynamic=args.mig_management == "dynamic", fractional=args.fractional_gpus == "on")
    offer = plan_offer(inv, policy=policy)
    for warning in offer.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    objs = slices.plan_slices(offer, args.node_name, None, 1)
    if args.output == "json":
        print(json.dumps({"apiVersion": "v1", "kind": "List", "items": objs}, indent=2))
    else:
        import yaml  # only for this output: it costs ~30 ms at every plugin start

        print(yaml.safe_dump_all(objs, sort_keys=False), end="")
    return 0


def _run(args: argparse.Namespace) -> int:
    from gpudra.runtime.app import Plugin, serve
    from gpudra.runtime.config import RunConfig, check

    if not args.node_name:
        fix = "pass --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)"
        raise UsageError("--node-name is not set", fix)
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
        cdi_spec_dirs=args.cdi_spec_dirs,
        amd_additional_gids=args.amd_additional_gids,
        mig_destroy_unowned=args.mig_destroy_unowned,
        health_monitoring=args.health_monitoring,
        health_quiet_s=args.health_quiet,
        ignored_xids=args.ignored_xids,
        pod_uid=args.pod_uid,
        metrics_port=args.metrics_port,
        metrics_address=args.metrics_address,
        grpc_workers=args.grpc_workers,
        probe_port=args.probe_port,
        probe_address=args.probe_address,
        rediscover_interval_s=args.rediscover_interval,
        rediscover_initial_s=args.rediscover_pending_interval,
        mig_dynamic=args.mig_management == "dynamic",
        fractional_gpus=args.fractional_gpus == "on",
        mps_launcher=args.mps_launcher or "pod",
        usage_metrics=args.usage_metrics == "on",
        usage_interval_s=args.usage_interval,
    )
    check(cfg)
    health = WatchOptions(ignored_xids=args.ignored_xids, poll_s=args.health_poll_interval)
    from gpudra.runtime.mps_setup import mps_options

    mps = mps_options(cfg)  # the mock backend runs its fake MPS daemons as processes, whatever is asked
    driver = _open_driver(args, cfg.host_roots, cfg.effective_run_dir / "claims", health, mps)
    try:
        code = serve(Plugin(cfg, driver))
    except FatalError as e:
        logs.fatal(e.what, e.fix, args.log_format)
        code = e.exit_code
    # Everything that matters is on disk (atomic writes) and the sockets are gone. Skip the interpreter's
    # teardown of gRPC and its threads, which costs ~100 ms: the DaemonSet budget for SIGTERM is 25 ms.
    logging.shutdown()
    sys.stdout.flush()
    os._exit(code)
