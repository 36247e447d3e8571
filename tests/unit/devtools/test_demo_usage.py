"""``gpudra-dev demo``: the default scenario shows the demo claim's usage and energy metrics, scraped over
HTTP from the real plugin, and their removal after unprepare (the command as a subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration  # the real plugin: gRPC servers, the stand-in API server, /metrics


def test_the_demo_shows_the_claims_usage_and_its_removal() -> None:
    command = [sys.executable, "-m", "gpudra.devtools.cli", "demo"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "pods: demo-gpu-pod" in out
    assert "power 298 W, utilisation 70%" in out  # 60 W + 340 W x 0.7, the mock's power model
    rises = re.search(r"default/demo-gpu: ([\d.]+) J, then ([\d.]+) J; GPUs held: 1\n", out)
    assert rises is not None, out
    assert 0 < float(rises[1]) < float(rises[2])
    steps = ["usage metrics of default/demo-gpu", "NodeUnprepareResources default/demo-gpu -> ok",
             "usage metrics: the claim's series are gone", "demo finished: all steps checked"]  # fmt: skip
    positions = [out.index(s) for s in steps]
    assert positions == sorted(positions)
