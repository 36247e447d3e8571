"""The deployment manifests: daemonset/ (rendered per overlay), the DeviceClasses, the example claims and
hack/Dockerfile. Every object must deserialise into the official Kubernetes models without losing a field,
and carry what a real DRA driver deployment needs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from gpudra import cli
from gpudra.model import names
from tests.unit.kustomize_subset import containers, identity, load_documents, render

ROOT = Path(__file__).resolve().parents[2]
DAEMONSET = ROOT / "daemonset"
OVERLAYS = ("mock", "nvidia", "amd")
EXAMPLES = ROOT / "deviceclasses" / "examples"
SCENARIOS = {
    "one-gpu",
    "gpu-40gi-any-vendor",
    "mig-slice-by-profile",
    "two-mig-slices-one-parent",
    "four-gpus-one-nvlink-domain",
    "shared-claim-two-pods",
    "amd-partition",
}
NAMESPACE = "gpudra-system"

#: (apiVersion, kind) -> model of the official client.
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ResourceQuota"): "V1ResourceQuota",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Pod"): "V1Pod",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy"): "V1ValidatingAdmissionPolicy",
    (
        "admissionregistration.k8s.io/v1",
        "ValidatingAdmissionPolicyBinding",
    ): "V1ValidatingAdmissionPolicyBinding",
    ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
    ("apps/v1", "DaemonSet"): "V1DaemonSet",
    ("resource.k8s.io/v1", "DeviceClass"): "V1DeviceClass",
    ("resource.k8s.io/v1", "ResourceClaim"): "ResourceV1ResourceClaim",
    ("resource.k8s.io/v1", "ResourceClaimTemplate"): "V1ResourceClaimTemplate",
}


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> tuple[str, dict[str, dict[str, Any]]]:
    """(overlay name, rendered objects by kind; each kind appears once)."""
    objs = render(DAEMONSET / "overlays" / request.param)
    by_kind = {o["kind"]: o for o in objs}
    assert len(by_kind) == len(objs)
    return request.param, by_kind


def _all_manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for name in OVERLAYS:
        for obj in render(DAEMONSET / "overlays" / name):
            yield f"overlay {name}", obj
    for path in sorted((ROOT / "deviceclasses").glob("*.gpudra.io.yaml")):
        for obj in load_documents(path):
            yield str(path.relative_to(ROOT)), obj
    for path in sorted(EXAMPLES.glob("*/*.yaml")):
        for obj in load_documents(path):
            yield str(path.relative_to(ROOT)), obj


def test_every_manifest_round_trips_through_the_official_models() -> None:
    """The client's models drop unknown fields silently, so a lossless round trip is the strict check."""
    api = kubernetes.client.ApiClient()
    # the client leaves this method unannotated; it turns a model back into plain JSON values
    to_json: Callable[[object], object] = api.sanitize_for_serialization
    seen = 0
    for where, obj in _all_manifests():
        model = MODELS[(obj["apiVersion"], obj["kind"])]
        parsed = api.deserialize(json.dumps(obj), model, "application/json")
        assert to_json(parsed) == obj, (
            f"{where}: {identity(obj)} loses or changes fields"
        )
        seen += 1
    assert seen >= 3 * 9 + 7 * 2  # 9 objects per overlay, a claim and a pod per example at least


def _kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.skip("kubectl is not installed; the renderer is checked against kustomize where it is")
    return path


@pytest.mark.parametrize("name", OVERLAYS)
def test_renderer_agrees_with_kubectl_kustomize(name: str) -> None:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(DAEMONSET / "overlays" / name)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    theirs = {identity(o): o for o in yaml.safe_load_all(out) if o}
    mine = {identity(o): o for o in render(DAEMONSET / "overlays" / name)}
    assert mine == theirs


# ---- RBAC, admission policy, namespace ----------------------------------------------------------------


def test_cluster_role_is_exactly_the_least_privilege_list(overlay: tuple[str, dict[str, Any]]) -> None:
    rules = overlay[1]["ClusterRole"]["rules"]
    granted = {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("resource.k8s.io", "resourceclaims", "get"),
        *{
            ("resource.k8s.io", "resourceslices", v)
            for v in ("get", "list", "watch", "create", "update", "delete")
        },
        ("", "nodes", "get"),
        ("", "events", "create"),
    }
    assert all(
        set(rule) == {"apiGroups", "resources", "verbs"} for rule in rules
    )  # no resourceNames, no URLs


def test_binding_names_the_plugin_service_account(overlay: tuple[str, dict[str, Any]]) -> None:
    objs = overlay[1]
    sa, binding, ds = objs["ServiceAccount"], objs["ClusterRoleBinding"], objs["DaemonSet"]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": objs["ClusterRole"]["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
    ]
    assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    namespaced = [o for o in objs.values() if "namespace" in o.get("metadata", {})]
    assert {o["metadata"]["namespace"] for o in namespaced} == {objs["Namespace"]["metadata"]["name"]}
    assert objs["Namespace"]["metadata"]["name"] == NAMESPACE


def test_admission_policy_limits_the_plugin_to_its_own_node(overlay: tuple[str, dict[str, Any]]) -> None:
    objs = overlay[1]
    policy, binding, sa = (
        objs["ValidatingAdmissionPolicy"],
        objs["ValidatingAdmissionPolicyBinding"],
        objs["ServiceAccount"],
    )
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["resource.k8s.io"]
    assert rule["resources"] == ["resourceslices"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE", "DELETE"}
    user = f"system:serviceaccount:{sa['metadata']['namespace']}:{sa['metadata']['name']}"
    [condition] = spec["matchConditions"]
    assert condition["expression"].strip() == f"request.userInfo.username == '{user}'"
    variables = {v["name"]: v["expression"] for v in spec["variables"]}
    assert "request.userInfo.extra['authentication.kubernetes.io/node-name'][0]" in variables["userNodeName"]
    assert "object.spec.nodeName" in variables["objectNodeName"]
    assert "oldObject.spec.nodeName" in variables["oldObjectNodeName"]
    checks = " ".join(v["expression"] for v in spec["validations"])
    for needed in ("variables.objectNodeName == variables.userNodeName", "variables.oldObjectNodeName =="):
        assert needed in checks
    assert binding["spec"] == {"policyName": policy["metadata"]["name"], "validationActions": ["Deny"]}


def test_critical_priority_is_permitted_by_a_quota(overlay: tuple[str, dict[str, Any]]) -> None:
    objs = overlay[1]
    pod = objs["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "system-node-critical"
    quota = objs["ResourceQuota"]
    assert quota["metadata"]["namespace"] == objs["DaemonSet"]["metadata"]["namespace"] != "kube-system"
    assert quota["spec"]["scopeSelector"]["matchExpressions"] == [
        {"scopeName": "PriorityClass", "operator": "In", "values": ["system-node-critical"]}
    ]
    assert int(quota["spec"]["hard"]["pods"]) >= 5000  # never the reason a node has no plugin


# ---- the DaemonSet ------------------------------------------------------------------------------------


def _plugin(ds: dict[str, Any]) -> dict[str, Any]:
    [container] = containers(ds)
    return container


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_rolling_update_overlaps_old_and_new_pods(overlay: tuple[str, dict[str, Any]]) -> None:
    ds = overlay[1]["DaemonSet"]
    assert ds["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = _env(_plugin(ds))
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["GPUDRA_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}  # per-pod socket names
    assert not ds["spec"]["template"]["spec"].get("hostNetwork", False)  # two pods, two probe ports


def test_probes_speak_grpc_health_on_the_probe_port(overlay: tuple[str, dict[str, Any]]) -> None:
    c = _plugin(overlay[1]["DaemonSet"])
    port = int(_env(c)["GPUDRA_PROBE_PORT"])
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"]["port"] == port, probe
        assert c[probe]["timeoutSeconds"] >= 2  # a Check makes two calls of 1 s deadline each
    assert c["readinessProbe"]["grpc"]["service"] == "readiness"
    assert c["livenessProbe"]["grpc"].get("service", "") == ""
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 180  # slow discovery
    assert {p["containerPort"] for p in c["ports"]} == {port, int(_env(c)["GPUDRA_METRICS_PORT"])}
    [rule] = overlay[1]["NetworkPolicy"]["spec"]["ingress"]
    assert {p["port"] for p in rule["ports"]} == {p["containerPort"] for p in c["ports"]}


def test_resources_are_bounded(overlay: tuple[str, dict[str, Any]]) -> None:
    res = _plugin(overlay[1]["DaemonSet"])["resources"]
    assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}
    mib = {"Mi": 1, "Gi": 1024}
    memory = {k: int(v["memory"][:-2]) * mib[v["memory"][-2:]] for k, v in res.items()}
    assert 64 <= memory["requests"] <= memory["limits"]  # measured VmHWM: 62 MiB with 8 mock GPUs


def _mounts(ds: dict[str, Any]) -> dict[str, tuple[str, dict[str, Any], bool]]:
    """volume name -> (mountPath, volume source, readOnly)."""
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    return {
        m["name"]: (m["mountPath"], volumes[m["name"]], m.get("readOnly", False))
        for m in _plugin(ds)["volumeMounts"]
    }


def test_host_directories_are_mounted_where_the_plugin_looks(overlay: tuple[str, dict[str, Any]]) -> None:
    name, objs = overlay
    ds = objs["DaemonSet"]
    env = _env(_plugin(ds))
    mounts = _mounts(ds)
    by_path = {path: (vol.get("hostPath", {}).get("path"), ro) for path, vol, ro in mounts.values()}
    plugin_dir = f"{env['GPUDRA_PLUGINS_DIR']}/{names.DRIVER_NAME}"
    # Same path inside and outside: sockets, CDI specs and claim files are reported by these paths.
    for path in (plugin_dir, env["GPUDRA_REGISTRY_DIR"], env["GPUDRA_CDI_ROOT"]):
        assert by_path[path] == (path, False), path
    assert by_path[env["GPUDRA_SYSFS_ROOT"]] == ("/sys", True)
    assert by_path["/tmp"][0] is None  # emptyDir under a read-only root filesystem
    if name == "mock":
        assert "/driver-root" not in by_path
    else:
        assert by_path["/driver-root"] == ("/", True)
        assert mounts["driver-root"][0] == "/driver-root"


def test_only_hardware_backends_are_privileged(overlay: tuple[str, dict[str, Any]]) -> None:
    name, objs = overlay
    c = _plugin(objs["DaemonSet"])
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert objs["DaemonSet"]["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
        "type": "RuntimeDefault"
    }
    if name == "mock":
        assert sc["privileged"] is False
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
    else:
        assert sc["privileged"] is True
        assert "capabilities" not in sc
    expected_backend = {"mock": "mock", "nvidia": "nvml", "amd": "amd"}[name]
    assert _env(c)["GPUDRA_BACKEND"] == expected_backend


NFD = re.compile(r"^feature\.node\.kubernetes\.io/pci-(?P<cls>[0-9a-f]{4})_(?P<vendor>[0-9a-f]{4})\.present$")


def test_nodes_are_chosen_by_default_nfd_labels(overlay: tuple[str, dict[str, Any]]) -> None:
    name, objs = overlay
    pod = objs["DaemonSet"]["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    keys = set()
    for term in terms:
        [expr] = term["matchExpressions"]
        assert (expr["operator"], expr["values"]) == ("In", ["true"])
        keys.add(expr["key"])
    if name == "mock":
        assert keys == {"gpudra.io/mock-gpus"}
        return
    found = {(m["cls"], m["vendor"]) for m in (NFD.match(k) for k in keys) if m}
    assert len(found) == len(keys)
    expected = {
        "nvidia": {("0302", "10de"), ("0300", "10de")},
        "amd": {("1200", "1002"), ("0380", "1002"), ("0300", "1002")},
    }[name]
    assert found == expected
    taint = {"nvidia": "nvidia.com/gpu", "amd": "amd.com/gpu"}[name]
    assert {"key": taint, "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]


#: What the downward API gives, by field (a pod's UID, a node name and a pod IP of the right shapes).
DOWNWARD = {
    "spec.nodeName": "node-a",
    "metadata.uid": "0b3c5d1e-7f2a-4c6b-9e8d-1a2b3c4d5e6f",
    "status.podIP": "10.1.2.3",
}


def test_cli_reads_the_daemonset_environment(
    overlay: tuple[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The env twins the DaemonSet sets are those ``gpudra run`` reads, and each passes its validator."""
    c = _plugin(overlay[1]["DaemonSet"])
    for key in list(os.environ):
        if key.startswith("GPUDRA_"):
            monkeypatch.delenv(key)
    for key, value in _env(c).items():
        monkeypatch.setenv(key, value if isinstance(value, str) else DOWNWARD[value["fieldRef"]["fieldPath"]])
    args = cli.parse_args(c["args"])
    env = _env(c)
    assert args.command == "run"
    assert args.node_name == "node-a"
    assert args.backend == env["GPUDRA_BACKEND"]
    assert args.pod_uid == DOWNWARD["metadata.uid"]
    assert (args.probe_port, args.metrics_port) == (
        int(env["GPUDRA_PROBE_PORT"]),
        int(env["GPUDRA_METRICS_PORT"]),
    )
    # Both listen on the pod IP: where the kubelet's gRPC probe connects, and where Prometheus scrapes.
    assert (
        env["GPUDRA_PROBE_ADDRESS"]
        == env["GPUDRA_METRICS_ADDRESS"]
        == {"fieldRef": {"fieldPath": "status.podIP"}}
    )
    assert args.probe_address == args.metrics_address == "10.1.2.3"
    assert str(args.plugins_dir) == env["GPUDRA_PLUGINS_DIR"]
    assert str(args.cdi_root) == env["GPUDRA_CDI_ROOT"]
    assert str(args.sysfs_root) == env["GPUDRA_SYSFS_ROOT"]
    assert args.log_format == env["GPUDRA_LOG_FORMAT"]


def test_image_is_the_package_version(overlay: tuple[str, dict[str, Any]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert _plugin(overlay[1]["DaemonSet"])["image"] == f"gpudra:{version}"


def test_dockerfile_installs_the_wheel_as_non_root() -> None:
    text = (ROOT / "hack" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases
    assert all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", b) for b in bases)
    assert "ARG VERSION" in text
    assert "pip wheel" in text
    assert "gpudra-*.whl" in text
    [user] = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert not user.startswith("0")
    assert user.split(":")[0].isdigit()


# ---- checkov -------------------------------------------------------------------------------------------


def _checkov() -> str:
    path = os.environ.get("CHECKOV") or shutil.which("checkov")
    if not path:
        pytest.skip("checkov is not installed (set CHECKOV=/path/to/checkov to run this check)")
    return path


def test_checkov_finds_nothing_unexplained(tmp_path: Path) -> None:
    checkov = _checkov()
    for name in OVERLAYS:
        docs = render(DAEMONSET / "overlays" / name)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    runs = (
        ["-d", str(tmp_path), "--config-file", str(DAEMONSET / ".checkov.yaml")],
        ["-f", str(ROOT / "hack" / "Dockerfile"), "--framework", "dockerfile", "--skip-download"],
    )
    for extra in runs:
        done = subprocess.run(
            [checkov, *extra, "--output", "json", "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,  # the report says what failed
        )
        reports = json.loads(done.stdout)
        for report in reports if isinstance(reports, list) else [reports]:
            summary = report["summary"]
            assert summary["failed"] == 0, done.stdout[:4000]
            assert summary["parsing_errors"] == 0, done.stdout[:4000]
            assert summary["passed"] > 40
            for skipped in report.get("results", {}).get("skipped_checks", []):
                assert len(skipped["check_result"].get("suppress_comment", "")) > 20, skipped["check_id"]
    skips = yaml.safe_load((DAEMONSET / ".checkov.yaml").read_text())["skip-check"]
    text = (DAEMONSET / ".checkov.yaml").read_text()
    for check in skips:  # every config-level skip has a comment naming it and saying why
        assert re.search(rf"^  # {check} \"", text, re.MULTILINE) or f'and {check} "' in text, check
