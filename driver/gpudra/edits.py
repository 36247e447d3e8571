"""What a container gets for each prepared device: the CDI container edits, per backend.

Pure functions, except for the existence check of host device nodes in :func:`nvidia_edits` and the
description file written by :func:`write_claim_description`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Protocol

from gpudra import names
from gpudra.cdi import ContainerEdits, DeviceNode, Mount
from gpudra.fsutil import atomic_write
from gpudra.inventory import Device, DeviceKind, Vendor

#: Where a mock claim's description file appears inside the container: ``<dir>/<claimUID>.json``.
CLAIM_DESCRIPTION_DIR: Final = "/var/run/gpudra/claims"
ENV_PREFIX: Final = "GPUDRA_"
_NOT_ENV = re.compile(r"[^A-Z0-9_]")


class EditsError(Exception):
    """The node cannot give a container this device (a host device node is missing, wrong vendor, ...)."""


class ClaimIdentity(Protocol):
    """Anything naming a claim (``plan.ClaimRef``, ``checkpoint.ClaimRecord``)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def uid(self) -> str: ...


# ---- NVIDIA ---------------------------------------------------------------------------------------------

#: Control nodes every CUDA container needs besides its GPU's node; (name, must exist on the host).
_NVIDIA_SHARED_NODES: Final = (("nvidiactl", True), ("nvidia-uvm", True), ("nvidia-uvm-tools", False))


def _host_node(dev_root: Path, name: str) -> DeviceNode:
    """``/dev/<name>`` in the container, ``<dev_root>/<name>`` on the host (hostPath only if it differs)."""
    container = f"/dev/{name}"
    host = str(dev_root / name)
    return DeviceNode(path=container, host_path=None if host == container else host)


def nvidia_edits(device: Device, dev_root: Path) -> ContainerEdits:
    """Device nodes of one full NVIDIA GPU plus the shared control nodes; ``NVIDIA_VISIBLE_DEVICES=void``
    keeps the NVIDIA runtime from injecting devices on top of CDI.

    Raises :class:`EditsError` naming the path when ``nvidia<minor>``, ``nvidiactl`` or ``nvidia-uvm`` is
    missing under ``dev_root``; ``nvidia-uvm-tools`` is optional. MIG devices are refused: they also need
    their ``nvidia-caps`` nodes, which this function does not produce yet.
    """
    if device.vendor is not Vendor.NVIDIA:
        raise EditsError(f"device {device.uuid} is not an NVIDIA device ({device.vendor.value})")
    if device.kind is not DeviceKind.GPU:
        raise EditsError(f"device {device.uuid}: nvidia edits do not support {device.kind.value} devices yet")
    if device.minor is None:
        raise EditsError(f"device {device.uuid}: device-node minor unknown, cannot find /dev/nvidia<minor>")
    wanted = ((f"nvidia{device.minor}", True), *_NVIDIA_SHARED_NODES)
    nodes: list[DeviceNode] = []
    for name, required in wanted:
        host = dev_root / name
        if host.exists():
            nodes.append(_host_node(dev_root, name))
        elif required:
            raise EditsError(f"device {device.uuid}: host device node {host} does not exist")
    return ContainerEdits(env=("NVIDIA_VISIBLE_DEVICES=void",), device_nodes=tuple(nodes))


# ---- mock -----------------------------------------------------------------------------------------------


def env_key(device_name: str, field: str) -> str:
    """``GPUDRA_<DEVICE_NAME>_<FIELD>``: upper case, every character outside ``[A-Z0-9_]`` becomes ``_``."""
    return ENV_PREFIX + _NOT_ENV.sub("_", f"{device_name}_{field}".upper())


def description_container_path(claim_uid: str) -> str:
    return f"{CLAIM_DESCRIPTION_DIR}/{claim_uid}.json"


def _description_mount(claim_uid: str, description_path: Path) -> Mount:
    return Mount(
        host_path=str(description_path),
        container_path=description_container_path(claim_uid),
        options=("ro", "nosuid", "nodev", "bind"),
    )


def mock_edits(
    device: Device, claim_uid: str, description_path: Path, *, device_name: str | None = None
) -> ContainerEdits:
    """Edits for one mock device: environment variables only, no device nodes.

    Keys carry the device name (``GPUDRA_<NAME>_UUID``, ``_PRODUCT``, ``_MEMORY`` when known, ``_CLAIM``,
    ``_DESCRIPTION``) so two devices in one container never overwrite each other. ``device_name`` defaults to
    the full-GPU name derived from the UUID; pass the allocated name for MIG slices and partitions. The
    claim's description file is bind-mounted read-only, so each device's edits are complete on their own
    (the runtime collapses the identical mount from the claim-wide edits).
    """
    name = device_name if device_name is not None else names.gpu_device_name(device.uuid)
    env = [
        f"{env_key(name, 'UUID')}={device.uuid}",
        f"{env_key(name, 'PRODUCT')}={device.product_name}",
        f"{env_key(name, 'CLAIM')}={claim_uid}",
        f"{env_key(name, 'DESCRIPTION')}={description_container_path(claim_uid)}",
    ]
    if device.memory_bytes is not None:
        env.append(f"{env_key(name, 'MEMORY')}={device.memory_bytes}")
    return ContainerEdits(env=tuple(env), mounts=(_description_mount(claim_uid, description_path),))


def mock_claim_edits(claim_uid: str, device_uuids: Sequence[str], description_path: Path) -> ContainerEdits:
    """Claim-wide edits of a mock claim: ``GPUDRA_VISIBLE_DEVICES`` and the read-only description file at
    ``/var/run/gpudra/claims/<claimUID>.json``.

    When one pod has two gpudra claims, ``GPUDRA_VISIBLE_DEVICES`` comes from whichever spec the runtime
    applies last, so it names only that claim's devices; the per-device variables of :func:`mock_edits` are
    exact.
    """
    return ContainerEdits(
        env=(f"{ENV_PREFIX}VISIBLE_DEVICES={','.join(device_uuids)}",),
        mounts=(_description_mount(claim_uid, description_path),),
    )


def claim_description(
    claim: ClaimIdentity, devices: Sequence[Device], device_names: Sequence[str] | None = None
) -> dict[str, object]:
    """The JSON document describing a claim's devices to the workload (pure)."""
    if device_names is not None and len(device_names) != len(devices):
        raise ValueError("device_names and devices differ in length")
    dev_names = device_names or [names.gpu_device_name(d.uuid) for d in devices]
    return {
        "claim": {"namespace": claim.namespace, "name": claim.name, "uid": claim.uid},
        "devices": [
            {
                "name": name,
                "uuid": d.uuid,
                "productName": d.product_name,
                "memory": d.memory_bytes,
                "pciBusID": d.pci.bus_id if d.pci is not None else None,
            }
            for name, d in zip(dev_names, devices, strict=True)
        ],
    }


def write_claim_description(
    path: Path, claim: ClaimIdentity, devices: Sequence[Device], device_names: Sequence[str] | None = None
) -> None:
    """Write :func:`claim_description` to ``path`` atomically (mode 0644; the parent is created)."""
    data = json.dumps(claim_description(claim, devices, device_names)) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data.encode(), mode=0o644, durable=False)
