"""The public vocabulary of gpudra.

Everything here is written by users into CEL selectors, DeviceClasses and scripts. Renaming any of it breaks
their claims, so it lives in one module and ``tests/unit/test_names.py`` pins every value.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from typing import Final

DRIVER_NAME: Final = "gpudra.io"
#: Prefix of the CDI kind: device ids are ``k8s.gpudra.io/claim=<device>``.
CDI_VENDOR: Final = "k8s.gpudra.io"
CDI_CLASS: Final = "claim"
CDI_KIND: Final = f"{CDI_VENDOR}/{CDI_CLASS}"

# Values of the ``vendor`` attribute.
VENDOR_NVIDIA: Final = "nvidia"
VENDOR_AMD: Final = "amd"

# Values of the ``type`` attribute.
TYPE_GPU: Final = "gpu"
TYPE_MIG: Final = "mig"
TYPE_PARTITION: Final = "partition"

# Attributes in the driver's own domain. They are published unqualified, which the API reads as
# ``gpudra.io/<name>``; CEL sees them as ``device.attributes['gpudra.io'].<name>``.
ATTR_VENDOR: Final = "vendor"
ATTR_TYPE: Final = "type"
ATTR_UUID: Final = "uuid"
ATTR_PRODUCT_NAME: Final = "productName"
ATTR_BRAND: Final = "brand"
ATTR_ARCHITECTURE: Final = "architecture"
ATTR_DRIVER_VERSION: Final = "driverVersion"
ATTR_CUDA_COMPUTE_CAPABILITY: Final = "cudaComputeCapability"
ATTR_CUDA_DRIVER_VERSION: Final = "cudaDriverVersion"
ATTR_INDEX: Final = "index"
ATTR_MINOR: Final = "minor"
ATTR_PARENT_UUID: Final = "parentUUID"
ATTR_PARENT_PCI_BUS_ID: Final = "parentPciBusID"
ATTR_PROFILE: Final = "profile"  # MIG profile, e.g. "1g.10gb"
ATTR_MIG_CAPABLE: Final = "migCapable"
ATTR_MIG_ENABLED: Final = "migEnabled"
ATTR_ADDRESSING_MODE: Final = "addressingMode"
#: Vendor-neutral fabric domain: equal values = same NVLink clique / NVLink island / XGMI hive. Use it in
#: ``matchAttribute: gpudra.io/fabricDomain`` for "N GPUs on one NVLink domain". Values:
#: ``<clusterUUID>.<cliqueId>`` for a GPU registered in an NVLink fabric clique (GB200 NVL72: the same on
#: every tray of the rack, see :func:`clique_fabric_domain`); otherwise, for GPUs joined by NVLink inside one
#: node (DGX/HGX NVSwitch baseboards, NVLink-bridged PCIe pairs), ``node-<hash>`` where the hash covers the
#: sorted UUIDs of the island's GPUs (:func:`local_fabric_domain`): stable across restarts, equal on every
#: GPU of the island, and distinct on every other node because GPU UUIDs are globally unique. A GPU with no
#: NVLink peer has no fabricDomain.
ATTR_FABRIC_DOMAIN: Final = "fabricDomain"
ATTR_NVLINK_COUNT: Final = "nvlinkCount"
ATTR_GFX_VERSION: Final = "gfxVersion"
ATTR_DEVICE_ID: Final = "deviceID"
ATTR_PARTITION_PROFILE: Final = "partitionProfile"  # AMD, e.g. "cpx_nps4"
#: AMD partitions: which memory partition (NUMA pool) of the parent GPU a compute partition allocates from,
#: and how many compute partitions draw from that same pool (itself included). ``memory`` is the fair
#: share (pool / memorySharedWith); ``memoryPool`` the whole pool, which is NOT exclusive.
ATTR_MEMORY_PARTITION: Final = "memoryPartition"
ATTR_MEMORY_SHARED_WITH: Final = "memorySharedWith"

# Standard attributes defined by Kubernetes (k8s.io/dynamic-resource-allocation/deviceattribute).
STD_DOMAIN: Final = "resource.kubernetes.io"
ATTR_STD_PCI_BUS_ID: Final = f"{STD_DOMAIN}/pciBusID"
ATTR_STD_PCIE_ROOT: Final = f"{STD_DOMAIN}/pcieRoot"
ATTR_STD_NUMA_NODE: Final = f"{STD_DOMAIN}/numaNode"

# Capacities (in the driver's domain).
CAP_MEMORY: Final = "memory"
CAP_MULTIPROCESSORS: Final = "multiprocessors"
CAP_COPY_ENGINES: Final = "copyEngines"
CAP_DECODERS: Final = "decoders"
CAP_ENCODERS: Final = "encoders"
CAP_JPEG_ENGINES: Final = "jpegEngines"
CAP_OFA_ENGINES: Final = "ofaEngines"
CAP_COMPUTE_UNITS: Final = "computeUnits"
CAP_SIMD_UNITS: Final = "simdUnits"
CAP_MEMORY_POOL: Final = "memoryPool"

# Counters of a MIG-capable GPU published for dynamic MIG (KEP-4815 partitionable devices). One counter set
# per GPU, named like the GPU's device (:func:`mig_counter_set_name`); its whole-GPU device consumes every
# counter in full, each MIG placement what the hardware gives that GPU instance. Kueue's partitionable-device
# quota names these keys, so they are public API like the attributes (docs/dynamic-mig.md lists them).
#: One counter per memory slice, ``memory-slice-0`` .. ``memory-slice-<n-1>`` (value 1): placements that
#: share a memory slice cannot both be allocated.
COUNTER_MEMORY_SLICE_PREFIX: Final = "memory-slice-"
COUNTER_COMPUTE_SLICES: Final = "compute-slices"  # the GPU's compute slices (7 on A100/H100)
COUNTER_MEMORY: Final = "memory"  # bytes of device memory
COUNTER_COPY_ENGINES: Final = "copy-engines"
COUNTER_DECODERS: Final = "decoders"
COUNTER_ENCODERS: Final = "encoders"
COUNTER_JPEG_ENGINES: Final = "jpeg-engines"
COUNTER_OFA_ENGINES: Final = "ofa-engines"

# DeviceClass names shipped in deviceclasses/.
CLASS_GPU: Final = "gpu.gpudra.io"  # any full GPU, both vendors
CLASS_NVIDIA: Final = "nvidia.gpudra.io"
CLASS_MIG: Final = "mig.gpudra.io"
CLASS_AMD: Final = "amd.gpudra.io"
CLASS_AMD_PARTITION: Final = "amd-partition.gpudra.io"

# Opaque configuration API group for DeviceClass / ResourceClaim parameters.
CONFIG_API_GROUP: Final = "gpudra.io"

_DNS_LABEL_MAX: Final = 63
_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


def dns_label(text: str) -> str:
    """Fold ``text`` into a DNS label: lower case, ``[a-z0-9-]``, no leading/trailing dash, <= 63 chars.

    Text that does not fit is cut and given a short stable hash suffix so two long inputs never collide.
    """
    label = _NOT_LABEL.sub("-", text.lower()).strip("-")
    label = re.sub(r"-{2,}", "-", label)
    if len(label) <= _DNS_LABEL_MAX and label:
        return label
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    prefix = label[: _DNS_LABEL_MAX - 11].rstrip("-")
    return f"{prefix}-{digest}" if prefix else digest


def gpu_device_name(identity: str) -> str:
    """Device name of a full GPU from its hardware identity (UUID), e.g. ``gpu-bb61b538-f5d8-...``.

    NVIDIA UUIDs already start with ``GPU-``; that prefix is not repeated. Enumeration order never enters.
    """
    ident = identity.lower()
    ident = ident.removeprefix("gpu-")
    return dns_label(f"gpu-{ident}")


def mig_device_name(
    parent_uuid: str,
    profile: str,
    gi_profile_id: int,
    placement_start: int,
    *,
    ci_profile_id: int | None = None,
    ci_start: int | None = None,
) -> str:
    """Device name of a MIG device from where it sits, e.g. ``gpu-bb61b538-...-mig-1g10gbme-20-3``.

    ``gpu-<parent>-mig-<profile without . and +>-<GPU-instance profile id>-<placement start>``, plus
    ``-<compute-instance profile id>-<compute placement start>`` when the compute instance is one of several
    in its GPU instance (pass both or neither). GPU-instance and compute-instance *ids* never enter: they
    depend on creation order, placements do not. With NVIDIA UUIDs and the A100/H100/B200 profile tables
    the name stays within 63 characters, so :func:`dns_label` never has to shorten it.
    """
    if (ci_profile_id is None) != (ci_start is None):
        raise ValueError("mig_device_name: pass both ci_profile_id and ci_start, or neither")
    parent = parent_uuid.lower().removeprefix("gpu-")
    compact = re.sub(r"[^a-z0-9]", "", profile.lower())
    parts = [f"gpu-{parent}-mig-{compact}", str(gi_profile_id), str(placement_start)]
    if ci_profile_id is not None:
        parts += [str(ci_profile_id), str(ci_start)]
    return dns_label("-".join(parts))


def memory_slice_counter(index: int) -> str:
    """Counter name of memory slice ``index`` of a MIG-capable GPU: ``memory-slice-<index>``."""
    return f"{COUNTER_MEMORY_SLICE_PREFIX}{index}"


def mig_counter_set_name(gpu_uuid: str) -> str:
    """Name of a GPU's counter set (dynamic MIG): the GPU's device name, e.g. ``gpu-bb61b538-...``."""
    return gpu_device_name(gpu_uuid)


def clique_fabric_domain(cluster_uuid: str, clique_id: int) -> str:
    """``fabricDomain`` of a GPU registered in an NVLink fabric clique: ``<clusterUUID>.<cliqueId>``."""
    return f"{cluster_uuid.lower()}.{clique_id}"


def local_fabric_domain(uuids: Iterable[str]) -> str:
    """``fabricDomain`` of a node-local NVLink island: ``node-`` + 16 hex digits of SHA-256 over its UUIDs.

    Order-independent (the UUIDs are sorted), so every GPU of the island computes the same value.
    """
    digest = hashlib.sha256("\n".join(sorted(uuids)).encode()).hexdigest()[:16]
    return f"node-{digest}"
