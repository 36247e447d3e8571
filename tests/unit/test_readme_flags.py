"""The README's `gpudra run` flags table names every option the CLI defines, with its environment twin.

The options are read from the CLI's own option lists (not from its source text), so a new flag without a
row, or a row whose twin was renamed, fails here.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpudra import cli
from gpudra.runtime.flags import Opt

README = Path(__file__).resolve().parents[2] / "README.md"
OPTIONS: list[Opt] = [*cli.COMMON_OPTS, *cli.BACKEND_OPTS, *cli.RUN_OPTS]


def _flags_table() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index("## `gpudra run` flags")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def test_the_option_lists_are_not_empty() -> None:
    assert len(OPTIONS) >= 20  # the lists this test reads are the real ones
    assert {"--node-name", "--fractional-gpus", "--mps-launcher"} <= {o.flag for o in OPTIONS}


@pytest.mark.parametrize("opt", OPTIONS, ids=lambda o: o.flag)
def test_every_option_has_a_row_with_its_twin(opt: Opt) -> None:
    short = [f"`{opt.short}`"] if opt.short else []
    spellings = [opt.flag, "--[no-]" + opt.flag.removeprefix("--"), *short]
    rows = [
        line
        for line in _flags_table().splitlines()
        if line.startswith("| ") and any(s in line.split("|")[1] for s in spellings)
    ]
    assert rows, f"README's flags table has no row for {opt.flag}"
    assert any(f"`{opt.env}`" in row for row in rows), f"the row of {opt.flag} does not name {opt.env}"
