"""Mixed fleets: one release runs one plugin DaemonSet per vendor, and each node, labelled as real clusters
label it (Node Feature Discovery's defaults, the vendor-only labels the NVIDIA GPU Operator and OpenShift
configure, the GPU Operators' own labels, or an admin's gpudra.io/vendor), runs exactly the plugin of its
vendor."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.chart_renders import (
    chart_daemonsets,
    chart_objects,
    chart_renders,
    plugin_env,
)

Obj = dict[str, Any]


def _matches(expr: Obj, labels: dict[str, str]) -> bool:
    key: str = expr["key"]
    op: str = expr["operator"]
    values: list[str] = expr.get("values", [])
    if op == "In":
        return labels.get(key) in values
    if op == "NotIn":
        return labels.get(key) not in values
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
def test_each_node_runs_the_plugin_of_its_vendor(labels: dict[str, str], expected: set[str]) -> None:
    renders = chart_renders()
    daemonsets = chart_daemonsets(chart_objects(renders, "default"))
    assert set(daemonsets) == {"gpudra-nvidia", "gpudra-amd"}  # one release, one DaemonSet per vendor
    assert {name for name, ds in daemonsets.items() if _selected(ds, labels)} == expected


def test_mock_runs_only_where_labelled() -> None:
    renders = chart_renders()
    mock = chart_daemonsets(chart_objects(renders, "all-features"))["gpudra-mock"]
    assert _selected(mock, {"gpudra.io/mock-gpus": "true"})
    assert not _selected(mock, {f"{NFD}pci-0302_10de.present": "true"})
    assert plugin_env(mock)["GPUDRA_PROFILE"] == "dgx-h100"


def test_without_the_nvidia_plugin_dual_vendor_nodes_run_the_amd_one() -> None:
    renders = chart_renders()
    [ds] = chart_daemonsets(chart_objects(renders, "amd-only")).values()
    assert _selected(ds, {f"{NFD}pci-0302_10de.present": "true", f"{NFD}pci-1200_1002.present": "true"})
    assert not _selected(ds, {f"{NFD}pci-0302_10de.present": "true"})


def test_gpu_operator_nodes_run_the_nvidia_plugin() -> None:
    [ds] = chart_daemonsets(chart_objects(chart_renders(), "gpu-operator")).values()
    assert _selected(ds, {f"{NFD}pci-10de.present": "true", "nvidia.com/gpu.present": "true"})
