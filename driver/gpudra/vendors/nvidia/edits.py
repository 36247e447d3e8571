"""NVIDIA container edits: a full GPU's or MIG device's nodes, and the user-space driver a CUDA pod needs.

Per device, one self-contained set of edits (an incomplete spec is never handed out, NVIDIA #1380):

- device nodes: ``/dev/nvidia<minor>`` (for MIG: the parent's), ``/dev/nvidiactl``, ``/dev/nvidia-uvm`` — each
  must exist under the dev root, else the claim fails naming the path — and ``/dev/nvidia-uvm-tools`` when
  present. A MIG device adds the ``/dev/nvidia-caps/nvidia-cap<N>`` nodes granting its GPU instance and
  compute instance, fully specified (type ``c``, the ``nvidia-caps`` major from ``/proc/devices``, minors from
  ``/proc/driver/nvidia-caps/mig-minors``) because they often do not exist on the host: the runtime creates
  them in the container without looking for them.
- ``NVIDIA_VISIBLE_DEVICES=void``, so the NVIDIA runtime injects nothing on top of CDI.
- the user-space driver (:func:`user_space_edits`): the spec-level edits of the NVIDIA Container Toolkit's
  ``nvidia.com/gpu`` spec, copied; else the driver files found under the driver root; else an error telling
  the admin what to install.

Why copy the Toolkit's spec-level edits instead of returning ``nvidia.com/gpu=<id>`` beside ours: the
spec-level edits ARE the user-space driver (libraries, binaries, firmware, hooks, control nodes) and are the
same for every GPU, so copying them is exact; a reference would also inject the named Toolkit device's own
nodes, which only match ours if we guess its naming right (``index`` names ``0`` / ``0:1``, ``uuid`` names
differ, a spec generated before a MIG reconfiguration lacks the device), and ``=all`` would hand the pod every
GPU on the node. A copy also keeps our spec valid when the Toolkit's file is regenerated or removed later.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from gpudra.model.cdi import ContainerEdits, DeviceNode
from gpudra.model.inventory import Device, DeviceKind, MigInfo, Vendor
from gpudra.vendors.base import DeviceEdits, EditsError, HostRoots
from gpudra.vendors.nvidia.driver_root import LIB_DIRS, driver_files_edits, driver_root_files
from gpudra.vendors.nvidia.host import (
    MIG_MINORS,
    TOOLKIT_KIND,
    ToolkitSpec,
    ci_access_key,
    driver_version_of,
    find_toolkit_spec,
    gi_access_key,
    read_caps_major,
    read_mig_minors,
)

log = logging.getLogger(__name__)

#: Control nodes every CUDA container needs besides its GPU's node; (name, must exist on the host).
_NVIDIA_SHARED_NODES: Final = (("nvidiactl", True), ("nvidia-uvm", True), ("nvidia-uvm-tools", False))
VOID_ENV: Final = "NVIDIA_VISIBLE_DEVICES=void"
CAPS_DIR: Final = "/dev/nvidia-caps"


def _host_node(dev_root: Path, name: str) -> DeviceNode:
    """``/dev/<name>`` in the container, ``<dev_root>/<name>`` on the host (hostPath only if it differs)."""
    container = f"/dev/{name}"
    host = str(dev_root / name)
    return DeviceNode(path=container, host_path=None if host == container else host)


def _gpu_nodes(uuid: str, minor: int, dev_root: Path) -> tuple[DeviceNode, ...]:
    """``nvidia<minor>`` and the control nodes; :class:`EditsError` naming a required node that is missing."""
    nodes: list[DeviceNode] = []
    for name, required in ((f"nvidia{minor}", True), *_NVIDIA_SHARED_NODES):
        host = dev_root / name
        if host.exists():
            nodes.append(_host_node(dev_root, name))
        elif required:
            raise EditsError(f"device {uuid}: host device node {host} does not exist")
    return tuple(nodes)


def _check_nvidia(device: Device) -> None:
    if device.vendor is not Vendor.NVIDIA:
        raise EditsError(f"device {device.uuid} is not an NVIDIA device ({device.vendor.value})")


def nvidia_edits(device: Device, dev_root: Path) -> ContainerEdits:
    """Device nodes of one full NVIDIA GPU plus the shared control nodes, and ``NVIDIA_VISIBLE_DEVICES=void``.

    Raises :class:`EditsError` naming the path when ``nvidia<minor>``, ``nvidiactl`` or ``nvidia-uvm`` is
    missing under ``dev_root``; ``nvidia-uvm-tools`` is optional. Other kinds are refused: a mig device also
    needs its capability nodes (:func:`mig_edits`).
    """
    _check_nvidia(device)
    if device.kind is not DeviceKind.GPU:
        raise EditsError(f"device {device.uuid}: full-GPU edits do not apply to {device.kind.value} devices")
    if device.minor is None:
        raise EditsError(f"device {device.uuid}: device-node minor unknown, cannot find /dev/nvidia<minor>")
    return ContainerEdits(env=(VOID_ENV,), device_nodes=_gpu_nodes(device.uuid, device.minor, dev_root))


def mig_cap_nodes(
    gpu_minor: int, mig: MigInfo, minors: Mapping[str, int], caps_major: int, source: Path
) -> tuple[DeviceNode, DeviceNode]:
    """Pure: the GPU-instance and compute-instance access nodes of a MIG device, fully specified.

    ``minors`` is :func:`~gpudra.vendors.nvidia.host.parse_mig_minors` of ``source`` (named in the error when
    a key
    is missing, e.g. the instance was destroyed since discovery).
    """
    if mig.gi_id is None or mig.ci_id is None:
        raise EditsError(f"MIG {mig.profile} at memory slice {mig.placement_start}: not created yet, so it "
                         "has no GPU or compute instance to give a container")  # fmt: skip
    nodes = []
    for key in (gi_access_key(gpu_minor, mig.gi_id), ci_access_key(gpu_minor, mig.gi_id, mig.ci_id)):
        minor = minors.get(key)
        if minor is None:
            raise EditsError(f"{source} has no {key}: does this MIG instance still exist?")
        path = f"{CAPS_DIR}/nvidia-cap{minor}"
        nodes.append(DeviceNode(path=path, type="c", major=caps_major, minor=minor))
    return nodes[0], nodes[1]


def mig_edits(device: Device, roots: HostRoots) -> ContainerEdits:
    """A MIG device's nodes: its parent's ``nvidia<minor>``, the control nodes, its two capability nodes.

    A MIG device not created yet (dynamic MIG, asked before prepare creates it) has no capability nodes: its
    edits are the rest, which checks everything the host must have before anything is created; prepare
    computes them again from the ids the hardware gives."""
    _check_nvidia(device)
    if device.kind is not DeviceKind.MIG or device.mig is None:
        raise EditsError(f"device {device.uuid}: not a MIG device with known GPU/compute instance ids")
    parent_minor = device.mig.parent_minor if device.mig.parent_minor is not None else device.minor
    if parent_minor is None:
        raise EditsError(f"device {device.uuid}: parent GPU's minor unknown, cannot find /dev/nvidia<minor>")
    nodes = _gpu_nodes(device.uuid, parent_minor, roots.dev)
    if device.created_at_prepare:
        return ContainerEdits(env=(VOID_ENV,), device_nodes=nodes)
    minors, major = read_mig_minors(roots.proc), read_caps_major(roots.proc)
    caps = mig_cap_nodes(parent_minor, device.mig, minors, major, roots.proc / MIG_MINORS)
    return ContainerEdits(env=(VOID_ENV,), device_nodes=(*nodes, *caps))


# ---- the user-space driver ------------------------------------------------------------------------------


def _present(node: DeviceNode, dev_root: Path) -> bool:
    """False only for a node the runtime would have to stat under ``/dev`` and that is missing there."""
    host = node.host_path or node.path
    if (node.type is not None and node.major is not None) or not host.startswith("/dev/"):
        return True
    return (dev_root / host.removeprefix("/dev/")).exists()


def overlay(ours: ContainerEdits, theirs: ContainerEdits, dev_root: Path) -> ContainerEdits:
    """``ours`` plus what ``theirs`` adds: for an env key, device path or mount target both set, ours wins;
    their device nodes missing under ``dev_root`` are dropped (the runtime would fail the container)."""
    keys = {e.partition("=")[0] for e in ours.env}
    paths = {n.path for n in ours.device_nodes}
    targets = {m.container_path for m in ours.mounts}
    kept = ContainerEdits(
        env=tuple(e for e in theirs.env if e.partition("=")[0] not in keys),
        device_nodes=tuple(n for n in theirs.device_nodes if n.path not in paths and _present(n, dev_root)),
        mounts=tuple(m for m in theirs.mounts if m.container_path not in targets),
        additional_gids=theirs.additional_gids,
        hooks=theirs.hooks,
    )
    return ours.merge(kept)


_warned_stale: set[tuple[Path, str]] = set()


def _stale(spec: ToolkitSpec, installed: str | None) -> bool:
    """True when the Toolkit spec was generated for another driver version than the one installed."""
    spec_version = driver_version_of(spec.common.mounts)
    if installed is None or spec_version is None or spec_version == installed:
        return False
    if (spec.path, installed) not in _warned_stale:
        _warned_stale.add((spec.path, installed))
        log.warning(
            "%s was generated for driver %s but %s is installed: using the driver root; run "
            "`nvidia-ctk cdi generate` again",
            spec.path,
            spec_version,
            installed,
        )
    return True


def user_space_edits(roots: HostRoots) -> ContainerEdits:
    """The user-space driver: the Toolkit spec's common edits, else the driver root's files, else an error.

    The Toolkit spec wins (generated by NVIDIA for this driver, with its symlink and loader-cache hooks)
    unless it names another driver version than the driver root holds (a driver upgraded since).
    """
    lookup = find_toolkit_spec(roots.cdi_dirs)
    found = driver_root_files(roots.driver)
    if lookup.spec is not None and not _stale(lookup.spec, found.version if found else None):
        return lookup.spec.common
    if found is not None:
        # Scanned under our view of the driver root; the spec names the runtime's (host) view of it.
        return driver_files_edits(roots.host_driver or roots.driver, found)
    dirs = ", ".join(str(d) for d in roots.cdi_dirs) or "(no CDI spec directories configured)"
    problems = "".join(f"; {p}" for p in lookup.problems)
    raise EditsError(
        f"no NVIDIA user-space driver (libcuda) to give the container: no usable {TOOLKIT_KIND} CDI spec in "
        f"{dirs}{problems}; and no libcuda.so.<version> under driver root {roots.driver} (looked in "
        f"{', '.join(LIB_DIRS)}). Install the NVIDIA Container Toolkit and run `nvidia-ctk cdi generate "
        f"--output=/var/run/cdi/nvidia.yaml`, or set --driver-root to where the driver is installed "
        f"(/run/nvidia/driver with the GPU operator)"
    )


def nvidia_device_edits(device: Device, roots: HostRoots) -> DeviceEdits:
    """Everything a container needs to use ``device``: its nodes and the user-space driver, in one device's
    edits (no CDI ids of other specs); raises :class:`EditsError`."""
    nodes = mig_edits(device, roots) if device.kind is DeviceKind.MIG else nvidia_edits(device, roots.dev)
    return DeviceEdits(overlay(nodes, user_space_edits(roots), roots.dev))
