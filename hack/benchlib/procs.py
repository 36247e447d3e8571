"""The two processes under test: the stand-in API server and ``gpudra run``, plus a small HTTP client.

Both are separate processes, as in a cluster: the stand-in is ``python -m gpudra.devtools.fakeapi`` (with
``--request-log`` so its request log can be read from here), the plugin is the real ``gpudra run``.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gpudra.model import names

SLICES = "/apis/resource.k8s.io/v1/resourceslices"


class BenchError(Exception):
    """The benchmark could not run (a process did not start, a request failed)."""


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("GPUDRA_")}


class Http:
    """One keep-alive HTTP/1.1 connection to the stand-in; JSON in, JSON out."""

    def __init__(self, host: str, port: int, timeout_s: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection(host, port, timeout=timeout_s)

    def call(self, method: str, path: str, body: Any = None, ok: tuple[int, ...] = (200, 201)) -> Any:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        self.conn.request(method, path, body=payload, headers=headers)
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status not in ok:
            raise BenchError(f"{method} {path}: HTTP {resp.status}: {data[:300]!r}")
        return json.loads(data) if data else None

    def close(self) -> None:
        self.conn.close()


@dataclass
class StandIn:
    """``python -m gpudra.devtools.fakeapi`` in its own process, logging every request to ``request_log``.
    ``gates`` overrides its feature gates (Kubernetes 1.34 defaults: ``DRAPartitionableDevices`` off);
    ``kube_version`` is what its ``/version`` reports (default: the stand-in's own, 1.34.0)."""

    root: Path
    proc: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    port: int = 0
    gates: dict[str, bool] = field(default_factory=dict)
    kube_version: str | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def request_log(self) -> Path:
        return self.root / "api-requests.jsonl"

    def start(self) -> StandIn:
        cmd = [
            sys.executable,
            "-m",
            "gpudra.devtools.fakeapi",
            "--kubeconfig",
            str(self.kubeconfig),
            "--request-log",
            str(self.request_log),
        ]
        for gate, on in sorted(self.gates.items()):
            cmd += ["--gate", f"{gate}={'true' if on else 'false'}"]
        if self.kube_version is not None:
            cmd += ["--kube-version", self.kube_version]
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=child_env())
        assert self.proc.stdout is not None
        url = self.proc.stdout.readline().decode().strip()
        if not url.startswith("http://"):
            raise BenchError(f"the stand-in API server did not start (printed {url!r})")
        self.host, _, port = url.removeprefix("http://").rpartition(":")
        self.port = int(port)
        return self

    def http(self) -> Http:
        return Http(self.host, self.port)

    def requests_between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        """Requests the stand-in answered with a wall-clock start in [t0, t1)."""
        lines = self.request_log.read_text().splitlines()
        return [r for r in map(json.loads, lines) if t0 <= r["time"] < t1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(10)


def add_node(api: Http, node: str) -> None:
    api.call("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}})


def node_slices(api: Http, node: str) -> list[dict[str, Any]]:
    body = api.call("GET", f"{SLICES}?fieldSelector={quote(f'spec.nodeName={node}')}")
    return list(body["items"])


def open_slice_watch(standin: StandIn, node: str, timeout_s: float) -> http.client.HTTPResponse:
    """A watch on this node's ResourceSlices, open before the plugin starts (so no event is missed)."""
    conn = http.client.HTTPConnection(standin.host, standin.port, timeout=timeout_s)
    conn.request("GET", f"{SLICES}?watch=true&fieldSelector={quote(f'spec.nodeName={node}')}")
    resp = conn.getresponse()
    if resp.status != 200:
        raise BenchError(f"watch ResourceSlices: HTTP {resp.status}")
    return resp


def node_events(api: Http, node: str, reason: str) -> list[dict[str, Any]]:
    """The Events with ``reason`` about Node ``node`` (gpudra records them in namespace ``default``)."""
    selector = quote(f"involvedObject.name={node}")
    body = api.call("GET", f"/api/v1/namespaces/default/events?fieldSelector={selector}")
    return [
        e for e in body["items"] if e.get("reason") == reason and e["involvedObject"].get("kind") == "Node"
    ]


def has_devices(obj: dict[str, Any]) -> bool:
    return bool(obj.get("spec", {}).get("devices"))


@dataclass(frozen=True, slots=True)
class SliceArrivals:
    """When the watch saw the first ADDED slice of any kind, and the first one holding devices (the first the
    scheduler can allocate from: a counter-set slice holds none). perf_counter values."""

    first_at: float
    first: dict[str, Any]
    devices_at: float
    devices: dict[str, Any]


def first_added(watch: http.client.HTTPResponse) -> SliceArrivals:
    """Block until the watch delivers an ADDED slice with devices; also note the first ADDED slice of all.

    With dynamic MIG the plugin writes its counter-set slice first (it has no devices), and when the API
    server's DRAPartitionableDevices gate is off it then falls back to static MIG and deletes that slice,
    so the first slice is not the first one a pod can be scheduled from."""
    first: tuple[float, dict[str, Any]] | None = None
    while True:
        line = watch.readline()
        if not line:
            raise BenchError("the ResourceSlice watch ended before a slice with devices was added")
        event = json.loads(line)
        if event.get("type") != "ADDED":
            continue
        at, obj = time.perf_counter(), event["object"]
        first = first or (at, obj)
        if has_devices(obj):
            return SliceArrivals(first[0], first[1], at, obj)


@dataclass
class PluginProc:
    """The real ``gpudra run --backend mock`` on ``profile`` for ``node``, under ``root``."""

    root: Path
    node: str
    profile: str
    kubeconfig: Path
    proc: subprocess.Popen[bytes] | None = None
    exec_at: float = 0.0
    exec_wall: float = 0.0
    extra: list[str] = field(default_factory=list)
    #: A tmpfs directory for the CDI root and --run-dir, as /var/run is on a node; None: under ``root``.
    volatile: Path | None = None

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def cdi_root(self) -> Path:
        return (self.volatile or self.root) / "cdi"

    @property
    def run_dir(self) -> Path:
        return (self.volatile or self.root) / "run"

    @property
    def state_dir(self) -> Path:
        return self.plugins / names.DRIVER_NAME

    @property
    def registration_socket(self) -> Path:
        return self.registry / f"{names.DRIVER_NAME}-reg.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "plugin.log"

    def start(self) -> PluginProc:
        cmd = [
            sys.executable,
            "-m",
            "gpudra",
            "run",
            "--backend",
            "mock",
            "--profile",
            self.profile,
            "--node-name",
            self.node,
            "--kubeconfig",
            str(self.kubeconfig),
            "--plugins-dir",
            str(self.plugins),
            "--registry-dir",
            str(self.registry),
            "--cdi-root",
            str(self.cdi_root),
            "--run-dir",
            str(self.run_dir),
            *self.extra,
        ]
        self.root.mkdir(parents=True, exist_ok=True)
        env = child_env()
        if self.volatile is not None:  # the DaemonSet's /tmp is a memory emptyDir (the mock's sysfs tree)
            (self.volatile / "tmp").mkdir(parents=True, exist_ok=True)
            env["TMPDIR"] = str(self.volatile / "tmp")
        with self.log_path.open("ab") as log:
            self.exec_at, self.exec_wall = time.perf_counter(), time.time()
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        return self

    def wait_registration(self, timeout_s: float = 30.0) -> float:
        """Poll for the registration socket; returns perf_counter when it was seen."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.registration_socket.is_socket():
                return time.perf_counter()
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.002)
        raise BenchError(f"gpudra run did not offer its registration socket:\n{self.log()}")

    def memory_kib(self) -> dict[str, int]:
        """VmRSS and VmHWM (peak RSS) of the plugin process, in KiB, from /proc/<pid>/status."""
        assert self.proc is not None
        out = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
        return out

    def sigterm_timed(self, timeout_s: float = 10.0) -> tuple[float, int]:
        """Send SIGTERM and wait for the exit; returns (seconds from signal to exit, exit code).

        The exit is seen through a pidfd, which becomes readable the moment the process exits.
        ``Popen.wait(timeout)`` would poll with growing sleeps (0.5, 1, 2, 4, 8 ms ...), so every exit
        would read as ~15.8 or ~31.8 ms.
        """
        assert self.proc is not None
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            t0 = time.perf_counter()
            self.proc.send_signal(signal.SIGTERM)
            ready, _, _ = select.select([pidfd], [], [], timeout_s)
            took = time.perf_counter() - t0
        finally:
            os.close(pidfd)
        if not ready:
            raise BenchError(f"the plugin did not exit within {timeout_s} s of SIGTERM")
        return took, self.proc.wait(timeout_s)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def lifecycle_ms(self) -> dict[str, float]:
        """When the plugin's own lifecycle log lines were written, in ms after exec (text log format only)."""
        marks = {"discovered ": "discovered", "gpudra serving": "serving", "published ": "slices_published"}
        out: dict[str, float] = {}
        for line in self.log().splitlines():
            try:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            for text, key in marks.items():
                if text in line and key not in out:
                    out[key] = round((stamp - self.exec_wall) * 1000, 1)
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""
