"""A big checkpoint costs bounded memory (issue 13, item 4): sizes no node reaches are refused before a byte
is read, and a log within the limit is read line by line. Each case loads the file in a fresh process and
reports how much its peak RSS grew. The peak is the kernel's VmHWM, reset to the RSS just before the load:
``ru_maxrss`` would do, but a child's starts at its parent's RSS at fork (pytest's, ~40 MiB), which hides
the load's own peak; it is reported alongside."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpudra.state.checkpoint import MAX_CHECKPOINT_BYTES, CheckpointStore, ClaimRecord, PreparedDevice
from gpudra.state.checkpoint_log import encode_put

MIB = 1024 * 1024

_LOAD = """
import json, resource, sys
from pathlib import Path
from gpudra.state.checkpoint import CheckpointStore
def peak_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
with open("/proc/self/clear_refs", "w") as f:  # the peak so far (the imports) is not the load's
    f.write("5")
before = peak_kib()
seen = []
store = CheckpointStore(Path(sys.argv[1]), Path(sys.argv[1] + ".lock"), "boot",
                        on_corrupt=lambda path, why: seen.append([str(path), why]))
claims = store.snapshot()
print(json.dumps({"grew_mib": (peak_kib() - before) / 1024, "claims": len(claims), "seen": seen,
                  "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "uncertain": getattr(store, "uncertain", None)}))
"""

pytestmark = pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK),
    reason="cannot reset the peak RSS (/proc/self/clear_refs)",
)


def _load(path: Path) -> dict[str, Any]:
    command = [sys.executable, "-c", _LOAD, str(path)]
    out = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def _claim(i: int) -> ClaimRecord:
    uid = f"{i:08d}-1111-2222-3333-444444444444"
    device = PreparedDevice("gpu", "node-a", f"gpu-{i % 8}", (f"k8s.gpudra.io/claim={uid}-gpu",))
    return ClaimRecord(
        uid, "default", f"claim-{i}", "PrepareCompleted", (device,), f"/var/run/cdi/{uid}.json"
    )


def _log(path: Path, size: int) -> None:
    """A valid log of ``size`` bytes: a snapshot, then 100 claims put over and over (never compacted)."""
    block = b"".join(encode_put(_claim(i)) for i in range(100))
    head = json.dumps({"version": 3, "bootId": "boot", "claims": {}}).encode() + b"\n"
    with path.open("wb") as f:
        f.write(head)
        f.write(block * ((size - len(head)) // len(block)))


def test_a_huge_garbage_file_is_refused_without_reading_it(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    with path.open("wb") as f:
        f.truncate(256 * MIB)  # sparse: quick to make, 256 MiB to read
    result = _load(path)
    assert result["grew_mib"] < 16  # today's code: ~400 MiB more
    assert result["claims"] == 0
    assert result["uncertain"]
    [(aside, why)] = result["seen"]
    assert ".corrupt-" in aside
    assert Path(aside).stat().st_size == 256 * MIB  # moved aside whole, never deleted
    assert f"more than the {MAX_CHECKPOINT_BYTES}" in why


def test_a_huge_valid_log_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    _log(path, 100 * MIB)
    result = _load(path)
    assert result["grew_mib"] < 16  # today's code: ~320 MiB more, and 5-10 s to read
    [(_, why)] = result["seen"]
    assert "a checkpoint of any real node" in why


def test_a_log_within_the_limit_is_read_line_by_line(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    _log(path, MAX_CHECKPOINT_BYTES - MIB)
    result = _load(path)
    assert result["claims"] == 100
    assert result["seen"] == []
    assert result["grew_mib"] < 8  # today's code: ~3.5 x the file (+25 MiB for this 7 MiB log)


def test_garbage_within_the_limit_costs_at_most_twice_its_size(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_bytes(b"{" + b"x" * (MAX_CHECKPOINT_BYTES - 2) + b"\n")
    result = _load(path)
    assert result["grew_mib"] < 2.5 * MAX_CHECKPOINT_BYTES / MIB  # the line and its text, never more
    assert ".corrupt-" in result["seen"][0][0]


@pytest.mark.parametrize("start", [b"\x00", b"garbage", b"[1, 2]"])
def test_a_file_that_does_not_start_like_a_checkpoint_is_not_read(tmp_path: Path, start: bytes) -> None:
    path = tmp_path / "checkpoint.json"
    path.write_bytes(start + b"\n" * (MAX_CHECKPOINT_BYTES // 2))
    seen: list[str] = []
    store = CheckpointStore(path, tmp_path / "lock", "boot", on_corrupt=lambda p, why: seen.append(why))
    assert store.snapshot() == {}
    assert "not an object" in seen[0]


def test_the_writer_never_writes_a_file_over_the_limit(tmp_path: Path) -> None:
    """Appends that would cross the limit compact first; a snapshot over it fails the commit (the claims
    it would record fail), never the next start-up."""
    path = tmp_path / "checkpoint.json"
    store = CheckpointStore(path, tmp_path / "lock", "boot")
    big = "x" * 3000  # ~3 KiB claims: the limit is reached after ~2,800 of them
    added = 0
    with pytest.raises(OSError, match="over the limit") as err:  # noqa: PT012
        while True:
            with store.transaction(durable=False) as txn:
                for _ in range(200):
                    txn.put(ClaimRecord(f"u{added}", "ns", big, "PrepareCompleted", (), None))
                    added += 1
                txn.commit()
            assert path.stat().st_size <= MAX_CHECKPOINT_BYTES
    assert err.value.errno == 27  # EFBIG
    assert path.stat().st_size <= MAX_CHECKPOINT_BYTES
    assert len(CheckpointStore(path, tmp_path / "lock", "boot").snapshot()) == added - 200
