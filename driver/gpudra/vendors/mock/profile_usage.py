"""The ``usage`` key of a mock GPU (NVIDIA ``devices[]``, AMD ``gpus[]``): how busy it is and what it draws.

::

    "usage": {"utilization": 0.35, "idle_watts": 70, "max_watts": 700}

All optional and synthetic (no capture has them): ``utilization`` (0 to 1, default 0: idle) is what the fake
library reports until a test overrides it (:mod:`~gpudra.vendors.mock.fake_usage`); ``idle_watts`` and
``max_watts`` (defaults 60 and 400) are the two ends of the fake's power model, ``power = idle + (max - idle)
* utilization``. Editing them in the profile file of a running mock changes the readings from the next swap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

from gpudra.vendors.mock.profile_json import Invalid, obj

USAGE_KEYS: Final = frozenset({"usage"})
#: The pynvml usage calls a profile may inject errors into (``"errors": {"nvmlDeviceGetPowerUsage": ...}``).
USAGE_CALLS: Final = frozenset(
    {"nvmlDeviceGetTotalEnergyConsumption", "nvmlDeviceGetPowerUsage", "nvmlDeviceGetUtilizationRates"}
)
_FIELDS: Final = frozenset({"utilization", "idle_watts", "max_watts"})


@dataclass(frozen=True, slots=True)
class UsageProfile:
    """A fake GPU's default utilisation and its power model's ends (watts)."""

    utilization: float = 0.0
    idle_watts: float = 60.0
    max_watts: float = 400.0

    def watts(self, utilization: float) -> float:
        """The power model: idle plus the busy fraction of the span up to max."""
        return self.idle_watts + (self.max_watts - self.idle_watts) * utilization


DEFAULT_USAGE: Final = UsageProfile()


def usage_profile(value: object, where: str) -> UsageProfile:
    """The ``usage`` object at ``where`` (``None``: the defaults); :class:`Invalid` names the bad key."""
    if value is None:
        return DEFAULT_USAGE
    raw = obj(value, where, _FIELDS)
    util = _number(raw, "utilization", where, DEFAULT_USAGE.utilization)
    idle = _number(raw, "idle_watts", where, DEFAULT_USAGE.idle_watts)
    peak = _number(raw, "max_watts", where, DEFAULT_USAGE.max_watts)
    if not 0.0 <= util <= 1.0:
        raise Invalid(f"{where}.utilization: must be from 0 to 1, got {util}")
    if idle < 0 or peak < idle:
        raise Invalid(f"{where}: need 0 <= idle_watts <= max_watts, got {idle} and {peak}")
    return UsageProfile(util, idle, peak)


def usage_section(raw: dict[str, Any], where: str) -> dict[str, Any]:
    """The device fields the ``usage`` key sets (for the profile parsers' ``**``)."""
    return {"usage": usage_profile(raw.get("usage"), f"{where}.usage")}


def _number(raw: dict[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise Invalid(f"{where}.{key}: expected a number, got {value!r}")
    return float(value)
