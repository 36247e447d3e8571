"""``hack/bench --quick`` as CI runs it: the whole benchmark on a few claims, checked for shape and for the
validation verdict. No timing is asserted: budgets are read from the benchmark's output, not tested here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
ROWS = {
    "prepare_sequential",
    "prepare_16_per_call",
    "prepare_8_in_flight",
    "unprepare_sequential",
    "rss",
    "exec_to_first_slice",
    "idle_requests",
    "sigterm_exit",
    "discovery_gpus",
    "discovery_mig",
    "dynamic_mig",
    "floor_grpc",
    "floor_get",
    "floor_get_client",
    "floor_fsync",
    "floor_atomic_write",
}
PERCENTILES = ("n", "p50_ms", "p90_ms", "p99_ms", "max_ms")


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    out = tmp_path_factory.mktemp("bench")
    cmd = [
        sys.executable,
        str(REPO / "hack" / "bench"),
        "--quick",
        "--json",
        str(out / "bench.json"),
        "--markdown",
        str(out / "bench.md"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    results = json.loads((out / "bench.json").read_text()) if (out / "bench.json").exists() else {}
    markdown = (out / "bench.md").read_text() if (out / "bench.md").exists() else ""
    return proc, results, markdown


@pytest.mark.integration
def test_quick_run_exits_zero_with_validation_passed(quick_run: tuple[Any, dict[str, Any], str]) -> None:
    proc, results, _ = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    validation = results["validation"]
    assert validation["passed"] is True
    assert validation["failed"] == 0
    assert validation["failures"] == []
    # 16 claims x 4 phases, each checked for device, pool, request, CDI id and spec file: hundreds of checks.
    assert validation["checks"] > 16 * 4 * 5


@pytest.mark.integration
def test_every_budget_row_is_reported_without_a_verdict(quick_run: tuple[Any, dict[str, Any], str]) -> None:
    _, results, markdown = quick_run
    rows = {row["key"]: row for row in results["rows"]}
    assert set(rows) == ROWS
    for row in rows.values():
        assert row["value"], row
        assert row["ok"] is None, "a --quick run must not give a budget verdict"
        assert row["row"] in markdown
    assert results["mode"] == "quick"


@pytest.mark.integration
def test_phases_report_percentiles_and_throughput(quick_run: tuple[Any, dict[str, Any], str]) -> None:
    _, results, _ = quick_run
    claims = results["claims"]
    assert set(claims["phases"]) == {"sequential", "batch16", "inflight8"}
    for phase in claims["phases"].values():
        for side in ("prepare", "unprepare"):
            summary = phase[side]
            assert all(key in summary for key in PERCENTILES)
            assert summary["claims"] == results["claims_per_phase"]
            assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
            assert summary["claims_per_s"] > 0
    # warm-up + 3 phases, each prepare and unprepare: 16 one-claim calls, or one 16-claim call
    assert claims["calls"] == 2 * (16 + 16 + 1 + 16)
    assert claims["rss"]["after_calls"]["VmRSS"] > 0
    assert claims["idle"]["requests"] == 0


@pytest.mark.integration
def test_slices_are_split_and_startup_measured(quick_run: tuple[Any, dict[str, Any], str]) -> None:
    _, results, _ = quick_run
    claims, startup = results["claims"], results["startup"]
    assert claims["profile"] == "synthetic-256"
    assert claims["devices"] == 256
    assert claims["slices"] == [128, 128]
    assert startup["profile"] == "dgx-h100"
    assert len(startup["runs"]) == 2
    assert startup["sigterm_exit_ms"]["n"] == 2
    # dgx-h100 against the stand-in's default gates: dynamic MIG falls back to static, and ready is the first
    # slice with devices (the counter-set slice written first has none and is deleted again)
    assert startup["exec_to_any_slice_ms"]["n"] == 2
    assert all(run["first_slice"] and run["first_slice_of_any_kind"] for run in startup["runs"])
    assert results["discovery"]["gpus"]["devices"] == 8
    floors = results["floors"]
    assert {"grpc_noop", "get_bare", "get_client", "disk"} <= set(floors)


@pytest.mark.integration
def test_dynamic_mig_phase_prepares_created_mig_devices(quick_run: tuple[Any, dict[str, Any], str]) -> None:
    _, results, markdown = quick_run
    mig = results["dynamic_mig"]
    assert mig["profile"] == "dgx-h100"
    assert mig["gate"] == {"DRAPartitionableDevices": True}
    # 8 H100s, each whole plus 25 MIG placements; 4 device slices (<= 64 devices) and one of counter sets
    assert mig["devices"] == 8 * 26
    assert sorted(mig["slices"]) == [0, 16, 64, 64, 64]
    assert mig["counter_sets"] == 8
    assert mig["claims_per_round"] == 7
    assert mig["claims"] == 7 * mig["rounds"] >= results["claims_per_phase"]
    assert mig["calls"] == 2 * 7 * (mig["rounds"] + 1)  # a warm-up round, then the measured ones
    for side in ("prepare", "unprepare"):
        summary = mig[side]
        assert all(key in summary for key in PERCENTILES)
        assert summary["n"] == mig["claims"]
        assert summary["p50_ms"] <= summary["p90_ms"] <= summary["p99_ms"] <= summary["max_ms"]
        assert {"plugin", "api", "client"} <= set(summary["cpu_ms_per_claim"])
    assert "Dynamic MIG (dgx-h100" in markdown
