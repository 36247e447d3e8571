"""Fractional GPUs (KEP-5075 consumable capacity), pure: which published devices several claims may share,
and how each of their capacities is consumed.

A shared device is published with ``allowMultipleAllocations: true``. The scheduler then allocates it to
any number of claims, from any namespace, as long as the sum of what they consume fits each capacity; every
allocation gets a ``shareID`` and its ``consumedCapacity``, which prepare enforces (an MPS pinned-memory limit
equal to the share). With that flag set the API makes EVERY capacity of the device consumable, so each one
gets a ``requestPolicy``:

- ``memory`` is the share: ``default`` = all of it, ``validRange`` {``min`` 2Gi, ``step`` 1Mi, ``max`` = all
  of it}. A claim that asks for no memory (every claim written before sharing existed) consumes the whole
  device and stays exclusive; ``capacity.requests.memory: 20Gi`` consumes 20Gi. The scheduler rounds a
  request up to ``min + n * step`` and refuses more than ``max``.
- every other capacity (``multiprocessors``, MIG engines, ``computeUnits``, ``memoryPool``, ...) gets
  ``default`` 0 and ``validValues`` [0]: a share consumes none of it, and a claim that asks for some is not
  given a shared device. Compute is not a separate share: prepare derives a share's MPS thread percentage
  from its memory share.

Why these numbers. The API requires ``default`` and ``max`` to be ``min + n * step``; both are the device's
whole memory, which on real GPUs is not a whole number of GiB (an H100 80GB has 85520809984 bytes, 81559 MiB:
odd, so no step above 1Mi divides it) but always a whole number of MiB on every profile we know. So ``step``
is 1Mi, which is also the unit of MPS's pinned-memory limit: a share is always exactly expressible there.
``min`` 2Gi: a CUDA context alone takes several hundred MiB, and MPS serves at most 48 clients per GPU,
fewer on a MIG device (proportional to its compute slices): 2Gi shares keep an H100 below 40 shares and a
``1g.10gb`` below 5 (its MPS limit is 6).

Which devices. Full GPUs that are not in MIG mode, static MIG devices (NVIDIA's MIG user guide: MPS runs on
top of MIG, one MPS server per MIG device, its client limit scaled to the instance), AMD GPUs and AMD compute
partitions. Never a partitionable device of dynamic MIG (the whole GPU or a placement: they consume counters):
the scheduler consumes a shared device's counters only for its first allocation, and schedulers without the
fix reported as Kubernetes PR 139040 do not count the counters of shared devices at all, so a MIG placement
could be allocated beside a shared whole GPU; and prepare switches MIG mode for the device a claim gets,
which a second claim on the same GPU would undo. Nor a device whose memory is unknown (the share would have
nothing to count against, and an unbounded shared device would no longer be exclusive for claims asking
nothing), not a whole number of MiB, or smaller than ``min + step``: those stay exclusive, with a warning.
"""

from __future__ import annotations

from typing import Final

from gpudra.model import k8stypes, names
from gpudra.model.quantity import canonical_quantity, parse_quantity

MIB: Final = 1024**2
GIB: Final = 1024**3
#: The smallest share of memory a claim can get (a smaller request is rounded up to it).
SHARE_MIN_BYTES: Final = 2 * GIB
#: Shares are whole multiples of this above the minimum (requests are rounded up to it).
SHARE_STEP_BYTES: Final = MIB
#: The capacity a share consumes.
SHARED_CAPACITY: Final = names.CAP_MEMORY
#: The policy of every other capacity of a shared device: a share consumes none of it.
ZERO_ONLY: Final[k8stypes.CapacityRequestPolicy] = {"default": "0", "validValues": ["0"]}


def _q(value: int) -> str:
    """Bytes as the API server stores them (so what it returns compares equal as text too): binary SI when
    that is exact in GiB or MiB and below 1024 of them (``2Gi``, ``1Mi``), else the decimal number of bytes,
    as the capacity ``value`` is written."""
    for suffix, unit in (("Gi", GIB), ("Mi", MIB)):
        if value % unit == 0 and value // unit < 1024:
            return canonical_quantity(f"{value // unit}{suffix}")
    return canonical_quantity(str(value))


def memory_policy(total: int) -> k8stypes.CapacityRequestPolicy:
    """The ``memory`` request policy of a shared device with ``total`` bytes (a whole number of MiB)."""
    return {
        "default": _q(total),
        "validRange": {"min": _q(SHARE_MIN_BYTES), "max": _q(total), "step": _q(SHARE_STEP_BYTES)},
    }


def not_shareable(device: k8stypes.Device) -> str | None:
    """Why the published ``device`` cannot be shared by memory, or None when it can."""
    if "consumesCounters" in device:
        return "it consumes counters (dynamic MIG)"
    raw = device.get("capacity", {}).get(SHARED_CAPACITY)
    if raw is None:
        return "its memory is unknown"
    total = parse_quantity(raw["value"])
    if total.denominator != 1 or total % SHARE_STEP_BYTES:
        return f"its memory ({raw['value']} bytes) is not a whole number of MiB"
    if total < SHARE_MIN_BYTES + SHARE_STEP_BYTES:
        return f"its memory ({raw['value']} bytes) is below the smallest share and one step (2Gi + 1Mi)"
    return None


def share(device: k8stypes.Device) -> tuple[k8stypes.Device, str | None]:
    """``device`` published for sharing (a new dict; ``device`` is not changed), or ``device`` itself and
    why it stays exclusive."""
    why = not_shareable(device)
    if why is not None:
        return device, why
    capacity: dict[str, k8stypes.DeviceCapacity] = {}
    for name, cap in device.get("capacity", {}).items():
        if name == SHARED_CAPACITY:
            policy = memory_policy(int(parse_quantity(cap["value"])))
        else:
            policy = {"default": ZERO_ONLY["default"], "validValues": list(ZERO_ONLY["validValues"])}
        capacity[name] = {"value": cap["value"], "requestPolicy": policy}
    return {**device, "capacity": capacity, "allowMultipleAllocations": True}, None


def shared(device: k8stypes.Device) -> bool:
    """Whether ``device`` is published for several claims (``allowMultipleAllocations``)."""
    return device.get("allowMultipleAllocations") is True
