"""Consumable capacity (KEP-5075) for the allocation simulator, as the scheduler computes it.

Written from ``k8s.io/dynamic-resource-allocation/structured`` (``CmpRequestOverCapacity`` and its helpers)
and the ``resource.k8s.io/v1`` API comments. With the ``DRAConsumableCapacity`` feature on, the scheduler
checks EVERY candidate device this way, shared or not:

- each capacity of the device gets a consumed amount: the request's ``capacity.requests[<name>]`` rounded up
  by the capacity's ``requestPolicy`` (``validRange``: below ``min`` -> ``min``, else ``min + ceil((r - min) /
  step) * step``; ``validValues``: the smallest value >= r), or as asked when it has no policy; with no
  request, the policy's ``default``, else the whole capacity;
- the amount must satisfy the policy (``<= max``, a multiple of ``step`` from ``min``, one of ``validValues``;
  the ``default`` always does) and, added to what allocated claims and this claim's earlier picks consume,
  fit the capacity's value; a request naming a capacity the device does not have skips the device.

Only a device with ``allowMultipleAllocations`` keeps what is consumed (``consumedCapacity`` in the result,
with a ``shareID``); for any other device the check just filters (a request is a minimum).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, localcontext
from fractions import Fraction
from typing import Any

from gpudra.model.quantity import QuantityFormat, canonical_quantity, stored_value

__all__ = ["Amount", "Capacity", "Policy", "capacities", "consume", "fits", "show"]


@dataclass(frozen=True, slots=True)
class Amount:
    """A quantity's value and the text it is written as in a result (its format, as Go keeps it)."""

    value: Fraction
    text: str


@dataclass(frozen=True, slots=True)
class Policy:
    default: Amount | None
    valid_values: tuple[Amount, ...]
    low: Amount | None  # validRange.min; None: no range
    high: Fraction | None  # validRange.max
    step: Amount | None


@dataclass(frozen=True, slots=True)
class Capacity:
    value: Amount
    policy: Policy | None


def _amount(text: str) -> Amount:
    return Amount(stored_value(text)[0], text)


def _policy(raw: Mapping[str, Any]) -> Policy:
    valid = raw.get("validRange") or {}
    return Policy(
        default=_amount(raw["default"]) if raw.get("default") is not None else None,
        valid_values=tuple(_amount(v) for v in raw.get("validValues") or ()),
        low=_amount(valid["min"]) if valid.get("min") is not None else None,
        high=stored_value(valid["max"])[0] if valid.get("max") is not None else None,
        step=_amount(valid["step"]) if valid.get("step") is not None else None,
    )


def capacities(device: Mapping[str, Any]) -> dict[str, Capacity]:
    """The device's capacities with their policies (ValueError/KeyError on an unparseable quantity)."""
    return {
        name: Capacity(_amount(c["value"]), _policy(c["requestPolicy"]) if c.get("requestPolicy") else None)
        for name, c in (device.get("capacity") or {}).items()
    }


def show(value: Fraction, binary: bool = True) -> str:
    """``value`` as a quantity, in binary SI where that is exact (``70Gi``), for results and messages."""
    with localcontext() as ctx:
        ctx.prec = 80
        if binary and value.denominator == 1:
            return canonical_quantity(f"{Decimal(value.numerator) / 1024}Ki")
        return canonical_quantity(str(Decimal(value.numerator) / Decimal(value.denominator)))


def _round_up(requested: Amount, policy: Policy) -> Amount:
    if policy.low is not None:
        if requested.value < policy.low.value:
            return policy.low
        if policy.step is None:
            return requested
        step = policy.step.value
        n = -(-(requested.value - policy.low.value) // step)  # ceil
        rounded = policy.low.value + n * step
        binary = stored_value(policy.step.text)[1] is QuantityFormat.BINARY_SI
        return Amount(rounded, show(rounded, binary))
    for option in policy.valid_values:
        if requested.value <= option.value:
            return option
    return requested


def _violates(amount: Amount, policy: Policy) -> str | None:
    if policy.default is not None and amount.value == policy.default.value:
        return None
    if policy.low is not None:
        if policy.high is not None and amount.value > policy.high:
            return f"more than the policy's max {show(policy.high)}"
        if policy.step is not None and (amount.value - policy.low.value) % policy.step.value:
            return f"not min {policy.low.text} + n * step {policy.step.text}"
        return None
    if policy.valid_values and all(amount.value != v.value for v in policy.valid_values):
        return "not one of the policy's validValues " + ", ".join(v.text for v in policy.valid_values)
    return None


def consume(caps: Mapping[str, Capacity], requests: Mapping[str, Amount]) -> dict[str, Amount] | str:
    """What a request consumes of each capacity, or why the device cannot serve it (a capacity it lacks,
    or an amount its request policy refuses)."""
    missing = sorted(set(requests) - set(caps))
    if missing:
        return f"no capacity {', '.join(missing)}"
    out: dict[str, Amount] = {}
    for name, cap in caps.items():
        asked = requests.get(name)
        if asked is None:
            amount = cap.policy.default if cap.policy and cap.policy.default else cap.value
        else:
            amount = _round_up(asked, cap.policy) if cap.policy else asked
        why = _violates(amount, cap.policy) if cap.policy else None
        if why is not None:
            shown = f"{name} {asked.text}" if asked is not None else name
            rounded = ""
            if asked is not None and amount.value != asked.value:
                rounded = f" (rounded up to {amount.text})"
            return f"{shown}{rounded}: {why}"
        out[name] = amount
    return out


def fits(
    caps: Mapping[str, Capacity], want: Mapping[str, Amount], *held: Mapping[str, Fraction]
) -> str | None:
    """None when ``want`` fits every capacity beside what ``held`` consume; else the first capacity that
    would overflow."""
    for name, amount in want.items():
        used = sum((h.get(name, Fraction(0)) for h in held), Fraction(0))
        if used + amount.value > caps[name].value.value:
            return name
    return None
