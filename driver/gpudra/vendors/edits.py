"""What a container gets for each prepared device: the CDI container edits, per backend.

Mock devices are handled here; real hardware per vendor in :mod:`gpudra.vendors.nvidia.edits` and
:mod:`gpudra.vendors.amd.edits`, behind :func:`hardware_edits`. Pure, except for reading the host's device
nodes
(existence, major/minor).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from gpudra.model.cdi import ContainerEdits, Mount
from gpudra.model.inventory import Device, Vendor

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


# ---- real hardware: what every vendor module returns ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class HostRoots:
    """Where the host's files are as this process sees them (configurable so tests build fake trees)."""

    dev: Path = Path("/dev")
    proc: Path = Path("/proc")
    #: NVIDIA driver root as this process sees it: "/" for a host-installed driver, "/run/nvidia/driver"
    #: with the GPU operator, or where a DaemonSet mounts the host's root (e.g. "/driver-root").
    driver: Path = Path("/")
    #: The same driver root as the container runtime on the host sees it (what CDI mounts must name); None
    #: when it is the same path as ``driver``.
    host_driver: Path | None = None
    #: Directories holding other vendors' CDI specs (the NVIDIA Container Toolkit's ``nvidia.com/gpu``).
    cdi_dirs: tuple[Path, ...] = (Path("/etc/cdi"), Path("/var/run/cdi"))
    #: AMD: give the container the host render node's group via CDI ``additionalGids`` (cdiVersion 0.7.0).
    additional_gids: bool = True


@dataclass(frozen=True, slots=True)
class DeviceEdits:
    """A device's container edits, plus CDI devices of other specs the runtime must apply too."""

    edits: ContainerEdits
    extra_cdi_ids: tuple[str, ...] = ()


def hardware_edits(device: Device, roots: HostRoots) -> DeviceEdits:
    """The edits that give a container ``device`` on real hardware; raises :class:`EditsError`."""
    if device.vendor is Vendor.NVIDIA:
        from gpudra.vendors.nvidia.edits import nvidia_device_edits

        return nvidia_device_edits(device, roots)
    from gpudra.vendors.amd.edits import amd_device_edits

    return amd_device_edits(device, roots)


# ---- mock -----------------------------------------------------------------------------------------------
#
# What a container sees of a mock device. Everything is per CDI device (per claim and device), never
# claim-wide: the runtime applies a spec's claim-wide edits to every container given ANY device of that
# claim, so a container that names one request of a claim would see the others' devices too. And CDI env is
# last-writer-wins across specs, so no variable may list several devices: a container holding two claims
# would see one claim's list. The view that composes across requests and claims is therefore:
#
# - per device, ``GPUDRA_<DEVICE>_UUID``, ``_PRODUCT`` and ``_MEMORY`` (when known): the device's own facts,
#   the same whichever claim gives it, so two claims sharing a device never disagree;
# - per claim and device, a read-only file ``/var/run/gpudra/devices/<claimUID>-<device>.json`` naming the
#   claim, the request (``req/sub`` as allocated) and the device: listing that directory shows exactly the
#   devices the container was given, across all of its claims.

#: Where a mock device's description file appears inside the container: ``<dir>/<claimUID>-<device>.json``.
DEVICE_DESCRIPTION_DIR: Final = "/var/run/gpudra/devices"


def env_key(device_name: str, field: str) -> str:
    """``GPUDRA_<DEVICE_NAME>_<FIELD>``: upper case, every character outside ``[A-Z0-9_]`` becomes ``_``."""
    return ENV_PREFIX + _NOT_ENV.sub("_", f"{device_name}_{field}".upper())


def description_file_name(claim_uid: str, device_name: str) -> str:
    """``<claimUID>-<device>.json``: the CDI device's name, so it is unique per claim and device."""
    return f"{claim_uid}-{device_name}.json"


def description_container_path(claim_uid: str, device_name: str) -> str:
    return f"{DEVICE_DESCRIPTION_DIR}/{description_file_name(claim_uid, device_name)}"


def mock_edits(device: Device, claim_uid: str, device_name: str, description_path: Path) -> ContainerEdits:
    """Edits for one mock device of one claim: environment variables and the device's description file,
    read-only; no device nodes. ``device_name`` is the allocated (published) name."""
    env = [
        f"{env_key(device_name, 'UUID')}={device.uuid}",
        f"{env_key(device_name, 'PRODUCT')}={device.product_name}",
    ]
    if device.memory_bytes is not None:
        env.append(f"{env_key(device_name, 'MEMORY')}={device.memory_bytes}")
    mount = Mount(
        host_path=str(description_path),
        container_path=description_container_path(claim_uid, device_name),
        options=("ro", "nosuid", "nodev", "bind"),
    )
    return ContainerEdits(env=tuple(env), mounts=(mount,))


def device_description(claim: ClaimIdentity, request: str, device_name: str, device: Device) -> bytes:
    """The JSON document describing one device of a claim to the workload (pure). Values the hardware did
    not report are left out."""
    facts: dict[str, object] = {"name": device_name, "uuid": device.uuid, "productName": device.product_name}
    if device.memory_bytes is not None:
        facts["memory"] = device.memory_bytes
    if device.pci is not None:
        facts["pciBusID"] = device.pci.bus_id
    doc = {
        "claim": {"namespace": claim.namespace, "name": claim.name, "uid": claim.uid},
        "request": request,
        "device": facts,
    }
    return (json.dumps(doc) + "\n").encode()
