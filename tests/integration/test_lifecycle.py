"""The plugin process over its life: registration, publishing, restarts, corruption, SIGTERM."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from gpudra.devtools import kubeletsim
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from tests.integration.conftest import (
    NODE,
    PluginProcess,
    cdi_spec_path,
    device_names,
    make_claim,
    node_slices,
)

pytestmark = pytest.mark.integration

SLICES = "/apis/resource.k8s.io/v1/resourceslices"


def _watching_slices(api: FakeApiServer) -> bool:
    """The plugin opened its ResourceSlice watch: it does so after its first reconcile is done."""
    return any(r.path == SLICES and r.query.get("watch") == "true" for r in api.requests)


def test_registration_answers_like_a_dra_plugin(plugin: PluginProcess) -> None:
    info = plugin.register()
    assert (info.type, info.name) == ("DRAPlugin", names.DRIVER_NAME)
    assert info.endpoint == str(plugin.dra_socket)
    assert info.supported_versions == (
        "v1.DRAPlugin", "v1beta1.DRAPlugin", "v1.DRAResourceHealth", "v1alpha1.DRAResourceHealth",
    )  # fmt: skip
    assert "kubelet registered plugin gpudra.io" in _wait_log(plugin, "kubelet registered")


def test_the_health_stream_answers_a_kubelet_in_both_versions(plugin: PluginProcess) -> None:
    info = plugin.register()
    assert kubeletsim.health_version(info) == "v1"
    for version in ("v1", "v1alpha1"):
        with kubeletsim.HealthStream(info.endpoint, version) as stream:
            first = stream.next(timeout_s=10)
            assert len(first) == 8  # every published device
            assert {d.pool for d in first} == {NODE}
            assert {d.health for d in first} <= {"HEALTHY", "UNKNOWN"}
    plugin.assert_alive()


def _wait_log(plugin: PluginProcess, text: str, timeout: float = 5.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and text not in plugin.log():
        time.sleep(0.02)
    return plugin.log()


def test_slices_describe_the_node(api: FakeApiServer, plugin: PluginProcess) -> None:
    [s] = node_slices(api)
    node = api.get_object("Node", NODE)
    assert node is not None
    assert s["metadata"]["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node["metadata"]["uid"], "controller": True}
    ]
    assert s["spec"]["driver"] == names.DRIVER_NAME
    assert s["spec"]["pool"] == {"name": NODE, "generation": 1, "resourceSliceCount": 1}
    assert len(s["spec"]["devices"]) == 8


def test_deleted_slice_is_recreated_and_edits_are_undone(api: FakeApiServer, plugin: PluginProcess) -> None:
    [original] = node_slices(api)
    name = original["metadata"]["name"]
    api.delete_object("ResourceSlice", name)
    assert api.wait_for(lambda: node_slices(api), timeout=10), plugin.log()
    [recreated] = node_slices(api)
    assert recreated["spec"] == original["spec"]
    assert recreated["metadata"]["uid"] != original["metadata"]["uid"]

    tampered = json.loads(json.dumps(recreated))
    tampered["spec"]["devices"][0]["attributes"]["productName"] = {"string": "tampered"}
    api.put_object(tampered)

    def restored() -> bool:
        [s] = node_slices(api)
        return bool(s["spec"] == original["spec"])

    assert api.wait_for(restored, timeout=10), plugin.log()


def test_idle_plugin_makes_no_api_requests(api: FakeApiServer, plugin: PluginProcess) -> None:
    assert api.wait_for(lambda: _watching_slices(api), timeout=10), plugin.log()
    api.clear_requests()
    time.sleep(2.0)  # the idle window: anything the plugin did periodically would show up here
    assert api.requests == []
    plugin.assert_alive()
    # ... and it is idle, not stuck: its open watch still sees a deleted slice and brings it back
    [s] = node_slices(api)
    api.delete_object("ResourceSlice", s["metadata"]["name"])
    assert api.wait_for(lambda: node_slices(api), timeout=10), plugin.log()


def test_restart_keeps_prepared_claims(api: FakeApiServer, plugin: PluginProcess) -> None:
    claim = make_claim(api, "survivor", device_names(api)[:1])
    with plugin.client() as client:
        before = client.prepare([claim]).claims[claim.uid]
    assert before.error == ""
    assert plugin.terminate() == 0
    api.clear_requests()  # before the start: the restarted plugin's every request is logged
    plugin.start()
    with plugin.client() as client:
        # the checkpoint answers a repeated prepare; a second claim for the same device is still refused
        again = client.prepare([claim]).claims[claim.uid]
        rival = make_claim(api, "rival", device_names(api)[:1])
        refused = client.prepare([rival]).claims[rival.uid]
        assert client.unprepare([claim]).claims[claim.uid].error == ""
    assert again == before
    assert "already prepared" in refused.error
    assert not cdi_spec_path(plugin, claim.uid).exists()
    assert api.wait_for(lambda: _watching_slices(api), timeout=10), plugin.log()  # it has reconciled
    assert api.count("PUT", SLICES) == 0  # slices still current
    plugin.assert_alive()


def test_corrupted_checkpoint_is_moved_aside(api: FakeApiServer, plugin: PluginProcess) -> None:
    assert plugin.terminate() == 0
    checkpoint = plugin.state_dir / "checkpoint.json"
    checkpoint.write_text("{not json")
    plugin.start()
    claim = make_claim(api, "after-corruption", device_names(api)[:1])
    with plugin.client() as client:
        assert client.prepare([claim]).claims[claim.uid].error == ""
    aside = list(plugin.state_dir.glob("checkpoint.json.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_text() == "{not json"

    def event() -> list[dict[str, object]]:
        return [e for e in api.list_objects("Event") if e.get("reason") == "GpudraCheckpointCorrupted"]

    assert api.wait_for(event, timeout=5), plugin.log()
    involved = event()[0]["involvedObject"]
    assert isinstance(involved, dict)
    assert (involved["kind"], involved["name"]) == ("Node", NODE)
    assert "checkpoint was damaged or unusable" in str(event()[0]["message"])


def test_sigterm_stops_cleanly_and_removes_sockets(plugin: PluginProcess) -> None:
    assert plugin.terminate(timeout=5) == 0
    assert not plugin.registration_socket.exists()
    assert not plugin.dra_socket.exists()
    assert "received SIGTERM" in plugin.log()


def test_registration_socket_comes_back_after_kubelet_wipes_it(plugin: PluginProcess) -> None:
    plugin.registration_socket.unlink()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not plugin.registration_socket.is_socket():
        time.sleep(0.05)
    assert plugin.registration_socket.is_socket(), plugin.log()
    assert plugin.register().name == names.DRIVER_NAME


def test_publishes_once_the_api_server_comes_up(short_tmp: Path) -> None:
    placeholder = FakeApiServer().start()
    port = placeholder.port
    p = PluginProcess(short_tmp, placeholder)
    p.api.write_kubeconfig(short_tmp / "kubeconfig")
    placeholder.stop()  # the API is down when the plugin starts
    p.start()  # the kubelet side serves regardless
    try:
        assert p.register().name == names.DRIVER_NAME
        assert "retrying in" in _wait_log(p, "retrying in"), p.log()  # it tried the API and failed
        api = FakeApiServer(port=port).start()
        try:
            api.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
            assert api.wait_for(lambda: node_slices(api), timeout=20), p.log()
            assert "retrying in" in p.log()
        finally:
            p.terminate()
            api.stop()
    finally:
        if p.proc is not None:
            p.terminate()


def test_metrics_endpoint_counts_prepares(api: FakeApiServer, short_tmp: Path) -> None:
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    p = PluginProcess(short_tmp, api, extra_args=["--metrics-port", str(port)]).start()
    try:
        assert api.wait_for(lambda: device_names(api), timeout=20), p.log()
        claim = make_claim(api, "metered", device_names(api)[:1])
        missing = make_claim(api, "deleted-meanwhile", device_names(api)[1:2])
        api.delete_object("ResourceClaim", "deleted-meanwhile", "default")
        with p.client() as client:
            assert client.prepare([claim]).claims[claim.uid].error == ""
            assert "not found" in client.prepare([missing]).claims[missing.uid].error
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        p.terminate()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    assert samples[("gpudra_claims_total", (("method", "NodePrepareResources"), ("result", "ok")))] == 1
    key = ("gpudra_grpc_call_duration_seconds_count", (("method", "NodePrepareResources"), ("result", "ok")))
    assert samples[key] == 2  # both calls completed; the missing claim failed inside its call
    assert samples[("gpudra_devices", (("type", "gpu"), ("vendor", "nvidia")))] == 8
    assert samples[("gpudra_prepared_devices", (("type", "gpu"),))] == 1
    assert samples[("gpudra_prepared_devices", (("type", "mig"),))] == 0
    errors = ("gpudra_claim_errors_total", (("kind", "not_found"), ("method", "NodePrepareResources")))
    assert samples[errors] == 1
    assert samples[("gpudra_slice_pool_generation", ())] == 1
