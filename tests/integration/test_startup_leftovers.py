"""``gpudra run`` cleans what a killed predecessor left (issue 13, item 6): the temp files of interrupted
atomic writes in the CDI root, the run dir and the state dir (23-28 per 200 kills, never removed today), and
private socket directories — only ours, and none that another instance is writing right now."""

from __future__ import annotations

import fcntl
import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from tests.integration.conftest import PluginProcess, device_names, make_claim

pytestmark = pytest.mark.integration

OLD = time.time() - 600


def _plant(path: Path, *, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'{"half a')
    if old:
        os.utime(path, (OLD, OLD))
    return path


def test_leftover_temp_files_of_ours_are_removed_at_start_and_nothing_else(
    api: FakeApiServer, short_tmp: Path
) -> None:
    plugin = PluginProcess(short_tmp, api, extra_args=["--run-dir", str(short_tmp / "run")])
    uid, run, state = uuid.uuid4(), short_tmp / "run", plugin.state_dir
    spec = f"{names.CDI_VENDOR}-{names.CDI_CLASS}_{uid}.yaml"
    ours = [
        _plant(plugin.cdi_root / f".{spec}.0123456789ab.tmp"),
        _plant(state / ".checkpoint.json.a1b2c3d4e5f6.tmp"),
        _plant(run / "metadata" / f".{uid}_gpu0.json.00ff00ff00ff.tmp"),
        _plant(run / "claims" / f".{uid}-gpu-0.json.0a0b0c0d0e0f.tmp"),
    ]
    private = plugin.registry / ".gd9f1"
    private.mkdir(parents=True)
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(private / "s"))  # killed between bind and rename
    os.utime(private, (OLD, OLD))
    kept = [
        _plant(plugin.cdi_root / f".k8s.other.example-claim_{uid}.yaml.0123456789ab.tmp"),  # not ours
        _plant(plugin.cdi_root / f".{spec}.1111111111aa.tmp", old=False),  # may be a write in flight
        _plant(run / "notes.0123456789ab.tmp"),
    ]
    busy = _plant(state / ".checkpoint.json.bbbbbbbbbbbb.tmp")  # another instance is writing it
    busy_fd = os.open(busy, os.O_RDONLY)
    fcntl.flock(busy_fd, fcntl.LOCK_EX)
    try:
        plugin.start()
        try:
            assert not [p for p in ours if p.exists()]  # today: all still there
            assert not private.exists()
            assert all(p.exists() for p in [*kept, busy])
            assert "removed 5 leftover temp file(s) of interrupted writes" in plugin.log()
            claim = make_claim(api, "after", device_names(api)[:1])  # and the plugin serves
            with plugin.client() as client:
                assert client.prepare([claim]).claims[claim.uid].error == ""
            plugin.assert_alive()
        finally:
            plugin.terminate()
    finally:
        os.close(busy_fd)
