"""The test-side kustomize renderer (tests/unit/kustomize_subset.py) on a kustomization that uses every
feature of its subset; where kubectl is installed, its output must equal ``kubectl kustomize``."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.kustomize_subset import Unsupported, containers, identity, render

BASE = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds, namespace: ns, labels: {a: "1"}}
spec:
  selector: {matchLabels: {app: x}}
  template:
    metadata: {labels: {app: x}}
    spec:
      tolerations: [{key: t1, operator: Exists}]
      containers:
      - name: c
        image: example.org/team/app:1.0
        env: [{name: A, value: a}, {name: B, value: b}, {name: C, value: c}]
        securityContext: {privileged: false, capabilities: {drop: [ALL]}}
        volumeMounts: [{name: v1, mountPath: /v1}]
      volumes: [{name: v1, emptyDir: {}}]
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: ns}
"""

STRATEGIC = """
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: ds, namespace: ns}
spec:
  template:
    spec:
      tolerations: [{key: t2, operator: Exists}]
      containers:
      - name: c
        env: [{name: B, value: patched}, {name: D, value: d}]
        securityContext: {privileged: true, capabilities: null}
        volumeMounts: [{name: v2, mountPath: /v2, readOnly: true}]
      volumes: [{name: v2, hostPath: {path: /v2}}]
"""

JSON6902 = """
- {op: add, path: /spec/template/spec/containers/0/args, value: [run]}
- {op: replace, path: /spec/template/spec/containers/0/env/0/value, value: replaced}
- {op: remove, path: /spec/template/spec/containers/0/env/2}
- {op: add, path: /metadata/labels/b~1c, value: "2"}
"""

KUSTOMIZATION = """
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [base.yaml]
patches:
- path: strategic.yaml
- path: json6902.yaml
  target: {kind: DaemonSet, name: ds}
images:
- {name: example.org/team/app, newName: registry.example/app, newTag: "2.0"}
labels:
- pairs: {part-of: demo}
  includeSelectors: false
  includeTemplates: true
"""


@pytest.fixture
def kustomization(tmp_path: Path) -> Path:
    for name, text in {
        "base.yaml": BASE,
        "strategic.yaml": STRATEGIC,
        "json6902.yaml": JSON6902,
        "kustomization.yaml": KUSTOMIZATION,
    }.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    return tmp_path


def _by_kind(objs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in objs}


def test_every_supported_feature(kustomization: Path) -> None:
    objs = _by_kind(render(kustomization))
    ds, sa = objs["DaemonSet"], objs["ServiceAccount"]
    [c] = containers(ds)
    pod = ds["spec"]["template"]["spec"]
    # strategic merge: env merged by name (patch items first), the rest of the list after; null deletes;
    # lists without a merge key (tolerations) are replaced; volumes and mounts merge by their keys.
    # then JSON 6902 replaces env[0]'s value and removes env[2] (A) from [B, D, A, C]
    assert c["env"] == [
        {"name": "B", "value": "replaced"},
        {"name": "D", "value": "d"},
        {"name": "C", "value": "c"},
    ]
    assert c["securityContext"] == {"privileged": True}
    assert pod["tolerations"] == [{"key": "t2", "operator": "Exists"}]
    assert [m["mountPath"] for m in c["volumeMounts"]] == ["/v2", "/v1"]
    assert [v["name"] for v in pod["volumes"]] == ["v2", "v1"]
    # JSON 6902 after the strategic patch, in order, with "~1" for "/"
    assert c["args"] == ["run"]
    assert ds["metadata"]["labels"] == {"a": "1", "b/c": "2", "part-of": "demo"}
    # images and labels
    assert c["image"] == "registry.example/app:2.0"
    assert ds["spec"]["template"]["metadata"]["labels"] == {"app": "x", "part-of": "demo"}
    assert ds["spec"]["selector"] == {"matchLabels": {"app": "x"}}
    assert sa["metadata"]["labels"] == {"part-of": "demo"}


def test_matches_kubectl_kustomize(kustomization: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(kustomization)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert {identity(o): o for o in render(kustomization)} == {
        identity(o): o for o in yaml.safe_load_all(out)
    }


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("namespace", "other"),
        ("configMapGenerator", [{"name": "x", "literals": ["a=b"]}]),
        ("labels", [{"pairs": {"a": "b"}, "includeSelectors": True}]),
        ("patches", [{"patch": "- {op: move, from: /a, path: /b}", "target": {"kind": "ServiceAccount"}}]),
        ("patches", [{"patch": "- {op: add, path: /a, value: 1}"}]),
        ("patches", [{"patch": "{apiVersion: v1, kind: ServiceAccount, metadata: {name: nope}}"}]),
        (
            "patches",
            [{"patch": "{apiVersion: v1, kind: ServiceAccount, metadata: {name: sa}, $patch: delete}"}],
        ),
    ],
)
def test_anything_outside_the_subset_is_refused(kustomization: Path, key: str, value: object) -> None:
    k = yaml.safe_load((kustomization / "kustomization.yaml").read_text())
    k[key] = value
    (kustomization / "kustomization.yaml").write_text(yaml.safe_dump(k))
    with pytest.raises(Unsupported):
        render(kustomization)
