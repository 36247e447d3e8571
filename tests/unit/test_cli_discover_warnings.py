"""``gpudra discover`` reports each discovery warning once on stderr, whatever the output format (issue 17:
the vendor driver logged it and the command printed it again)."""

from __future__ import annotations

import subprocess
import sys

import pytest

#: The mock's BMC layout: a VGA card takes a DRM minor, so one CPX partition has no render node.
PROFILE = "mi300x-8-cpx-nps4-bmc"
WARNING = "partition 7 (0000:e5:00.7) not published"


@pytest.mark.parametrize("output", ["table", "json"])
def test_discover_reports_a_warning_once(output: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpudra", "discover", "--backend", "mock", "--profile", PROFILE, "-o", output],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert done.stderr.count(WARNING) == 1, done.stderr
    assert WARNING not in done.stdout
    assert "63 partition(s)" in done.stdout if output == "table" else '"kind": "List"' in done.stdout
