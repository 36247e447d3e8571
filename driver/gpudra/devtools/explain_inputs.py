"""What ``gpudra explain`` reads without a cluster: files of Kubernetes objects, DeviceClass folders, and
the slices a mock profile publishes.

A file (``-`` is stdin) holds YAML or JSON documents, several per file, ``kind: List`` items too. By kind:
``ResourceClaim`` and ``ResourceClaimTemplate`` are the claims to explain (a template's claim spec becomes
a claim named after the template; a claim that already has ``status.allocation`` holds its devices
instead), ``DeviceClass`` adds a class, ``ResourceSlice`` adds devices; other kinds (Pods, ...) are
skipped. ``resource.k8s.io/v1beta1`` requests (fields directly in the request) are read as ``v1``
(``exactly``). A profile's slices are what the driver would publish for it (mock backend, discovery, the
planning code), under the MIG and fractional-GPU policies given.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from gpudra.devtools.allocator_pools import JSON
from gpudra.devtools.explain_model import ClaimInput, Held, Target

__all__ = [
    "Documents",
    "InputError",
    "claim_input",
    "default_classes_dir",
    "load_classes",
    "load_documents",
    "node_targets",
    "profile_slices",
]

CLAIM: Final = "ResourceClaim"
TEMPLATE: Final = "ResourceClaimTemplate"
#: v1beta1 request fields that v1 moved under ``exactly``
_EXACTLY_FIELDS: Final = (
    "deviceClassName", "selectors", "allocationMode", "count", "adminAccess", "tolerations", "capacity",
)  # fmt: skip


class InputError(Exception):
    """A file, folder or profile that cannot be read; str() names it and why."""


@dataclass(frozen=True, slots=True)
class Documents:
    claims: tuple[ClaimInput, ...] = ()
    classes: tuple[JSON, ...] = ()
    slices: tuple[JSON, ...] = ()
    held: tuple[Held, ...] = ()


def _v1_request(request: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(request)
    if "exactly" in out or "firstAvailable" in out:
        return out
    exactly = {k: out.pop(k) for k in _EXACTLY_FIELDS if k in out}
    return {**out, "exactly": exactly}


def _v1_spec(spec: Mapping[str, Any], api_version: str) -> dict[str, Any]:
    out = dict(spec)
    devices = dict(out.get("devices") or {})
    if api_version.endswith("/v1beta1") and devices.get("requests"):
        devices["requests"] = [_v1_request(r) for r in devices["requests"]]
        out["devices"] = devices
    return out


def claim_input(doc: Mapping[str, Any], source: str, namespace: str = "default") -> ClaimInput:
    """A ResourceClaim or ResourceClaimTemplate as the claim to explain."""
    meta = dict(doc.get("metadata") or {})
    meta.setdefault("namespace", namespace)
    api_version = str(doc.get("apiVersion", "resource.k8s.io/v1"))
    kind = str(doc.get("kind", CLAIM))
    if kind == TEMPLATE:
        spec = (doc.get("spec") or {}).get("spec") or {}
        meta = {"name": meta.get("name", ""), "namespace": meta["namespace"]}
    else:
        spec = doc.get("spec") or {}
    claim: dict[str, Any] = {"apiVersion": "resource.k8s.io/v1", "kind": CLAIM, "metadata": meta}
    claim["spec"] = _v1_spec(spec, api_version)
    return ClaimInput(claim, kind, source)


def _flatten(docs: Iterable[Any]) -> Iterator[Mapping[str, Any]]:
    for doc in docs:
        if not isinstance(doc, Mapping):
            continue
        if str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            yield from _flatten(doc["items"])
        else:
            yield doc


def _read(path: str) -> list[Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
        return list(yaml.safe_load_all(text))
    except OSError as err:
        raise InputError(f"{path}: {err.strerror or err}") from err
    except yaml.YAMLError as err:
        raise InputError(f"{path}: not YAML or JSON: {' '.join(str(err).split())}") from err


def load_documents(paths: Sequence[str], namespace: str = "default") -> Documents:
    """Claims, classes, slices and allocated claims from ``paths``, in order."""
    claims: list[ClaimInput] = []
    classes: list[JSON] = []
    slices: list[JSON] = []
    held: list[Held] = []
    for path in paths:
        for number, doc in enumerate(_flatten(_read(path)), start=1):
            kind = doc.get("kind")
            if kind in (CLAIM, TEMPLATE):
                item = claim_input(doc, f"{path} (document {number})", namespace)
                allocation = (doc.get("status") or {}).get("allocation") if kind == CLAIM else None
                if allocation:
                    held.append(Held(item.label, allocation, item.uid))
                else:
                    claims.append(item)
            elif kind == "DeviceClass":
                classes.append(doc)
            elif kind == "ResourceSlice":
                slices.append(doc)
    return Documents(tuple(claims), tuple(classes), tuple(slices), tuple(held))


def default_classes_dir() -> Path | None:
    """The repository's ``deviceclasses/`` (a source checkout), else ``./deviceclasses``, else None."""
    here = Path(__file__).resolve().parents[3] / "deviceclasses"
    for candidate in (here, Path.cwd() / "deviceclasses"):
        if candidate.is_dir():
            return candidate
    return None


def load_classes(directory: Path) -> tuple[JSON, ...]:
    """The DeviceClasses of the YAML/JSON files directly in ``directory``."""
    if not directory.is_dir():
        raise InputError(f"{directory}: not a directory of DeviceClass files")
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml", ".json"))
    docs = [doc for path in files for doc in _flatten(_read(str(path)))]
    classes = [doc for doc in docs if doc.get("kind") == "DeviceClass"]
    if not classes:
        raise InputError(f"{directory}: no DeviceClass in its .yaml/.yml/.json files")
    return tuple(classes)


def profile_slices(
    profile: str, node: str, *, dynamic: bool, fractional: bool
) -> tuple[list[JSON], list[str]]:
    """The ResourceSlices the driver publishes for mock ``profile`` on node ``node``, and the planner's
    warnings."""
    from gpudra.planning.offer import plan_offer
    from gpudra.planning.partitions import MigPolicy
    from gpudra.planning.slices import plan_slices
    from gpudra.vendors.base import DiscoveryError
    from gpudra.vendors.select import open_driver

    try:
        backend = open_driver("mock", profile, Path("/sys"))
        try:
            inventory = backend.discover()
        finally:
            backend.close()
    except (DiscoveryError, OSError, ValueError) as err:
        raise InputError(f"--profile {profile}: {err}") from err
    offer = plan_offer(inventory, policy=MigPolicy(dynamic=dynamic, fractional=fractional))
    slices: list[JSON] = [dict(s) for s in plan_slices(offer, node, None, 1)]
    return slices, list(offer.warnings)


def node_targets(
    slices: Sequence[JSON], nodes: Sequence[str] | None, devices_from: str
) -> tuple[Target, ...]:
    """One target per node of ``nodes`` (None: every node the slices name) over ``slices``; slices that
    select nodes by label (``nodeSelector``, ``perDeviceNodeSelection``) are left out with a warning."""
    usable: list[JSON] = []
    warnings: list[str] = []
    for s in slices:
        spec = s.get("spec") or {}
        if spec.get("nodeSelector") is not None or spec.get("perDeviceNodeSelection"):
            name = (s.get("metadata") or {}).get("name", "?")
            warnings.append(f"ResourceSlice {name}: selects nodes by label (not modelled); skipped")
        else:
            usable.append(s)
    named = sorted({str(s["spec"]["nodeName"]) for s in usable if (s.get("spec") or {}).get("nodeName")})
    chosen: list[str | None] = list(nodes) if nodes is not None else list(named) or [None]
    out: list[Target] = []
    for node in chosen:
        missing = [f"no ResourceSlice names node {node}"] if node is not None and node not in named else []
        out.append(Target(node, devices_from, tuple(usable), (*warnings, *missing)))
    return tuple(out)
