"""`gpudra discover`'s table says what the driver publishes: the MEMORY column is each device's published
`memory` capacity (for an AMD compute partition its share of the pool it draws from, not the whole pool), and
the README's sample footer is the real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpudra import cli

README = Path(__file__).resolve().parents[2] / "README.md"


def _discover(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    assert cli.main(["discover", "--backend", "mock", *args]) == 0
    return capsys.readouterr().out


def _table(text: str) -> dict[str, str]:
    """device name -> its MEMORY cell."""
    header, *rows = text.split("\n\n", maxsplit=1)[0].splitlines()
    start, end = header.index("MEMORY"), header.index("PCI BUS ID")
    return {row.split()[0]: row[start:end].strip() for row in rows}


@pytest.mark.parametrize(
    ("profile", "rows"),
    [("mi300x-8-cpx-nps4", 64), ("mi300x-8-spx-nps1", 8), ("dgx-h100", 8), ("h100-mig-mixed", 10)],
)
def test_memory_column_is_the_published_memory(
    profile: str, rows: int, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _table(_discover(capsys, "--profile", profile))
    slices = json.loads(_discover(capsys, "--profile", profile, "-o", "json"))["items"]
    published = {
        d["name"]: int(d["capacity"]["memory"]["value"])
        for s in slices
        for d in s["spec"].get("devices", [])
        if "memory" in d.get("capacity", {})
    }
    compared = {name: cell for name, cell in table.items() if name in published}
    assert len(compared) == rows
    for name, cell in compared.items():
        assert cell.split(" GiB")[0] == f"{published[name] / 2**30:.1f}", name


def test_partitions_show_their_share_and_the_pool(capsys: pytest.CaptureFixture[str]) -> None:
    table = _table(_discover(capsys, "--profile", "mi300x-8-cpx-nps4"))
    # CPX + NPS4 on MI300X: each 48 GiB NPS4 pool feeds the 2 XCD partitions of one AID
    assert set(table.values()) == {"24.0 GiB (pool 48.0 GiB / 2)"}


def test_readme_shows_the_real_footer(capsys: pytest.CaptureFixture[str]) -> None:
    footer = _discover(capsys, "--profile", "dgx-h100").rstrip("\n").splitlines()[-1]
    assert footer == "8 GPU(s); driver 580.105.8, CUDA 13.0.0"
    assert f"\n{footer}\n```" in README.read_text()
