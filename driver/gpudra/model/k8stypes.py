"""TypedDicts for the raw Kubernetes JSON gpudra reads and writes (``resource.k8s.io/v1``).

The driver never deserialises API objects into models: it reads and writes these dicts, which keeps the
hot path cheap and passes through fields newer than this code. Only the fields gpudra uses are typed.
"""

from __future__ import annotations

from typing import Literal, NotRequired, TypedDict

# ---- common metadata ---------------------------------------------------------------------------------


class OwnerReference(TypedDict):
    apiVersion: str
    kind: str
    name: str
    uid: str
    controller: NotRequired[bool]


class ObjectMeta(TypedDict, total=False):
    name: str
    generateName: str
    namespace: str
    uid: str
    resourceVersion: str
    generation: int
    labels: dict[str, str]
    annotations: dict[str, str]
    ownerReferences: list[OwnerReference]


# ---- ResourceSlice -----------------------------------------------------------------------------------


class DeviceAttribute(TypedDict, total=False):
    """Exactly one of the four keys is set."""

    int: int
    bool: bool
    string: str
    version: str


class CapacityRequestPolicyRange(TypedDict, total=False):
    """``validRange`` of a request policy (KEP-5075): ``min`` is required, ``max`` and ``step`` optional."""

    min: str  # resource.Quantity
    max: str
    step: str


class CapacityRequestPolicy(TypedDict, total=False):
    """How claims consume a capacity of a device with ``allowMultipleAllocations`` (KEP-5075): ``default``
    when a request asks none of it, and at most one of ``validValues`` (sorted, <= 10) and ``validRange``."""

    default: str  # resource.Quantity
    validValues: list[str]
    validRange: CapacityRequestPolicyRange


class DeviceCapacity(TypedDict):
    value: str  # a resource.Quantity, e.g. "85520809984"
    requestPolicy: NotRequired[CapacityRequestPolicy]  # gate DRAConsumableCapacity


class Counter(TypedDict):
    value: str  # a resource.Quantity


class CounterSet(TypedDict):
    """A set of counters devices draw from (KEP-4815); from 1.35 in a slice of its own."""

    name: str
    counters: dict[str, Counter]


class DeviceCounterConsumption(TypedDict):
    counterSet: str
    counters: dict[str, Counter]


class DeviceTaint(TypedDict, total=False):
    key: str
    value: str
    effect: str  # NoSchedule | NoExecute | None
    timeAdded: str  # RFC 3339


class Device(TypedDict, total=False):
    name: str
    attributes: dict[str, DeviceAttribute]
    capacity: dict[str, DeviceCapacity]
    consumesCounters: list[DeviceCounterConsumption]
    taints: list[DeviceTaint]
    allowMultipleAllocations: bool  # gate DRAConsumableCapacity (KEP-5075)


class ResourcePool(TypedDict):
    name: str
    generation: int
    resourceSliceCount: int


class ResourceSliceSpec(TypedDict, total=False):
    driver: str
    pool: ResourcePool
    nodeName: str
    devices: list[Device]
    sharedCounters: list[CounterSet]


class ResourceSlice(TypedDict, total=False):
    apiVersion: Literal["resource.k8s.io/v1"]
    kind: Literal["ResourceSlice"]
    metadata: ObjectMeta
    spec: ResourceSliceSpec


# ---- ResourceClaim (what prepare reads) --------------------------------------------------------------


class OpaqueDeviceConfiguration(TypedDict):
    driver: str
    parameters: dict[str, object]


class DeviceAllocationConfiguration(TypedDict, total=False):
    source: Literal["FromClass", "FromClaim"]
    requests: list[str]
    opaque: OpaqueDeviceConfiguration


class DeviceRequestAllocationResult(TypedDict, total=False):
    request: str
    driver: str
    pool: str
    device: str
    adminAccess: bool
    shareID: str
    consumedCapacity: dict[str, str]


class DeviceAllocationResult(TypedDict, total=False):
    results: list[DeviceRequestAllocationResult]
    config: list[DeviceAllocationConfiguration]


class AllocationResult(TypedDict, total=False):
    devices: DeviceAllocationResult


class ResourceClaimStatus(TypedDict, total=False):
    allocation: AllocationResult


class ResourceClaim(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: dict[str, object]
    status: ResourceClaimStatus


# ---- Status (error answers) --------------------------------------------------------------------------


class StatusCause(TypedDict, total=False):
    reason: str
    message: str
    field: str


class StatusDetails(TypedDict, total=False):
    name: str
    group: str
    kind: str
    causes: list[StatusCause]


class Status(TypedDict, total=False):
    apiVersion: str
    kind: Literal["Status"]
    status: Literal["Success", "Failure"]
    message: str
    reason: str
    details: StatusDetails
    code: int
