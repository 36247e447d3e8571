"""``gpudra-dev demo --scenario sharing``: every step is observed and printed, in order (the command as a
subprocess): three shares of one H100 each limited by its own MPS daemon, time-slicing set and put back, a
share too big refused. No timing is asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpudra.devtools import demo_sharing

pytestmark = pytest.mark.integration  # the real plugin: gRPC servers, the stand-in API server, MPS daemons

GPU0 = "GPU-0b100000-0000-0000-0000-000000000000"


def test_the_scenario_shows_gpus_shared_and_each_share_enforced() -> None:
    command = [sys.executable, "-m", "gpudra.devtools.cli", "demo", "--scenario", "sharing"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    titles = [
        f"==> [{n}/{len(demo_sharing.STEPS)}] {title}" for n, (title, _) in enumerate(demo_sharing.STEPS, 1)
    ]
    positions = [out.index(t) for t in titles]  # every step printed ...
    assert positions == sorted(positions)  # ... in order
    assert out.count("consumedCapacity {'memory': '20Gi'") == 2
    assert f"active threads 26%, pinned memory limit {GPU0} 20Gi" in out
    assert f"active threads 49%, pinned memory limit {GPU0} 39Gi" in out
    assert f"GPU {GPU0}: compute mode DEFAULT" in out
    assert "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps, /tmp/nvidia-mps <- " in out
    assert "time-slice Long (level 3" in out
    assert "unprepared: the time-slice is Default again" in out
    assert "-> error: cannot prepare devices: status.allocation.devices.results[0].consumedCapacity" in out
    assert "their MPS daemons stopped, their directories removed" in out
    assert out.rstrip().endswith("every step observed")
    assert "FAILED" not in out
