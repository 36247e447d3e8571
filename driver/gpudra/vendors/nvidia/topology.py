"""NVLink topology: fabric clique membership, active NVLink count, and node-local NVLink islands.

* Fabric clique (GB200 NVL72, HGX with fabric manager): ``nvmlDeviceGetGpuFabricInfoV`` with a caller-made
  ``c_nvmlGpuFabricInfoV_t`` passed byref. Only status SUCCESS + state COMPLETED + a non-zero cluster UUID
  gives a domain, ``<clusterUUID>.<cliqueId>``. NOT_STARTED / IN_PROGRESS mean registration is pending.
* Without a clique (DGX H100 reports COMPLETED with a zero cluster UUID; A100 and NVLink-bridged PCIe pairs
  have no fabric at all) GPUs joined by NVLink form islands: the connected components of
  ``nvmlDeviceGetP2PStatus(a, b, NVML_P2P_CAPS_INDEX_NVLINK) == OK``. NVLink remote PCI info is not used:
  on NVSwitch systems it names the switch, not the peer GPU.
"""

from __future__ import annotations

import ctypes
import itertools
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from gpudra.model import names
from gpudra.vendors.nvidia.calls import FUNCTION_NOT_FOUND
from gpudra.vendors.nvidia.reader import DeviceFailure, Reader, field, integer

FABRIC_STATE_NOT_STARTED: Final = 1
FABRIC_STATE_IN_PROGRESS: Final = 2
FABRIC_STATE_COMPLETED: Final = 3
_STATE_NAMES: Final = {0: "NOT_SUPPORTED", 1: "NOT_STARTED", 2: "IN_PROGRESS", 3: "COMPLETED"}
_NVML_SUCCESS: Final = 0
_LINK_ACTIVE: Final = 1  # nvmlEnableState_t NVML_FEATURE_ENABLED
_NVLINK_MAX_LINKS: Final = 36
_P2P_CAPS_INDEX_NVLINK: Final = 2
_P2P_STATUS_OK: Final = 0


@dataclass(frozen=True, slots=True)
class FabricReading:
    """What one GPU's fabric info says: its clique domain, or that registration is still running."""

    domain: str | None = None
    pending: bool = False
    warning: str | None = None


def interpret_fabric(
    state: int | None, status: int | None, cluster_uuid: bytes, clique_id: int | None
) -> FabricReading:
    """Pure reading of ``c_nvmlGpuFabricInfoV_t`` values (see the module docstring)."""
    if state in (FABRIC_STATE_NOT_STARTED, FABRIC_STATE_IN_PROGRESS):
        return FabricReading(
            pending=True,
            warning=f"NVLink fabric registration is {_STATE_NAMES[state]}; fabricDomain will be published "
            "once it completes",
        )
    if state != FABRIC_STATE_COMPLETED:
        return FabricReading()  # NOT_SUPPORTED (no fabric) or a state this code does not know
    if status != _NVML_SUCCESS:
        return FabricReading(
            warning=f"NVLink fabric registration completed with NVML error {status}; no fabric clique"
        )
    if len(cluster_uuid) != 16 or not any(cluster_uuid) or clique_id is None:
        return FabricReading()  # registered, but in no clique (e.g. DGX H100): node-local islands apply
    return FabricReading(domain=names.clique_fabric_domain(str(uuidlib.UUID(bytes=cluster_uuid)), clique_id))


def read_fabric(reader: Reader, handle: Any, where: str) -> FabricReading:
    """One GPU's fabric clique; unsupported or unreadable fabric info gives an empty reading."""
    struct_type = getattr(reader.nvml.module, "c_nvmlGpuFabricInfoV_t", None)
    if struct_type is None:
        return FabricReading()
    info = struct_type()  # the constructor sets the struct version NVML checks
    _, error = reader.outcome("nvmlDeviceGetGpuFabricInfoV", handle, ctypes.byref(info), what=where)
    if error is not None:
        return FabricReading()
    raw = getattr(info, "clusterUuid", b"")
    cluster = bytes(raw) if raw is not None else b""
    reading = interpret_fabric(field(info, "state"), field(info, "status"), cluster, field(info, "cliqueId"))
    if reading.warning:
        reader.warn(f"{where}: {reading.warning}")
    return reading


def active_links(reader: Reader, handle: Any, where: str) -> int | None:
    """Active NVLinks (``nvmlDeviceGetNvLinkState``); ``None`` when no link's state can be read.

    Links are probed up to NVML_NVLINK_MAX_LINKS; INVALID_ARGUMENT marks the end (GB200 has 18 of 36).
    """
    max_links = reader.nvml.constant("NVML_NVLINK_MAX_LINKS", _NVLINK_MAX_LINKS)
    active, known = 0, False
    for link in range(max_links):
        state, error = reader.outcome(
            "nvmlDeviceGetNvLinkState", handle, link, what=where, expected=("INVALID_ARGUMENT",)
        )
        if error in ("INVALID_ARGUMENT", FUNCTION_NOT_FOUND):
            break
        if error is None and integer(state) is not None:
            known = True
            active += state == _LINK_ACTIVE
    return active if known else None


def connected_components(nodes: Sequence[str], edges: Iterable[tuple[str, str]]) -> list[frozenset[str]]:
    """Components of an undirected graph, each a frozenset; edges to unknown nodes are ignored."""
    parent = {n: n for n in nodes}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for a, b in edges:
        if a in parent and b in parent:
            parent[root(a)] = root(b)
    groups: dict[str, set[str]] = {}
    for n in nodes:
        groups.setdefault(root(n), set()).add(n)
    return [frozenset(g) for g in groups.values()]


def nvlink_islands(reader: Reader, members: Sequence[tuple[str, Any]]) -> dict[str, str]:
    """UUID -> node-local fabric domain for GPUs (``(uuid, handle)``) that reach a peer over NVLink."""
    caps = reader.nvml.constant("NVML_P2P_CAPS_INDEX_NVLINK", _P2P_CAPS_INDEX_NVLINK)
    ok = reader.nvml.constant("NVML_P2P_STATUS_OK", _P2P_STATUS_OK)
    edges: list[tuple[str, str]] = []
    for (ua, ha), (ub, hb) in itertools.combinations(members, 2):
        where = f"NVLink P2P {ua} <-> {ub}"
        try:
            status = reader.value("nvmlDeviceGetP2PStatus", ha, hb, caps, what=where)
        except DeviceFailure as err:
            reader.warn(f"{where}: {err}; treated as not connected")
            continue
        if integer(status) == ok:
            edges.append((ua, ub))
    islands = connected_components([u for u, _ in members], edges)
    return {u: names.local_fabric_domain(island) for island in islands if len(island) > 1 for u in island}
