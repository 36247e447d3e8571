"""NVIDIA container edits: device nodes of full GPUs (MIG and the user-space driver: see the NVIDIA issue)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

from gpudra.cdi import ContainerEdits, DeviceNode
from gpudra.edits import DeviceEdits, EditsError, HostRoots
from gpudra.inventory import Device, DeviceKind, Vendor

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




def nvidia_device_edits(device: Device, roots: HostRoots) -> DeviceEdits:
    return DeviceEdits(nvidia_edits(device, roots.dev))
