"""``python -m gpudra.devtools.fakeapi``: serves in its own process, writes a kubeconfig, exits on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import yaml


def test_standalone_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gpudra.devtools.fakeapi",
            "--port",
            "0",
            "--kubeconfig",
            str(kubeconfig),
            "--gate",
            "DRADeviceTaints=true",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        url = process.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        config = yaml.safe_load(kubeconfig.read_text())
        assert config["clusters"][0]["cluster"]["server"] == url
        with urllib.request.urlopen(f"{url}/version", timeout=5) as response:
            assert json.load(response)["major"] == "1"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0


def test_bad_gate_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gpudra.devtools.fakeapi", "--gate", "DRADeviceTaints=maybe"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "expected <gate>=true|false" in result.stderr
