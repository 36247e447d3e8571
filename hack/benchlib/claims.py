"""Allocated ResourceClaims as the scheduler leaves them, and the checks every answer must pass.

Claims are created over HTTP the way the control plane does it: the claim (as the resourceclaim controller
writes it for a pod) with POST, then its allocation and reservation through ``/status`` (the scheduler).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchlib.procs import Http
from gpudra.devtools import kubeletsim
from gpudra.model import names

NAMESPACE = "bench"
CLAIMS = f"/apis/resource.k8s.io/v1/namespaces/{NAMESPACE}/resourceclaims"
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass(frozen=True, slots=True)
class BenchClaim:
    claim: kubeletsim.Claim
    device: str  # the device the scheduler allocated (one per claim)


def _claim_object(name: str, pod: str, pod_uid: str, device_class: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "annotations": {"resource.kubernetes.io/pod-claim-name": "gpu"},
            "finalizers": ["resource.kubernetes.io/delete-protection"],
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod,
                    "uid": pod_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "devices": {
                "requests": [
                    {
                        "name": "gpu",
                        "exactly": {
                            "deviceClassName": device_class,
                            "allocationMode": "ExactCount",
                            "count": 1,
                        },
                    }
                ]
            }
        },
    }


def _allocation(node: str, device: str, pod: str, pod_uid: str) -> dict[str, Any]:
    selector = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [node]}]}
    return {
        "allocation": {
            "devices": {
                "results": [{"request": "gpu", "driver": names.DRIVER_NAME, "pool": node, "device": device}]
            },
            "nodeSelector": {"nodeSelectorTerms": [selector]},
        },
        "reservedFor": [{"resource": "pods", "name": pod, "uid": pod_uid}],
    }


def allocate(
    api: Http, name: str, node: str, device: str, *, device_class: str = names.CLASS_GPU
) -> BenchClaim:
    """Create a claim for one device of ``device_class`` (one GPU by default) and allocate ``device`` on
    ``node`` to it (POST, then PUT /status)."""
    pod, pod_uid = f"{name}-pod", str(uuid.uuid4())
    created = api.call("POST", CLAIMS, _claim_object(name, pod, pod_uid, device_class))
    created["status"] = _allocation(node, device, pod, pod_uid)
    stored = api.call("PUT", f"{CLAIMS}/{name}/status", created)
    return BenchClaim(kubeletsim.Claim(NAMESPACE, name, stored["metadata"]["uid"]), device)


def slice_devices(slices: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted(d["name"] for s in slices for d in s["spec"].get("devices", []))


@dataclass
class Validation:
    """Every check made on the plugin's answers and on disk; ``failures`` keeps the first few."""

    checks: int = 0
    failures: list[str] = field(default_factory=list)
    failed: int = 0

    def expect(self, ok: bool, what: str) -> None:
        self.checks += 1
        if not ok:
            self.failed += 1
            if len(self.failures) < 20:
                self.failures.append(what)

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.failed == 0 and self.checks > 0,
            "checks": self.checks,
            "failed": self.failed,
            "failures": self.failures,
        }


def cdi_devices_on_disk(cdi_root: Path) -> dict[str, Path]:
    """Every fully qualified CDI device id (``kind=name``) that a spec file under ``cdi_root`` defines."""
    defined: dict[str, Path] = {}
    for path in sorted(cdi_root.glob("*.yaml")) if cdi_root.is_dir() else []:
        spec = yaml.load(path.read_text(), Loader=_Loader)
        for dev in spec.get("devices") or []:
            defined[f"{spec.get('kind')}={dev.get('name')}"] = path
    return defined


def check_prepared(
    v: Validation, answers: Mapping[str, Any], claims: Sequence[BenchClaim], node: str
) -> None:
    """The answer for each claim: no error, exactly its allocated device, from our pool, for its request."""
    for bc in claims:
        uid = bc.claim.uid
        got = answers.get(uid)
        v.expect(got is not None, f"prepare: no answer for claim {uid}")
        if got is None:
            continue
        v.expect(got.error == "", f"prepare {uid}: error {got.error!r}")
        devices = list(got.devices)
        v.expect(len(devices) == 1, f"prepare {uid}: {len(devices)} devices, want 1")
        for d in devices:
            v.expect(d.device_name == bc.device, f"prepare {uid}: device {d.device_name}, want {bc.device}")
            v.expect(d.pool_name == node, f"prepare {uid}: pool {d.pool_name}, want {node}")
            v.expect(list(d.request_names) == ["gpu"], f"prepare {uid}: requests {list(d.request_names)}")
            v.expect(len(d.cdi_device_ids) >= 1, f"prepare {uid}: no CDI device id")


def check_specs(
    v: Validation, answers: Mapping[str, Any], claims: Sequence[BenchClaim], cdi_root: Path
) -> None:
    """Every CDI id returned is defined by a spec file on disk that belongs to that claim."""
    defined = cdi_devices_on_disk(cdi_root)
    for bc in claims:
        got = answers.get(bc.claim.uid)
        for d in got.devices if got is not None else []:
            for cdi_id in d.cdi_device_ids:
                path = defined.get(cdi_id)
                v.expect(path is not None, f"CDI id {cdi_id} is defined by no spec file in {cdi_root}")
                v.expect(path is None or bc.claim.uid in path.name, f"CDI id {cdi_id} is in {path}")


def check_unprepared(
    v: Validation, answers: Mapping[str, Any], claims: Sequence[BenchClaim], cdi_root: Path
) -> None:
    """No error for any claim, and no spec file left behind."""
    for bc in claims:
        got = answers.get(bc.claim.uid)
        v.expect(got is not None and got.error == "", f"unprepare {bc.claim.uid}: {got}")
    left = sorted(p.name for p in cdi_root.glob("*")) if cdi_root.is_dir() else []
    v.expect(not left, f"unprepare: files left in the CDI dir: {left[:5]}")
