"""At ``-vv`` the plugin logs one line per claim it prepared and one per claim it unprepared (issue 17)."""

from __future__ import annotations

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.devtools.kubeletsim import Claim
from tests.integration.conftest import PluginProcess, device_names, make_claim, unknown_claim

pytestmark = pytest.mark.integration


def _lines(log: str, text: str) -> list[str]:
    return [line.split(text, 1)[1] for line in log.splitlines() if text in line]


def _ref(claim: Claim) -> str:
    return f"{claim.namespace}/{claim.name}:{claim.uid}"


def test_one_debug_line_per_prepared_and_unprepared_claim(api: FakeApiServer, plugin: PluginProcess) -> None:
    d1, d2, d3 = device_names(api)[:3]
    two, one, never = make_claim(api, "two", [d1, d2]), make_claim(api, "one", [d3]), unknown_claim()
    with plugin.client() as client:
        assert [r.error for r in client.prepare([two, one]).claims.values()] == ["", ""]
        answer = client.unprepare([two, one, never])
    assert [answer.claims[c.uid].error for c in (two, one, never)] == ["", "", ""]

    log = plugin.log()
    for claim, devices in ((two, f"{d1}, {d2}"), (one, d3)):
        assert _lines(log, f" prepared {_ref(claim)}: ") == [devices]
        assert _lines(log, f" unprepared {_ref(claim)}: ") == [devices]
    assert _lines(log, f" unprepared {_ref(never)}: ") == ["no record"]
    plugin.assert_alive()
