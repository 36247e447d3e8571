"""NodePrepareResources / NodeUnprepareResources against the real plugin process, over the real sockets."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from gpudra.state.checkpoint import load_document
from tests.integration.conftest import (
    NODE,
    PluginProcess,
    cdi_spec_path,
    device_names,
    make_claim,
    unknown_claim,
)

pytestmark = pytest.mark.integration

# Share IDs in the API format (a normalized lowercase UUID)
SHARE_A, SHARE_B = "aaaaaaaa-0000-4000-8000-000000000001", "bbbbbbbb-0000-4000-8000-000000000002"


def _checkpoint(plugin: PluginProcess) -> dict[str, Any]:
    return load_document((plugin.state_dir / "checkpoint.json").read_bytes())


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_prepare_then_unprepare(api: FakeApiServer, plugin: PluginProcess, version: Any) -> None:
    dev = device_names(api)[0]
    claim = make_claim(api, "one-gpu", [dev])
    with plugin.client(version) as client:
        result = client.prepare([claim]).claims[claim.uid]
        assert result.error == ""
        [device] = result.devices
        assert (list(device.request_names), device.pool_name, device.device_name) == (["gpu0"], NODE, dev)
        assert list(device.cdi_device_ids) == [f"{names.CDI_KIND}={claim.uid}-{dev}"]

        spec_file = cdi_spec_path(plugin, claim.uid)
        spec = yaml.safe_load(spec_file.read_text())
        assert spec["kind"] == names.CDI_KIND
        assert [d["name"] for d in spec["devices"]] == [f"{claim.uid}-{dev}"]
        env = spec["devices"][0]["containerEdits"]["env"]
        uuid = next(d["attributes"]["uuid"]["string"] for d in _slice_devices(api) if d["name"] == dev)
        assert any(e.endswith(f"_UUID={uuid}") for e in env)
        assert "deviceNodes" not in spec["devices"][0]["containerEdits"]  # mock: no device nodes
        assert _checkpoint(plugin)["claims"][claim.uid]["state"] == "PrepareCompleted"

        assert client.unprepare([claim]).claims[claim.uid].error == ""
        assert not spec_file.exists()
        assert claim.uid not in _checkpoint(plugin)["claims"]
        # unpreparing again (or a claim never seen) is success
        assert client.unprepare([claim, unknown_claim()]).claims[claim.uid].error == ""


def _slice_devices(api: FakeApiServer) -> list[dict[str, Any]]:
    return [d for s in api.list_objects("ResourceSlice") for d in s["spec"]["devices"]]


def test_prepare_is_idempotent(api: FakeApiServer, plugin: PluginProcess) -> None:
    claim = make_claim(api, "twice", device_names(api)[:2])
    with plugin.client() as client:
        first = client.prepare([claim]).claims[claim.uid]
        second = client.prepare([claim]).claims[claim.uid]
    assert first.error == ""
    assert len(first.devices) == 2
    assert first == second
    assert len(list(plugin.cdi_root.glob("*.yaml"))) == 1


def test_errors_are_per_claim(api: FakeApiServer, plugin: PluginProcess) -> None:
    devs = device_names(api)
    good = make_claim(api, "good", [devs[0]])
    holder = make_claim(api, "holder", [devs[1]])
    with plugin.client() as client:
        assert client.prepare([holder]).claims[holder.uid].error == ""
        wrong_uid = make_claim(api, "wrong-uid", [devs[2]])
        wrong_uid = type(wrong_uid)(
            wrong_uid.namespace, wrong_uid.name, "00000000-0000-0000-0000-000000000000"
        )
        cases = {
            "missing": unknown_claim(),
            "wrong_uid": wrong_uid,
            "other_driver": make_claim(api, "other-driver", [devs[3]], driver="gpu.example.com"),
            "bad_config": make_claim(
                api,
                "bad-config",
                [devs[4]],
                config=[
                    {
                        "source": "FromClaim",
                        "requests": [],
                        "opaque": {
                            "driver": names.DRIVER_NAME,
                            "parameters": {"apiVersion": "gpudra.io/v1", "kind": "NoSuchConfig"},
                        },
                    }
                ],
            ),
            "in_use": make_claim(api, "in-use", [devs[1]]),
            "unknown_device": make_claim(api, "unknown-device", ["gpu-does-not-exist"]),
            "other_pool": make_claim(api, "other-pool", [devs[5]], pool="node-b"),
        }
        response = client.prepare([good, *cases.values()])
    assert response.claims[good.uid].error == ""
    assert len(response.claims[good.uid].devices) == 1
    errors = {key: response.claims[c.uid].error for key, c in cases.items()}
    assert "not found" in errors["missing"]
    assert "UID" in errors["wrong_uid"]
    assert "not allocated any device of driver gpudra.io" in errors["other_driver"]
    assert "NoSuchConfig" in errors["bad_config"]
    assert f"device {devs[1]} is already prepared for claim {holder.uid}" in errors["in_use"]
    assert "gpu-does-not-exist is not on this node" in errors["unknown_device"]
    assert "pool 'node-b'" in errors["other_pool"]
    # failed claims leave nothing behind
    on_disk = {p.name for p in plugin.cdi_root.glob("*.yaml")}
    assert on_disk == {cdi_spec_path(plugin, u).name for u in (good.uid, holder.uid)}


def test_sharing_needs_admin_access_or_share_ids(api: FakeApiServer, plugin: PluginProcess) -> None:
    dev = device_names(api)[0]
    first = make_claim(api, "first", [dev])
    admin = make_claim(api, "admin", [dev], admin_access=True)
    shared_a = make_claim(api, "shared-a", [device_names(api)[1]], share_id=SHARE_A)
    shared_b = make_claim(api, "shared-b", [device_names(api)[1]], share_id=SHARE_B)
    with plugin.client() as client:
        response = client.prepare([first, admin, shared_a, shared_b])
    assert {c.name: response.claims[c.uid].error for c in (first, admin, shared_a, shared_b)} == {
        "first": "",
        "admin": "",
        "shared-a": "",
        "shared-b": "",
    }
    assert response.claims[shared_b.uid].devices[0].share_id == SHARE_B


def test_concurrent_prepares_of_different_pods(api: FakeApiServer, plugin: PluginProcess) -> None:
    devs = device_names(api)
    claims = [make_claim(api, f"pod-{i}", [dev]) for i, dev in enumerate(devs)]

    def prepare(claim: Any) -> tuple[str, list[str]]:
        with plugin.client() as client:
            r = client.prepare([claim]).claims[claim.uid]
            return r.error, [d.device_name for d in r.devices]

    with ThreadPoolExecutor(len(claims)) as pool:
        results = list(pool.map(prepare, claims))
    assert [err for err, _ in results] == [""] * len(devs)
    assert sorted(d for _, ds in results for d in ds) == devs
    assert set(_checkpoint(plugin)["claims"]) == {c.uid for c in claims}


def test_concurrent_claims_for_one_device_exactly_one_wins(api: FakeApiServer, plugin: PluginProcess) -> None:
    dev = device_names(api)[0]
    claims = [make_claim(api, f"race-{i}", [dev]) for i in range(6)]

    def prepare(claim: Any) -> str:
        with plugin.client() as client:
            return str(client.prepare([claim]).claims[claim.uid].error)

    with ThreadPoolExecutor(len(claims)) as pool:
        errors = list(pool.map(prepare, claims))
    assert errors.count("") == 1
    assert all("already prepared" in e for e in errors if e)
    assert len(list(plugin.cdi_root.glob("*.yaml"))) == 1


def test_batch_of_claims_in_one_call(api: FakeApiServer, plugin: PluginProcess) -> None:
    devs = device_names(api)
    claims = [make_claim(api, f"batch-{i}", [dev]) for i, dev in enumerate(devs)]
    with plugin.client() as client:
        response = client.prepare(claims)
        assert {uid: r.error for uid, r in response.claims.items()} == {c.uid: "" for c in claims}
        unprepared = client.unprepare(claims)
    assert {uid: r.error for uid, r in unprepared.claims.items()} == {c.uid: "" for c in claims}
    assert list(plugin.cdi_root.glob("*.yaml")) == []
    assert _checkpoint(plugin)["claims"] == {}
    plugin.assert_alive()


def test_a_malformed_claim_fails_alone(api: FakeApiServer, plugin: PluginProcess) -> None:
    good = make_claim(api, "good", device_names(api)[:1])
    bad = make_claim(api, "malformed", device_names(api)[1:2])
    stored = api.get_object("ResourceClaim", "malformed", "default")
    assert stored is not None
    stored["status"]["allocation"]["devices"]["results"] = [None]  # no API server writes this
    api.put_object(stored)
    with plugin.client() as client:
        response = client.prepare([bad, good])
        assert response.claims[good.uid].error == ""
        assert "is malformed: status.allocation.devices.results[0]" in response.claims[bad.uid].error
        assert client.unprepare([good]).claims[good.uid].error == ""  # still serving
