"""``gpudra-dev demo``: the whole path on mock GPUs, no cluster needed.

A stand-in API server runs in-process. The real plugin discovers a mock DGX H100 and publishes its
ResourceSlices. A kubelet stand-in then registers the plugin over the real registration socket, prepares
one claim for one GPU over the real DRA socket, shows the CDI spec and the claim's usage and energy metrics
(:mod:`gpudra.devtools.demo_usage`), and unprepares it. Exit code 0 means every step checked out.
``--scenario health`` (:mod:`gpudra.devtools.demo_health`) shows a GPU going unhealthy and recovering
instead.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from gpudra.devtools import demo_usage, kubeletsim
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from gpudra.runtime.app import Plugin
from gpudra.runtime.config import RunConfig
from gpudra.vendors.select import open_driver

NODE = "demo-node"


class DemoError(Exception):
    pass


def say(step: str, detail: str = "") -> None:
    print(f"==> {step}" + (f"\n{detail}" if detail else ""), flush=True)


def node_slices(api: FakeApiServer) -> list[dict[str, Any]]:
    return [s for s in api.list_objects("ResourceSlice") if s["spec"].get("nodeName") == NODE]


def allocate(api: FakeApiServer, device: str, name: str = "demo-gpu") -> str:
    """Create the claim ``default/<name>``, allocated to ``device`` of the node's pool; returns its uid."""
    claim = api.put_object(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": names.CLASS_GPU}}]}
            },
            "status": {
                "reservedFor": [{"resource": "pods", "name": f"{name}-pod", "uid": str(uuid.uuid4())}],
                "allocation": {
                    "devices": {
                        "results": [
                            {"request": "gpu", "driver": names.DRIVER_NAME, "pool": NODE, "device": device},
                        ]
                    }
                }
            },
        }
    )
    return str(claim["metadata"]["uid"])


def demo_config(root: Path, api: FakeApiServer, **settings: Any) -> RunConfig:
    """The plugin's configuration: every path under ``root``, the stand-in API's kubeconfig; ``settings``
    override the rest."""
    return RunConfig(
        node_name=NODE,
        kubeconfig=api.write_kubeconfig(root / "kubeconfig"),
        plugins_dir=root / "plugins",
        registry_dir=root / "registry",
        cdi_root=root / "cdi",
        dev_root=root / "dev",
        **settings,
    )


def _play_kubelet(api: FakeApiServer, cfg: RunConfig) -> None:
    info = kubeletsim.register(cfg.registration_socket)
    say(
        "kubelet: registered",
        f"    {info.name} ({info.type}) at {info.endpoint}, versions {', '.join(info.supported_versions)}",
    )
    slices = node_slices(api)
    device = sorted(d["name"] for s in slices for d in s["spec"]["devices"])[0]
    uid = allocate(api, device)
    claim = kubeletsim.Claim("default", "demo-gpu", uid)
    with kubeletsim.DraClient(info.endpoint, "v1") as client:
        t0 = time.perf_counter()
        result = client.prepare([claim]).claims[uid]
        took = (time.perf_counter() - t0) * 1000
        if result.error or len(result.devices) != 1:
            raise DemoError(f"prepare failed: {result.error or 'no device returned'}")
        ids = list(result.devices[0].cdi_device_ids)
        say(f"kubelet: NodePrepareResources default/demo-gpu -> {ids} ({took:.1f} ms)")
        spec = cfg.cdi_root / f"{names.CDI_VENDOR}-{names.CDI_CLASS}_{uid}.yaml"
        say(f"CDI spec {spec}", json.dumps(json.loads(spec.read_text()), indent=2))
        gpu = next(d["attributes"]["uuid"]["string"] for s in slices for d in s["spec"]["devices"]
                   if d["name"] == device)  # fmt: skip
        busy = demo_usage.make_busy(cfg, gpu)
        lines = demo_usage.show(cfg.metrics_port, uid, DemoError)
        say(f"usage metrics of default/demo-gpu at :{cfg.metrics_port}/metrics (GPU made busy in {busy})",
            "\n".join(lines))  # fmt: skip
        unprepared = client.unprepare([claim]).claims[uid]
        if unprepared.error or spec.exists():
            raise DemoError(f"unprepare failed: {unprepared.error or 'CDI spec still on disk'}")
        say("kubelet: NodeUnprepareResources default/demo-gpu -> ok, CDI spec removed")
        demo_usage.wait_gone(cfg.metrics_port, uid, DemoError)
        say("usage metrics: the claim's series are gone; the device series stay")


def run(profile: str = "dgx-h100") -> int:
    root = Path(tempfile.mkdtemp(prefix="gpudra-demo-"))
    api = FakeApiServer().start()
    plugin: Plugin | None = None
    try:
        api.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
        cfg = demo_config(root, api, metrics_port=demo_usage.free_port(),
                          usage_interval_s=demo_usage.INTERVAL_S)  # fmt: skip
        say(f"stand-in API server at {api.url}; mock profile {profile}; work dir {root}")
        t0 = time.perf_counter()
        driver = open_driver("mock", profile, Path("/sys"), cfg.host_roots, cfg.effective_run_dir / "claims")
        plugin = Plugin(cfg, driver)
        plugin.start()
        if not api.wait_for(lambda: node_slices(api), timeout=10):
            raise DemoError("no ResourceSlice was published within 10 s")
        slices = node_slices(api)
        count = sum(len(s["spec"]["devices"]) for s in slices)
        say(
            f"published {len(slices)} ResourceSlice(s) with {count} device(s) in "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms"
        )
        _play_kubelet(api, cfg)
        say("demo finished: all steps checked")
        return 0
    except (DemoError, OSError) as e:
        print(f"gpudra demo: FAILED: {e}", flush=True)
        return 1
    finally:
        if plugin is not None:
            plugin.stop()
        api.stop()
        shutil.rmtree(root, ignore_errors=True)
