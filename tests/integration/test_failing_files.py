"""A CDI directory the plugin cannot write: each claim fails on its own, nothing stays reserved, and the
plugin carries on (issue 13, item 7)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from tests.integration.conftest import PluginProcess, device_names, make_claim

pytestmark = pytest.mark.integration


def _records(plugin: PluginProcess) -> dict[str, object]:
    path = plugin.state_dir / "checkpoint.json"
    claims: dict[str, object] = {}
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        if "claims" in doc:
            claims = dict(doc["claims"])
        elif "put" in doc:
            claims[doc["put"]] = doc["claim"]
        elif "del" in doc:
            claims.pop(doc["del"], None)
    return claims


def test_an_unwritable_cdi_dir_fails_each_claim_and_reserves_nothing(
    api: FakeApiServer, plugin: PluginProcess
) -> None:
    a, b = (make_claim(api, name, [dev]) for name, dev in zip(("a", "b"), device_names(api)[:2], strict=True))
    shutil.rmtree(plugin.cdi_root, ignore_errors=True)
    plugin.cdi_root.write_text("not a directory")  # every write and every clean-up in it fails
    with plugin.client() as client:
        answer = client.prepare([a, b]).claims  # answered per claim, not an INTERNAL error for the call
    for claim in (a, b):
        assert "cannot prepare devices" in answer[claim.uid].error
        assert "Not a directory" in answer[claim.uid].error
    assert _records(plugin) == {}  # nothing left reserved
    plugin.cdi_root.unlink()
    with plugin.client() as client:
        assert client.prepare([a]).claims[a.uid].error == ""  # the same device, now that the dir is back
    plugin.assert_alive()


def test_a_checkpoint_that_cannot_grow_fails_claims_not_calls(api: FakeApiServer, short_tmp: Path) -> None:
    """A full disk, as the checkpoint sees it: appends fail (RLIMIT_FSIZE gives EFBIG; Python ignores
    SIGXFSZ). Each call is answered claim by claim, and the plugin stays up."""
    plugin = PluginProcess(short_tmp, api, limits=["--fsize=6000"]).start()
    try:
        assert api.wait_for(lambda: device_names(api), timeout=20), plugin.log()
        errors: list[str] = []
        with plugin.client() as client:
            for i, dev in enumerate(device_names(api)):
                claim = make_claim(api, f"c{i}", [dev])
                errors.append(client.prepare([claim]).claims[claim.uid].error)  # never an RpcError
                if errors[-1]:
                    break
        assert errors[0] == ""  # the first claims fit
        assert "File too large" in errors[-1]
        plugin.assert_alive()
    finally:
        plugin.terminate()
