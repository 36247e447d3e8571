"""The transport of a watch: one long HTTP stream that cannot hang on a dead connection.

A watch is a GET the API server answers for as long as it likes, one JSON event per line. A connection
that died silently (a NAT or conntrack entry expired; the peer is gone, but nothing said so) would keep a
plain read waiting forever, and the publisher would never see another change. Three bounds, as client-go
has (it uses HTTP/2 pings where this uses the read timeout):

- **``timeoutSeconds``**: the API server ends each watch cleanly after a random 5 to 10 minutes
  (client-go's reflector asks for its minimum watch timeout, 5 minutes, times a random factor in [1, 2)).
  The jitter spreads the reconnects of every node after an API server restart; the bound renews every
  connection even when nothing else noticed a fault. The caller then lists again, at once.
- **a read timeout** (``watch_idle_s``, 120 s): the watch asks for BOOKMARK events, which the API server
  sends about once a minute even when nothing changes, so a healthy watch is never silent for two. A watch
  that is silent that long is presumed dead and is closed. (The same bound covers the wait for the watch's
  response headers, which the API server sends at once.)
- **TCP keepalive** (idle 30 s, then 3 probes 10 s apart): the kernel notices a peer that is gone.

Hidden settings (for tests that must see these bounds within seconds; no operator needs them): the
environment variables ``GPUDRA_API_TIMEOUT_S`` (each request; default 10), ``GPUDRA_WATCH_TIMEOUT_S`` (the
least ``timeoutSeconds``; default 300) and ``GPUDRA_WATCH_IDLE_S`` (the read timeout; default 120, and it
must exceed the server's bookmark interval).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import socket
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import Any

import httpx2
from lightkube.config.client_adapter import Client as adapter_client
from lightkube.config.client_adapter import ConnectionParams, verify_cluster
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import User

from gpudra.kube.errors import KubeError, answer_error, excerpt, status_error

log = logging.getLogger(__name__)

_ENV = {
    "request_s": "GPUDRA_API_TIMEOUT_S",
    "watch_server_s": "GPUDRA_WATCH_TIMEOUT_S",
    "watch_idle_s": "GPUDRA_WATCH_IDLE_S",
}
_SHORT_WATCH_S = 1.0  # a watch that ends sooner, having sent nothing, failed (client-go: "very short watch")
EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED")


@dataclass(frozen=True, slots=True)
class ApiTimeouts:
    """How long API requests and watches may take (seconds)."""

    request_s: float = 10.0
    watch_server_s: float = 300.0  # timeoutSeconds is this times a random factor in [1, 2)
    watch_idle_s: float = 120.0  # no byte for this long: the watch's connection is presumed dead

    def server_timeout(self) -> int:
        """The ``timeoutSeconds`` of one watch."""
        return max(1, int(self.watch_server_s * random.uniform(1.0, 2.0)))

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> ApiTimeouts:
        """The defaults, changed by the hidden environment variables; a bad value is logged and ignored."""
        values: dict[str, float] = {}
        for f in fields(cls):
            text = env.get(_ENV[f.name], "").strip()
            if not text:
                continue
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value) or value <= 0:
                log.warning("%s=%r is not a positive number of seconds; ignored", _ENV[f.name], text)
                continue
            values[f.name] = value
        return cls(**values)


def keepalive_options() -> list[tuple[int, int, int]]:
    """Socket options that turn TCP keepalive on: probes after 30 s idle, 3 of them 10 s apart."""
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 30), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):  # Linux has all three; others keep their system defaults
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    return options


def stream_client(config: SingleConfig, timeouts: ApiTimeouts) -> httpx2.Client:
    """An HTTP client for watches: authenticated as lightkube's (its own adapter builds it), on sockets with
    keepalive, reads bounded by ``watch_idle_s``."""
    tls = verify_cluster(config.cluster, config.user or User(), config.abs_file, trust_env=False)
    transport = httpx2.HTTPTransport(verify=tls, socket_options=keepalive_options(), trust_env=False)
    timeout = httpx2.Timeout(timeouts.request_s, read=timeouts.watch_idle_s)
    return adapter_client(config, ConnectionParams(timeout=timeout, trust_env=False, transport=transport))


def events(
    client: httpx2.Client, op: str, path: str, params: dict[str, str], timeouts: ApiTimeouts
) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(type, object)`` of each ADDED / MODIFIED / DELETED event until the server ends the watch.

    BOOKMARKs are read (they prove the connection alive) and not handed out. Raises :class:`KubeError`
    for an error answer, an ERROR event, a line that is no watch event, a connection that breaks or stays
    silent for ``watch_idle_s``, and a watch that ends at once without a word.
    """
    query = {**params, "watch": "true", "allowWatchBookmarks": "true"}
    query["timeoutSeconds"] = str(timeouts.server_timeout())
    started, lines = time.monotonic(), 0
    try:
        with client.stream("GET", path, params=query, headers={"Accept": "application/json"}) as resp:
            if resp.status_code != 200:
                body = resp.read()
                kind = resp.headers.get("content-type", "")
                raise answer_error(op, resp.status_code, resp.reason_phrase, kind, body)
            for line in resp.iter_lines():
                if not line.strip():
                    continue
                lines += 1
                event = _event(op, line)
                if event is not None:
                    yield event
    except httpx2.ReadTimeout as e:
        silent = f"no event and no bookmark for {timeouts.watch_idle_s:g} s"
        raise KubeError(f"{op}: {silent}: the connection is presumed dead") from e
    except httpx2.HTTPError as e:
        raise KubeError(f"{op}: {type(e).__name__}: {' '.join(str(e).split()) or 'no detail'}") from e
    if lines == 0 and time.monotonic() - started < _SHORT_WATCH_S:
        raise KubeError(f"{op}: the server ended the watch at once, without a word")
    log.debug("%s: the server ended the watch after %d line(s); listing again", op, lines)


def _event(op: str, line: str) -> tuple[str, dict[str, Any]] | None:
    """One line of the stream, checked: an event to hand out, None for a bookmark, or KubeError."""
    try:
        raw = json.loads(line)
    except ValueError:
        raw = None
    kind = raw.get("type") if isinstance(raw, dict) else None
    obj = raw.get("object") if isinstance(raw, dict) else None
    if not isinstance(kind, str) or not isinstance(obj, dict):
        raise KubeError(f"{op}: a line that is not a watch event: {excerpt(line.encode())}")
    if kind == "ERROR":
        raise status_error(op, obj, None)
    if kind in EVENT_TYPES:
        return kind, obj
    if kind != "BOOKMARK":
        log.debug("%s: ignored a %s event", op, kind)
    return None
