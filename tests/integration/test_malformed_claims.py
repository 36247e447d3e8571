"""Malformed ResourceClaims through the real plugin (issue 13, items 8 and 10).

Each claim below is stored in the stand-in API server as is (it validates claims lightly; every shape here
passes it) and prepared in ONE call with a well-formed neighbour. Each malformed claim fails alone, with
the bad field named and one warning line (no traceback); it leaves no CDI spec; the neighbour is prepared.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.planning.devicemeta import POD_CLAIM_NAME_ANNOTATION
from tests.integration.conftest import PluginProcess, cdi_spec_path, device_names, make_claim

pytestmark = pytest.mark.integration

RESULTS = "status.allocation.devices.results"
CONFIG = "status.allocation.devices.config"
Mutation = Callable[[dict[str, Any]], None]


def _devices(c: dict[str, Any]) -> dict[str, Any]:
    devices: dict[str, Any] = c["status"]["allocation"]["devices"]
    return devices


def _result(key: str, value: object) -> Mutation:
    return lambda c: _devices(c)["results"][0].__setitem__(key, value)


def _set_devices(key: str, value: object) -> Mutation:
    return lambda c: _devices(c).__setitem__(key, value)


def _set(path: tuple[str, ...], value: object) -> Mutation:
    def mutate(c: dict[str, Any]) -> None:
        node = c
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


OUR_CONFIG = {"source": "FromClaim", "opaque": {"driver": "gpudra.io", "parameters": {"apiVersion": "a/v1"}}}
TRAVERSAL = "../../../../etc"

#: name -> (what is done to a stored, valid claim; what the error must say)
SHAPES: dict[str, tuple[Mutation, str]] = {
    "null-allocation": (
        _set(("status", "allocation"), None),
        "status.allocation: expected an object, got null",
    ),
    "null-devices": (
        _set(("status", "allocation", "devices"), None),
        "status.allocation.devices: expected an object, got null",
    ),
    "results-string": (_set_devices("results", "gpu-0"), f"{RESULTS}: expected a list, got string"),
    "results-object": (_set_devices("results", {"a": 1}), f"{RESULTS}: expected a list, got object"),
    "results-number": (_set_devices("results", 3), f"{RESULTS}: expected a list, got number"),
    "results-null": (_set_devices("results", None), f"{RESULTS}: expected a list, got null"),
    "result-null": (_set_devices("results", [None]), f"{RESULTS}[0]: expected an object, got null"),
    "device-list": (_result("device", ["gpu-0"]), f"{RESULTS}[0].device: expected a string, got list"),
    "request-null": (_result("request", None), f"{RESULTS}[0].request: expected a string, got null"),
    "request-number": (_result("request", 7), f"{RESULTS}[0].request: expected a string, got number"),
    "config-object": (_set_devices("config", {}), f"{CONFIG}: expected a list, got object"),
    "config-null-entry": (_set_devices("config", [None]), f"{CONFIG}[0]: expected an object, got null"),
    "annotations-list": (
        _set(("metadata", "annotations"), ["x"]),
        "metadata.annotations: expected an object, got list",
    ),
    "share-id-number": (_result("shareID", 7), f"{RESULTS}[0].shareID: expected a string, got number"),
    "share-id-not-a-uid": (
        _result("shareID", "aaaa"),
        f'{RESULTS}[0].shareID: invalid value "aaaa": must be a UID',
    ),
    "admin-access-string": (
        _result("adminAccess", "false"),
        f"{RESULTS}[0].adminAccess: expected a bool, got string",
    ),
    "config-without-kind": (
        _set_devices("config", [OUR_CONFIG]),
        f"{CONFIG}[0].opaque.parameters.kind: required value is missing",
    ),
    # item 10: names that become paths inside the container
    "request-dotdot": (
        _result("request", ".."),
        f'{RESULTS}[0].request: invalid value "..": must be a request name',
    ),
    "pod-claim-traversal": (
        _set(("metadata", "annotations"), {POD_CLAIM_NAME_ANNOTATION: TRAVERSAL}),
        f"metadata.annotations[{POD_CLAIM_NAME_ANNOTATION}]: "
        f'invalid value "{TRAVERSAL}": must be a DNS label',
    ),
}


def _store_malformed(api: FakeApiServer, name: str, device: str, mutate: Mutation) -> Any:
    claim = make_claim(api, name, [device])
    stored = api.get_object("ResourceClaim", name, "default")
    assert stored is not None
    mutate(stored)
    api.put_object(stored)
    served = api.get_object("ResourceClaim", name, "default")
    assert served is not None
    assert json.dumps(served["status"], sort_keys=True) == json.dumps(stored["status"], sort_keys=True)
    return claim


def test_each_malformed_claim_fails_alone_naming_the_field(api: FakeApiServer, plugin: PluginProcess) -> None:
    devices = device_names(api)
    good = make_claim(api, "good", [devices[0]])
    bad = {name: _store_malformed(api, name, devices[1], mutate) for name, (mutate, _) in SHAPES.items()}
    before = plugin.log()
    with plugin.client() as client:
        answer = client.prepare([*bad.values(), good]).claims
        assert answer[good.uid].error == ""
        assert len(answer[good.uid].devices) == 1
        for name, claim in bad.items():
            error = answer[claim.uid].error
            assert error.startswith(f"ResourceClaim default/{name} is malformed: "), (name, error)
            assert SHAPES[name][1] in error, (name, error)
            assert not answer[claim.uid].devices
            assert not cdi_spec_path(plugin, claim.uid).exists()
        added = plugin.log()[len(before) :]
        assert "Traceback" not in added
        assert "internal error" not in added
        assert sum(f"default/{name}:" in line for line in added.splitlines() for name in bad) == len(bad)
        assert client.unprepare([good]).claims[good.uid].error == ""  # still serving
    plugin.assert_alive()
