"""``gpudra-dev demo --scenario health``: every step is observed and printed, in order (the command as a
subprocess), and a step that does not happen ends the demo with exit code 1 and its name (in-process). No
timing is asserted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gpudra.devtools import cli, demo_health
from gpudra.devtools.demo import DemoError

pytestmark = pytest.mark.integration  # the real plugin: gRPC servers, the stand-in API server

VICTIM = "gpu-0b100000-0000-0000-0000-000000000002"


def test_the_scenario_shows_a_gpu_going_unhealthy_and_recovering() -> None:
    command = [sys.executable, "-m", "gpudra.devtools.cli", "demo", "--scenario", "health"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    titles = [
        f"==> [{n}/{len(demo_health.STEPS)}] {title}" for n, (title, _) in enumerate(demo_health.STEPS, 1)
    ]
    positions = [out.index(t) for t in titles]  # every step printed ...
    assert positions == sorted(positions)  # ... in order
    assert f"{VICTIM} UNHEALTHY: Xid 48: double-bit ECC error" in out
    assert f"ResourceSlice {VICTIM}: gpudra.io/xid=48:NoExecute" in out
    assert f"error: device {VICTIM} is unhealthy: Xid 48" in out
    assert f"ResourceSlice {VICTIM}: no taint" in out
    assert f"    {VICTIM} HEALTHY\n==> [9/" in out  # the stream's recovery, before the prepare that succeeds
    assert "NodePrepareResources default/demo-sick-gpu -> ['k8s.gpudra.io/claim=" in out
    assert "health stream ended with status OK, DRA and registration sockets removed" in out
    assert out.rstrip().endswith("every step observed")
    assert "FAILED" not in out


def test_a_step_that_does_not_happen_is_named_and_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(_: object) -> str:
        raise DemoError("not seen within 15 s")

    monkeypatch.setattr(demo_health, "STEPS", (demo_health.STEPS[0], ("the taint appears", never)))
    assert demo_health.run() == 1  # the plugin started by step 1 is stopped on the way out
    out = capsys.readouterr().out
    assert "==> [1/2] " in out
    assert "FAILED at step 2 (the taint appears): not seen within 15 s" in out
    assert "demo finished" not in out


def test_the_health_scenario_refuses_another_profile(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["demo", "--scenario", "health", "--profile", "h100"])
    assert exit_info.value.code == 2
    assert "dgx-h100 profile only" in capsys.readouterr().err
