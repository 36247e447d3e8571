"""What a vendor driver changed on the node for one claim — its *applied state* — as the checkpoint
records it.

Prepare asks the driver what it intends to change (recorded before anything happens), lets it apply that, and
records what it really did; unprepare, or the roll-back after a crash, undoes exactly the recorded state. So
every change must be described well enough to be undone by a later process: which device, what was created
or set, and the ids the hardware gave it (a MIG instance's GPU- and compute-instance ids, an MPS daemon's
pipe directory, a file written, a setting and the value it replaced).

The shape is deliberately flat — a change has a kind, the device it concerns and scalar parameters — so that
it round-trips through JSON unchanged and can be validated at construction: a value that the checkpoint's
decoder would reject cannot be built, so it is never written. Each vendor keeps typed classes of its own
and converts them to and from :class:`Change`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

Scalar = str | int | bool

#: Parameter of a change that creates the device it names (a dynamic MIG device): ``creates=True``.
CREATES: Final = "creates"
_KIND: Final = re.compile(r"[a-z][a-z0-9.-]{0,62}")
_KEY: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_TEXT: Final = 4096
_INT64: Final = 2**63


class AppliedStateError(ValueError):
    """An applied state that could not be recorded or read back (names the bad part)."""


def _check_scalar(where: str, value: object) -> Scalar:
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -_INT64 <= value < _INT64:
            raise AppliedStateError(f"{where}: integer {value} outside int64")
        return value
    if isinstance(value, str):
        if len(value) > MAX_TEXT or "\x00" in value:
            raise AppliedStateError(f"{where}: text longer than {MAX_TEXT} characters or with NUL")
        return value
    raise AppliedStateError(f"{where}: expected a string, integer or boolean, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Change:
    """One change made for a claim. ``device`` is the published device name it concerns ("" for none)."""

    kind: str
    device: str
    params: tuple[tuple[str, Scalar], ...] = ()

    def __post_init__(self) -> None:
        if not _KIND.fullmatch(self.kind):
            raise AppliedStateError(f"change kind {self.kind!r}: expected [a-z][a-z0-9.-]*, at most 63")
        _check_scalar(f"change {self.kind} device", self.device)
        keys = [k for k, _ in self.params]
        if keys != sorted(set(keys)):
            raise AppliedStateError(f"change {self.kind}: parameter names must be unique and sorted")
        for key, value in self.params:
            if not _KEY.fullmatch(key):
                raise AppliedStateError(f"change {self.kind}: parameter name {key!r} is not an identifier")
            _check_scalar(f"change {self.kind} parameter {key}", value)

    @classmethod
    def of(cls, kind: str, device: str, **params: Scalar) -> Change:
        return cls(kind, device, tuple(sorted(params.items())))

    @classmethod
    def from_mapping(cls, kind: str, device: str, params: Mapping[str, object]) -> Change:
        return cls(
            kind, device, tuple(sorted((k, _check_scalar(f"{kind}.{k}", v)) for k, v in params.items()))
        )

    def get(self, key: str) -> Scalar | None:
        for k, v in self.params:
            if k == key:
                return v
        return None

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str):
            raise AppliedStateError(
                f"change {self.kind} of {self.device or 'the claim'}: {key} is not a string"
            )
        return value

    def integer(self, key: str) -> int:
        value = self.get(key)
        if not isinstance(value, int) or isinstance(value, bool):
            raise AppliedStateError(
                f"change {self.kind} of {self.device or 'the claim'}: {key} is not an int"
            )
        return value


@dataclass(frozen=True, slots=True)
class AppliedState:
    """Everything one claim changed on the node. ``created_devices`` are the UUIDs of devices that exist
    only because of this claim (a MIG device made at prepare): re-discovery must not publish them as
    devices of their own."""

    changes: tuple[Change, ...] = ()
    created_devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for uuid in self.created_devices:
            if not uuid or len(uuid) > 256:
                raise AppliedStateError(f"created device id {uuid!r}: empty or longer than 256 characters")

    @property
    def empty(self) -> bool:
        return not self.changes and not self.created_devices

    def of_kind(self, kind: str) -> tuple[Change, ...]:
        return tuple(c for c in self.changes if c.kind == kind)

    @property
    def creating(self) -> tuple[str, ...]:
        """Published names of the devices this claim creates (its changes with ``creates=True``), known
        before they exist: the device a dynamic MIG placement becomes is published under that name too."""
        return tuple(c.device for c in self.changes if c.get(CREATES) is True and c.device)


NOTHING_APPLIED: Final = AppliedState()
