"""Integration fixtures: the real ``gpudra run`` in a subprocess, the stand-in API server over HTTP, and the
kubelet stand-in over the real unix sockets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools import kubeletsim
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names

NODE = "node-a"


@dataclass
class PluginProcess:
    """A running ``gpudra run`` and the directories it uses."""

    root: Path
    api: FakeApiServer
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    #: Where the plugin reaches the API server, when not directly (e.g. a FaultProxy in front of ``api``).
    server: str | None = None
    #: Resource limits of the plugin process, as ``prlimit`` options (e.g. ``["--fsize=6000"]``).
    limits: list[str] = field(default_factory=list)
    #: Environment of the plugin process on top of the test's (whose GPUDRA_* variables are never passed).
    env: dict[str, str] = field(default_factory=dict)

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def cdi_root(self) -> Path:
        return self.root / "cdi"

    @property
    def state_dir(self) -> Path:
        return self.plugins / names.DRIVER_NAME

    @property
    def registration_socket(self) -> Path:
        return self.registry / f"{names.DRIVER_NAME}-reg.sock"

    @property
    def dra_socket(self) -> Path:
        return self.plugins / names.DRIVER_NAME / "dra.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "plugin.log"

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def start(self, wait: bool = True) -> PluginProcess:
        kubeconfig = self.api.write_kubeconfig(self.root / "kubeconfig")
        if self.server is not None:
            kubeconfig.write_text(kubeconfig.read_text().replace(self.api.url, self.server))
        cmd = [
            sys.executable,
            "-m",
            "gpudra",
            "run",
            "-vv",
            "--backend",
            "mock",
            "--profile",
            "dgx-h100",
            "--node-name",
            NODE,
            "--kubeconfig",
            str(kubeconfig),
            "--plugins-dir",
            str(self.plugins),
            "--registry-dir",
            str(self.registry),
            "--cdi-root",
            str(self.cdi_root),
            *self.extra_args,
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUDRA_")} | self.env
        with self.log_path.open("ab") as log:
            if self.limits:
                cmd = ["prlimit", *self.limits, "--", *cmd]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"gpudra run exited with {self.proc.returncode}:\n{self.log()}")
            if self.registration_socket.is_socket() and self.dra_socket.is_socket():
                return
            time.sleep(0.02)
        pytest.fail(f"gpudra run did not become ready:\n{self.log()}")

    def assert_alive(self) -> None:
        """Fail the test, with the plugin's log, when the plugin process has exited."""
        assert self.proc is not None, "the plugin was not started (or was stopped by the test)"
        code = self.proc.poll()
        if code is not None:
            pytest.fail(f"gpudra run exited unexpectedly with {code}:\n{self.log()}")

    def terminate(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def register(self) -> kubeletsim.PluginInfo:
        return kubeletsim.register(self.registration_socket)

    def client(self, version: kubeletsim.Version = "v1") -> kubeletsim.DraClient:
        return kubeletsim.DraClient(self.dra_socket, version)


def node_slices(api: FakeApiServer, node: str = NODE) -> list[dict[str, Any]]:
    """The slices of the node's pool (not the short-lived partitionable-devices probe, a pool of its own)."""
    return [
        s
        for s in api.list_objects("ResourceSlice")
        if s["spec"].get("nodeName") == node and s["spec"].get("pool", {}).get("name") == node
    ]


def pool_complete(api: FakeApiServer, node: str = NODE) -> bool:
    """All slices of the pool's newest generation are there (as the scheduler needs them), with devices."""
    pool = node_slices(api, node)
    if not pool or not device_names(api):
        return False
    generation = max(s["spec"]["pool"]["generation"] for s in pool)
    newest = [s for s in pool if s["spec"]["pool"]["generation"] == generation]
    count: int = newest[0]["spec"]["pool"]["resourceSliceCount"]
    return len(newest) == len(pool) == count


def device_names(api: FakeApiServer) -> list[str]:
    return sorted(d["name"] for s in node_slices(api) for d in s["spec"].get("devices", []))


def make_claim(
    api: FakeApiServer,
    name: str,
    devices: list[str],
    *,
    namespace: str = "default",
    admin_access: bool = False,
    share_id: str | None = None,
    driver: str = names.DRIVER_NAME,
    pool: str = NODE,
    config: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
) -> kubeletsim.Claim:
    """A ResourceClaim allocated to ``devices`` (one request per device), as the scheduler would leave it."""
    results = []
    for i, dev in enumerate(devices):
        result: dict[str, Any] = {"request": f"gpu{i}", "driver": driver, "pool": pool, "device": dev}
        if admin_access:
            result["adminAccess"] = True
        if share_id is not None:
            result["shareID"] = share_id
        results.append(result)
    allocation: dict[str, Any] = {"devices": {"results": results, "config": config or []}}
    obj = api.put_object(
        {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace, "annotations": annotations or {}},
            "spec": {
                "devices": {
                    "requests": [
                        {"name": f"gpu{i}", "exactly": {"deviceClassName": names.CLASS_GPU}}
                        for i in range(len(devices))
                    ]
                }
            },
            "status": {"allocation": allocation},
        }
    )
    return kubeletsim.Claim(namespace, name, str(obj["metadata"]["uid"]))


def cdi_spec_path(plugin: PluginProcess, claim_uid: str) -> Path:
    return plugin.cdi_root / f"{names.CDI_VENDOR}-{names.CDI_CLASS}_{claim_uid}.yaml"


def unknown_claim() -> kubeletsim.Claim:
    return kubeletsim.Claim("default", "never-created", str(uuid.uuid4()))


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    server = FakeApiServer().start()
    server.put_object({"apiVersion": "v1", "kind": "Node", "metadata": {"name": NODE}})
    yield server
    server.stop()


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short directory: unix socket paths must stay under 108 bytes."""
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="gd-"))
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def plugin(api: FakeApiServer, short_tmp: Path) -> Iterator[PluginProcess]:
    p = PluginProcess(short_tmp, api).start()
    try:
        assert api.wait_for(lambda: pool_complete(api), timeout=20), p.log()
        yield p
        if p.proc is not None:  # a test that stops the plugin itself sets proc to None
            p.assert_alive()
    finally:
        if p.proc is not None:
            p.terminate()
