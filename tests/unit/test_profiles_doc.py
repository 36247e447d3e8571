"""docs/profiles.md, the mock profile schema for users: its two examples load and are discovered by the real
vendor code, and it names every key the profile readers accept (a key added to a reader without a line in the
doc fails here)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpudra import cli
from gpudra.vendors.mock import (
    amd_profile,
    profile,
    profile_events,
    profile_links,
    profile_mig,
    profile_usage,
)

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "profiles.md").read_text()
EXAMPLES = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", DOC, re.DOTALL)]


def test_the_doc_has_one_example_per_vendor() -> None:
    assert [e.get("vendor", "nvidia") for e in EXAMPLES] == ["nvidia", "amd"]


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda e: str(e["name"]))
def test_each_example_is_discovered(
    example: dict[str, object], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "node.json"
    path.write_text(json.dumps(example))
    assert cli.main(["discover", "--backend", "mock", "--profile", str(path), "-o", "json"]) == 0
    [slice_] = json.loads(capsys.readouterr().out)["items"]
    [device] = slice_["spec"]["devices"]
    assert device["attributes"]["productName"]["string"] in ("NVIDIA L4", "AMD Instinct MI210")
    assert int(device["capacity"]["memory"]["value"]) > 20 * 2**30


def _accepted_keys() -> set[str]:
    return set().union(
        profile._TOP_KEYS,
        profile._DEVICE_KEYS,
        profile._PCI_KEYS,
        profile_mig.MIG_KEYS,
        profile_mig._MIG_KEYS,
        profile_mig._INSTANCE_KEYS,
        profile_mig.GI_PROFILE_FIELDS,
        profile_mig.CI_PROFILE_FIELDS,
        profile_links.LINK_KEYS,
        profile_events.HEALTH_KEYS,
        profile_events._EVENT_KEYS,
        profile_usage.USAGE_KEYS,
        amd_profile._TOP,
        amd_profile._MODEL,
        amd_profile._GPU,
        amd_profile._SMI,
        amd_profile._FAULTS,
    )


def test_every_accepted_key_is_documented() -> None:
    missing = sorted(k for k in _accepted_keys() if f"`{k}`" not in DOC and f'"{k}"' not in DOC)
    assert not missing, f"docs/profiles.md does not describe {missing}"


def test_readme_points_to_the_schema() -> None:
    assert "docs/profiles.md" in (ROOT / "README.md").read_text()
