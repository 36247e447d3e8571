"""Floors measured in the same run: what the same client, stand-in and disk cost with gpudra taken out."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from benchlib.procs import BenchError, Http, child_env
from benchlib.stats import latency_ms
from gpudra import fsutil
from gpudra.devtools import kubeletsim
from gpudra.kube.client import KubeClient, load_config


def trivial_grpc(root: Path, n: int) -> dict[str, Any]:
    """A do-nothing DRA v1 server in its own process, driven by the same client, 1 claim per call."""
    sock = root / "trivial.sock"
    script = Path(__file__).with_name("trivial_server.py")
    proc = subprocess.Popen([sys.executable, str(script), str(sock)], env=child_env())
    try:
        claim = kubeletsim.Claim("bench", "floor", "00000000-0000-0000-0000-000000000001")
        with kubeletsim.DraClient(sock, "v1") as client:
            _first_answer(client, claim, proc)
            for _ in range(20):  # warm the channel up, as the plugin run is warmed up
                client.prepare([claim])
            samples = []
            for _ in range(n):
                t0 = time.perf_counter()
                client.prepare([claim])
                samples.append(time.perf_counter() - t0)
    finally:
        proc.terminate()
        proc.wait(10)
    return latency_ms(samples)


def _first_answer(
    client: kubeletsim.DraClient, claim: kubeletsim.Claim, proc: subprocess.Popen[bytes]
) -> None:
    """Wait until the server answers (its socket exists a moment before it serves)."""
    deadline = time.monotonic() + 20
    while True:
        try:
            client.prepare([claim], timeout_s=1.0)
            return
        except grpc.RpcError as e:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the trivial gRPC server does not answer: {e}") from e
            time.sleep(0.05)


def bare_get(api: Http, path: str, n: int) -> dict[str, Any]:
    """GET + JSON decode of one ResourceClaim on a keep-alive connection (http.client, no kube client)."""
    for _ in range(20):
        api.call("GET", path)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        api.call("GET", path)
        samples.append(time.perf_counter() - t0)
    return latency_ms(samples)


def client_get(kubeconfig: Path, namespace: str, name: str, n: int) -> dict[str, Any]:
    """The same GET through gpudra's own client (gpudra.kube.client.KubeClient over lightkube/httpx2)."""
    client = KubeClient(load_config(kubeconfig))
    try:
        for _ in range(20):
            client.get_claim(namespace, name)
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.get_claim(namespace, name)
            samples.append(time.perf_counter() - t0)
    finally:
        client.close()
    return latency_ms(samples)


def write_fsync(directory: Path, n: int) -> dict[str, Any]:
    """1 KiB write + fsync of a file in ``directory`` (the plugin's state dir); and the atomic replace the
    plugin uses (temp file, fsync, rename, fsync of the directory)."""
    data = os.urandom(1024)
    target = directory / ".bench-fsync"
    plain, atomic = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        plain.append(time.perf_counter() - t0)
    for _ in range(n):
        t0 = time.perf_counter()
        fsutil.atomic_write(target, data, 0o600)
        atomic.append(time.perf_counter() - t0)
    target.unlink()
    return {"write_fsync_1k": latency_ms(plain), "atomic_write_1k": latency_ms(atomic)}
