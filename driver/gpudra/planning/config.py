"""Opaque device configuration: which of a claim's configs apply to which request, decoded strictly.

Pure. A ResourceClaim's allocation carries the configs of its DeviceClasses (``source: FromClass``) and of
the claim itself (``FromClaim``). :mod:`gpudra.planning.claimjson` reads them from the claim's JSON, checks
their shape and keeps the ones for our driver as :class:`OpaqueConfig`; here each must be a known
``apiVersion``/``kind`` its decoder accepts, otherwise the claim fails to prepare with a message saying why.
Precedence: class configs first, then claim configs, each in list order — a later config of the same kind
overrides an earlier one for the requests it names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gpudra.planning import sharing_config
from gpudra.planning.configfields import ConfigError, ConfigFieldError

__all__ = ["KNOWN_KINDS", "ConfigError", "Decoder", "OpaqueConfig", "by_precedence", "resolve"]

Decoder = Callable[[Mapping[str, Any]], object]

#: (apiVersion, kind) -> strict decoder. Any other opaque config addressed to gpudra.io is refused, never
#: ignored. The sharing kinds (``gpudra.io/v1alpha1`` ``GpuConfig``, ``MigDeviceConfig``) are in
#: :mod:`gpudra.planning.sharing_config`; a feature with kinds of its own adds them here.
KNOWN_KINDS: Mapping[tuple[str, str], Decoder] = {**sharing_config.KINDS}


@dataclass(frozen=True, slots=True)
class OpaqueConfig:
    """An opaque config for our driver, its shape checked (see :mod:`gpudra.planning.claimjson`)."""

    source: str  # "FromClass" | "FromClaim"
    requests: tuple[str, ...]  # empty: applies to every request
    api_version: str
    kind: str
    parameters: Mapping[str, Any]
    path: str = ""  # where the claim holds the parameters, for messages

    def applies_to(self, request: str) -> bool:
        """A config naming request ``r`` also applies to its subrequests ``r/<sub>``."""
        if not self.requests:
            return True
        parent = request.split("/", 1)[0]
        return request in self.requests or parent in self.requests

    def where(self) -> str:
        return f"{self.path}: " if self.path else ""


def by_precedence(configs: Iterable[OpaqueConfig]) -> list[OpaqueConfig]:
    """Lowest precedence first: FromClass before FromClaim, stable within each."""
    return sorted(configs, key=lambda c: 0 if c.source == "FromClass" else 1)


def _decode(cfg: OpaqueConfig, kinds: Mapping[tuple[str, str], Decoder]) -> object:
    decoder = kinds.get((cfg.api_version, cfg.kind))
    if decoder is None:
        known = ", ".join(f"{v}/{k}" for v, k in sorted(kinds)) or "none are defined yet"
        raise ConfigError(
            f"{cfg.where()}unknown opaque config {cfg.api_version} kind {cfg.kind} for driver gpudra.io "
            f"(known kinds: {known})"
        )
    try:
        return decoder(cfg.parameters)
    except ConfigFieldError as e:  # one path, as the apiserver writes it: <where>.sharing.strategy: ...
        field = f"{cfg.path}.{e.path}" if cfg.path and e.path else cfg.path or e.path
        raise ConfigError(f"{field}: {e.problem}" if field else e.problem) from e
    except ConfigError as e:
        raise ConfigError(f"{cfg.where()}{e}") from e


def resolve(
    configs: Iterable[OpaqueConfig],
    requests: Iterable[str],
    kinds: Mapping[tuple[str, str], Decoder] = KNOWN_KINDS,
) -> dict[str, tuple[object, ...]]:
    """For each request, the decoded configs that apply, one per kind, the highest-precedence one winning."""
    decoded = [(cfg, _decode(cfg, kinds)) for cfg in by_precedence(configs)]
    out: dict[str, tuple[object, ...]] = {}
    for request in requests:
        by_kind: dict[tuple[str, str], object] = {}
        for cfg, value in decoded:
            if cfg.applies_to(request):
                by_kind[(cfg.api_version, cfg.kind)] = value  # later (higher precedence) overrides
        out[request] = tuple(by_kind.values())
    return out
