"""What a container sees of a mock device: no device node, so a claiming pod runs on any machine.

Everything is per CDI device (per claim and device), never claim-wide: the runtime applies a spec's
claim-wide edits to every container given ANY device of that claim, so a container that names one request of
a claim would see the others' devices too. And CDI env is last-writer-wins across specs, so no variable may
list several devices: a container holding two claims would see one claim's list. The view that composes
across requests and claims is therefore:

- per device, ``GPUDRA_<DEVICE>_UUID``, ``_PRODUCT`` and ``_MEMORY`` (when known): the device's own facts,
  the same whichever claim gives it, so two claims sharing a device never disagree;
- per claim and device, a read-only file ``/var/run/gpudra/devices/<claimUID>-<device>.json`` naming the
  claim, the request (``req/sub`` as allocated) and the device: listing that directory shows exactly the
  devices the container was given, across all of its claims.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Final

from gpudra.model.inventory import Device
from gpudra.vendors.base import ClaimIdentity

if TYPE_CHECKING:
    from gpudra.model.cdi import ContainerEdits

ENV_PREFIX: Final = "GPUDRA_"
#: Where a mock device's description file appears inside the container: ``<dir>/<claimUID>-<device>.json``.
DEVICE_DESCRIPTION_DIR: Final = "/var/run/gpudra/devices"
_NOT_ENV = re.compile(r"[^A-Z0-9_]")


def env_key(device_name: str, field: str) -> str:
    """``GPUDRA_<DEVICE_NAME>_<FIELD>``: upper case, every character outside ``[A-Z0-9_]`` becomes ``_``."""
    return ENV_PREFIX + _NOT_ENV.sub("_", f"{device_name}_{field}".upper())


def description_file_name(claim_uid: str, device_name: str) -> str:
    """``<claimUID>-<device>.json``: the CDI device's name, so it is unique per claim and device."""
    return f"{claim_uid}-{device_name}.json"


def description_container_path(claim_uid: str, device_name: str) -> str:
    return f"{DEVICE_DESCRIPTION_DIR}/{description_file_name(claim_uid, device_name)}"


def mock_edits(
    device: Device, claim_uid: str, device_name: str, description_path: str | Path
) -> ContainerEdits:
    """Edits for one mock device of one claim: environment variables and the device's description file,
    read-only; no device nodes. ``device_name`` is the allocated (published) name."""
    from gpudra.model.cdi import ContainerEdits, Mount  # at the first prepare, not at start-up
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
