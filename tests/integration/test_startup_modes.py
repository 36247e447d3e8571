"""Modes and bind addresses of what ``gpudra run`` offers (issue 13, item 9). Under umask 000 the DRA and
registration sockets were 0777 (any local user could prepare and unprepare) and the CDI root world-writable;
the metrics and probe ports listened on every address with no way to choose."""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gpudra.devtools.fakeapi import FakeApiServer
from tests.integration.conftest import PluginProcess, cdi_spec_path, device_names, make_claim

pytestmark = pytest.mark.integration


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask0_plugin(api: FakeApiServer, short_tmp: Path) -> Iterator[PluginProcess]:
    """The plugin started under umask 000 (the child inherits it), with a run dir and a CDI root whose
    parent it creates; its state dir exists already, world-writable."""
    plugin = PluginProcess(short_tmp, api, extra_args=["--run-dir", str(short_tmp / "run")])
    plugin.state_dir.mkdir(parents=True)
    plugin.state_dir.chmod(0o777)
    plugin.extra_args += ["--cdi-root", str(short_tmp / "var" / "cdi")]
    previous = os.umask(0)
    try:
        plugin.start(wait=False)
    finally:
        os.umask(previous)
    try:
        plugin.wait_ready()
        assert api.wait_for(lambda: device_names(api), timeout=10), plugin.log()
        yield plugin
    finally:
        plugin.terminate()


def test_under_umask_000_nothing_is_open_to_other_users(
    api: FakeApiServer, umask0_plugin: PluginProcess
) -> None:
    plugin, root = umask0_plugin, umask0_plugin.root
    claim = make_claim(api, "c", device_names(api)[:1])
    with plugin.client() as client:
        assert client.prepare([claim]).claims[claim.uid].error == ""
    assert _mode(plugin.dra_socket) == 0o600  # today: 0777
    assert _mode(plugin.registration_socket) == 0o600
    assert _mode(plugin.state_dir) == 0o700  # the checkpoint's directory: owner only
    cdi_root = root / "var" / "cdi"
    assert _mode(cdi_root) == _mode(cdi_root.parent) == 0o755  # today: 0777
    spec = cdi_root / cdi_spec_path(plugin, claim.uid).name
    assert _mode(spec) == 0o644  # the runtime reads it
    metadata = root / "run" / "metadata"
    assert _mode(root / "run") == _mode(metadata) == 0o755  # containers mount the files in it
    assert {_mode(p) for p in metadata.iterdir()} == {0o644}
    made = [root / d for d in ("plugins", "registry", "run", "var")]  # everything the plugin created
    writable = [p for d in made for p in (d, *d.rglob("*")) if _mode(p) & 0o022]
    assert writable == []
    plugin.assert_alive()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> set[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The local addresses with a listening TCP socket on ``port``, from the kernel's tables (an IPv4 address
    mapped into IPv6 counts as the IPv4 address)."""
    found: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            hex_address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port or fields[3] != "0A":  # 0A: LISTEN
                continue
            raw = bytes.fromhex(hex_address)  # host byte order, in 32-bit words
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            address = ipaddress.ip_address(packed)
            mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
            found.add(mapped or address)
    return found


def test_metrics_listen_on_loopback_and_the_probe_where_it_is_told(
    api: FakeApiServer, short_tmp: Path
) -> None:
    """Defaults: metrics on 127.0.0.1 only (they describe the node), the probe where the kubelet connects
    (--probe-address; the DaemonSet gives the pod IP). Today: both on every address, no flag."""
    metrics, probe = _free_port(), _free_port()
    plugin = PluginProcess(
        short_tmp, api, extra_args=["--metrics-port", str(metrics), "--probe-port", str(probe),
                                    "--probe-address", "127.0.0.1"],
    )  # fmt: skip
    plugin.start()
    try:
        loopback = {ipaddress.ip_address("127.0.0.1")}
        deadline = time.monotonic() + 10  # both servers are up soon after the sockets; bounded wait
        while not (_listening(metrics) and _listening(probe)) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _listening(metrics) == _listening(probe) == loopback  # nothing else
        direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via an http_proxy
        with direct.open(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as answer:
            assert b"gpudra_build_info" in answer.read()
        with grpc.insecure_channel(f"127.0.0.1:{probe}") as channel:
            check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.status == health_pb2.HealthCheckResponse.SERVING
        plugin.assert_alive()
    finally:
        plugin.terminate()
