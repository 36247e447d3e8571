"""HTTP request handling: routing, JSON answers, watch streams (chunked, one event per line)."""

from __future__ import annotations

import json
import logging
import re
import select
import socket
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from gpudra.devtools.fakeapi import resources
from gpudra.devtools.fakeapi.decode import decode_body
from gpudra.devtools.fakeapi.resources import Resource
from gpudra.devtools.fakeapi.selectors import Selector, parse_selectors
from gpudra.devtools.fakeapi.status import (
    ApiError,
    bad_request,
    internal_error,
    method_not_allowed,
    path_not_found,
)
from gpudra.devtools.fakeapi.store import CLOSED, Event, Subscription

if TYPE_CHECKING:
    from gpudra.devtools.fakeapi.server import FakeApiServer

__all__ = ["Handler"]

JSON = dict[str, Any]
_RESOURCE_PATH: Final = re.compile(
    r"(?P<prefix>/api/v1|/apis/[^/]+/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?"
)
_HEALTH: Final = ("/healthz", "/readyz", "/livez")
_IDLE_PROBE: Final = 1.0  # seconds between checks that an idle watch's client is still there
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Route:
    res: Resource
    namespace: str | None
    name: str
    sub: str


class Handler(BaseHTTPRequestHandler):
    """One connection; ``server.app`` is the owning ``FakeApiServer``."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: no 40 ms delayed-ACK stalls
    server_version = "gpudra-fakeapi"
    sys_version = ""

    @property
    def app(self) -> FakeApiServer:
        app: FakeApiServer = self.server.app  # type: ignore[attr-defined]
        return app

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the request log is ``FakeApiServer.requests``."""

    # ---- entry points ----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self._started = time.time()
        self._responded = False
        self._method = method
        split = urlsplit(self.path)
        self._url_path = split.path.rstrip("/") or "/"
        self._query = {
            key: values[0] for key, values in parse_qs(split.query, keep_blank_values=True).items()
        }
        body = self._read_body()
        try:
            self._route(method, body)
        except ApiError as err:
            self._send_json(err.code, dict(err.status))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as err:  # a bug here must still answer, like the apiserver's panic recovery
            _log.exception("fakeapi: %s %s failed", method, self.path)
            self.close_connection = True
            if not self._responded:
                self._send_json(500, dict(internal_error(f"{type(err).__name__}: {err}").status))

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    # ---- routing ---------------------------------------------------------------------------------------

    def _route(self, method: str, body: bytes) -> None:
        path = self._url_path
        if method == "GET":
            document = self._discovery(path)
            if document is not None:
                self._send_json(200, document)
                return
            if path in _HEALTH:
                self._send(200, b"ok", "text/plain; charset=utf-8")
                return
        match = _RESOURCE_PATH.fullmatch(path)
        res = resources.by_path(match["prefix"], match["plural"]) if match else None
        if match is None or res is None or (match["ns"] is not None and not res.namespaced):
            raise path_not_found()
        route = _Route(res, match["ns"], match["name"] or "", match["sub"] or "")
        if route.sub and not (route.sub == "status" and res.status_subresource):
            raise path_not_found()
        self._resource(method, route, body)

    def _discovery(self, path: str) -> JSON | None:
        if path == "/version":
            return dict(resources.version_info(self.app.kube_version))
        if path == "/api":
            return resources.api_versions(f"{self.app.host}:{self.app.port}")
        if path == "/apis":
            return resources.api_group_list()
        if path == f"/apis/{resources.RESOURCE_GROUP}":
            return resources.api_group()
        if path == "/api/v1":
            return resources.resource_list("v1")
        if path.startswith("/apis/") and path.count("/") == 3:
            return resources.resource_list(path.removeprefix("/apis/"))
        return None

    def _resource(self, method: str, route: _Route, body: bytes) -> None:
        registry, res = self.app.registry, route.res
        namespace = route.namespace or ""
        if route.namespace is None and res.namespaced and (route.name or method != "GET"):
            raise method_not_allowed(res.group, res.plural, method.lower())
        if method == "GET" and not route.name:
            self._list_or_watch(route)
        elif method == "GET":
            self._send_json(200, registry.get(res, namespace, route.name))
        elif method == "POST" and not route.name:
            self._send_json(201, registry.create(res, namespace, self._decode(body, res)))
        elif method == "PUT" and route.name:
            obj = registry.update(res, namespace, route.name, self._decode(body, res), route.sub)
            self._send_json(200, obj)
        elif method == "DELETE" and route.name:
            options = self._decode(body, res) if body.strip() else None
            self._send_json(200, registry.delete(res, namespace, route.name, options))
        elif method == "DELETE":
            deleted = registry.delete_collection(res, route.namespace, self._selector(res))
            self._send_json(200, self._list_body(res, deleted, self.app.store.resource_version))
        else:
            raise method_not_allowed(res.group, res.plural, method.lower())

    @staticmethod
    def _decode(body: bytes, res: Resource) -> JSON:
        return decode_body(body, res.kind)

    def _selector(self, res: Resource) -> Selector:
        return parse_selectors(
            res, self._query.get("fieldSelector", ""), self._query.get("labelSelector", "")
        )

    # ---- list and watch --------------------------------------------------------------------------------

    def _list_or_watch(self, route: _Route) -> None:
        selector = self._selector(route.res)
        if self._query.get("watch") in ("true", "1"):
            self._watch(route, selector)
            return
        limit = _int_param(self._query, "limit")
        page = self.app.registry.list(
            route.res, route.namespace, selector, limit, self._query.get("continue", "")
        )
        body = self._list_body(route.res, page.items, page.resource_version)
        if page.continue_token:
            body["metadata"].update({"continue": page.continue_token, "remainingItemCount": page.remaining})
        self._send_json(200, body)

    @staticmethod
    def _list_body(res: Resource, items: list[JSON], version: int) -> JSON:
        # List items carry no kind/apiVersion, like the apiserver's; items may be shared: copy, do not edit.
        items = [{k: v for k, v in item.items() if k not in ("kind", "apiVersion")} for item in items]
        return {
            "kind": f"{res.kind}List",
            "apiVersion": res.api_version,
            "metadata": {"resourceVersion": str(version)},
            "items": items,
        }

    def _watch(self, route: _Route, selector: Selector) -> None:
        rv = self._query.get("resourceVersion", "")
        initial = self._query.get("sendInitialEvents") == "true"
        since = None if rv in ("", "0") or initial else _parse_version(rv)
        timeout = _float_param(self._query, "timeoutSeconds")
        bookmarks = self._query.get("allowWatchBookmarks") in ("true", "1")
        try:
            sub = self.app.store.subscribe(route.res, since)
        except ApiError as err:
            self._start_stream()
            self._write_chunk({"type": "ERROR", "object": dict(err.status)})
            self._end_stream()
            return
        try:
            self._stream(sub, _WatchFilter(route.namespace, selector), timeout, bookmarks, initial)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            sub.cancel()

    def _stream(
        self, sub: Subscription, keep: _WatchFilter, timeout: float | None, bookmarks: bool, initial: bool
    ) -> None:
        self._start_stream()
        last_rv = sub.since
        for event in sub.replay:
            self._emit(event, keep)
            last_rv = max(last_rv, event.rv)
        if initial:
            self._write_chunk(_bookmark(sub.resource, last_rv, initial_end=True))
        deadline = None if timeout is None else time.monotonic() + timeout
        interval = self.app.bookmark_interval
        next_bookmark = time.monotonic() + interval if bookmarks else None
        while deadline is None or time.monotonic() < deadline:
            item = sub.next(_wait_time(deadline, next_bookmark, time.monotonic() + _IDLE_PROBE))
            if item is CLOSED:
                break
            if isinstance(item, Event):
                self._emit(item, keep)
                last_rv = item.rv
            elif next_bookmark is not None and time.monotonic() >= next_bookmark:
                self._write_chunk(_bookmark(sub.resource, last_rv))
                next_bookmark = time.monotonic() + interval
            elif self._client_gone():
                self.close_connection = True
                return
        self._end_stream()

    def _client_gone(self) -> bool:
        """True when the client closed an idle watch (so the thread does not wait for the next event)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _emit(self, event: Event, keep: _WatchFilter) -> None:
        shown = keep.view(event)
        if shown is not None:
            self._write_chunk({"type": shown, "object": event.obj})

    # ---- low-level writing -----------------------------------------------------------------------------

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self._record(200)

    def _write_chunk(self, data: JSON) -> None:
        line = json.dumps(data, separators=(",", ":")).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _send_json(self, code: int, data: JSON) -> None:
        self._send(code, json.dumps(data, separators=(",", ":")).encode(), "application/json")

    def _send(self, code: int, payload: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self._record(code)
        self.wfile.write(payload)
        self.wfile.flush()

    def _record(self, code: int) -> None:
        self._responded = True
        self.app.record(self._method, self._url_path, self._query, code, self._started)


class _WatchFilter:
    """Namespace and selector of one watch; turns moves in and out of the selection into ADDED/DELETED."""

    def __init__(self, namespace: str | None, selector: Selector) -> None:
        self.namespace = namespace
        self.selector = selector

    def _keeps(self, obj: JSON | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace", "") != self.namespace:
            return False
        return self.selector.matches(obj)

    def view(self, event: Event) -> str | None:
        now = self._keeps(event.obj)
        if event.type != "MODIFIED":
            return event.type if now else None
        before = self._keeps(event.old)
        if before and now:
            return "MODIFIED"
        if now:
            return "ADDED"
        return "DELETED" if before else None


def _bookmark(res: Resource, version: int, initial_end: bool = False) -> JSON:
    meta: JSON = {"resourceVersion": str(version), "creationTimestamp": None}
    if initial_end:
        meta["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"type": "BOOKMARK", "object": {"kind": res.kind, "apiVersion": res.api_version, "metadata": meta}}


def _wait_time(*moments: float | None) -> float | None:
    """Seconds until the earliest of ``moments`` (None: wait without limit)."""
    due = [moment for moment in moments if moment is not None]
    return max(min(due) - time.monotonic(), 0.0) if due else None


def _parse_version(text: str) -> int:
    if not text.isdigit():
        raise bad_request(f"resourceVersion: Invalid value: {text!r}: must be a non-negative integer")
    return int(text)


def _int_param(query: dict[str, str], key: str) -> int:
    text = query.get(key, "")
    if text and not text.isdigit():
        raise bad_request(f"{key}: Invalid value: {text!r}")
    return int(text or 0)


def _float_param(query: dict[str, str], key: str) -> float | None:
    text = query.get(key, "")
    return float(_int_param(query, key)) if text else None
