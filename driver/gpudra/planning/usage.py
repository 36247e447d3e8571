"""Which series the usage metrics show, and how a GPU's energy is attributed to the claims holding it (pure).

The usage sampler (:mod:`gpudra.runtime.usage`) gives this module the published devices, the devices
prepared claims hold and one reading per device; it answers a :class:`UsageSnapshot` (what the metrics show
now) and a :class:`Ledger` (what the next sample continues from).

**Devices.** Every published device with a reading gets a series, and so does each GPU whose MIG devices or
partitions are published without it (static MIG, AMD partitions): its power and energy are only reported
for it. A MIG device a claim's prepare created (dynamic MIG) has a series while it is held, under the name
the claim holds (its placement).

**Holders.** Each (claim, device) pair gets the device's series again with the claim's namespace, name, UID
and pods, and two of its own: the GPU fraction it holds and the energy attributed to it.

**Attribution**, so that a sum over claims never counts a joule twice:

* energy is read per physical GPU; a sample's **delta** is its counter's rise since the previous sample
  (nothing on the first sample of a GPU, or when the counter went back: a driver reload);
* a device's **share** of its GPU is 1 for the whole GPU; for a MIG device or partition its memory over the
  GPU's (the GPU as discovered, else as its reading reports it, else the memory of the sibling devices
  published), so the shares of one GPU's devices sum to at most 1;
* a device's part of the delta goes to the claims holding it, counting only claims without ``adminAccess``
  when there is one (an admin-access claim watches a device another claim uses): in proportion to the memory
  each consumed when all of them say (a device shared by consumable capacity), else in equal parts;
* a claim holding a device gets nothing for the sample in which it first appears (its counter starts at 0,
  the energy before it held the device is not its own); a claim that is unprepared loses its series.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpudra.model import names
from gpudra.model.inventory import Device, DeviceKind
from gpudra.model.usage import DeviceUsage

NO_USAGE = DeviceUsage()


@dataclass(frozen=True, slots=True)
class Holding:
    """One device a prepared claim holds: the published name, and the UUID of what it holds."""

    namespace: str
    claim: str
    claim_uid: str
    device: str
    uuid: str  # the device's, or for a MIG device created at prepare the created one's
    admin_access: bool = False
    pods: tuple[str, ...] = ()
    #: the device memory the claim's allocation consumed (a shared device's consumedCapacity); None: unknown
    consumed_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceInfo:
    """What a device's series says about it, and where its energy comes from."""

    name: str
    uuid: str
    vendor: str
    kind: str  # gpu | mig | partition
    gpu_uuid: str  # the physical GPU whose energy it draws (itself for a GPU)
    memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class DeviceSeries:
    info: DeviceInfo
    usage: DeviceUsage


@dataclass(frozen=True, slots=True)
class HolderSeries:
    device: DeviceSeries
    holding: Holding
    gpu_fraction: float  # GPUs this claim holds through the device: its share over the claims sharing it
    energy_joules: float  # attributed since the claim was first seen holding it


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    devices: tuple[DeviceSeries, ...] = ()
    holders: tuple[HolderSeries, ...] = ()


@dataclass(frozen=True, slots=True)
class Ledger:
    """What a sample continues from: each GPU's last energy reading, each holder's attributed joules."""

    gpu_energy: Mapping[str, float] = field(default_factory=dict)
    attributed: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (claim uid, device)


def describe(published: Mapping[str, Device], holdings: Iterable[Holding]) -> dict[str, DeviceInfo]:
    """UUID -> what to read and show: every published device with a UUID, the GPUs of published MIG
    devices and partitions, and the MIG devices claims created (under the name they hold)."""
    out: dict[str, DeviceInfo] = {}
    parents: dict[str, Device] = {}
    for name, dev in published.items():
        if dev.uuid:
            out[dev.uuid] = _info(name, dev)
        if dev.kind is not DeviceKind.GPU and dev.parent_uuid:
            parents.setdefault(dev.parent_uuid, dev)
    for uuid, child in parents.items():
        if uuid not in out:
            name = names.gpu_device_name(uuid)
            out[uuid] = DeviceInfo(name, uuid, child.vendor.value, DeviceKind.GPU.value, uuid)
    for h in holdings:
        held = published.get(h.device)
        if h.uuid and h.uuid not in out and held is not None:
            out[h.uuid] = _info(h.device, held, h.uuid)
    return out


def step(
    ledger: Ledger,
    infos: Mapping[str, DeviceInfo],
    holdings: Sequence[Holding],
    readings: Mapping[str, DeviceUsage],
) -> tuple[UsageSnapshot, Ledger]:
    """One sample: the series to show, and the ledger the next sample continues from."""
    energy = {u: r.energy_joules for u, r in readings.items() if r.energy_joules is not None}
    delta = {u: _rise(ledger.gpu_energy.get(u), e) for u, e in energy.items()}
    # A GPU that gave no energy this time keeps its last reading: the next rise covers both periods.
    kept = {u: e for u, e in ledger.gpu_energy.items() if u in infos and u not in energy}
    devices = {u: DeviceSeries(i, readings[u]) for u, i in infos.items() if u in readings}
    by_device: dict[str, list[Holding]] = {}
    for h in holdings:
        by_device.setdefault(h.uuid, []).append(h)
    attributed: dict[tuple[str, str], float] = {}
    holders: list[HolderSeries] = []
    for uuid, held in sorted(by_device.items()):
        info = infos.get(uuid)
        if info is None:
            continue
        share = _share(info, infos, readings)
        weights = _weights(held)
        series = devices.get(uuid) or DeviceSeries(info, NO_USAGE)
        for h, weight in zip(held, weights, strict=True):
            key = (h.claim_uid, h.device)
            before = ledger.attributed.get(key)
            part = delta.get(info.gpu_uuid, 0.0) * share * weight
            joules = 0.0 if before is None else before + part
            attributed[key] = joules
            holders.append(HolderSeries(series, h, share * weight, joules))
    snapshot = UsageSnapshot(tuple(devices[u] for u in sorted(devices)), tuple(holders))
    return snapshot, Ledger(kept | energy, attributed)


def _weights(held: Sequence[Holding]) -> list[float]:
    """Each holder's part of its device: by consumed memory when every paying holder has it, else equal;
    admin-access holders pay nothing unless no other claim holds the device."""
    payers = [h for h in held if not h.admin_access] or list(held)
    consumed = [h.consumed_bytes or 0 for h in payers]
    total = sum(consumed)
    if total and all(consumed):
        parts = {id(h): c / total for h, c in zip(payers, consumed, strict=True)}
    else:
        parts = {id(h): 1 / len(payers) for h in payers}
    return [parts.get(id(h), 0.0) for h in held]


def _rise(before: float | None, now: float) -> float:
    """A counter's rise; 0 on its first reading and when it went back (the driver reloaded)."""
    return 0.0 if before is None or now < before else now - before


def _info(name: str, dev: Device, uuid: str | None = None) -> DeviceInfo:
    gpu = dev.uuid if dev.kind is DeviceKind.GPU else (dev.parent_uuid or "")
    return DeviceInfo(name, uuid or dev.uuid, dev.vendor.value, dev.kind.value, gpu, dev.memory_bytes)


def _share(info: DeviceInfo, infos: Mapping[str, DeviceInfo], readings: Mapping[str, DeviceUsage]) -> float:
    """The device's share of its GPU's energy (see the module docstring); 0 when it cannot be known."""
    if info.kind == DeviceKind.GPU.value:
        return 1.0
    mine = info.memory_bytes
    if not mine or not info.gpu_uuid:
        return 0.0
    parent = infos.get(info.gpu_uuid)
    whole = parent.memory_bytes if parent is not None else None
    whole = whole or readings.get(info.gpu_uuid, NO_USAGE).memory_total_bytes
    if not whole:
        whole = sum(
            i.memory_bytes or 0
            for u, i in infos.items()
            if i.gpu_uuid == info.gpu_uuid and i.kind != DeviceKind.GPU.value and i.name != info.name
        ) + mine
    return min(1.0, mine / whole) if whole else 0.0
