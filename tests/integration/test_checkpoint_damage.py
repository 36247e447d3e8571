"""The real ``gpudra run`` over a damaged or unusable checkpoint (issue 13, items 2 and 3): it starts, keeps
every record it can read (so start-up clean-up keeps those claims' CDI specs) and says what it lost."""

from __future__ import annotations

import json

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from tests.integration.conftest import PluginProcess, cdi_spec_path, device_names, make_claim

pytestmark = pytest.mark.integration


def _events(api: FakeApiServer) -> list[dict[str, object]]:
    return [e for e in api.list_objects("Event") if e.get("reason") == "GpudraCheckpointCorrupted"]


def test_a_checkpoint_that_is_a_directory_does_not_stop_the_plugin(
    api: FakeApiServer, plugin: PluginProcess
) -> None:
    assert plugin.terminate() == 0
    checkpoint = plugin.state_dir / "checkpoint.json"
    checkpoint.unlink(missing_ok=True)
    checkpoint.mkdir()
    plugin.start()  # today: exit 1 with an IsADirectoryError traceback, a crash loop
    claim = make_claim(api, "after", device_names(api)[:1])
    with plugin.client() as client:
        assert client.prepare([claim]).claims[claim.uid].error == ""
    assert [p.is_dir() for p in plugin.state_dir.glob("checkpoint.json.unusable-*")] == [True]
    assert "CHECKPOINT UNUSABLE" in plugin.log()
    assert api.wait_for(lambda: _events(api), timeout=5), plugin.log()
    plugin.assert_alive()


def test_a_garbled_line_costs_one_claim_and_keeps_the_others_specs(
    api: FakeApiServer, plugin: PluginProcess
) -> None:
    """Two claims prepared; the line recording the second is garbled while the plugin is down. At start-up
    the first is still known, so its CDI spec (a running pod's devices) is kept and a repeated prepare is
    answered from the record; the damage is logged, saved and raised as an Event."""
    kept, hit = (make_claim(api, n, [d]) for n, d in zip(("kept", "hit"), device_names(api)[:2], strict=True))
    with plugin.client() as client:
        first = client.prepare([kept]).claims[kept.uid]
        assert client.prepare([hit]).claims[hit.uid].error == ""
    assert plugin.terminate() == 0
    path = plugin.state_dir / "checkpoint.json"
    lines = path.read_bytes().splitlines(keepends=True)
    [at] = [i for i, line in enumerate(lines) if hit.uid.encode() in line and b'"PrepareCompleted"' in line]
    lines[at] = lines[at][:60] + b"\x00garbled\n"
    path.write_bytes(b"".join(lines))
    plugin.start()
    assert cdi_spec_path(plugin, kept.uid).exists()  # today: the whole file is set aside and this deleted
    with plugin.client() as client:
        assert client.prepare([kept]).claims[kept.uid] == first
    records = [json.loads(line) for line in path.read_bytes().splitlines()]
    assert kept.uid in records[0]["claims"]  # compacted at once, without the damaged line
    assert "CHECKPOINT DAMAGED" in plugin.log()
    assert list(plugin.state_dir.glob("checkpoint.json.damaged-*"))
    assert api.wait_for(lambda: _events(api), timeout=5), plugin.log()
    plugin.assert_alive()


def test_the_specs_of_a_damaged_record_stay_until_the_kubelet_unprepares(
    api: FakeApiServer, plugin: PluginProcess
) -> None:
    """The claim whose record is lost may still run: start-up keeps its CDI spec, and the kubelet's
    unprepare, which comes only once no pod uses it, removes it."""
    hit = make_claim(api, "hit", device_names(api)[:1])
    with plugin.client() as client:
        assert client.prepare([hit]).claims[hit.uid].error == ""
    assert plugin.terminate() == 0
    path = plugin.state_dir / "checkpoint.json"
    lines = path.read_bytes().splitlines(keepends=True)
    hits = [i for i, line in enumerate(lines) if hit.uid.encode() in line]
    assert len(hits) == 2  # PrepareStarted, PrepareCompleted: garble both, the record is lost
    for at in hits:
        lines[at] = lines[at][:60] + b"\x00garbled\n"
    path.write_bytes(b"".join(lines))
    plugin.start()
    assert cdi_spec_path(plugin, hit.uid).exists()  # before the fix: deleted at start-up, under a running pod
    assert "cannot account for" in plugin.log()
    with plugin.client() as client:
        assert client.unprepare([hit]).claims[hit.uid].error == ""
    assert not cdi_spec_path(plugin, hit.uid).exists()
    assert not [p for p in plugin.state_dir.rglob("*") if hit.uid in p.name]
    plugin.assert_alive()
