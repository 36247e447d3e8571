"""Thread-safe object store with one global resourceVersion counter, a bounded event history and watchers.

Every write gets the next resourceVersion and one event; a watch replays events after a version from the
history (or the current state as ADDED events) and then receives live events. Objects handed out are copies.
"""

from __future__ import annotations

import copy
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from gpudra.devtools.fakeapi.resources import Resource
from gpudra.devtools.fakeapi.status import ApiError, StatusBody, already_exists, expired, not_found

__all__ = ["CLOSED", "Event", "Store", "Subscription"]

JSON = dict[str, Any]
EventType = Literal["ADDED", "MODIFIED", "DELETED"]
Key = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Event:
    """One change; ``old`` is the previous object for MODIFIED (selectors may turn it into ADDED/DELETED)."""

    rv: int
    type: EventType
    resource: Resource
    obj: JSON
    old: JSON | None = None


class _Closed:
    """Sentinel: the store is shutting down."""


CLOSED: Final = _Closed()


class Subscription:
    """A registered watch: ``replay`` first, then ``next()`` for live events."""

    def __init__(self, store: Store, resource: Resource, replay: list[Event], since: int) -> None:
        self.resource = resource
        self.replay = replay
        self.since = since  # resourceVersion the live events follow
        self._queue: queue.SimpleQueue[Event | _Closed] = queue.SimpleQueue()
        self._store = store

    def push(self, item: Event | _Closed) -> None:
        self._queue.put(item)

    def next(self, timeout: float | None) -> Event | _Closed | None:
        """The next live event, CLOSED at shutdown, or None after ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def cancel(self) -> None:
        self._store.unsubscribe(self)


def _key_of(obj: JSON) -> Key:
    meta = obj["metadata"]
    return meta.get("namespace", ""), meta["name"]


class Store:
    def __init__(self, history_size: int = 4096) -> None:
        self._lock = threading.Lock()
        self._rv = 0
        self._compacted = 0  # highest resourceVersion no longer in the history
        self._objects: dict[Resource, dict[Key, JSON]] = {}
        self._history: deque[Event] = deque()
        self._history_size = history_size
        self._subscriptions: set[Subscription] = set()
        self._closed = False

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    # ---- reads -----------------------------------------------------------------------------------------

    def get(self, res: Resource, namespace: str, name: str) -> JSON:
        with self._lock:
            obj = self._objects.get(res, {}).get((namespace, name))
            if obj is None:
                raise not_found(res.group, res.plural, name)
            return copy.deepcopy(obj)

    def find(self, res: Resource, namespace: str, name: str) -> JSON | None:
        with self._lock:
            obj = self._objects.get(res, {}).get((namespace, name))
            return None if obj is None else copy.deepcopy(obj)

    def list(self, res: Resource, namespace: str | None, *, copies: bool = True) -> tuple[list[JSON], int]:
        """Objects sorted by (namespace, name), all namespaces when ``namespace`` is None.

        ``copies=False`` returns the stored objects themselves, for callers that only read them (stored
        objects are never changed in place: a write replaces the whole object).
        """
        with self._lock:
            objects = self._objects.get(res, {})
            keys = sorted(k for k in objects if namespace is None or k[0] == namespace)
            found = [objects[k] for k in keys]
            return ([copy.deepcopy(o) for o in found] if copies else found), self._rv

    # ---- writes ----------------------------------------------------------------------------------------

    def create(self, res: Resource, obj: JSON) -> JSON:
        with self._lock:
            key = _key_of(obj)
            objects = self._objects.setdefault(res, {})
            if key in objects:
                raise already_exists(res.group, res.plural, key[1])
            stored = self._commit(res, key, copy.deepcopy(obj), None, "ADDED")
            return copy.deepcopy(stored)

    def update(self, res: Resource, namespace: str, name: str, mutate: Callable[[JSON], JSON]) -> JSON:
        """Replace an object with ``mutate(copy_of_current)``; an unchanged result writes nothing."""
        with self._lock:
            current = self._objects.get(res, {}).get((namespace, name))
            if current is None:
                raise not_found(res.group, res.plural, name)
            new = mutate(copy.deepcopy(current))
            if _same(new, current):
                return copy.deepcopy(current)
            return copy.deepcopy(self._commit(res, (namespace, name), new, current, "MODIFIED"))

    def delete(
        self, res: Resource, namespace: str, name: str, check: Callable[[JSON], None] | None = None
    ) -> JSON:
        """Remove an object (``check`` may raise to refuse); returns it with the new resourceVersion."""
        with self._lock:
            current = self._objects.get(res, {}).get((namespace, name))
            if current is None:
                raise not_found(res.group, res.plural, name)
            if check is not None:
                check(copy.deepcopy(current))
            del self._objects[res][(namespace, name)]
            gone = copy.deepcopy(current)
            return copy.deepcopy(self._commit(res, None, gone, current, "DELETED"))

    def _commit(self, res: Resource, key: Key | None, obj: JSON, old: JSON | None, kind: EventType) -> JSON:
        if self._closed:
            raise ApiError(_shutting_down())
        self._rv += 1
        obj["metadata"]["resourceVersion"] = str(self._rv)
        if key is not None:
            self._objects[res][key] = obj
        event = Event(self._rv, kind, res, obj, old)
        self._history.append(event)
        while len(self._history) > self._history_size:
            self._compacted = self._history.popleft().rv
        for sub in self._subscriptions:
            if sub.resource == res:
                sub.push(event)
        return obj

    # ---- watches ---------------------------------------------------------------------------------------

    def subscribe(self, res: Resource, since: int | None) -> Subscription:
        """Register a watch. ``since`` None: replay the current state as ADDED; else the events after it.

        Raises ``ApiError`` 410 Expired when the events after ``since`` are no longer in the history.
        """
        with self._lock:
            if since is None:
                objects = self._objects.get(res, {})
                replay = [
                    Event(int(objects[k]["metadata"]["resourceVersion"]), "ADDED", res, objects[k])
                    for k in sorted(objects)
                ]
            elif since < self._compacted:
                raise ApiError(expired(f"too old resource version: {since} ({self._compacted})"))
            else:
                replay = [e for e in self._history if e.rv > since and e.resource == res]
            sub = Subscription(self, res, replay, self._rv if since is None else max(since, 0))
            if self._closed:
                sub.push(CLOSED)
            else:
                self._subscriptions.add(sub)
            return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subscriptions.discard(sub)

    def close(self) -> None:
        """End every watch (they receive CLOSED) and refuse further writes."""
        with self._lock:
            self._closed = True
            for sub in self._subscriptions:
                sub.push(CLOSED)
            self._subscriptions.clear()


def _same(new: JSON, current: JSON) -> bool:
    """Equal apart from the resourceVersion (a no-op update writes nothing, like etcd's GuaranteedUpdate)."""
    new_rv = new["metadata"].get("resourceVersion")
    new["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion")
    same = new == current
    if new_rv is None:
        del new["metadata"]["resourceVersion"]
    else:
        new["metadata"]["resourceVersion"] = new_rv
    return same


def _shutting_down() -> StatusBody:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "apiserver is shutting down",
        "reason": "ServiceUnavailable",
        "code": 503,
    }
