"""Opaque device configuration: which of a claim's configs apply to which request, decoded strictly.

Pure. A ResourceClaim's allocation carries the configs of its DeviceClasses (``source: FromClass``) and of
the claim itself (``FromClaim``). Configs for other drivers are ignored; for ours each entry must be a known
``apiVersion``/``kind`` with valid fields, otherwise the claim fails to prepare with a message saying why.
Precedence: class configs first, then claim configs, each in list order — a later config of the same kind
overrides an earlier one for the requests it names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gpudra.model import names
from gpudra.model.k8stypes import DeviceAllocationConfiguration


class ConfigError(ValueError):
    """A config for our driver that cannot be used. The message is shown to the user in the pod events."""


Decoder = Callable[[Mapping[str, Any]], object]

#: (apiVersion, kind) -> strict decoder. No opaque config kinds are defined yet; later features (sharing,
#: MIG) register theirs here. Until then any opaque config addressed to gpudra.io is refused, never ignored.
KNOWN_KINDS: Mapping[tuple[str, str], Decoder] = {}


@dataclass(frozen=True, slots=True)
class OpaqueConfig:
    source: str  # "FromClass" | "FromClaim"
    requests: tuple[str, ...]  # empty: applies to every request
    api_version: str
    kind: str
    parameters: Mapping[str, Any]

    def applies_to(self, request: str) -> bool:
        """A config naming request ``r`` also applies to its subrequests ``r/<sub>``."""
        if not self.requests:
            return True
        parent = request.split("/", 1)[0]
        return request in self.requests or parent in self.requests


def _parse_one(entry: DeviceAllocationConfiguration) -> OpaqueConfig | None:
    opaque = entry.get("opaque")
    if opaque is None or opaque.get("driver") != names.DRIVER_NAME:
        return None
    params = opaque.get("parameters")
    if not isinstance(params, Mapping):
        raise ConfigError("opaque config for gpudra.io: parameters must be an object")
    api_version, kind = params.get("apiVersion"), params.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str) or not api_version or not kind:
        raise ConfigError("opaque config for gpudra.io: parameters need apiVersion and kind")
    source = entry.get("source", "FromClaim")
    return OpaqueConfig(source, tuple(entry.get("requests", [])), api_version, kind, params)


def parse_configs(entries: Iterable[DeviceAllocationConfiguration]) -> list[OpaqueConfig]:
    """Our driver's configs in precedence order (FromClass before FromClaim, stable within each)."""
    ours = [c for c in (_parse_one(e) for e in entries) if c is not None]
    return sorted(ours, key=lambda c: 0 if c.source == "FromClass" else 1)


def resolve(
    entries: Iterable[DeviceAllocationConfiguration],
    requests: Iterable[str],
    kinds: Mapping[tuple[str, str], Decoder] = KNOWN_KINDS,
) -> dict[str, tuple[object, ...]]:
    """For each request, the decoded configs that apply, one per kind, the highest-precedence one winning."""
    configs = parse_configs(entries)
    decoded: list[tuple[OpaqueConfig, object]] = []
    for cfg in configs:
        decoder = kinds.get((cfg.api_version, cfg.kind))
        if decoder is None:
            known = ", ".join(f"{v}/{k}" for v, k in sorted(kinds)) or "none are defined yet"
            raise ConfigError(
                f"unknown opaque config {cfg.api_version} kind {cfg.kind} for driver gpudra.io "
                f"(known kinds: {known})"
            )
        decoded.append((cfg, decoder(cfg.parameters)))
    out: dict[str, tuple[object, ...]] = {}
    for request in requests:
        by_kind: dict[tuple[str, str], object] = {}
        for cfg, value in decoded:
            if cfg.applies_to(request):
                by_kind[(cfg.api_version, cfg.kind)] = value  # later (higher precedence) overrides
        out[request] = tuple(by_kind.values())
    return out
