"""The claims a kubelet call names, checked at the edge before anything else looks at them.

Each ``Claim`` of a NodePrepareResources / NodeUnprepareResources request becomes a :class:`ClaimRef` when
its UID has the shape of a Kubernetes UID (it becomes part of file names and CDI device names) and its
namespace and name are what the API allows; otherwise that claim alone gets an error. A UID named twice
with the same namespace and name is one claim; named twice with different ones, it is an error for that UID
(the answer is a map by UID: the two cannot both be answered).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from gpudra.model.cdi import is_claim_uid
from gpudra.planning.apirules import is_dns_label, is_dns_subdomain
from gpudra.planning.plan import ClaimRef


class WireClaim(Protocol):
    """A ``Claim`` message of either API version."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def uid(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CheckedRefs:
    refs: list[ClaimRef] = field(default_factory=list)  # distinct, well-formed, in request order
    errors: dict[str, str] = field(default_factory=dict)  # by UID: why that claim is refused


def _problem(c: WireClaim) -> str | None:
    if not is_claim_uid(c.uid):
        return f"claim {c.namespace}/{c.name}: uid {c.uid!r} is not a Kubernetes UID"
    if not is_dns_label(c.namespace):
        return f"claim uid {c.uid}: namespace {c.namespace!r} is not a DNS label"
    if not is_dns_subdomain(c.name):
        return f"claim uid {c.uid}: name {c.name!r} is not a DNS subdomain"
    return None


def check_refs(claims: Iterable[WireClaim]) -> CheckedRefs:
    out = CheckedRefs()
    seen: dict[str, ClaimRef] = {}
    for c in claims:
        if c.uid in out.errors:
            continue
        problem = _problem(c)
        if problem is not None:
            out.errors[c.uid] = problem
            continue
        ref = ClaimRef(c.namespace, c.name, c.uid)
        first = seen.get(c.uid)
        if first is None:
            seen[c.uid] = ref
            out.refs.append(ref)
        elif first != ref:
            out.errors[c.uid] = (
                f"claim uid {c.uid} is named twice in one call, as {first.namespace}/{first.name} "
                f"and {ref.namespace}/{ref.name}"
            )
            out.refs.remove(first)
    return out
