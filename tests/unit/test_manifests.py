"""The deployment manifests as `kubectl apply -k daemonset/overlays/<name>` sends them (rendered by the real
kustomize), the DeviceClasses, the example claims and hack/Dockerfile. Every object is valid, unknown fields
included, for each supported Kubernetes version (kubernetes-validate), deserialises into the official models
without losing a field, and carries what a real DRA driver deployment needs. The chart the overlays are
generated from is tested in test_helm_chart.py."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes.client
import pytest

from gpudra import cli
from gpudra.model import names
from tests.unit.manifest_tools import (
    DAEMONSET,
    ROOT,
    containers,
    identity,
    kustomize,
    load_documents,
    validate,
)

Obj = dict[str, Any]
OVERLAYS = {
    "mock": {"gpudra-mock"},
    "nvidia": {"gpudra-nvidia"},
    "amd": {"gpudra-amd"},
    "mixed": {"gpudra-nvidia", "gpudra-amd"},
}
BACKENDS = {"gpudra-mock": "mock", "gpudra-nvidia": "nvml", "gpudra-amd": "amd"}
EXAMPLES = ROOT / "deviceclasses" / "examples"
CLASS_FILES = sorted((ROOT / "deviceclasses").glob("*.yaml"))
NAMESPACE = "gpudra-system"

#: (apiVersion, kind) -> model of the official client.
MODELS = {
    ("v1", "Namespace"): "V1Namespace",
    ("v1", "ResourceQuota"): "V1ResourceQuota",
    ("v1", "ServiceAccount"): "V1ServiceAccount",
    ("v1", "Pod"): "V1Pod",
    ("rbac.authorization.k8s.io/v1", "ClusterRole"): "V1ClusterRole",
    ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): "V1ClusterRoleBinding",
    ("rbac.authorization.k8s.io/v1", "Role"): "V1Role",
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): "V1RoleBinding",
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


def _overlay(name: str) -> list[Obj]:
    return kustomize(DAEMONSET / "overlays" / name)


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[Obj]]:
    """(overlay name, the objects `kubectl apply -k` would send)."""
    objs = _overlay(request.param)
    assert len({identity(o) for o in objs}) == len(objs)
    return request.param, objs


def _one(objs: list[Obj], kind: str, name: str | None = None) -> Obj:
    [obj] = [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    return obj


def _daemonsets(objs: list[Obj]) -> list[Obj]:
    return [o for o in objs if o["kind"] == "DaemonSet"]


def _all_manifests() -> Iterator[tuple[str, Obj]]:
    for name in sorted(OVERLAYS):
        for obj in _overlay(name):
            yield f"overlay {name}", obj
    for path in [*CLASS_FILES, *sorted(EXAMPLES.glob("*/*.yaml"))]:
        for obj in load_documents(path):
            yield str(path.relative_to(ROOT)), obj


def test_every_manifest_is_valid_for_every_supported_kubernetes_version() -> None:
    seen = 0
    for where, obj in _all_manifests():
        validate(obj, where)
        seen += 1
    assert seen >= 4 * 15 + 8 * 2  # 15 objects per overlay at least, a claim and a pod per example


def test_every_manifest_round_trips_through_the_official_models() -> None:
    """The client's models drop unknown fields silently, so a lossless round trip is the strict check."""
    api = kubernetes.client.ApiClient()
    # the client leaves this method unannotated; it turns a model back into plain JSON values
    to_json: Callable[[object], object] = api.sanitize_for_serialization
    for where, obj in _all_manifests():
        model = MODELS[(obj["apiVersion"], obj["kind"])]
        parsed = api.deserialize(json.dumps(obj), model, "application/json")
        assert to_json(parsed) == obj, f"{where}: {identity(obj)} loses or changes fields"


# ---- one command installs everything --------------------------------------------------------------------


def test_each_overlay_installs_everything(overlay: tuple[str, list[Obj]]) -> None:
    name, objs = overlay
    assert {d["metadata"]["name"] for d in _daemonsets(objs)} == OVERLAYS[name]
    assert _one(objs, "Namespace")["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"
    # Every DeviceClass and admission policy of deviceclasses/, unchanged but for the release's labels.
    shipped = {identity(o): o for path in CLASS_FILES for o in load_documents(path)}
    installed = {identity(o): o for o in objs if identity(o) in shipped}
    assert set(installed) == set(shipped)
    for key, obj in installed.items():
        labels = obj["metadata"].pop("labels")
        assert labels["app.kubernetes.io/part-of"] == "gpudra"
        assert obj == shipped[key]
    assert {o["metadata"]["name"] for o in objs if o["kind"] == "DeviceClass"} >= {
        names.CLASS_GPU, names.CLASS_NVIDIA, names.CLASS_MIG, names.CLASS_AMD, names.CLASS_AMD_PARTITION,
    }  # fmt: skip


def test_docs_name_every_device_class() -> None:
    classes = [
        o["metadata"]["name"] for p in CLASS_FILES for o in load_documents(p) if o["kind"] == "DeviceClass"
    ]
    for doc in (ROOT / "docs" / "cel-cookbook.md", ROOT / "README.md"):
        text = doc.read_text()
        assert all(f"`{c}`" in text for c in classes), doc
    assert "three DeviceClasses" not in (ROOT / "docs" / "cel-cookbook.md").read_text()


# ---- RBAC, admission policy, namespace --------------------------------------------------------------------


def test_cluster_role_is_exactly_the_least_privilege_list(overlay: tuple[str, list[Obj]]) -> None:
    rules = _one(overlay[1], "ClusterRole")["rules"]
    granted = {
        (g, r, v)
        for rule in rules
        for g in rule["apiGroups"]
        for r in rule["resources"]
        for v in rule["verbs"]
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
    # MPS daemons run as Pods by default (--mps-launcher pod): a Role for exactly that, in the plugin's own
    # namespace; the mock runs its daemons as processes and gets none
    roles = [o for o in overlay[1] if o["kind"] == "Role"]
    if overlay[0] == "mock":
        assert not roles
        assert not [o for o in overlay[1] if o["kind"] == "RoleBinding"]
    else:
        [role] = roles
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "delete"]}
        ]
        assert role["metadata"]["namespace"] == _one(overlay[1], "ServiceAccount")["metadata"]["namespace"]


def test_binding_names_the_plugin_service_account(overlay: tuple[str, list[Obj]]) -> None:
    objs = overlay[1]
    sa, binding = _one(objs, "ServiceAccount"), _one(objs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": _one(objs, "ClusterRole")["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": sa["metadata"]["namespace"]}
    ]
    for ds in _daemonsets(objs):
        assert ds["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    namespaced = [o for o in objs if "namespace" in o.get("metadata", {})]
    assert {o["metadata"]["namespace"] for o in namespaced} == {NAMESPACE}
    assert _one(objs, "Namespace")["metadata"]["name"] == NAMESPACE


def test_admission_policy_limits_the_plugin_to_its_own_node(overlay: tuple[str, list[Obj]]) -> None:
    objs = overlay[1]
    name = "gpudra-resourceslices-own-node"
    policy = _one(objs, "ValidatingAdmissionPolicy", name)
    binding = _one(objs, "ValidatingAdmissionPolicyBinding", name)
    sa = _one(objs, "ServiceAccount")
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    [rule] = spec["matchConstraints"]["resourceRules"]
    assert (rule["apiGroups"], rule["resources"]) == (["resource.k8s.io"], ["resourceslices"])
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
    assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}


def test_critical_priority_is_permitted_by_a_quota(overlay: tuple[str, list[Obj]]) -> None:
    objs = overlay[1]
    for ds in _daemonsets(objs):
        assert ds["spec"]["template"]["spec"]["priorityClassName"] == "system-node-critical"
    quota = _one(objs, "ResourceQuota")
    assert quota["metadata"]["namespace"] == NAMESPACE != "kube-system"
    assert quota["spec"]["scopeSelector"]["matchExpressions"] == [
        {"scopeName": "PriorityClass", "operator": "In", "values": ["system-node-critical"]}
    ]
    assert int(quota["spec"]["hard"]["pods"]) >= 5000  # never the reason a node has no plugin


def test_network_policy_opens_only_metrics_and_only_to_prometheus(overlay: tuple[str, list[Obj]]) -> None:
    objs = overlay[1]
    policy = _one(objs, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"]
    for ds in _daemonsets(objs):  # selects every plugin pod
        labels = ds["spec"]["template"]["metadata"]["labels"]
        assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    [rule] = policy["ingress"]
    metrics = {int(_env(_plugin(ds))["GPUDRA_METRICS_PORT"]) for ds in _daemonsets(objs)}
    assert [p["port"] for p in rule["ports"]] == sorted(metrics)  # not the probe port: the node may always
    assert rule["from"] == [  # reach its pods, and only the kubelet probes
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    ]


# ---- the DaemonSets ---------------------------------------------------------------------------------------


def _plugin(ds: Obj) -> Obj:
    [container] = containers(ds)
    return container


def _env(container: Obj) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_rolling_update_overlaps_old_and_new_pods(overlay: tuple[str, list[Obj]]) -> None:
    for ds in _daemonsets(overlay[1]):
        assert ds["spec"]["updateStrategy"] == {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        }
        env = _env(_plugin(ds))
        assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
        assert env["GPUDRA_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}  # per-pod socket names
        assert not ds["spec"]["template"]["spec"].get("hostNetwork", False)  # two pods, two probe ports
    selectors = [json.dumps(ds["spec"]["selector"], sort_keys=True) for ds in _daemonsets(overlay[1])]
    assert len(set(selectors)) == len(selectors)  # no DaemonSet adopts another vendor's pods


def test_probes_speak_grpc_health_on_the_probe_port(overlay: tuple[str, list[Obj]]) -> None:
    for ds in _daemonsets(overlay[1]):
        c = _plugin(ds)
        port = int(_env(c)["GPUDRA_PROBE_PORT"])
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["grpc"]["port"] == port, probe
            assert c[probe]["timeoutSeconds"] >= 2  # a Check makes two calls of 1 s deadline each
        assert c["readinessProbe"]["grpc"]["service"] == "readiness"
        assert c["livenessProbe"]["grpc"].get("service", "") == ""
        startup = c["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 180  # slow discovery
        assert {p["containerPort"] for p in c["ports"]} == {port, int(_env(c)["GPUDRA_METRICS_PORT"])}


def test_resources_are_bounded(overlay: tuple[str, list[Obj]]) -> None:
    for ds in _daemonsets(overlay[1]):
        res = _plugin(ds)["resources"]
        assert set(res["requests"]) == set(res["limits"]) == {"cpu", "memory"}
        mib = {"Mi": 1, "Gi": 1024}
        memory = {k: int(v["memory"][:-2]) * mib[v["memory"][-2:]] for k, v in res.items()}
        assert 64 <= memory["requests"] <= memory["limits"]  # measured VmHWM: 62 MiB with 8 mock GPUs


def test_host_directories_are_mounted_where_the_plugin_looks(overlay: tuple[str, list[Obj]]) -> None:
    for ds in _daemonsets(overlay[1]):
        env = _env(_plugin(ds))
        volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
        by_path = {
            m["mountPath"]: (volumes[m["name"]].get("hostPath", {}).get("path"), m.get("readOnly", False))
            for m in _plugin(ds)["volumeMounts"]
        }
        plugin_dir = f"{env['GPUDRA_PLUGINS_DIR']}/{names.DRIVER_NAME}"
        # Same path inside and outside: sockets, CDI specs and claim files are reported by these paths.
        for path in (plugin_dir, env["GPUDRA_REGISTRY_DIR"], env["GPUDRA_CDI_ROOT"], env["GPUDRA_RUN_DIR"]):
            assert by_path[path] == (path, False), path
        assert by_path[env["GPUDRA_SYSFS_ROOT"]] == ("/sys", True)
        assert by_path["/tmp"][0] is None  # emptyDir under a read-only root filesystem
        if ds["metadata"]["name"] == "gpudra-mock":
            assert "/driver-root" not in by_path
            continue
        assert by_path["/driver-root"] == ("/", True)
        if ds["metadata"]["name"] == "gpudra-nvidia":
            assert (env["GPUDRA_DRIVER_ROOT"], env["GPUDRA_HOST_DRIVER_ROOT"]) == ("/driver-root", "/")
            dirs = env["GPUDRA_CDI_SPEC_DIRS"].split(":")
            assert [by_path[d] for d in dirs] == [("/etc/cdi", True), ("/var/run/cdi", False)]


def test_only_hardware_backends_are_privileged(overlay: tuple[str, list[Obj]]) -> None:
    for ds in _daemonsets(overlay[1]):
        name = ds["metadata"]["name"]
        sc = _plugin(ds)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert ds["spec"]["template"]["spec"]["securityContext"]["seccompProfile"] == {
            "type": "RuntimeDefault"
        }
        if name == "gpudra-mock":
            assert (sc["privileged"], sc["allowPrivilegeEscalation"]) == (False, False)
            assert sc["capabilities"] == {"drop": ["ALL"]}
        else:
            assert sc["privileged"] is True
            assert "capabilities" not in sc
        assert _env(_plugin(ds))["GPUDRA_BACKEND"] == BACKENDS[name]


#: What the downward API gives, by field (a pod's UID, a node name and a pod IP of the right shapes).
DOWNWARD = {
    "spec.nodeName": "node-a",
    "metadata.uid": "0b3c5d1e-7f2a-4c6b-9e8d-1a2b3c4d5e6f",
    "status.podIP": "10.1.2.3",
}


def cli_environment(container: Obj) -> dict[str, str]:
    """The container's environment as the plugin sees it (downward API fields filled in)."""
    return {
        key: value if isinstance(value, str) else DOWNWARD[value["fieldRef"]["fieldPath"]]
        for key, value in _env(container).items()
    }


def known_twins() -> set[str]:
    return {opt.env for opt in (*cli.COMMON_OPTS, *cli.BACKEND_OPTS, *cli.RUN_OPTS)}


def test_cli_reads_the_daemonset_environment(overlay: tuple[str, list[Obj]]) -> None:
    """The env twins the DaemonSets set are those ``gpudra run`` reads, and each passes its validator."""
    for ds in _daemonsets(overlay[1]):
        c = _plugin(ds)
        environ = cli_environment(c)
        assert {k for k in environ if k.startswith("GPUDRA_")} <= known_twins()
        args = cli.parse_args(c["args"], environ)
        env = _env(c)
        assert (args.command, args.node_name, args.backend) == ("run", "node-a", env["GPUDRA_BACKEND"])
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
        assert (str(args.plugins_dir), str(args.cdi_root)) == (
            env["GPUDRA_PLUGINS_DIR"],
            env["GPUDRA_CDI_ROOT"],
        )
        assert str(args.sysfs_root) == env["GPUDRA_SYSFS_ROOT"]
        assert (args.log_format, args.health_monitoring) == ("json", True)


def test_image_is_the_package_version(overlay: tuple[str, list[Obj]]) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for ds in _daemonsets(overlay[1]):
        assert _plugin(ds)["image"] == f"gpudra:{version}"
