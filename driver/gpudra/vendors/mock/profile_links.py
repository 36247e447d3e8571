"""The NVLink sections of a hardware profile: fabric registration, per-link state, GPU-to-GPU P2P status.

Schema::

    device "fabric": {"state": 3, "status": 0, "cliqueId": 2,                 # nvmlDeviceGetGpuFabricInfoV
                      "clusterUuid": "5ca1ab1e-0000-4000-8000-00000000b200",  # null -> NOT_SUPPORTED
                      "healthMask": 170}
    device "nvlink": {"states": [1, 1, ...],          # nvmlDeviceGetNvLinkState per link (1 = active)
                      "beyond": "NVML_ERROR_INVALID_ARGUMENT"}  # what links past the list answer (default)
                      # null -> every link NOT_SUPPORTED (a GPU without NVLink, as in the H100 capture)
    top-level "p2p_status": {"NVLINK": [[null, 0], [0, null]]}
                      # nvmlDeviceGetP2PStatus(a, b, NVML_P2P_CAPS_INDEX_<key>) by GPU index; a missing
                      # key or a null cell -> NOT_SUPPORTED. Values are nvmlGpuP2PStatus_t (0 = OK).
"""

from __future__ import annotations

import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Final

import pynvml

from gpudra.vendors.mock.profile_json import Invalid, error_code, int_list, is_int, obj, opt, req

_FABRIC_KEYS: Final = frozenset({"state", "status", "cliqueId", "clusterUuid", "healthMask"})
P2P_CAPS: Final = ("READ", "WRITE", "NVLINK", "ATOMICS", "PCI")


@dataclass(frozen=True, slots=True)
class FabricProfile:
    """The values of ``c_nvmlGpuFabricInfoV_t``."""

    state: int
    status: int
    clique_id: int
    cluster_uuid: bytes  # 16 bytes
    health_mask: int = 0


@dataclass(frozen=True, slots=True)
class NvLinkProfile:
    states: tuple[int, ...]  # per link: 1 active, 0 inactive
    beyond: int = pynvml.NVML_ERROR_INVALID_ARGUMENT  # the error for links past ``states``


def fabric(value: object, where: str) -> FabricProfile | None:
    if value is None:
        return None
    raw = obj(value, where, _FABRIC_KEYS)
    text = req(raw, "clusterUuid", str, where)
    try:
        cluster = uuidlib.UUID(text).bytes
    except ValueError:
        raise Invalid(f"{where}.clusterUuid: expected a UUID, got {text!r}") from None
    return FabricProfile(
        state=req(raw, "state", int, where),
        status=req(raw, "status", int, where),
        clique_id=req(raw, "cliqueId", int, where),
        cluster_uuid=cluster,
        health_mask=opt(raw, "healthMask", int, where) or 0,
    )


def nvlink(value: object, where: str) -> NvLinkProfile | None:
    if value is None:
        return None
    raw = obj(value, where, frozenset({"states", "beyond"}))
    states = int_list(raw.get("states"), f"{where}.states")
    if states is None:
        raise Invalid(f"{where}.states: required")
    if len(states) > pynvml.NVML_NVLINK_MAX_LINKS:
        raise Invalid(f"{where}.states: at most {pynvml.NVML_NVLINK_MAX_LINKS} links")
    beyond = raw.get("beyond")
    code = pynvml.NVML_ERROR_INVALID_ARGUMENT if beyond is None else error_code(beyond, f"{where}.beyond")
    return NvLinkProfile(states=states, beyond=code)


def p2p_status(value: object, where: str, device_count: int) -> dict[int, tuple[tuple[int | None, ...], ...]]:
    """Caps index -> square matrix of P2P status by GPU index."""
    if value is None:
        return {}
    raw = obj(value, where, frozenset(P2P_CAPS))
    out: dict[int, tuple[tuple[int | None, ...], ...]] = {}
    for name, matrix in raw.items():
        if matrix is None:
            continue
        # the position is NVML_P2P_CAPS_INDEX_<name> (pynvml spells READ as a one-element tuple)
        out[P2P_CAPS.index(name)] = _matrix(matrix, f"{where}.{name}", device_count)
    return out


def _matrix(value: Any, where: str, size: int) -> tuple[tuple[int | None, ...], ...]:
    ok = (
        isinstance(value, list) and len(value) == size
        and all(isinstance(row, list) and len(row) == size for row in value)
        and all(cell is None or is_int(cell) for row in value for cell in row)
    )  # fmt: skip
    if not ok:
        raise Invalid(f"{where}: expected a {size}x{size} matrix of integers or null (one row per device)")
    return tuple(tuple(row) for row in value)


def links_section(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The NVLink keys of a device object, parsed, as DeviceProfile keyword arguments."""
    return {
        "fabric": fabric(raw.get("fabric"), f"{where}.fabric"),
        "nvlink": nvlink(raw.get("nvlink"), f"{where}.nvlink"),
    }


LINK_KEYS: Final = frozenset({"fabric", "nvlink"})
