"""How sharing is set up on an NVIDIA node: the time-slicer (its protocol and error) and where claims' MPS
daemons live and run.

Kept apart from :mod:`~gpudra.vendors.nvidia.sharing` (which the driver imports at the first claim, not at
start-up: discovery and the first ResourceSlice do not wait for the MPS and CDI modules)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from gpudra.vendors.nvidia.mps import MpsLauncher
    from gpudra.vendors.nvidia.mps_control import MpsControl


class TimeSliceError(Exception):
    """The time-slice could not be set (the message says why, for the claim)."""


class TimeSlicer(Protocol):
    """Sets a GPU's compute time-slice: ``nvidia-smi compute-policy`` on a node
    (:class:`~gpudra.vendors.nvidia.timeslice.NvidiaSmiTimeSlicer`), a fake on the mock."""

    def set_timeslice(self, uuid: str, level: int) -> None:
        """Set GPU ``uuid``'s compute time-slice to ``level`` (0-3); raises :class:`TimeSliceError`."""
        ...

    def timeslice(self, uuid: str) -> int | None:
        """The level set now, None when it cannot be known."""
        ...


@dataclass(frozen=True, slots=True)
class MpsOptions:
    """Where claims' MPS daemons live and how they run. ``root`` None: MPS is not available here (a claim
    asking for it fails). ``launcher`` None: detached processes of the control binary; ``control`` None:
    ``nvidia-cuda-mps-control`` under the driver root."""

    root: Path | None = None
    host_root: Path | None = None  # ``root`` as the container runtime sees it; None: the same
    launcher: MpsLauncher | None = None
    control: MpsControl | None = None
    ready_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class SharingOptions:
    """``timeslicer`` None: ``nvidia-smi compute-policy`` under the driver root."""

    timeslicer: TimeSlicer | None = None
    mps: MpsOptions = field(default_factory=MpsOptions)
