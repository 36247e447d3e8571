#!/usr/bin/env python3
"""Write a one-layer OCI image archive holding a static busybox, for ``ctr image import`` where no registry
is reachable (hack/containerd-env builds it from Debian's ``busybox-static``).

    python3 hack/oci_busybox.py BUSYBOX_BINARY OUT.tar [--name docker.io/gpudra/busybox:test]

The archive is an OCI image layout (``oci-layout``, ``index.json``, ``blobs/sha256/...``) and is the same
bytes for the same binary: every entry has mtime 0 and owner root. The layer is an uncompressed tar:
``/bin/busybox``, one symlink per applet the tests use, ``/etc/passwd`` and ``/etc/group`` for root, and the
directories a runtime mounts over.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import platform
import tarfile
from pathlib import Path
from typing import Final

DEFAULT_NAME: Final = "docker.io/gpudra/busybox:test"
APPLETS: Final = ("sh", "id", "env", "ls", "cat", "stat", "find", "echo", "grep", "readlink", "sleep", "true")
DIRS: Final = ("bin", "dev", "etc", "proc", "root", "run", "sys", "tmp", "var")
FILES: Final = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n",
    "etc/group": b"root:x:0:\n",
}
#: OCI architecture names for what ``platform.machine()`` reports.
ARCHITECTURES: Final = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}
MEDIA_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"


def _info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "root", "root"
    return info


def layer(busybox: bytes) -> bytes:
    """The root filesystem as an uncompressed tar."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in DIRS:
            tar.addfile(_info(d, tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755))
        tar.addfile(_info("bin/busybox", tarfile.REGTYPE, 0o755, len(busybox)), io.BytesIO(busybox))
        for applet in APPLETS:
            tar.addfile(_info(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
        for name, data in FILES.items():
            tar.addfile(_info(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return out.getvalue()


def _json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def _descriptor(media_type: str, blob: bytes) -> dict[str, object]:
    digest = "sha256:" + hashlib.sha256(blob).hexdigest()
    return {"mediaType": media_type, "digest": digest, "size": len(blob)}


def image_archive(busybox: bytes, name: str, arch: str) -> bytes:
    """The OCI layout archive of the image ``name``: its blobs, manifest and index."""
    rootfs = layer(busybox)
    config = _json(
        {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["/bin/sh"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(rootfs).hexdigest()]},
        }
    )
    manifest = _json(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": _descriptor(MEDIA_CONFIG, config),
            "layers": [_descriptor(MEDIA_LAYER, rootfs)],
        }
    )
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    entry = _descriptor(MEDIA_MANIFEST, manifest)
    entry["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}
    entry["platform"] = {"architecture": arch, "os": "linux"}
    index = _json({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                   "manifests": [entry]})  # fmt: skip
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(_info("blobs", tarfile.DIRTYPE, 0o755))
        tar.addfile(_info("blobs/sha256", tarfile.DIRTYPE, 0o755))
        for blob in (rootfs, config, manifest):
            digest = hashlib.sha256(blob).hexdigest()
            tar.addfile(_info(f"blobs/sha256/{digest}", tarfile.REGTYPE, 0o644, len(blob)), io.BytesIO(blob))
        for path, data in (("oci-layout", _json({"imageLayoutVersion": "1.0.0"})), ("index.json", index)):
            tar.addfile(_info(path, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("busybox", type=Path, help="a statically linked busybox binary")
    parser.add_argument("out", type=Path, help="the OCI archive to write")
    parser.add_argument("--name", default=DEFAULT_NAME, help=f"the image name (default {DEFAULT_NAME})")
    args = parser.parse_args(argv)
    machine = platform.machine()
    if machine not in ARCHITECTURES:
        parser.error(f"no OCI architecture known for {machine!r}")
    data = image_archive(args.busybox.read_bytes(), args.name, ARCHITECTURES[machine])
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
