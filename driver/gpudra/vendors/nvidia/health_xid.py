"""What an NVIDIA Xid means for a device's health: the Xids gpudra knows, and those it ignores.

Xids are the driver's error reports (``NVRM: Xid``), delivered by NVML as ``nvmlEventTypeXidCriticalError``
events. The effect of each known Xid follows the "immediate action" NVIDIA's Xid catalog gives it
(docs.nvidia.com/deploy/xid-errors, "Analyzing Xid Errors with the Xid Catalog", Ampere and later):

* **NoExecute** when the GPU needs a reset (RESET_GPU), a node restart (RESTART_BM) or otherwise a reset
  before work runs correctly again: the work on it is lost or may compute on corrupt memory, so running
  pods are evicted too;
* **NoSchedule** when the running work is unaffected or was already ended by the driver and the GPU still
  serves (IGNORE, RESTART_APP), but the Xid is a hardware signal that new work should not land before someone
  looks (a pending row remap, a rising single-bit rate, a contained error awaiting its reset).

An Xid not in the table and not ignored is NoSchedule, as NVIDIA's DRA driver treats every Xid it does not
ignore. Xid 79 is not an Xid condition but the GPU lost (:attr:`ConditionKind.LOST`), which clears when the
GPU answers again. Every condition but LOST clears after its quiet period (:mod:`gpudra.planning.health`).

The ignored Xids are application errors: the GPU itself is fine. :data:`DEFAULT_IGNORED_XIDS` are NVIDIA's
defaults (kubernetes-sigs/dra-driver-nvidia-gpu and the k8s-device-plugin); the driver takes the full set
as a constructor parameter, so an operator may add more or take some out (109, a context-switch timeout,
is ignored by NVIDIA's default although the catalog's action for it is RESET_GPU).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from gpudra.model.health import ConditionKind, Effect

#: Xids that are application errors: a report of the GPU's health says nothing about them.
DEFAULT_IGNORED_XIDS: Final = frozenset({
    13,  # graphics engine exception (an illegal instruction, an out-of-range access in a kernel)
    31,  # GPU memory page fault (an illegal address in the application)
    43,  # GPU stopped processing (the application hit a software fault and ended; the GPU is healthy)
    45,  # preemptive cleanup (an application aborted or killed, its channels torn down)
    68,  # video decoder (NVDEC0) exception
    109,  # context switch timeout
})  # fmt: skip
#: How often the watcher checks that each GPU answers and reads its uncorrectable ECC counter (seconds).
DEFAULT_POLL_S: Final = 5.0


@dataclass(frozen=True, slots=True)
class XidRule:
    """What one Xid does to a device: the condition kind, its taint effect, its meaning for humans."""

    kind: ConditionKind
    effect: Effect
    meaning: str


_NO_EXECUTE, _NO_SCHEDULE = Effect.NO_EXECUTE, Effect.NO_SCHEDULE

#: The Xids gpudra knows: Xid -> (kind, effect, meaning). The comment is the catalog's immediate action.
XID_RULES: Final[Mapping[int, XidRule]] = MappingProxyType({
    46: XidRule(ConditionKind.XID, _NO_EXECUTE, "GPU stopped processing (timeout)"),  # RESET_GPU
    48: XidRule(ConditionKind.XID, _NO_EXECUTE, "double-bit ECC error"),  # reset or reboot clears it
    62: XidRule(ConditionKind.XID, _NO_EXECUTE, "internal micro-controller halt"),  # RESET_GPU
    63: XidRule(ConditionKind.XID, _NO_SCHEDULE,
                "ECC row remapping event: a row awaits remapping at the next GPU reset"),  # IGNORE
    64: XidRule(ConditionKind.XID, _NO_EXECUTE, "ECC row remapping failure"),  # RESET_GPU
    74: XidRule(ConditionKind.XID, _NO_SCHEDULE,  # reset clears it; often the far end of the link failed
                "NVLink error (may echo a failure at the other end of the link)"),
    79: XidRule(ConditionKind.LOST, _NO_EXECUTE, "GPU has fallen off the bus"),  # RESTART_BM
    92: XidRule(ConditionKind.XID, _NO_SCHEDULE, "high single-bit ECC error rate"),  # IGNORE
    94: XidRule(ConditionKind.XID, _NO_SCHEDULE,  # RESTART_APP
                "contained ECC error: one application was ended, reset the GPU when convenient"),
    95: XidRule(ConditionKind.XID, _NO_EXECUTE,
                "uncontained ECC error: every application on the GPU may be affected"),  # RESET_GPU
    110: XidRule(ConditionKind.XID, _NO_EXECUTE, "security fault error"),  # RESET_GPU
    119: XidRule(ConditionKind.XID, _NO_EXECUTE, "GSP RPC timeout (GPU firmware not answering)"),  # RESET_GPU
    120: XidRule(ConditionKind.XID, _NO_EXECUTE, "GSP error (GPU firmware)"),  # RESET_GPU
})  # fmt: skip


def xid_rule(xid: int) -> XidRule:
    """The rule of ``xid``: the table's, else an unknown hardware Xid (NoSchedule)."""
    found = XID_RULES.get(xid)
    if found is not None:
        return found
    return XidRule(ConditionKind.XID, _NO_SCHEDULE, "see NVIDIA's Xid catalog")


def ignore_list(xids: Iterable[int] | None) -> frozenset[int]:
    """The ignore-list a driver takes: ``None`` for NVIDIA's defaults; ValueError for a negative Xid."""
    chosen = DEFAULT_IGNORED_XIDS if xids is None else frozenset(xids)
    bad = sorted(x for x in chosen if x < 0)
    if bad:
        raise ValueError(f"an Xid is a non-negative integer, got {bad}")
    return chosen
