"""The health part of an AMD profile's GPU (``ras``, ``ras_features``, ``events``; described in
:mod:`~gpudra.vendors.mock.amd_profile`): what ``fake_amd_sysfs`` writes under ``ras/`` and what
``fake_amdsmi``'s event API delivers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final

from gpudra.vendors.mock.profile_json import Invalid, non_negative, obj, opt, req

_RAS_BLOCK = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_RAS_COUNTS: Final = frozenset({"ue", "ce", "de"})
_RAS_FEATURES = re.compile(r"^feature mask: 0x[0-9a-f]+$")
_EVENT: Final = frozenset({"id", "type", "partition", "message"})
_EVENT_MESSAGE = re.compile(r"^\S{0,63}$")  # amdsmi reads the kernel's text with "%63s"
#: Event types a profile may raise: ``AmdSmiEvtNotificationType`` names in lower case, and ``gpu_reset``
#: (a pre-reset and a post-reset event, as the kernel sends them).
EVENT_TYPES: Final = (
    "vmfault", "thermal_throttle", "gpu_pre_reset", "gpu_post_reset", "ring_hang", "gpu_reset"
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class RasCount:
    """One RAS block's counters: uncorrectable, corrected, deferred (``None``: no ``de`` line)."""

    ue: int
    ce: int
    de: int | None = None

    def text(self) -> str:
        """The ``<block>_err_count`` file as amdgpu prints it."""
        de = "" if self.de is None else f"de: {self.de}\n"
        return f"ue: {self.ue}\nce: {self.ce}\n{de}"


@dataclass(frozen=True, slots=True)
class AmdEvent:
    """An amdsmi event the fake delivers once per ``id``: ``type`` is one of :data:`EVENT_TYPES`, raised on
    the processor of partition ``partition`` (0: the PCI function)."""

    id: str
    type: str
    partition: int = 0
    message: str = ""


RasBlocks = tuple[tuple[str, RasCount | str], ...]


def ras_blocks(value: object, where: str) -> RasBlocks:
    """``{"umc": {"ue": 0, "ce": 3}, "sdma": "Query currently inaccessible"}`` -> blocks in order."""
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise Invalid(f"{where}: expected an object of RAS blocks")
    out: list[tuple[str, RasCount | str]] = []
    for block, counts in value.items():
        if str(block).startswith("_"):
            continue
        if not _RAS_BLOCK.match(block):
            raise Invalid(f"{where}: {block!r} is not a RAS block name like umc, gfx, xgmi_wafl")
        if isinstance(counts, str):
            out.append((block, counts))
            continue
        here = f"{where}.{block}"
        raw = obj(counts, here, _RAS_COUNTS)
        ue, ce = req(raw, "ue", int, here), req(raw, "ce", int, here)
        de = non_negative(raw, "de", here)
        if ue < 0 or ce < 0:
            raise Invalid(f"{here}: counts must not be negative")
        out.append((block, RasCount(ue, ce, de)))
    return tuple(out)


def ras_features(value: object, where: str) -> str | None:
    """The ``ras/features`` text, checked to read as amdgpu prints it."""
    if value is None:
        return None
    if not isinstance(value, str) or not _RAS_FEATURES.match(value):
        raise Invalid(f'{where}: expected the text "feature mask: 0x<hex>", got {value!r}')
    return value


def events(value: object, where: str) -> tuple[AmdEvent, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise Invalid(f"{where}: expected a list of events or null")
    return tuple(_event(item, f"{where}[{n}]") for n, item in enumerate(value))


def _event(item: object, where: str) -> AmdEvent:
    raw: dict[str, Any] = obj(item, where, _EVENT)
    event_id = req(raw, "id", str, where)
    kind = req(raw, "type", str, where)
    if kind not in EVENT_TYPES:
        raise Invalid(f"{where}.type: expected one of {', '.join(EVENT_TYPES)}, got {kind!r}")
    message = opt(raw, "message", str, where) or ""
    if not _EVENT_MESSAGE.match(message):
        raise Invalid(f"{where}.message: one token (no spaces) of at most 63 characters, got {message!r}")
    return AmdEvent(event_id, kind, non_negative(raw, "partition", where, 0) or 0, message)
