"""AMD container edits: ``/dev/kfd``, the device's DRM render node, and the host groups that may open them.

What a ROCm container needs for one GPU or compute partition:

* ``/dev/kfd`` - the compute (KFD) interface, one node shared by every AMD device on the host;
* ``/dev/dri/renderD<minor>`` - the device's render node. A compute partition has its own render minor
  (:attr:`gpudra.model.inventory.Device.minor`), so a container given one partition opens only that one. The
  node
  keeps its host name: ROCm matches render nodes to the KFD topology in ``/sys`` by ``drm_render_minor``;
* ``/dev/dri/card<N>`` is NOT needed for compute (HIP/ROCr open kfd and the render node only). It is added
  when the caller knows the card minor (the inventory does not carry it yet) and the host has the node.

Each node is emitted as type ``c`` with the major/minor of the host node (``stat``), so the runtime need not
stat it again; the host path appears as ``hostPath`` only when the host's ``/dev`` is mounted elsewhere. A
missing ``/dev/kfd`` or render node, or one that is not a character device, raises :class:`EditsError` naming
the path: the claim fails, its neighbours do not.

Groups: the nodes are usually mode 0660, group ``render`` (``video`` for kfd on older distributions), so a
pod not running as root cannot open them unless its process is in that group - the recurring AMD complaint.
With :attr:`HostRoots.additional_gids` (the default) the host nodes' group ids (0 left out: the CDI library
skips it) go into CDI ``additionalGids``, which makes the spec ``cdiVersion`` 0.7.0.

Runtimes that accept a 0.7.0 spec (a runtime whose CDI library predates 0.7.0 rejects the whole spec as an
unknown version, and the pod fails to start). Verified from the ``tags.cncf.io/container-device-interface``
version each release pins in its ``go.mod``, and that library's ``pkg/cdi/version.go`` (0.7.0 added in
library v0.7.0; v0.7.1 was the first tag that also pinned ``specs-go`` v0.7.0, the type with the field):

* containerd 1.7.16 and later 1.7.x (library v0.7.2; 1.7.0-1.7.15 pin v0.5.4-v0.6.2) and every 2.x
  (v0.8.0 and later). CDI must be enabled (``enable_cdi``) on 1.7; 2.0 enables it by default;
* CRI-O 1.30.0 and later (v0.7.2; 1.28 pins v0.6.0, 1.29 v0.6.2).

Both add the groups to the container process's supplementary groups next to the pod's own
``supplementalGroups`` (appended, not replacing them). On an older runtime turn the flag off
(``--no-amd-additional-gids``): the spec then declares the lowest version its other fields need (0.3.0;
0.5.0 with ``hostPath``), and the pod must get the group itself (``securityContext.supplementalGroups:
[<render gid>]``) or run as root.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from gpudra.model.cdi import ContainerEdits, DeviceNode
from gpudra.model.inventory import Device, DeviceKind, Vendor
from gpudra.vendors.base import DeviceEdits, EditsError, HostRoots

#: The KFD compute node, relative to the device root.
KFD_NODE: Final = "kfd"


def render_node(minor: int) -> str:
    """The DRM render node of ``minor``, relative to the device root: ``dri/renderD<minor>``."""
    return f"dri/renderD{minor}"


def card_node(minor: int) -> str:
    """The DRM primary (card) node of ``minor``, relative to the device root: ``dri/card<minor>``."""
    return f"dri/card{minor}"


class NodeStat(Protocol):
    """The part of :class:`os.stat_result` that describes a device node."""

    @property
    def st_mode(self) -> int: ...
    @property
    def st_rdev(self) -> int: ...
    @property
    def st_gid(self) -> int: ...


@dataclass(frozen=True, slots=True)
class HostNode:
    """A host device node as the container gets it, and the group that owns it on the host."""

    node: DeviceNode
    gid: int


def host_node(name: str, dev_root: Path, st: NodeStat) -> HostNode:
    """``/dev/<name>`` in the container for the host node ``<dev_root>/<name>`` whose stat is ``st`` (pure).

    Raises :class:`EditsError` when ``st`` is not a character device.
    """
    host = dev_root / name
    if not stat.S_ISCHR(st.st_mode):
        raise EditsError(f"host device node {host} is not a character device")
    container = f"/dev/{name}"
    node = DeviceNode(
        path=container,
        host_path=None if str(host) == container else str(host),
        type="c",
        major=os.major(st.st_rdev),
        minor=os.minor(st.st_rdev),
    )
    return HostNode(node, st.st_gid)


def group_ids(nodes: Iterable[HostNode]) -> tuple[int, ...]:
    """The nodes' owning groups, first occurrence first, without duplicates and without root's group 0."""
    return tuple(dict.fromkeys(n.gid for n in nodes if n.gid != 0))


def edits_for_nodes(nodes: Sequence[HostNode], *, additional_gids: bool) -> ContainerEdits:
    """The container edits giving ``nodes`` and, with ``additional_gids``, their host groups (pure)."""
    gids = group_ids(nodes) if additional_gids else ()
    return ContainerEdits(device_nodes=tuple(n.node for n in nodes), additional_gids=gids)


def _stat(device: Device, path: Path) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise EditsError(f"device {device.uuid}: cannot stat host device node {path}: {e.strerror}") from e


def _read_nodes(device: Device, dev_root: Path, wanted: Sequence[tuple[str, bool]]) -> list[HostNode]:
    """Stat every ``(name, required)`` node; all missing required nodes are named in one error."""
    stats = [(name, _stat(device, dev_root / name)) for name, _ in wanted]
    missing = [
        str(dev_root / name) for (name, st), (_, req) in zip(stats, wanted, strict=True) if st is None and req
    ]
    if missing:
        what = "node " + missing[0] + " does" if len(missing) == 1 else "nodes " + ", ".join(missing) + " do"
        raise EditsError(f"device {device.uuid}: host device {what} not exist")
    try:
        return [host_node(name, dev_root, st) for name, st in stats if st is not None]
    except EditsError as e:
        raise EditsError(f"device {device.uuid}: {e}") from e


def amd_edits(device: Device, roots: HostRoots, *, card_minor: int | None = None) -> ContainerEdits:
    """The edits for one AMD GPU or compute partition, reading its nodes under ``roots.dev``.

    ``/dev/kfd`` and ``/dev/dri/renderD<device.minor>`` must exist; ``/dev/dri/card<card_minor>`` is added
    when ``card_minor`` is given and the host has it. Raises :class:`EditsError` naming the path otherwise.
    """
    if device.vendor is not Vendor.AMD:
        raise EditsError(f"device {device.uuid} is not an AMD device ({device.vendor.value})")
    if device.kind not in (DeviceKind.GPU, DeviceKind.PARTITION):
        raise EditsError(f"device {device.uuid}: AMD edits do not support {device.kind.value} devices")
    if device.minor is None:
        raise EditsError(f"device {device.uuid}: render minor unknown, cannot find /dev/dri/renderD<minor>")
    wanted = [(KFD_NODE, True), (render_node(device.minor), True)]
    if card_minor is not None:
        wanted.append((card_node(card_minor), False))
    nodes = _read_nodes(device, roots.dev, wanted)
    return edits_for_nodes(nodes, additional_gids=roots.additional_gids)


def amd_device_edits(device: Device, roots: HostRoots) -> DeviceEdits:
    """:func:`amd_edits` for the dispatcher in :func:`gpudra.vendors.edits.hardware_edits` (no card node: the
    inventory does not record card minors, and compute does not need one)."""
    return DeviceEdits(amd_edits(device, roots))
