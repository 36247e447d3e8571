"""The Helm chart daemonset/helm/gpudra, linted and rendered by the real Helm v4 engine (helm-sdkpy, see
manifest_tools.py): with its defaults, for a mixed NVIDIA/AMD fleet, and with each feature switch. Every
rendered object is checked against the schemas of Kubernetes 1.34-1.37, every environment variable of a
DaemonSet is a `gpudra run` flag's twin that its validator accepts, and the kustomize overlays are what the
chart renders now."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gpudra import cli
from tests.unit.manifest_tools import (
    CHART,
    CRD_KINDS,
    DAEMONSET,
    chart_values,
    containers,
    helm_lint,
    helm_python,
    helm_render,
    identity,
    load_documents,
    merged,
    validate,
)
from tests.unit.test_manifests import CLASS_FILES, cli_environment, known_twins

Obj = dict[str, Any]
NS = "gpudra-system"
ALL_FEATURES: Obj = {
    "mock": {"enabled": True},
    "features": {"mpsLauncher": "pod", "fractionalGpus": "on", "migManagement": "static"},
    "metrics": {"usage": {"enabled": True, "interval": 10}, "serviceMonitor": {"enabled": True}},
}
#: name -> (values, release namespace, Kubernetes version)
SCENARIOS: dict[str, tuple[Obj, str, str]] = {
    "default": ({}, NS, "1.34.0"),
    "on-1.37": ({}, NS, "1.37.0"),
    "all-features": (ALL_FEATURES, NS, "1.36.0"),
    "features-off": (
        {"features": {"healthMonitoring": False, "mpsLauncher": "process", "fractionalGpus": "off",
                      "amdAdditionalGids": False},
         "metrics": {"enabled": False, "usage": {"enabled": False}}},
        NS, "1.34.0",
    ),
    "no-scraping": (
        {"networkPolicy": {"metricsFrom": []}, "metrics": {"service": {"enabled": True}}}, NS, "1.35.0",
    ),
    "gpu-operator": (
        {"nvidia": {"driverRoot": "/run/nvidia/driver", "cdiSpecDirs": ["/etc/cdi", "/var/run/cdi"]},
         "amd": {"enabled": False}},
        NS, "1.35.0",
    ),
    "elsewhere": (
        {"kubelet": {"pluginsDir": "/var/snap/microk8s/common/var/lib/kubelet/plugins",
                     "registryDir": "/var/snap/microk8s/common/var/lib/kubelet/plugins_registry"},
         "image": {"repository": "registry.example/gpudra", "digest": "sha256:" + "ab" * 32},
         "logging": {"format": "text", "verbosity": 2}},
        "kube-system", "1.36.0",
    ),
    "amd-only": ({"nvidia": {"enabled": False}, "features": {"fractionalGpus": True}}, NS, "1.36.0"),
    "bad-value": ({"features": {"migManagement": "sometimes"}}, NS, "1.34.0"),
    "unknown-key": ({"nvidia": {"driverroot": "/"}}, NS, "1.34.0"),
    "too-old": ({}, NS, "1.33.0"),
}  # fmt: skip


@pytest.fixture(scope="module")
def renders() -> dict[str, Obj]:
    requests = [
        {"release": "gpudra", "namespace": ns, "values": values, "kubeVersion": version}
        for values, ns, version in SCENARIOS.values()
    ]
    return dict(zip(SCENARIOS, helm_render(requests), strict=True))


def _objects(renders: dict[str, Obj], name: str) -> list[Obj]:
    result = renders[name]
    assert "error" not in result, result.get("error")
    objs: list[Obj] = result["objects"]
    return objs


def _daemonsets(objs: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "DaemonSet"}


def _kinds(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def _env(ds: Obj) -> dict[str, Any]:
    [plugin] = containers(ds)
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in plugin["env"]}


# ---- lint -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant", ["default", "all-features", "features-off", "no-scraping", "gpu-operator"]
)
def test_helm_lint_is_clean(variant: str, tmp_path: Path) -> None:
    clean, messages = helm_lint(merged(chart_values(), SCENARIOS[variant][0]), tmp_path)
    assert clean, messages
    assert {m["severity"] for m in messages} <= {"INFO"}  # "icon is recommended"


def test_helm_lint_fails_on_values_the_schema_refuses(tmp_path: Path) -> None:
    clean, messages = helm_lint(merged(chart_values(), SCENARIOS["bad-value"][0]), tmp_path)
    assert not clean
    assert "ERROR" in {m["severity"] for m in messages}


# ---- what Helm refuses -------------------------------------------------------------------------------------


def test_values_outside_the_schema_are_refused_at_install(renders: dict[str, Obj]) -> None:
    assert "features.migManagement" in renders["bad-value"]["error"].replace("/", ".")
    assert "driverroot" in renders["unknown-key"]["error"]
    assert "kubeVersion" in renders["too-old"]["error"]


# ---- every object is valid ---------------------------------------------------------------------------------


def test_every_rendered_object_is_valid_for_every_supported_version(renders: dict[str, Obj]) -> None:
    for name, result in renders.items():
        for obj in result.get("objects", []):
            validate(obj, f"render {name}")
    monitors = [o for o in _objects(renders, "all-features") if (o["apiVersion"], o["kind"]) in CRD_KINDS]
    [monitor] = monitors
    service = _kinds(_objects(renders, "all-features"), "Service")[0]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]


def test_every_daemonset_setting_is_a_flag_the_plugin_accepts(renders: dict[str, Obj]) -> None:
    for name in ("default", "all-features", "features-off", "gpu-operator", "elsewhere"):
        for ds in _daemonsets(_objects(renders, name)).values():
            [plugin] = containers(ds)
            environ = cli_environment(plugin)
            unknown = {k for k in environ if k.startswith("GPUDRA_")} - known_twins()
            assert not unknown, (
                f"{name}: {ds['metadata']['name']} sets {sorted(unknown)}, which gpudra run ignores"
            )
            cli.parse_args(plugin["args"], environ)  # each passes its validator


# ---- mixed fleets ------------------------------------------------------------------------------------------


def _matches(expr: Obj, labels: dict[str, str]) -> bool:
    key, op = expr["key"], expr["operator"]
    if op == "In":
        return labels.get(key) in expr["values"]
    if op == "NotIn":
        return labels.get(key) not in expr["values"]
    assert op in ("Exists", "DoesNotExist"), op
    return (key in labels) == (op == "Exists")


def _selected(ds: Obj, labels: dict[str, str]) -> bool:
    pod = ds["spec"]["template"]["spec"]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    return all(labels.get(k) == v for k, v in pod.get("nodeSelector", {}).items()) and any(
        all(_matches(e, labels) for e in term["matchExpressions"]) for term in terms
    )


NFD = "feature.node.kubernetes.io/"
#: Node labels as real clusters set them -> the plugin DaemonSets that must run there.
NODES: list[tuple[str, dict[str, str], set[str]]] = [
    ("DGX H100, NFD defaults (class 0302)", {f"{NFD}pci-0302_10de.present": "true"}, {"gpudra-nvidia"}),
    ("RTX workstation, NFD defaults (VGA 0300)", {f"{NFD}pci-0300_10de.present": "true"}, {"gpudra-nvidia"}),
    ("GPU Operator: vendor-only NFD and gpu.present",
     {f"{NFD}pci-10de.present": "true", "nvidia.com/gpu.present": "true"}, {"gpudra-nvidia"}),
    ("GPU Operator label alone", {"nvidia.com/gpu.present": "true"}, {"gpudra-nvidia"}),
    ("GPU Operator: the GPUs went away", {"nvidia.com/gpu.present": "false"}, set()),
    ("MI300X, NFD defaults (1200 accelerator)", {f"{NFD}pci-1200_1002.present": "true"}, {"gpudra-amd"}),
    ("MI210, NFD defaults (0380 display)", {f"{NFD}pci-0380_1002.present": "true"}, {"gpudra-amd"}),
    ("Radeon PRO, NFD defaults (VGA 0300)", {f"{NFD}pci-0300_1002.present": "true"}, {"gpudra-amd"}),
    ("OpenShift NFD, vendor-only labels", {f"{NFD}pci-1002.present": "true"}, {"gpudra-amd"}),
    ("AMD GPU Operator rule", {f"{NFD}amd-gpu": "true"}, {"gpudra-amd"}),
    ("AMD GPU Operator rule, SR-IOV VF", {f"{NFD}amd-vgpu": "true"}, {"gpudra-amd"}),
    ("AMD node that once had the GPU Operator's label",
     {f"{NFD}pci-1200_1002.present": "true", "nvidia.com/gpu.present": "false"}, {"gpudra-amd"}),
    ("no NFD, admin label nvidia", {"gpudra.io/vendor": "nvidia"}, {"gpudra-nvidia"}),
    ("no NFD, admin label amd", {"gpudra.io/vendor": "amd"}, {"gpudra-amd"}),
    ("both vendors detected: NVIDIA, as --backend auto",
     {f"{NFD}pci-0302_10de.present": "true", f"{NFD}pci-0300_1002.present": "true"}, {"gpudra-nvidia"}),
    ("both vendors, the admin chose amd",
     {f"{NFD}pci-0302_10de.present": "true", f"{NFD}pci-1200_1002.present": "true",
      "gpudra.io/vendor": "amd"},
     {"gpudra-amd"}),
    ("admin opted the node out", {f"{NFD}pci-0302_10de.present": "true", "gpudra.io/vendor": "none"}, set()),
    ("CPU node with an ASPEED BMC VGA", {f"{NFD}pci-0300_1a03.present": "true"}, set()),
    ("kind worker with mock GPUs", {"gpudra.io/mock-gpus": "true"}, set()),
]  # fmt: skip


@pytest.mark.parametrize(("labels", "expected"), [n[1:] for n in NODES], ids=[n[0] for n in NODES])
def test_each_node_runs_the_plugin_of_its_vendor(
    renders: dict[str, Obj], labels: dict[str, str], expected: set[str]
) -> None:
    daemonsets = _daemonsets(_objects(renders, "default"))
    assert set(daemonsets) == {"gpudra-nvidia", "gpudra-amd"}  # one release, one DaemonSet per vendor
    assert {name for name, ds in daemonsets.items() if _selected(ds, labels)} == expected


def test_mock_runs_only_where_labelled(renders: dict[str, Obj]) -> None:
    mock = _daemonsets(_objects(renders, "all-features"))["gpudra-mock"]
    assert _selected(mock, {"gpudra.io/mock-gpus": "true"})
    assert not _selected(mock, {f"{NFD}pci-0302_10de.present": "true"})
    assert _env(mock)["GPUDRA_PROFILE"] == "dgx-h100"


def test_without_the_nvidia_plugin_dual_vendor_nodes_run_the_amd_one(renders: dict[str, Obj]) -> None:
    [ds] = _daemonsets(_objects(renders, "amd-only")).values()
    assert _selected(ds, {f"{NFD}pci-0302_10de.present": "true", f"{NFD}pci-1200_1002.present": "true"})
    assert not _selected(ds, {f"{NFD}pci-0302_10de.present": "true"})


# ---- feature switches -------------------------------------------------------------------------------------


def test_feature_switches_reach_the_plugin(renders: dict[str, Obj]) -> None:
    on = _daemonsets(_objects(renders, "all-features"))
    nvidia, amd = _env(on["gpudra-nvidia"]), _env(on["gpudra-amd"])
    assert (nvidia["GPUDRA_MIG_MANAGEMENT"], nvidia["GPUDRA_MPS_LAUNCHER"]) == ("static", "pod")
    assert nvidia["GPUDRA_FRACTIONAL_GPUS"] == amd["GPUDRA_FRACTIONAL_GPUS"] == "on"
    assert (nvidia["GPUDRA_USAGE_METRICS"], nvidia["GPUDRA_USAGE_INTERVAL"]) == ("true", "10")
    assert "GPUDRA_MIG_MANAGEMENT" not in amd
    assert "GPUDRA_AMD_ADDITIONAL_GIDS" not in nvidia
    off = _daemonsets(_objects(renders, "features-off"))
    nvidia, amd = _env(off["gpudra-nvidia"]), _env(off["gpudra-amd"])
    assert (nvidia["GPUDRA_HEALTH_MONITORING"], nvidia["GPUDRA_MPS_LAUNCHER"]) == ("false", "process")
    assert (amd["GPUDRA_AMD_ADDITIONAL_GIDS"], amd["GPUDRA_FRACTIONAL_GPUS"]) == ("false", "off")
    assert nvidia["GPUDRA_METRICS_PORT"] == "0"
    assert nvidia["GPUDRA_USAGE_METRICS"] == "false"
    default = _env(_daemonsets(_objects(renders, "default"))["gpudra-nvidia"])
    pending = {
        "GPUDRA_MPS_LAUNCHER",
        "GPUDRA_FRACTIONAL_GPUS",
        "GPUDRA_USAGE_METRICS",
        "GPUDRA_USAGE_INTERVAL",
    }
    assert not pending & set(default)  # null: the plugin's own default
    assert default["GPUDRA_MIG_MANAGEMENT"] == "dynamic"
    # YAML's unquoted `fractionalGpus: on` is a boolean: it means on
    assert _env(_daemonsets(_objects(renders, "amd-only"))["gpudra-amd"])["GPUDRA_FRACTIONAL_GPUS"] == "on"


def test_mps_pods_get_exactly_their_role_in_the_release_namespace(renders: dict[str, Obj]) -> None:
    objs = _objects(renders, "all-features")
    [role], [binding] = _kinds(objs, "Role"), _kinds(objs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == NS
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["create", "get", "list", "delete"]}
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "gpudra-kubelet-plugin", "namespace": NS}
    ]
    assert not _kinds(_objects(renders, "features-off"), "Role")  # launcher "process": no pod rights


def test_metrics_service_and_policy_follow_the_values(renders: dict[str, Obj]) -> None:
    objs = _objects(renders, "all-features")
    [service] = _kinds(objs, "Service")
    assert service["spec"]["clusterIP"] == "None"  # every plugin pod scraped, never one behind a VIP
    for ds in _daemonsets(objs).values():
        assert service["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert not _kinds(_objects(renders, "default"), "Service")
    for name in ("no-scraping", "features-off"):  # nobody may scrape / nothing to scrape: no port open
        [policy] = _kinds(_objects(renders, name), "NetworkPolicy")
        assert policy["spec"]["ingress"] == []
    [plugin] = containers(_daemonsets(_objects(renders, "features-off"))["gpudra-nvidia"])
    assert [p["name"] for p in plugin["ports"]] == ["health"]


def test_paths_image_and_namespace_follow_the_values(renders: dict[str, Obj]) -> None:
    objs = _objects(renders, "elsewhere")
    root = "/var/snap/microk8s/common/var/lib/kubelet"
    for ds in _daemonsets(objs).values():
        [plugin] = containers(ds)
        env = _env(ds)
        assert (env["GPUDRA_PLUGINS_DIR"], env["GPUDRA_REGISTRY_DIR"]) == (
            f"{root}/plugins",
            f"{root}/plugins_registry",
        )
        hosts = {v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"] if "hostPath" in v}
        assert {f"{root}/plugins/gpudra.io", f"{root}/plugins_registry"} <= hosts
        assert plugin["image"] == "registry.example/gpudra@sha256:" + "ab" * 32
        assert (env["GPUDRA_LOG_FORMAT"], env["GPUDRA_VERBOSITY"]) == ("text", "2")
    assert {o["metadata"]["namespace"] for o in objs if "namespace" in o["metadata"]} == {"kube-system"}
    assert not _kinds(objs, "ResourceQuota")  # critical pods need no quota in kube-system
    [policy] = [
        o for o in _kinds(objs, "ValidatingAdmissionPolicy") if o["metadata"]["name"].endswith("own-node")
    ]
    assert (
        "'system:serviceaccount:kube-system:gpudra-kubelet-plugin'"
        in policy["spec"]["matchConditions"][0]["expression"]
    )


def test_gpu_operator_driver_root_and_toolkit_specs(renders: dict[str, Obj]) -> None:
    ds = _daemonsets(_objects(renders, "gpu-operator"))["gpudra-nvidia"]
    env = _env(ds)
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert (
        volumes["driver-root"]["hostPath"]["path"] == env["GPUDRA_HOST_DRIVER_ROOT"] == "/run/nvidia/driver"
    )
    # /var/run/cdi is the CDI root, mounted already: listed once, not mounted twice
    assert env["GPUDRA_CDI_SPEC_DIRS"] == "/host-cdi-0:/var/run/cdi"
    assert volumes["host-cdi-0"]["hostPath"]["path"] == "/etc/cdi"
    assert _selected(ds, {f"{NFD}pci-10de.present": "true", "nvidia.com/gpu.present": "true"})


def test_device_classes_and_policies_are_installed_as_shipped(renders: dict[str, Obj]) -> None:
    shipped = {identity(o): o for path in CLASS_FILES for o in load_documents(path)}
    installed = {identity(o): o for o in _objects(renders, "default") if identity(o) in shipped}
    assert set(installed) == set(shipped)
    for key, obj in installed.items():
        obj["metadata"].pop("labels")
        assert obj == shipped[key]


# ---- one source of truth -----------------------------------------------------------------------------------


def test_kustomize_overlays_are_generated_from_the_chart() -> None:
    env = {**os.environ, "HELM_SDKPY_PYTHON": helm_python()}
    done = subprocess.run(
        [str(DAEMONSET / "generate"), "--check"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (CHART / "files" / "deviceclasses").resolve() == (DAEMONSET.parent / "deviceclasses").resolve()
