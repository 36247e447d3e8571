"""Human-readable rendering of an inventory for ``gpudra discover``."""

from __future__ import annotations

from gpudra import names
from gpudra.inventory import Inventory


def _gib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


def inventory_table(inv: Inventory) -> str:
    header = ("DEVICE", "TYPE", "PRODUCT", "MEMORY", "PCI BUS ID", "NUMA", "UUID")
    rows = [header]
    for d in sorted(inv.devices, key=lambda d: names.gpu_device_name(d.uuid)):
        pci = d.pci
        rows.append(
            (
                names.gpu_device_name(d.uuid),
                d.kind.value,
                d.product_name,
                _gib(d.memory_bytes),
                pci.bus_id if pci else "-",
                str(pci.numa_node) if pci and pci.numa_node is not None else "-",
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
    summary = f"{len(inv.devices)} device(s)" + (f"; {', '.join(versions)}" if versions else "")
    return "\n".join([*lines, "", summary])
