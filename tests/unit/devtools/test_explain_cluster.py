"""``gpudra explain namespace/name --node NAME | --all-nodes`` reading a cluster: the stand-in API server
over HTTP holds the DeviceClasses, two nodes' slices as the driver publishes them (node-a: a DGX H100;
node-b: one H100 whose GPU has a NoSchedule taint), a claim that already holds five of node-a's GPUs, and
the claims to explain. One test goes through the real ``gpudra`` command as a subprocess, which hands over
to ``gpudra-dev explain``."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools import explain_cli
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model.k8stypes import DeviceTaint
from tests.unit.devtools.explain_rig import REPO, claim, classes, exactly, published

GATES = {"DRADeviceTaints": True, "DRAPartitionableDevices": True, "DRAConsumableCapacity": True}
TAINT: DeviceTaint = {
    "key": "gpudra.io/xid",
    "value": "48",
    "effect": "NoSchedule",
    "timeAdded": "2026-01-01T00:00:00Z",
}
FOUR_ON_ONE_DOMAIN = claim(
    "train", exactly("gpus", "gpu.gpudra.io", count=4),
    constraints=[{"matchAttribute": "gpudra.io/fabricDomain"}], namespace="team-a",
)  # fmt: skip
ONE_GPU = claim("one", exactly("gpu", "gpu.gpudra.io"), namespace="team-a")


def _holding(slices: list[dict[str, Any]], count: int) -> dict[str, Any]:
    """A claim of team-b allocated the first ``count`` GPUs of these slices."""
    devices = [(s["spec"]["pool"]["name"], d["name"]) for s in slices for d in s["spec"].get("devices", [])]
    results = [{"request": "gpus", "driver": "gpudra.io", "pool": p, "device": d} for p, d in devices[:count]]
    running = claim("running", exactly("gpus", "gpu.gpudra.io", count=count), namespace="team-b")
    running["status"] = {"allocation": {"devices": {"results": results}}}
    return running


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeApiServer, Path]]:
    node_a = published("dgx-h100", "node-a")
    node_b = published("h100", "node-b", taints={0: [TAINT]})
    with FakeApiServer(feature_gates=GATES) as server:
        for obj in [*classes(), *node_a, *node_b, _holding(node_a, 5), FOUR_ON_ONE_DOMAIN, ONE_GPU]:
            server.put_object({**obj, "kind": obj.get("kind", "DeviceClass")})
        yield server, server.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = explain_cli.main([*argv, "-o", "json"])
    return code, json.loads(capsys.readouterr().out)


def test_claim_by_name_against_one_node(
    cluster: tuple[FakeApiServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    server, kubeconfig = cluster
    server.clear_requests()
    code, doc = _run(capsys, "team-a/train", "--node", "node-a", "--kubeconfig", str(kubeconfig))
    assert code == 1
    (claim_report,) = doc["claims"]
    assert (claim_report["claim"], claim_report["source"], claim_report["verdict"]) == (
        "team-a/train",
        "cluster",
        "pending",
    )
    (node,) = claim_report["nodes"]
    assert node["node"] == "node-a"
    assert [h["claim"] for h in node["held"]] == ["team-b/running"]
    assert len(node["held"][0]["devices"]) == 5
    (reason,) = node["reasons"]
    assert reason.startswith("request gpus: 4 device(s) needed, 3 of 8 matching devices available: ")
    assert "in use by claim team-b/running" in reason
    (request,) = node["requests"]
    in_use = [d for d in request["devices"] if d["inUseBy"] == "team-b/running"]
    assert len(in_use) == 5
    assert all(d["unavailable"] == "in use by claim team-b/running" for d in in_use)
    assert server.count("GET", "/apis/resource.k8s.io/v1/namespaces/team-a/resourceclaims/train") == 1
    for listed in ("resourceslices", "deviceclasses", "resourceclaims"):
        assert server.count("GET", f"/apis/resource.k8s.io/v1/{listed}") == 1


def test_all_nodes_and_a_tainted_device(
    cluster: tuple[FakeApiServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig = cluster
    code, doc = _run(capsys, "team-a/one", "--all-nodes", "--kubeconfig", str(kubeconfig))
    assert code == 0
    (claim_report,) = doc["claims"]
    assert claim_report["summary"] == "allocatable on 1 of 2 nodes: node-a"
    node_a, node_b = claim_report["nodes"]
    assert (node_a["node"], node_a["verdict"], node_b["node"], node_b["verdict"]) == (
        "node-a",
        "allocatable",
        "node-b",
        "pending",
    )
    (gpu,) = [d for d in node_b["requests"][0]["devices"] if d["selected"]]
    assert gpu["unavailable"] == "taint gpudra.io/xid=48:NoSchedule not tolerated"
    assert gpu["taints"] == [
        {"key": "gpudra.io/xid", "value": "48", "effect": "NoSchedule", "tolerated": False, "blocks": True}
    ]


def test_a_name_that_is_neither_claim_nor_template(
    cluster: tuple[FakeApiServer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, kubeconfig = cluster
    assert explain_cli.main(["team-a/nope", "--node", "node-a", "--kubeconfig", str(kubeconfig)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "gpudra: explain: no ResourceClaim or ResourceClaimTemplate team-a/nope — check --kubeconfig and "
        "that the cluster answers\n"
    )


def test_through_the_gpudra_command(cluster: tuple[FakeApiServer, Path]) -> None:
    _, kubeconfig = cluster
    argv = ["explain", "team-a/train", "--all-nodes", "--kubeconfig", str(kubeconfig)]
    command = [sys.executable, "-m", "gpudra", *argv]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "claim team-a/train (ResourceClaim from cluster): pending on every node (2)"
    assert lines[1].startswith("  node node-a (cluster): PENDING — request gpus: 4 device(s) needed, 3 of 8")
    assert "    held by claim team-b/running: " in proc.stdout
    assert "5 devices, class #0 match → in use by claim team-b/running: " in proc.stdout
    assert any(line.startswith("  node node-b (cluster): PENDING — ") for line in lines)
    assert "taint gpudra.io/xid=48:NoSchedule not tolerated" in proc.stdout
