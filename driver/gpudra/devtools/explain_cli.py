"""``gpudra-dev explain``: why is my claim pending? (``gpudra explain`` hands over to this command.)

Explains ResourceClaims and ResourceClaimTemplates, from the cluster (``namespace/name``) or from files
(``-f``), against the devices of one node (``--node``), of every node (``--all-nodes``), or of a mock
hardware profile with no cluster at all (``--profile``); or against ResourceSlices given in the files.
For each claim and node: the verdict of the scheduler's allocator (emulated), then per request and
subrequest its verdict, every device with its DeviceClass and request selectors evaluated, why a matching
device cannot be given (in use, counters, capacity, taints) and how the constraints split the devices.

Exit status: 0 when every claim can be allocated (on some node), 1 when one cannot (pending or an
error), 2 when the command could not explain (bad arguments, unreadable input, the API failed).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

from gpudra.runtime import logs

if TYPE_CHECKING:
    from gpudra.devtools.allocator_pools import JSON
    from gpudra.devtools.explain_cluster import Cluster
    from gpudra.devtools.explain_inputs import Documents
    from gpudra.devtools.explain_model import ClaimInput, Held, Target

__all__ = ["INSTALL_FIX", "main", "parser"]

INSTALL_FIX: Final = "pip install 'gpudra[devtools]'"
PROFILE_NODE: Final = "mock-node"
EXIT_PENDING: Final = 1
EXIT_USAGE: Final = 2


class _Usage(Exception):
    """A problem with the command line or its inputs: one line, exit 2."""

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what)
        self.what, self.fix = what, fix


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message, f"see `{self.prog} --help`")


def parser(prog: str = "gpudra-dev explain") -> argparse.ArgumentParser:
    p = _Parser(
        prog=prog,
        description="Why is my claim pending? Each claim's verdict per node and per request, then every "
        "device with its selectors evaluated, why a matching one cannot be given, and the constraints.",
        epilog="exit status: 0 every claim fits, 1 one does not (pending or an error), 2 could not explain",
    )
    p.add_argument("claims", nargs="*", metavar="CLAIM", help="a ResourceClaim (or ResourceClaimTemplate) in "
                   "the cluster: namespace/name, or name in --namespace")  # fmt: skip
    p.add_argument("-f", "--filename", action="append", default=[], metavar="FILE",
                   help="YAML/JSON file (- for stdin) with ResourceClaims, ResourceClaimTemplates, and also "
                   "DeviceClasses, ResourceSlices, allocated claims (status.allocation); repeatable")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--node", metavar="NAME", help="the devices of this node's slices in the cluster")
    where.add_argument("--all-nodes", action="store_true", help="every node's devices in the cluster")
    where.add_argument("--profile", metavar="NAME", help="the devices the driver would publish for this mock "
                       "profile (a built-in name or a JSON file); no cluster needed")  # fmt: skip
    p.add_argument("--classes", type=Path, metavar="DIR", help="DeviceClass files to use (default: the "
                   "cluster's with --node/--all-nodes, else the repository's deviceclasses/)")  # fmt: skip
    p.add_argument("--kubeconfig", type=Path, metavar="FILE", help="default: $KUBECONFIG, ~/.kube/config")
    p.add_argument("-n", "--namespace", help="namespace of CLAIM names and of claims in files that name none")
    p.add_argument("--mig-management", choices=("dynamic", "static"), default="dynamic",
                   help="with --profile: publish MIG as the driver's flag does (default dynamic)")
    p.add_argument("--fractional-gpus", choices=("on", "off"), default="on",
                   help="with --profile: publish shareable devices as the driver's flag does (default on)")
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    p.add_argument("--all-devices", action="store_true", help="text: name every device, not the first few")
    return p  # fmt: skip


# ---- gathering the inputs ------------------------------------------------------------------------------


def _classes(args: argparse.Namespace, cluster: Cluster | None, docs: Documents) -> list[JSON]:
    from gpudra.devtools.explain_inputs import default_classes_dir, load_classes

    if args.classes is not None:
        found = list(load_classes(args.classes))
    elif cluster is not None and (args.node or args.all_nodes):
        found = cluster.classes()
    else:
        directory = default_classes_dir()
        if directory is None and not docs.classes:
            fix = "pass --classes DIR (the repository's deviceclasses/) or add them to -f"
            raise _Usage("no DeviceClasses", fix)
        found = list(load_classes(directory)) if directory is not None else []
    by_name = {c["metadata"]["name"]: c for c in [*found, *docs.classes]}  # files override
    return list(by_name.values())


def _targets(args: argparse.Namespace, cluster: Cluster | None, docs: Documents) -> tuple[Target, ...]:
    from gpudra.devtools.explain_inputs import node_targets, profile_slices
    from gpudra.devtools.explain_model import Target

    if args.profile is not None:
        dynamic, fractional = args.mig_management == "dynamic", args.fractional_gpus == "on"
        slices, warnings = profile_slices(args.profile, PROFILE_NODE, dynamic=dynamic, fractional=fractional)
        shown = (
            f"profile {args.profile}, --mig-management {args.mig_management}, "
            f"--fractional-gpus {args.fractional_gpus}"
        )
        return (Target(PROFILE_NODE, shown, (*slices, *docs.slices), tuple(warnings)),)
    if cluster is not None and (args.node or args.all_nodes):
        slices = [*cluster.slices(), *docs.slices]
        return node_targets(slices, [args.node] if args.node else None, "cluster")
    if docs.slices:
        return node_targets(docs.slices, None, "slices from files")
    raise _Usage(
        "no devices to explain against",
        "pass --node NAME, --all-nodes, --profile NAME, or ResourceSlices with -f",
    )


def _claims(args: argparse.Namespace, cluster: Cluster | None, docs: Documents) -> list[ClaimInput]:
    out: list[ClaimInput] = []
    for ref in args.claims:
        assert cluster is not None  # a CLAIM opens the cluster
        namespace, _, name = ref.rpartition("/")
        if not name or "/" in namespace:
            raise _Usage(f"CLAIM {ref!r} is not namespace/name", "name a claim as namespace/name")
        out.append(cluster.claim(namespace or args.namespace or cluster.namespace, name))
    out.extend(docs.claims)
    if not out:
        raise _Usage(
            "nothing to explain",
            "name a claim (namespace/name) or pass -f FILE with a ResourceClaim or ResourceClaimTemplate",
        )
    return out


def _run(args: argparse.Namespace) -> int:
    from gpudra.devtools.explain_cluster import Cluster
    from gpudra.devtools.explain_eval import explain_claims
    from gpudra.devtools.explain_inputs import load_documents
    from gpudra.devtools.explain_json import overall, render_json
    from gpudra.devtools.explain_model import Verdict
    from gpudra.devtools.explain_text import render_text

    docs = load_documents(args.filename, args.namespace or "default")
    cluster = Cluster(args.kubeconfig) if args.claims or args.node or args.all_nodes else None
    try:
        claims = _claims(args, cluster, docs)
        classes = _classes(args, cluster, docs)
        targets = _targets(args, cluster, docs)
        held: list[Held] = list(docs.held)
        if cluster is not None and (args.node or args.all_nodes):
            held.extend(cluster.allocated())
    finally:
        if cluster is not None:
            cluster.close()
    reports = explain_claims(claims, classes, targets, held)
    if args.output == "json":
        print(render_json(reports))
    else:
        print(render_text(reports, all_devices=args.all_devices), end="")
    return 0 if overall(reports) is Verdict.ALLOCATABLE else EXIT_PENDING


def main(argv: Sequence[str] | None = None, prog: str = "gpudra-dev explain") -> int:
    """Run the command; every failure to explain is one line on stderr and exit 2."""
    try:
        import celpy  # noqa: F401  (the CEL evaluator comes with gpudra[devtools])
    except ImportError:
        logs.fatal("explain needs the development tools (the CEL evaluator is not installed)", INSTALL_FIX)
        return EXIT_USAGE
    from gpudra.devtools.explain_inputs import InputError
    from gpudra.kube.errors import KubeError

    try:
        args = parser(prog).parse_args(sys.argv[1:] if argv is None else list(argv))
        return _run(args)
    except _Usage as err:
        logs.fatal(f"explain: {err.what}", err.fix)
    except InputError as err:
        logs.fatal(f"explain: {err}", "check the file, folder or profile named")
    except KubeError as err:
        logs.fatal(f"explain: {err}", "check --kubeconfig and that the cluster answers")
    return EXIT_USAGE
