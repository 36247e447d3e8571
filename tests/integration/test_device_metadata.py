"""KEP-5304 device metadata, end to end: the real plugin writes it, the CDI spec mounts it read-only at the
well-known path for the devices of that request only, and unprepare removes it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from gpudra.planning.devicemeta import CONTAINER_ROOT, POD_CLAIM_NAME_ANNOTATION
from tests.integration.conftest import NODE, PluginProcess, cdi_spec_path, device_names, make_claim

pytestmark = pytest.mark.integration


def _stream(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def _published(api: FakeApiServer) -> dict[str, Any]:
    return {d["name"]: d for s in api.list_objects("ResourceSlice") for d in s["spec"]["devices"]}


def test_metadata_per_request_for_a_claim(api: FakeApiServer, plugin: PluginProcess) -> None:
    devs = device_names(api)[:2]
    claim = make_claim(api, "two-requests", devs)  # requests gpu0 and gpu1, one device each
    with plugin.client() as client:
        assert client.prepare([claim]).claims[claim.uid].error == ""
    spec = json.loads(cdi_spec_path(plugin, claim.uid).read_text())
    for i, device in enumerate(spec["devices"]):
        inside = f"{CONTAINER_ROOT}/resourceclaims/two-requests/gpu{i}/{names.DRIVER_NAME}-metadata.json"
        [mount] = [
            m for m in device["containerEdits"]["mounts"] if m["containerPath"].startswith(CONTAINER_ROOT)
        ]
        assert mount["containerPath"] == inside  # each device carries only its own request's file
        assert "ro" in mount["options"]
        objects = _stream(Path(mount["hostPath"]))
        assert [o["apiVersion"] for o in objects] == [
            "metadata.resource.k8s.io/v1beta1",
            "metadata.resource.k8s.io/v1alpha1",
        ]
        first = objects[0]
        assert first["kind"] == "DeviceMetadata"
        assert first["metadata"] == {
            "name": "two-requests",
            "namespace": "default",
            "uid": claim.uid,
            "generation": 1,
        }
        assert "podClaimName" not in first
        [request] = first["requests"]
        [entry] = request["devices"]
        assert (request["name"], entry["driver"], entry["pool"], entry["name"]) == (
            f"gpu{i}",
            names.DRIVER_NAME,
            NODE,
            devs[i],
        )
        assert entry["attributes"] == _published(api)[devs[i]]["attributes"]  # exactly what was published
        assert objects[1]["requests"] == first["requests"]
    with plugin.client() as client:
        assert client.unprepare([claim]).claims[claim.uid].error == ""
    assert not [p.name for p in (plugin.state_dir / "metadata").iterdir() if claim.uid in p.name]
    plugin.assert_alive()


def test_template_generated_claim_uses_the_pod_claim_name(api: FakeApiServer, plugin: PluginProcess) -> None:
    claim = make_claim(
        api, "pod-0-gpu-x7k2q", device_names(api)[:1], annotations={POD_CLAIM_NAME_ANNOTATION: "gpu"}
    )
    with plugin.client() as client:
        assert client.prepare([claim]).claims[claim.uid].error == ""
    spec = json.loads(cdi_spec_path(plugin, claim.uid).read_text())
    mounts = spec["devices"][0]["containerEdits"]["mounts"]
    [mount] = [m for m in mounts if m["containerPath"].startswith(CONTAINER_ROOT)]
    assert (
        mount["containerPath"]
        == f"{CONTAINER_ROOT}/resourceclaimtemplates/gpu/gpu0/{names.DRIVER_NAME}-metadata.json"
    )
    assert _stream(Path(mount["hostPath"]))[0]["podClaimName"] == "gpu"


def test_run_dir_holds_the_per_claim_files(api: FakeApiServer, short_tmp: Path) -> None:
    """--run-dir (tmpfs /var/run/gpudra.io in the DaemonSet) takes the files containers mount; the state
    dir keeps only the checkpoint. Unprepare removes them from there."""
    run_dir = short_tmp / "run"
    plugin = PluginProcess(short_tmp, api, extra_args=["--run-dir", str(run_dir)]).start()
    try:
        assert api.wait_for(lambda: device_names(api), timeout=20), plugin.log()
        claim = make_claim(api, "in-run-dir", device_names(api)[:1])
        with plugin.client() as client:
            assert client.prepare([claim]).claims[claim.uid].error == ""
            spec = json.loads(cdi_spec_path(plugin, claim.uid).read_text())
            hosts = {m["hostPath"] for d in spec["devices"] for m in d["containerEdits"]["mounts"]}
            ours = {h for h in hosts if claim.uid in h}
            assert ours
            assert all(Path(h).is_relative_to(run_dir) and Path(h).is_file() for h in ours)
            assert not (plugin.state_dir / "metadata").exists()
            assert client.unprepare([claim]).claims[claim.uid].error == ""
        assert not [p for p in run_dir.rglob("*") if claim.uid in p.name]
        plugin.assert_alive()
    finally:
        plugin.terminate()
