"""Keeps this node's ResourceSlices in the API equal to what the node state offers.

Two background threads. The watcher lists our slices, reconciles, then watches them: a slice someone deletes
or edits is put back. Each watch ends within minutes (the server's timeout), or sooner when it stays silent
past the server's bookmark interval (a dead connection); the watcher then lists and reconciles again. The
follower waits for a new version of the node state (re-discovery found changed hardware) and reconciles it:
a changed offer gets a new pool generation. Nothing is written while nothing changes. When the API is
unreachable both retry with capped exponential backoff, which starts afresh once the API answers again.
Slices are left in place on shutdown: the kubelet removes them if the plugin stays away, and a restart
finds them current.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from gpudra.kube.client import KubeError, WatchEvent
from gpudra.model.k8stypes import ResourceSlice
from gpudra.planning import health, slicediff, slices
from gpudra.state.node import NodeState, NodeStateStore

log = logging.getLogger(__name__)


Planner = Callable[[NodeState, str, str | None, int], list[ResourceSlice]]


def plan_state(state: NodeState, node: str, node_uid: str | None, generation: int) -> list[ResourceSlice]:
    """The node's pool for ``state``: what it offers, each device with the taints of its health."""
    taints = {name: health.taints(h) for name, h in state.health.items() if h.conditions}
    return slices.plan_slices(state.offer, node, node_uid, generation, taints=taints)


class SliceApi(Protocol):
    """The API calls the publisher needs (implemented by :class:`gpudra.kube.client.KubeClient`)."""

    def get_node_uid(self, node_name: str) -> str: ...
    def list_slices(self, node_name: str) -> tuple[list[ResourceSlice], str]: ...
    def watch_slices(self, node_name: str, resource_version: str) -> Iterator[WatchEvent]: ...
    def create_slice(self, obj: ResourceSlice) -> ResourceSlice: ...
    def replace_slice(self, obj: ResourceSlice) -> ResourceSlice: ...
    def delete_slice(self, name: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    initial_s: float = 0.2
    max_s: float = 30.0

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay * random.uniform(0.8, 1.2)
            delay = min(delay * 2, self.max_s)


def _name(obj: ResourceSlice) -> str:
    return obj.get("metadata", {}).get("name", "")


def _generation(obj: ResourceSlice) -> int:
    return obj.get("spec", {}).get("pool", {}).get("generation", 0)


def _rv(obj: ResourceSlice) -> int | None:
    rv = obj.get("metadata", {}).get("resourceVersion", "")
    return int(rv) if rv.isdigit() else None


def _same_plan(a: list[ResourceSlice], b: list[ResourceSlice]) -> bool:
    if [_name(s) for s in a] != [_name(s) for s in b]:
        return False
    return all(slicediff.slice_content_equal(x, y) for x, y in zip(a, b, strict=True))


class _Replan(Exception):
    """The node state changed while a plan was being written (see ``on_dropped``)."""


class Publisher:
    def __init__(
        self,
        api: SliceApi,
        node_name: str,
        node: NodeStateStore,
        *,
        backoff: Backoff | None = None,
        on_published: Callable[[int], None] | None = None,
        planner: Planner = plan_state,
        on_dropped: Callable[[list[str]], bool] | None = None,
        on_rejected: Callable[[ResourceSlice, str], bool] | None = None,
        before_first: Callable[[str | None], None] | None = None,
        on_failed: Callable[[str], None] | None = None,
    ) -> None:
        self._api = api
        self._node = node_name
        self._state = node
        self._backoff = backoff or Backoff()
        self._on_published = on_published
        self._planner = planner
        #: told the fields a write lost; True when it changed the node state so that the plan must be redone
        #: (dynamic MIG falls back to static when the cluster drops counters)
        self._on_dropped = on_dropped
        #: told a slice the server refused as invalid (422); True as for ``on_dropped`` (Kubernetes 1.34
        #: with its partitionable-devices gate on refuses counter sets in a slice of their own)
        self._on_rejected = on_rejected
        #: run once, with the Node's UID, before the first reconcile (the partitionable-devices probe); an
        #: API error in it is retried like any other
        self._before_first = before_first
        #: told each failed attempt, "api" (the API server refused or did not answer) or "unexpected"
        self._on_failed = on_failed or (lambda reason: None)
        # per slice: (what we sent, what the server kept) when the server dropped some of it
        self._accepted: dict[str, tuple[ResourceSlice, ResourceSlice]] = {}
        self.dropped_fields: list[str] = []  # fields the API server silently dropped (feature gates off)
        self._node_uid: str | None = None
        self._generation = 0
        self._actual: dict[str, ResourceSlice] = {}
        self._written_rv: dict[str, int] = {}  # per slice: version our last write or delete left it at
        self._published: list[ResourceSlice] | None = None
        self._retry_generation: int | None = None  # a plan abandoned after its counter slices (_Replan)
        self._stop = threading.Event()
        self._rlock = threading.RLock()  # one reconcile at a time (watcher vs follower)
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()  # set after the first successful reconcile

    # ---- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="slice-publisher", daemon=True)
        self._thread.start()
        threading.Thread(target=self._follow, name="slice-follower", daemon=True).start()

    @property
    def node(self) -> NodeStateStore:
        return self._state

    @property
    def alive(self) -> bool:
        """The watcher thread runs (it retries every API failure; only a stop ends it)."""
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    def stop(self) -> None:
        """Stop reconciling; slices stay in the API. The threads are daemons and are not joined."""
        self._stop.set()
        self._state.wake()

    def _follow(self) -> None:
        """Reconcile every new version of the node state (once the first list has been reconciled)."""
        version = self._state.current.version
        delays = self._backoff.delays()
        while not self._stop.is_set():
            if self._state.wait_newer(version, stop=self._stop) is None:
                continue
            while not self.synced.wait(0.5):  # the watcher's first reconcile publishes it anyway
                if self._stop.is_set():
                    return
            seen = self._state.current.version
            try:
                self._reconcile()
            except Exception as e:  # the watcher relists on its own errors; this thread retries its change
                self._on_failed("api" if isinstance(e, KubeError) else "unexpected")
                delay = next(delays)
                log.warning("publishing the changed devices failed: %s; retrying in %.1fs", e, delay)
                self._stop.wait(delay)
                continue
            version, delays = seen, self._backoff.delays()

    # ---- the loop -----------------------------------------------------------------------------------

    def _run(self) -> None:
        delays = self._backoff.delays()
        while not self._stop.is_set():
            try:
                rv = self._sync()
                # The API answered: a failure of the watch that follows starts the backoff afresh. A watch
                # the server ends (timeoutSeconds) returns here, and the next list follows at once.
                delays = self._backoff.delays()
                self._follow_watch(rv)
            except KubeError as e:
                if self._stop.is_set():
                    return
                self._on_failed("api")
                delay = next(delays)
                log.warning("ResourceSlice publishing: %s; retrying in %.1fs", e, delay)
                self._stop.wait(delay)
            except Exception:
                self._on_failed("unexpected")
                delay = next(delays)
                log.exception("ResourceSlice publishing failed unexpectedly; retrying in %.1fs", delay)
                self._stop.wait(delay)

    def _sync(self) -> str:
        """List our slices and reconcile them; the list's resourceVersion, to watch from."""
        if self._node_uid is None:
            self._node_uid = self._api.get_node_uid(self._node)
        if self._before_first is not None:
            self._before_first(self._node_uid)
            self._before_first = None
        items, rv = self._api.list_slices(self._node)
        with self._rlock:
            self._actual = {_name(s): s for s in items}
            self._written_rv.clear()
        self._reconcile()
        self.synced.set()
        return rv

    def _follow_watch(self, rv: str) -> None:
        """Reconcile after each change the watch reports, until the watch ends (then the caller lists again).

        The watch cannot hang on a dead connection: it has a server-side timeout, a read timeout longer than
        the server's bookmark interval, and TCP keepalive (:mod:`gpudra.kube.watch`)."""
        for event in self._api.watch_slices(self._node, rv):
            if self._stop.is_set():
                return
            if event.type not in ("ADDED", "MODIFIED", "DELETED"):
                continue
            with self._rlock:
                self._observe(event)
            self._reconcile()

    def _observe(self, event: WatchEvent) -> None:
        name = _name(event.object)
        # The watch trails our own writes: an event at or below the version our last write/delete of this
        # object returned is an echo of something already known (client-go's mutation cache does the same).
        # Where versions are not integers, no event is skipped; a stale one then costs a 409 and a relist.
        known, seen = self._written_rv.get(name), _rv(event.object)
        if known is not None and seen is not None and seen <= known:
            return
        self._written_rv.pop(name, None)
        if event.type == "DELETED":
            self._actual.pop(name, None)
        else:
            self._actual[name] = event.object

    def _desired(self, generation: int) -> list[ResourceSlice]:
        return self._planner(self._state.current, self._node, self._node_uid, generation)

    def _reconcile(self) -> None:
        """Make the API match the plan with as few writes as possible."""
        with self._rlock:
            gen = max([self._generation, *(_generation(s) for s in self._actual.values())])
            desired = self._desired(gen)
            if gen > 0 and self._matches(desired):
                self._generation, self._published = gen, desired
                return
            # Our plan changed (or this is the first publish): a new generation tells the scheduler to
            # drop the old view. A slice someone else deleted or edited is restored at the same generation.
            retry, self._retry_generation = self._retry_generation == gen, None
            if not retry and (self._published is None or not _same_plan(desired, self._published)):
                gen += 1
                desired = self._desired(gen)
            try:
                self._write(desired)
            except _Replan:  # the node state changed under this plan: its follower publishes the new one
                # Only counter slices (written first) went out at this generation, and they are useless:
                # the new plan takes the same generation rather than announcing a change nobody saw.
                self._generation, self._published, self._retry_generation = gen, None, gen
                return
            self._generation, self._published = gen, desired
        if self._on_published is not None:
            self._on_published(gen)

    def _matches(self, desired: list[ResourceSlice]) -> bool:
        if {_name(s) for s in desired} != set(self._actual):
            return False
        return all(self._in_sync(d, self._actual[_name(d)]) for d in desired)

    def _in_sync(self, desired: ResourceSlice, actual: ResourceSlice) -> bool:
        """Equal to the plan — or to what the server kept of this very plan when it dropped fields."""
        if slicediff.slice_content_equal(desired, actual):
            return True
        accepted = self._accepted.get(_name(desired))
        return (
            accepted is not None
            and slicediff.slice_content_equal(accepted[0], desired)
            and slicediff.slice_content_equal(accepted[1], actual)
        )

    def _write(self, desired: list[ResourceSlice]) -> None:
        """Counter-set slices first: when the cluster drops counters (its partitionable-devices gate is off),
        that is seen before any device that relies on them is published without them."""
        wanted = {_name(s) for s in desired}
        for obj in sorted(desired, key=lambda s: "sharedCounters" not in s.get("spec", {})):
            name = _name(obj)
            have = self._actual.get(name)
            if have is not None and self._in_sync(obj, have):
                continue
            try:
                written = self._create(obj) if have is None else self._replace(obj, have)
            except KubeError as e:
                if e.code == 422 and self._on_rejected is not None and self._on_rejected(obj, str(e)):
                    raise _Replan from e
                raise
            self._actual[name] = written
            self._remember(name, written)
            dropped = self._check_dropped(obj, written)
            if dropped and self._on_dropped is not None and self._on_dropped(dropped):
                raise _Replan
        for name in sorted(set(self._actual) - wanted):
            try:
                self._api.delete_slice(name)
            except KubeError as e:
                if not e.not_found:
                    raise
            self._remember(name, self._actual.pop(name))
        log.info("published %d ResourceSlice(s) for node %s", len(desired), self._node)

    def _check_dropped(self, sent: ResourceSlice, kept: ResourceSlice) -> list[str]:
        """Read back what the server stored: a feature gate that is off makes it drop fields silently."""
        name = _name(sent)
        if slicediff.slice_content_equal(sent, kept):
            self._accepted.pop(name, None)
            return []
        self._accepted[name] = (sent, kept)
        dropped = slicediff.dropped_fields(sent, kept)
        self.dropped_fields = sorted(set(self.dropped_fields) | set(dropped))
        log.error(
            "the API server dropped fields of ResourceSlice %s (a feature gate is probably off): %s",
            name,
            ", ".join(dropped) or "(values changed)",
        )
        return dropped

    def _remember(self, name: str, obj: ResourceSlice) -> None:
        rv = _rv(obj)
        if rv is not None:
            self._written_rv[name] = rv

    def _create(self, obj: ResourceSlice) -> ResourceSlice:
        try:
            return self._api.create_slice(obj)
        except KubeError as e:
            if not e.conflict:
                raise
            raise KubeError(f"ResourceSlice {_name(obj)} appeared meanwhile; relisting", e.code) from e

    def _replace(self, obj: ResourceSlice, have: ResourceSlice) -> ResourceSlice:
        body: ResourceSlice = {**obj, "metadata": {**obj.get("metadata", {})}}
        rv = have.get("metadata", {}).get("resourceVersion")
        if rv:
            body["metadata"]["resourceVersion"] = rv
        try:
            return self._api.replace_slice(body)
        except KubeError as e:
            if e.not_found:
                return self._api.create_slice(obj)
            raise
