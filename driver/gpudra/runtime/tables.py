"""Human-readable rendering of an inventory for ``gpudra discover``.

Rows are sorted by device name, which puts each MIG device right under its parent GPU. A MIG-enabled GPU
is listed as ``gpu (MIG)``: it is published only as its MIG devices. MEMORY is what the slices publish as
``memory``: for an AMD compute partition, its share of the memory pool it draws from, with that pool.
"""

from __future__ import annotations

from gpudra.model.inventory import Device, DeviceKind, Inventory
from gpudra.planning.devices import device_name

_KIND_LABELS = (
    (DeviceKind.GPU, "GPU(s)"),
    (DeviceKind.MIG, "MIG device(s)"),
    (DeviceKind.PARTITION, "partition(s)"),
)


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def _memory(d: Device) -> str:
    """An AMD partition's fair share of its pool (as ``planning.devices`` publishes it), the pool beside it;
    ``-`` when the pool or how many partitions share it is unknown (nothing is published then)."""
    if d.kind is not DeviceKind.PARTITION:
        return _gib(d.memory_bytes)
    shared = d.partition.memory_shared_with if d.partition is not None else None
    if d.memory_bytes is None or not shared:
        return "-"
    if shared == 1:
        return _gib(d.memory_bytes)
    return f"{_gib(d.memory_bytes // shared)} (pool {_gib(d.memory_bytes)} / {shared})"


def _kind(d: Device) -> str:
    return "gpu (MIG)" if d.kind is DeviceKind.GPU and d.mig_enabled else d.kind.value


def _product(d: Device) -> str:
    return f"{d.product_name} MIG {d.mig.profile}" if d.mig is not None else d.product_name


def inventory_table(inv: Inventory) -> str:
    header = ("DEVICE", "TYPE", "PRODUCT", "MEMORY", "PCI BUS ID", "NUMA", "FABRIC", "UUID")
    rows = [header]
    for d in sorted(inv.devices, key=device_name):
        pci = d.pci
        rows.append(
            (
                device_name(d),
                _kind(d),
                _product(d),
                _memory(d),
                pci.bus_id if pci else "-",
                str(pci.numa_node) if pci and pci.numa_node is not None else "-",
                d.fabric_domain or "-",
                d.uuid,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    versions = []
    if inv.driver_version:
        versions.append(f"driver {inv.driver_version}")
    if inv.cuda_driver_version:
        versions.append(f"CUDA {inv.cuda_driver_version}")
    counts = [(sum(d.kind is kind for d in inv.devices), label) for kind, label in _KIND_LABELS]
    summary = ", ".join(f"{n} {label}" for n, label in counts if n) or "0 GPU(s)"
    summary += f"; {', '.join(versions)}" if versions else ""
    if inv.fabric_pending:
        summary += "; NVLink fabric registration pending (fabricDomain not yet known)"
    return "\n".join([*lines, "", summary])
