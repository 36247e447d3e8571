"""Dynamic MIG as partitionable devices (KEP-4815), pure: which GPUs gpudra partitions at prepare, their
counter sets, and the devices each of them offers.

A MIG-capable GPU whose MIG management is gpudra's offers the whole GPU and every (GPU-instance profile,
placement) NVML allows, all at once; the scheduler picks one and the counters keep the picks compatible:

- one counter set per GPU (:func:`gpudra.model.names.mig_counter_set_name`), holding one counter per memory
  slice (value 1: two placements that share a memory slice can never both be allocated), the GPU's compute
  slices, its memory in bytes, and its copy / decoder / encoder / JPEG / OFA engines;
- the whole GPU consumes every counter in full; a MIG device consumes the memory slices of its placement and
  exactly the compute slices, memory and engines its profile gives (the profile table NVML reported).

A counter is published only when every profile and the GPU know its value and no profile needs more of it
than the whole GPU has (a table with unknown engine counts, read as 0, is not consistent): a missing counter
is consumed by nobody, a wrong one could refuse a valid layout.

A GPU is partitioned at prepare only when the node's policy is dynamic, NVML reported it MIG-capable with its
whole profile table, and every MIG device it has now was created by a claim; an Ampere GPU only while MIG
mode is on (:data:`RESET_TO_SWITCH`). A GPU with MIG devices someone
else made (an admin's layout) is published as those static devices instead, and never changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from typing import Final

from gpudra.model import k8stypes, names
from gpudra.model.inventory import Device, DeviceKind, EngineCounts, MigInfo, MigProfile
from gpudra.planning.devices import device_name

_ENGINES: Final[tuple[tuple[str, Callable[[EngineCounts], int | None]], ...]] = (
    (names.COUNTER_COPY_ENGINES, lambda e: e.copy_engines),
    (names.COUNTER_DECODERS, lambda e: e.decoders),
    (names.COUNTER_ENCODERS, lambda e: e.encoders),
    (names.COUNTER_JPEG_ENGINES, lambda e: e.jpeg_engines),
    (names.COUNTER_OFA_ENGINES, lambda e: e.ofa_engines),
)


@dataclass(frozen=True, slots=True)
class MigPolicy:
    """How this node manages MIG. ``dynamic``: MIG-capable GPUs are published as partitionable devices and
    partitioned at prepare (the default); False: static MIG, the layout an admin made is published as is
    (``--mig-management static``, or the cluster dropped the counters: its partitionable-devices gate is
    off).

    ``fractional``: devices that are not partitionable are published for several claims to share, each
    consuming part of their memory (KEP-5075, :mod:`gpudra.planning.fractional`; ``--fractional-gpus``, off
    once the cluster drops the fields). It rides along here because every plan of the node takes this one
    policy."""

    dynamic: bool = True
    fractional: bool = False


STATIC_MIG: Final = MigPolicy(dynamic=False)
#: Architectures whose MIG mode changes only with a GPU reset (NVML leaves the change pending): Ampere (A100,
#: A30). gpudra never resets a GPU, so on these dynamic MIG uses MIG mode as the admin set it: with MIG on,
#: the GPU offers its MIG placements but not itself whole; with MIG off, it is a whole GPU only. Hopper and
#: later switch at prepare when idle.
RESET_TO_SWITCH: Final = frozenset({"Ampere"})


@dataclass(frozen=True, slots=True)
class DynamicGpu:
    """A GPU gpudra partitions at prepare: its counter set, and its devices with what each consumes."""

    gpu: Device
    counter_set: k8stypes.CounterSet
    #: the whole GPU's consumption (None: the whole GPU is not offered), then one (device, consumption) per
    #: profile and placement
    whole: k8stypes.DeviceCounterConsumption | None
    slots: tuple[tuple[Device, k8stypes.DeviceCounterConsumption], ...]
    warnings: tuple[str, ...] = ()


def claim_made(dev: Device, claim_created: AbstractSet[str]) -> bool:
    """Whether MIG device ``dev`` exists because a claim created it (by UUID, or by its published name:
    a dynamic MIG device is published under the name its instance gets once created)."""
    return dev.uuid in claim_created or (dev.mig is not None and device_name(dev) in claim_created)


def foreign_instances(gpu: Device, devices: tuple[Device, ...], claim_created: AbstractSet[str]) -> list[str]:
    """The MIG devices on ``gpu`` that no claim created (UUIDs), which make it static."""
    return [
        d.uuid
        for d in devices
        if d.kind is DeviceKind.MIG and d.parent_uuid == gpu.uuid and not claim_made(d, claim_created)
    ]


def dynamic_gpu(
    gpu: Device, devices: tuple[Device, ...], claim_created: AbstractSet[str]
) -> DynamicGpu | None:
    """``gpu`` as a partitionable device, or None when it is not one (not MIG-capable, no profile table,
    or MIG devices of someone else's on it)."""
    if gpu.kind is not DeviceKind.GPU or gpu.mig_capable is not True or not gpu.mig_profiles:
        return None
    if foreign_instances(gpu, devices, claim_created):
        return None
    if gpu.architecture in RESET_TO_SWITCH and gpu.mig_enabled is not True:
        return None  # MIG mode cannot be switched on at prepare: the whole GPU, as static MIG has it
    totals = _totals(gpu)
    set_name = names.mig_counter_set_name(gpu.uuid)
    slots: list[tuple[Device, k8stypes.DeviceCounterConsumption]] = []
    warnings: list[str] = []
    for profile in gpu.mig_profiles:
        for placement in profile.placements:
            use = _consumption(profile, placement.start, placement.size, totals)
            over = sorted(k for k, v in use.items() if k not in totals or v > totals[k])
            if over:
                warnings.append(
                    f"GPU {gpu.uuid}: MIG profile {profile.name} at memory slice {placement.start} not "
                    f"published: it needs more than the GPU has of {over}"
                )
                continue
            slots.append((_slot(gpu, profile, placement.start, placement.size), _consume(set_name, use)))
    counter_set: k8stypes.CounterSet = {"name": set_name, "counters": _quantities(totals)}
    # A GPU that needs a reset to leave MIG mode cannot be given whole: only its MIG placements.
    whole = None if gpu.architecture in RESET_TO_SWITCH else _consume(set_name, totals)
    return DynamicGpu(gpu, counter_set, whole, tuple(slots), tuple(warnings))


def _totals(gpu: Device) -> dict[str, int]:
    profiles = gpu.mig_profiles
    memory_slices = max(p.start + p.size for prof in profiles for p in prof.placements)
    full = max(profiles, key=lambda p: (p.compute_slices, p.memory_bytes or 0))
    totals = {names.memory_slice_counter(i): 1 for i in range(memory_slices)}
    totals[names.COUNTER_COMPUTE_SLICES] = full.compute_slices
    if gpu.memory_bytes is not None and all(p.memory_bytes is not None for p in profiles):
        totals[names.COUNTER_MEMORY] = gpu.memory_bytes
    for counter, count in _ENGINES:
        total = count(full.engines)
        values = [count(p.engines) for p in profiles]
        if total is not None and all(v is not None and v <= total for v in values):
            totals[counter] = total
    return totals


def _consumption(profile: MigProfile, start: int, size: int, totals: Mapping[str, int]) -> dict[str, int]:
    use = {names.memory_slice_counter(i): 1 for i in range(start, start + size)}
    use[names.COUNTER_COMPUTE_SLICES] = profile.compute_slices
    if names.COUNTER_MEMORY in totals and profile.memory_bytes is not None:
        use[names.COUNTER_MEMORY] = profile.memory_bytes
    for counter, count in _ENGINES:
        value = count(profile.engines)
        if counter in totals and value:
            use[counter] = value
    return use


def _quantities(values: Mapping[str, int]) -> dict[str, k8stypes.Counter]:
    return {k: {"value": str(v)} for k, v in sorted(values.items())}


def _consume(set_name: str, values: Mapping[str, int]) -> k8stypes.DeviceCounterConsumption:
    return {"counterSet": set_name, "counters": _quantities(values)}


def _slot(gpu: Device, profile: MigProfile, start: int, size: int) -> Device:
    """The MIG device prepare creates at ``start``: the parent's identity, the profile's resources, and no
    UUID or instance ids until it exists (as a static MIG device of that placement is described)."""
    info = MigInfo(
        profile=profile.name, gi_profile_id=profile.gi_profile_id, placement_start=start,
        placement_size=size, gi_id=None, ci_id=None, parent_minor=gpu.minor, ci_spans_gpu_instance=True,
        gi_slices=profile.compute_slices,
    )  # fmt: skip
    return replace(
        gpu, kind=DeviceKind.MIG, uuid="", memory_bytes=profile.memory_bytes,
        multiprocessors=profile.multiprocessors, parent_uuid=gpu.uuid,
        parent_pci_bus_id=gpu.pci.bus_id if gpu.pci else None, mig=info, mig_capable=None, mig_enabled=None,
        mig_profiles=(), engines=profile.engines, fabric_domain=None, nvlink_links=None,
    )  # fmt: skip
