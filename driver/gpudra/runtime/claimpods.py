"""The pods that reserve each claim, as prepare read them, for the labels of the per-claim usage metrics.

The kubelet prepares a claim for a pod the scheduler has reserved it for, so the claim prepare reads from the
API lists that pod (and any other pod sharing the claim) in ``status.reservedFor``. :class:`PodNotingClaims`
sits between prepare and the API client and notes those names as each claim is read: no extra API call, and
nothing on the prepare path beyond a dictionary update. A claim prepare answered from the checkpoint (the API
unreachable, or after a restart until the kubelet asks again) has no pods noted: its series carry an empty
``pods`` label rather than a guess.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Final, Protocol

from gpudra.model.k8stypes import ResourceClaim

#: Seconds a claim's pods are kept after it was read while it is not (yet) prepared: longer than a prepare.
KEEP_UNPREPARED_S: Final = 300.0


class ClaimReader(Protocol):
    def get_claim(self, namespace: str, name: str) -> ResourceClaim: ...


class ClaimPods:
    """Claim UID -> the names of the pods it was reserved for when prepare last read it; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._pods: dict[str, tuple[tuple[str, ...], float]] = {}

    def note(self, claim: ResourceClaim) -> None:
        """Remember the pods ``claim`` (as read from the API) is reserved for."""
        meta: Mapping[str, object] = claim.get("metadata", {})
        uid = meta.get("uid")
        if not isinstance(uid, str) or not uid:
            return
        pods = reserved_pods(claim)
        with self._lock:
            self._pods[uid] = (pods, self._clock())

    def pods(self, uid: str) -> tuple[str, ...]:
        with self._lock:
            found = self._pods.get(uid)
        return found[0] if found is not None else ()

    def keep(self, prepared: Collection[str]) -> None:
        """Forget the claims not in ``prepared`` that were read more than :data:`KEEP_UNPREPARED_S` ago."""
        cutoff = self._clock() - KEEP_UNPREPARED_S
        with self._lock:
            self._pods = {u: v for u, v in self._pods.items() if u in prepared or v[1] > cutoff}


def reserved_pods(claim: ResourceClaim) -> tuple[str, ...]:
    """The names of the pods in ``status.reservedFor`` (entries of other resources are left out), sorted."""
    status: Mapping[str, object] = claim.get("status", {})
    entries = status.get("reservedFor")
    names: set[str] = set()
    for e in entries if isinstance(entries, list) else ():
        if isinstance(e, dict) and e.get("resource") == "pods" and not e.get("apiGroup"):
            name = e.get("name")
            if isinstance(name, str) and name:
                names.add(name)
    return tuple(sorted(names))


class PodNotingClaims:
    """A claim reader for prepare that notes each claim's pods in ``pods`` as it passes through."""

    def __init__(self, inner: ClaimReader, pods: ClaimPods) -> None:
        self._inner = inner
        self._pods = pods

    def get_claim(self, namespace: str, name: str) -> ResourceClaim:
        claim = self._inner.get_claim(namespace, name)
        self._pods.note(claim)
        return claim
