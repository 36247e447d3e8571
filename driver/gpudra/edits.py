"""What a container gets for each prepared device: the CDI container edits, per backend.

Mock devices are handled here; real hardware per vendor in :mod:`gpudra.edits_nvidia` and
:mod:`gpudra.edits_amd`, behind :func:`hardware_edits`. Pure, except for reading the host's device nodes
(existence, major/minor) and the description file written by :func:`write_claim_description`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from gpudra import names
from gpudra.cdi import ContainerEdits, Mount
from gpudra.fsutil import atomic_write
from gpudra.inventory import Device, Vendor

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
        from gpudra.edits_nvidia import nvidia_device_edits

        return nvidia_device_edits(device, roots)
    from gpudra.edits_amd import amd_device_edits

    return amd_device_edits(device, roots)


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
    atomic_write(path, data.encode(), mode=0o644, durable=False)
