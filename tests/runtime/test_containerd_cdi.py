"""The real ``gpudra run`` on the mock backend prepares claims over its sockets (the kubelet stand-in), and a
real runtime — containerd 2.x, the CDI library in ``ctr``, runc — starts a busybox container with the CDI ids
the plugin answered, resolved from the spec files it wrote: what the container sees is what a pod would.

The mock gives a container no device node: per device, ``GPUDRA_<DEVICE>_*`` variables and a read-only
description file, plus the KEP-5304 metadata file per request. (Device nodes, driver mounts and
``additionalGids`` come from the hardware drivers: test_containerd_hardware.py.)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.devtools.kubeletsim import Claim, Container, ContainerClaim, Kubelet, Pod, PodClaim
from gpudra.model import names
from gpudra.planning.devicemeta import CONTAINER_ROOT
from gpudra.vendors.mock.edits import ENV_PREFIX, description_container_path, env_key
from tests.integration.conftest import (
    NODE,
    PluginProcess,
    cdi_spec_path,
    make_claim,
    node_slices,
    pool_complete,
)
from tests.runtime.conftest import Runtime, RuntimeRefused, Seen

pytestmark = pytest.mark.runtime


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    yield server
    server.stop()


def _plugin(api: FakeApiServer, root: Path, profile: str) -> PluginProcess:
    plugin = PluginProcess(root, api, ["--profile", profile]).start()
    assert api.wait_for(lambda: pool_complete(api), timeout=20), plugin.log()
    return plugin


def _published(api: FakeApiServer) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in node_slices(api) for d in s["spec"].get("devices", [])}


def _of_type(api: FakeApiServer, kind: str) -> list[str]:
    return sorted(n for n, d in _published(api).items() if d["attributes"]["type"]["string"] == kind)


def _pod(claim: Claim) -> Pod:
    return Pod("default", f"pod-{claim.name}", f"uid-{claim.name}", (PodClaim("c", claim),),
               (Container("main", (ContainerClaim("c"),)),))  # fmt: skip


def _run(runtime: Runtime, plugin: PluginProcess, kubelet: Kubelet, claim: Claim, devices: list[str]) -> Seen:
    """Prepare ``claim`` for a pod and run its container; the ids are one per device, in claim order."""
    pod = _pod(claim)
    kubelet.prepare_pod(pod)
    ids = kubelet.cdi_ids(pod, "main")
    assert ids == [f"{names.CDI_KIND}={claim.uid}-{d}" for d in devices]
    files = [description_container_path(claim.uid, d) for d in devices]
    return runtime.run(plugin.cdi_root, ids, files)


def _assert_sees(seen: Seen, api: FakeApiServer, claim: Claim, devices: list[str]) -> None:
    """The container sees exactly ``devices`` of ``claim``: their variables, description files, metadata."""
    published = _published(api)
    expected = {}
    for dev in devices:
        attrs = published[dev]["attributes"]
        expected[env_key(dev, "UUID")] = attrs["uuid"]["string"]
        expected[env_key(dev, "PRODUCT")] = attrs["productName"]["string"]
        if "memory" in published[dev].get("capacity", {}):
            expected[env_key(dev, "MEMORY")] = seen.env[env_key(dev, "MEMORY")]
    assert {k: v for k, v in seen.env.items() if k.startswith(ENV_PREFIX)} == expected
    for i, dev in enumerate(devices):
        path = description_container_path(claim.uid, dev)
        assert "ro" in seen.mounts[path]
        doc = json.loads(seen.files[path])
        assert doc["claim"] == {"namespace": "default", "name": claim.name, "uid": claim.uid}
        assert (doc["request"], doc["device"]["name"]) == (f"gpu{i}", dev)
        assert doc["device"]["uuid"] == expected[env_key(dev, "UUID")]
        metadata = f"{CONTAINER_ROOT}/resourceclaims/{claim.name}/gpu{i}/{names.DRIVER_NAME}-metadata.json"
        assert "ro" in seen.mounts[metadata]
    assert not [d for d in seen.devices if "nvidia" in d or "dri" in d or "kfd" in d]  # the mock has none
    assert seen.groups == {0}


def test_nvidia_gpu_mig_and_multi_device_claims_run_in_containerd(
    api: FakeApiServer, runtime: Runtime, short_tmp: Path
) -> None:
    plugin = _plugin(api, short_tmp, "h100-mig-mixed")  # GPU 0 split into MIG devices, GPUs 1-7 whole
    try:
        gpus, migs = _of_type(api, "gpu"), _of_type(api, "mig")
        assert len(gpus) == 7
        assert len(migs) == 3
        kubelet = Kubelet(plugin.client(), [plugin.cdi_root])
        cases = [("full", gpus[:1]), ("mig", migs[:1]), ("multi", [gpus[1], gpus[2]])]
        claims = [make_claim(api, name, devices) for name, devices in cases]
        for claim, (_, devices) in zip(claims, cases, strict=True):
            seen = _run(runtime, plugin, kubelet, claim, devices)
            _assert_sees(seen, api, claim, devices)

        # The runtime reads what the plugin wrote: once unprepared, the same ids no longer resolve.
        kubelet.unprepare_pod(_pod(claims[0]))
        assert not cdi_spec_path(plugin, claims[0].uid).exists()
        with pytest.raises(RuntimeRefused, match="unresolvable CDI devices"):
            runtime.run(plugin.cdi_root, [f"{names.CDI_KIND}={claims[0].uid}-{gpus[0]}"])
        plugin.assert_alive()
    finally:
        plugin.terminate()


def test_amd_partition_claim_runs_in_containerd(
    api: FakeApiServer, runtime: Runtime, short_tmp: Path
) -> None:
    plugin = _plugin(api, short_tmp, "mi300x-8-cpx-nps4")
    try:
        partitions = _of_type(api, "partition")
        assert len(partitions) == 64
        kubelet = Kubelet(plugin.client(), [plugin.cdi_root])
        claim = make_claim(api, "part", partitions[5:6])
        _assert_sees(_run(runtime, plugin, kubelet, claim, partitions[5:6]), api, claim, partitions[5:6])
        plugin.assert_alive()
    finally:
        plugin.terminate()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths must stay under 108 bytes."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="gd-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)
