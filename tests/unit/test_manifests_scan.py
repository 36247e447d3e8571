"""Scanners over the deploy manifests: checkov on every overlay as kustomize renders it (and on
hack/Dockerfile), with every accepted finding explained, and the Dockerfile's own rules."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.manifest_tools import DAEMONSET, ROOT, kustomize
from tests.unit.test_manifests import OVERLAYS


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


def checkov_path() -> str:
    path = os.environ.get("CHECKOV") or ""
    if not path:
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail("CHECKOV is not set: .ci/run installs checkov and sets it")
        pytest.skip("checkov is not installed (set CHECKOV=/path/to/checkov to run this check)")
    return path


def test_checkov_finds_nothing_unexplained(tmp_path: Path) -> None:
    checkov = checkov_path()
    for name in OVERLAYS:
        (tmp_path / f"{name}.yaml").write_text(
            yaml.safe_dump_all(kustomize(DAEMONSET / "overlays" / name), sort_keys=False)
        )
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
