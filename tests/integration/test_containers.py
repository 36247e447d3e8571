"""Which devices each container of a pod really gets: the real plugin, the kubelet's request-name matching
(kubeletsim.Kubelet) and the runtime's CDI injection over the spec files the plugin wrote (cdiinject).

The scenario of issue 11: a claim whose request ``gpu`` is a prioritized list (allocated as ``gpu/h100``) and
whose request ``other`` is exact; one container names ``gpu``, one names ``other``, one names no request.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from gpudra.devtools.cdiinject import ContainerView
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.devtools.kubeletsim import Claim, Container, ContainerClaim, Kubelet, KubeletError, Pod, PodClaim
from gpudra.model import names
from gpudra.planning.devicemeta import CONTAINER_ROOT
from gpudra.vendors.mock.edits import DEVICE_DESCRIPTION_DIR, env_key
from tests.integration.conftest import NODE, PluginProcess, cdi_spec_path, device_names

pytestmark = pytest.mark.integration


def _claim(api: FakeApiServer, name: str, results: list[tuple[str, str]], requests: list[Any]) -> Claim:
    """A claim with ``requests`` in its spec, allocated as ``results`` ((request as allocated, device))."""
    obj = api.put_object(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"devices": {"requests": requests}},
            "status": {
                "allocation": {
                    "devices": {
                        "results": [
                            {"request": r, "driver": names.DRIVER_NAME, "pool": NODE, "device": d}
                            for r, d in results
                        ]
                    }
                }
            },
        }
    )
    return Claim("default", name, str(obj["metadata"]["uid"]))


def _exactly(name: str) -> dict[str, Any]:
    return {"name": name, "exactly": {"deviceClassName": names.CLASS_GPU}}


def _prioritized(name: str) -> dict[str, Any]:
    sub = [
        {"name": "b200", "deviceClassName": names.CLASS_GPU, "selectors": [_product("B200")]},
        {"name": "h100", "deviceClassName": names.CLASS_GPU, "selectors": [_product("H100")]},
    ]
    return {"name": name, "firstAvailable": sub}


def _product(text: str) -> dict[str, Any]:
    return {"cel": {"expression": f"device.attributes['gpudra.io'].productName.contains('{text}')"}}


def _uuid_env(view: ContainerView) -> set[str]:
    return {k for k in view.env if k.startswith("GPUDRA_")}


def _expected_env(api: FakeApiServer, devices: list[str]) -> set[str]:
    published = {d["name"]: d for s in api.list_objects("ResourceSlice") for d in s["spec"]["devices"]}
    keys = set()
    for dev in devices:
        keys |= {env_key(dev, "UUID"), env_key(dev, "PRODUCT")}
        if "memory" in published[dev].get("capacity", {}):
            keys.add(env_key(dev, "MEMORY"))
    return keys


def _cdi_id(claim: Claim, device: str) -> str:
    return f"{names.CDI_KIND}={claim.uid}-{device}"


def _kubelet(plugin: PluginProcess, version: Any = "v1") -> Kubelet:
    return Kubelet(plugin.client(version), [plugin.cdi_root])


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_each_container_gets_exactly_the_devices_of_the_requests_it_names(
    api: FakeApiServer, plugin: PluginProcess, version: Any
) -> None:
    h100, other = device_names(api)[:2]
    requests = [_prioritized("gpu"), _exactly("other")]
    claim = _claim(api, "mixed", [("gpu/h100", h100), ("other", other)], requests)
    pod = Pod(
        "default",
        "trainer",
        "pod-1",
        (PodClaim("gpus", claim),),
        (
            Container("a", (ContainerClaim("gpus", "gpu"),)),
            Container("b", (ContainerClaim("gpus", "other"),)),
            Container("all", (ContainerClaim("gpus"),)),
        ),
    )
    kubelet = _kubelet(plugin, version)
    kubelet.prepare_pod(pod)

    prepared = kubelet.prepared(claim)
    assert prepared is not None
    # The answer names top-level requests; the subrequest stays in the checkpoint and the metadata file.
    answered = sorted((d.request_names, d.device) for d in prepared)
    assert answered == sorted([(("gpu",), h100), (("other",), other)])
    assert kubelet.cdi_ids(pod, "a") == [_cdi_id(claim, h100)]
    assert kubelet.cdi_ids(pod, "b") == [_cdi_id(claim, other)]
    assert sorted(kubelet.cdi_ids(pod, "all")) == sorted([_cdi_id(claim, h100), _cdi_id(claim, other)])

    a, b, everything = (kubelet.container_view(pod, c) for c in ("a", "b", "all"))
    assert _uuid_env(a) == _expected_env(api, [h100])
    assert _uuid_env(b) == _expected_env(api, [other])
    assert _uuid_env(everything) == _expected_env(api, [h100, other])
    assert a.listdir(DEVICE_DESCRIPTION_DIR) == [f"{claim.uid}-{h100}.json"]
    assert b.listdir(DEVICE_DESCRIPTION_DIR) == [f"{claim.uid}-{other}.json"]
    assert len(everything.listdir(DEVICE_DESCRIPTION_DIR)) == 2
    description = json.loads(a.read(f"{DEVICE_DESCRIPTION_DIR}/{claim.uid}-{h100}.json"))
    assert description["claim"] == {"namespace": "default", "name": "mixed", "uid": claim.uid}
    assert (description["request"], description["device"]["name"]) == ("gpu/h100", h100)
    assert a.mounts[f"{DEVICE_DESCRIPTION_DIR}/{claim.uid}-{h100}.json"].options[0] == "ro"

    # KEP-5304: the file sits under the top-level request and names the subrequest inside.
    root = f"{CONTAINER_ROOT}/resourceclaims/mixed"
    meta, meta_other = (f"{root}/{r}/{names.DRIVER_NAME}-metadata.json" for r in ("gpu", "other"))
    assert [p for p in a.mounts if p.startswith(CONTAINER_ROOT)] == [meta]
    assert [p for p in b.mounts if p.startswith(CONTAINER_ROOT)] == [meta_other]
    first = json.loads(a.read(meta).splitlines()[0])
    requests_in_file = [(r["name"], [d["name"] for d in r["devices"]]) for r in first["requests"]]
    assert requests_in_file == [("gpu/h100", [h100])]

    kubelet.unprepare_pod(pod)
    assert not cdi_spec_path(plugin, claim.uid).exists()
    assert not list((plugin.state_dir / "claims").glob(f"{claim.uid}*"))
    plugin.assert_alive()


def test_a_container_with_two_claims_sees_both(api: FakeApiServer, plugin: PluginProcess) -> None:
    d1, d2, d3 = device_names(api)[:3]
    first = _claim(api, "first", [("gpu", d1)], [_exactly("gpu")])
    second = _claim(api, "second", [("gpu/h100", d2), ("gpu/h100", d3)], [_prioritized("gpu")])
    pod = Pod(
        "default",
        "two-claims",
        "pod-2",
        (PodClaim("one", first), PodClaim("two", second)),
        (Container("main", (ContainerClaim("one", "gpu"), ContainerClaim("two", "gpu"))),),
    )
    kubelet = _kubelet(plugin)
    kubelet.prepare_pod(pod)
    view = kubelet.container_view(pod, "main")
    assert view.cdi_ids == (_cdi_id(first, d1), _cdi_id(second, d2), _cdi_id(second, d3))
    assert _uuid_env(view) == _expected_env(api, [d1, d2, d3])
    assert view.listdir(DEVICE_DESCRIPTION_DIR) == sorted(
        [f"{first.uid}-{d1}.json", f"{second.uid}-{d2}.json", f"{second.uid}-{d3}.json"]
    )
    metadata = sorted(p for p in view.mounts if p.startswith(CONTAINER_ROOT))
    file = f"gpu/{names.DRIVER_NAME}-metadata.json"
    assert metadata == sorted(f"{CONTAINER_ROOT}/resourceclaims/{c}/{file}" for c in ("first", "second"))
    legacy = plugin.state_dir / "claims" / f"{first.uid}.json"  # what a build before per-device files wrote
    legacy.write_text("{}")
    kubelet.unprepare_pod(pod)
    assert sorted(p.name for p in (plugin.state_dir / "claims").iterdir()) == []


def test_one_claim_shared_by_containers_and_pods(api: FakeApiServer, plugin: PluginProcess) -> None:
    dev = device_names(api)[0]
    claim = _claim(api, "shared", [("gpu", dev)], [_exactly("gpu")])

    def pod(name: str) -> Pod:
        containers = (Container("x", (ContainerClaim("c", "gpu"),)), Container("y", (ContainerClaim("c"),)))
        return Pod("default", name, f"uid-{name}", (PodClaim("c", claim),), containers)

    kubelet = _kubelet(plugin)
    p1, p2 = pod("p1"), pod("p2")
    kubelet.prepare_pod(p1)
    kubelet.prepare_pod(p2)  # already prepared: no call, same devices
    for p in (p1, p2):
        for c in ("x", "y"):
            assert _uuid_env(kubelet.container_view(p, c)) == _expected_env(api, [dev])
    kubelet.unprepare_pod(p1)
    assert cdi_spec_path(plugin, claim.uid).exists()  # p2 still runs with it
    assert _uuid_env(kubelet.container_view(p2, "x")) == _expected_env(api, [dev])
    kubelet.unprepare_pod(p2)
    assert not cdi_spec_path(plugin, claim.uid).exists()
    with pytest.raises(KubeletError, match="unable to get claim info"):
        kubelet.cdi_ids(p2, "x")
    plugin.assert_alive()
