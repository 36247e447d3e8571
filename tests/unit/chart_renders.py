"""The renders of the Helm chart the chart tests share: one real ``helm install`` per scenario (values,
release namespace, Kubernetes version), made once per test process (manifest_tools.helm_render)."""

from __future__ import annotations

import functools
from typing import Any

from tests.unit.manifest_tools import containers, helm_render

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


@functools.cache
def chart_renders() -> dict[str, Obj]:
    """scenario -> ``{"objects", "manifest"}`` or ``{"error"}``; rendered once per process (read-only)."""
    requests = [
        {"release": "gpudra", "namespace": ns, "values": values, "kubeVersion": version}
        for values, ns, version in SCENARIOS.values()
    ]
    return dict(zip(SCENARIOS, helm_render(requests), strict=True))


def chart_objects(renders: dict[str, Obj], name: str) -> list[Obj]:
    result = renders[name]
    assert "error" not in result, result.get("error")
    objs: list[Obj] = result["objects"]
    return objs


def chart_daemonsets(objs: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == "DaemonSet"}


def chart_kinds(objs: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objs if o["kind"] == kind]


def plugin_env(ds: Obj) -> dict[str, Any]:
    [plugin] = containers(ds)
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in plugin["env"]}
