"""``gpudra-dev explain`` as a command: what ``-f`` files may hold, the text output, one-line errors, exit
statuses, and the one-line fix when the development tools are not installed (checked in a Python
environment that lacks them, as a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpudra.devtools import explain_cli
from tests.unit.devtools.explain_rig import NODE, REPO, claim, exactly, published

FIX = "pip install 'gpudra[devtools]'"


def _write(path: Path, *docs: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return str(path)


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = explain_cli.main([*argv, "-o", "json"])
    return code, json.loads(capsys.readouterr().out)


def test_files_hold_claims_templates_classes_and_allocated_claims(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    beta = {  # resource.k8s.io/v1beta1: the request's fields are not under `exactly`
        "apiVersion": "resource.k8s.io/v1beta1", "kind": "ResourceClaim", "metadata": {"name": "beta"},
        "spec": {"devices": {"requests": [{"name": "gpu", "deviceClassName": "nvidia-only", "count": 1}]}},
    }  # fmt: skip
    template = {
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate", "metadata": {"name": "tmpl"},
        "spec": {"spec": claim("ignored", exactly("gpu", "gpu.gpudra.io"))["spec"]},
    }  # fmt: skip
    own_class = {
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": "nvidia-only"},
        "spec": {"selectors": [{"cel": {"expression": "device.attributes['gpudra.io'].vendor == 'nvidia'"}}]},
    }  # fmt: skip
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": []}}
    path = _write(tmp_path / "claims.yaml", pod, own_class, beta, template)
    code, doc = _json(capsys, "-f", path, "--profile", "pcie-l4-x2", "--fractional-gpus", "off")
    assert code == 0
    assert [(c["claim"], c["kind"], c["verdict"]) for c in doc["claims"]] == [
        ("default/beta", "ResourceClaim", "allocatable"),
        ("default/tmpl", "ResourceClaimTemplate", "allocatable"),
    ]
    assert doc["claims"][1]["source"] == f"{path} (document 4)"
    first = doc["claims"][0]["nodes"][0]["allocation"][0]["device"]
    second = doc["claims"][1]["nodes"][0]["allocation"][0]["device"]
    assert first != second  # the first claim holds its GPU while the second is explained
    held = claim("held", exactly("gpu", "gpu.gpudra.io"), namespace="other")
    held["status"] = {"allocation": {"devices": {"results": [
        {"request": "gpu", "driver": "gpudra.io", "pool": NODE, "device": second}]}}}  # fmt: skip
    held_path = _write(tmp_path / "held.yaml", held)
    code, doc = _json(capsys, "-f", held_path, "-f", path, "--profile", "pcie-l4-x2", "--fractional-gpus=off")
    assert [c["verdict"] for c in doc["claims"]] == ["allocatable", "pending"]
    assert code == 1
    assert doc["claims"][1]["nodes"][0]["held"][0] == {"claim": "other/held", "devices": [second]}


def test_slices_from_a_file_stand_for_the_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    slices = {"apiVersion": "v1", "kind": "List", "items": published("h100", "node-x")}
    one = claim("one", exactly("gpu", "gpu.gpudra.io"))
    code, doc = _json(
        capsys, "-f", _write(tmp_path / "c.yaml", one), "-f", _write(tmp_path / "s.yaml", slices)
    )
    assert code == 0
    (node,) = doc["claims"][0]["nodes"]
    assert (node["node"], node["devicesFrom"], node["verdict"]) == (
        "node-x",
        "slices from files",
        "allocatable",
    )


def test_text_output_has_a_verdict_line_per_claim_node_and_request(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path / "c.yaml", claim("two", exactly("gpus", "mig.gpudra.io", count=2)))
    assert explain_cli.main(["-f", path, "--profile", "pcie-l4-x2"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"claim default/two (ResourceClaim from {path} (document 1))"
    assert lines[1] == (
        "  node mock-node (profile pcie-l4-x2, --mig-management dynamic, --fractional-gpus on): PENDING — "
        "request gpus: no device matches class mig.gpudra.io (2 devices checked)"
    )
    assert (
        lines[2]
        == "    request gpus: UNSATISFIABLE — no device matches class mig.gpudra.io (2 devices checked)"
    )
    assert lines[3] == "      class mig.gpudra.io, ExactCount 2: 2 devices checked, 0 match, 0 available"


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["--profile", "h100"], "gpudra: explain: nothing to explain — name a claim (namespace/name) or pass "
         "-f FILE with a ResourceClaim or ResourceClaimTemplate"),
        (["-f", "CLAIMS"], "gpudra: explain: no devices to explain against — pass --node NAME, --all-nodes, "
         "--profile NAME, or ResourceSlices with -f"),
        (["-f", "CLAIMS", "--profile", "no-such-profile"], "gpudra: explain: --profile no-such-profile: "
         "unknown profile 'no-such-profile'"),
        (["-f", "MISSING", "--profile", "h100"], "gpudra: explain: MISSING: No such file or directory"),
        (["-f", "CLAIMS", "--profile", "h100", "--node", "x"], "gpudra: explain: argument --node: not "
         "allowed with argument --profile"),
    ],
)  # fmt: skip
def test_errors_are_one_line_and_exit_2(
    argv: list[str], line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    claims = _write(tmp_path / "c.yaml", claim("one", exactly("gpu", "gpu.gpudra.io")))
    missing = str(tmp_path / "missing.yaml")
    argv = [claims if a == "CLAIMS" else missing if a == "MISSING" else a for a in argv]
    assert explain_cli.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    (printed,) = captured.err.splitlines()
    assert printed.replace(missing, "MISSING").startswith(line)


def _bare_python(tmp_path: Path, *, shadow_celpy: bool) -> Path:
    """A virtual environment that sees this one's packages but has no ``gpudra-dev`` script; with
    ``shadow_celpy`` its ``celpy`` cannot be imported (as without ``gpudra[devtools]``)."""
    env = tmp_path / "bare"
    (env / "bin").mkdir(parents=True)
    base = Path(sys._base_executable)  # type: ignore[attr-defined]  # the interpreter this venv was made from
    (env / "bin" / "python").symlink_to(base)
    (env / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n")
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_dir = env / "lib" / version / "site-packages"
    site_dir.mkdir(parents=True)
    ours = sysconfig.get_paths()["purelib"]
    (site_dir / "theirs.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    if shadow_celpy:
        (site_dir / "celpy").mkdir()
        (site_dir / "celpy" / "__init__.py").write_text("raise ImportError('celpy is not installed')\n")
    return env / "bin" / "python"


def _bare_run(python: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = "/usr/bin:/bin"  # no gpudra-dev there
    return subprocess.run(
        [str(python), *argv], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_gpudra_explain_without_the_development_tools_says_how_to_get_them(tmp_path: Path) -> None:
    proc = _bare_run(
        _bare_python(tmp_path, shadow_celpy=False), "-m", "gpudra", "explain", "--profile", "h100"
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert (
        proc.stderr == f"gpudra: explain needs the development tools (gpudra-dev is not installed) — {FIX}\n"
    )


def test_gpudra_dev_explain_without_the_cel_evaluator_says_how_to_get_it(tmp_path: Path) -> None:
    python = _bare_python(tmp_path, shadow_celpy=True)
    proc = _bare_run(python, "-m", "gpudra.devtools.cli", "explain", "--profile", "h100")
    assert proc.returncode == 2
    assert (
        proc.stderr
        == f"gpudra: explain needs the development tools (the CEL evaluator is not installed) — {FIX}\n"
    )


BIG_GPU = """\
apiVersion: resource.k8s.io/v1
kind: ResourceClaim
metadata: {name: big-gpu, namespace: team-a}
spec:
  devices:
    requests:
    - name: gpu
      exactly:
        deviceClassName: gpu.gpudra.io
        selectors:
        - cel:
            expression: >-
              device.attributes['gpudra.io'].migCapable &&
              device.capacity['gpudra.io'].memory.compareTo(quantity('40Gi')) >= 0
"""


def test_the_readme_shows_a_real_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    command = "$ gpudra explain -f big-gpu.yaml --profile mi300x-8-spx-nps1"
    readme = (REPO / "README.md").read_text()
    shown = readme.split(f"{command}\n", 1)[1].split("```", 1)[0]
    (tmp_path / "big-gpu.yaml").write_text(BIG_GPU)
    monkeypatch.chdir(tmp_path)
    assert explain_cli.main(command.split()[3:]) == 1
    assert capsys.readouterr().out.rstrip("\n") == shown.rstrip("\n")


def test_the_json_shape_is_the_documented_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    distinct = [{"distinctAttribute": "gpudra.io/uuid"}]
    four = claim("four", exactly("gpus", "gpu.gpudra.io", count=4), constraints=distinct)
    path = _write(tmp_path / "c.yaml", four)
    code, doc = _json(capsys, "-f", path, "--profile", "h100", "--fractional-gpus=off")
    assert code == 1
    assert set(doc) == {"apiVersion", "kind", "verdict", "claims"}
    assert (doc["apiVersion"], doc["kind"]) == ("explain.gpudra.io/v1", "Explanation")
    assert doc["verdict"] == "pending"
    (claim_doc,) = doc["claims"]
    assert set(claim_doc) == {"claim", "kind", "source", "verdict", "summary", "nodes"}
    (node,) = claim_doc["nodes"]
    assert set(node) == {
        "node", "devicesFrom", "verdict", "summary", "reasons", "warnings", "held", "allocation", "pools",
        "requests",
    }  # fmt: skip
    assert node["pools"] == [{"pool": f"gpudra.io/{NODE}", "devices": 26, "problem": None}]
    (request,) = node["requests"]
    assert set(request) == {
        "request", "subrequest", "name", "verdict", "summary", "reasons", "deviceClass", "allocationMode",
        "count", "needed", "adminAccess", "capacityRequests", "tolerations", "selectors", "checked",
        "matching", "available", "errors", "allocated", "devices", "constraints",
    }  # fmt: skip
    device = next(d for d in request["devices"] if d["selected"])
    assert set(device) == {
        "device", "driver", "pool", "selected", "available", "allocated", "selectors", "unavailable",
        "inUseBy", "taints", "counters", "countersShared", "capacity", "capacityRefused",
    }  # fmt: skip
    assert set(device["counters"][0]) == {"counterSet", "counter", "consumes", "left", "total", "fits"}
    (constraint,) = request["constraints"]
    uuid = device["device"].replace("gpu-", "GPU-", 1)
    assert constraint == {
        "index": 0, "kind": "distinctAttribute", "attribute": "gpudra.io/uuid", "requests": [], "needed": 4,
        "groups": [{"value": f"'{uuid}'", "devices": [device["device"]]}],
        "withoutValue": [], "satisfiable": False,
    }  # fmt: skip


def test_all_devices_names_every_device(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path / "c.yaml", claim("one", exactly("gpu", "gpu.gpudra.io")))
    static = ["--profile", "dgx-h100", "--mig-management=static"]
    assert explain_cli.main(["-f", path, *static]) == 0
    assert " and 3 more" in capsys.readouterr().out
    assert explain_cli.main(["-f", path, *static, "--all-devices"]) == 0
    out = capsys.readouterr().out
    assert " more" not in out
    assert "gpu-0b100000-0000-0000-0000-000000000007" in out
