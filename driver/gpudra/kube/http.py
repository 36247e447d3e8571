"""A keep-alive stdlib ``http.client`` GET: the transport of the prepare hot path (one ResourceClaim read).

lightkube over httpx2 spends about half a millisecond per request on URL parsing and request building; a
plain ``http.client`` connection kept open per thread does not. This module knows connections, TLS and
bearer tokens, not Kubernetes: :meth:`JsonGetter.get` hands back the raw :class:`Reply` and raises
``OSError`` / ``http.client.HTTPException``; :mod:`gpudra.kube.client` builds the paths and translates errors.

It is configured from the same lightkube ``SingleConfig`` as the lightkube client, and reuses lightkube's
own TLS helper, so the two agree on CA, ``insecure-skip-tls-verify`` and client certificates. Auth it
cannot do (exec plugins, basic auth, auth-provider) makes :func:`from_config` return None: the caller
then keeps using lightkube.
"""

from __future__ import annotations

import http.client
import logging
import os
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from lightkube.config.client_adapter import verify_cluster
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import User

log = logging.getLogger(__name__)

# A reused keep-alive connection the server has closed fails with one of these; the GET is then retried once
# on a new connection. Timeouts are not among them: a slow server is not made faster by asking twice.
_STALE = (
    ConnectionError,
    http.client.BadStatusLine,  # RemoteDisconnected is one
    http.client.IncompleteRead,
    ssl.SSLEOFError,
    ssl.SSLZeroReturnError,
)

TOKEN_MAX_AGE_S = 60.0


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP answer, body read in full."""

    status: int
    reason: str
    body: bytes
    content_type: str = ""  # the Content-Type header ("" when there is none: an answer from a proxy, say)


def path_segment(value: str) -> str:
    """``value`` escaped as one URL path segment (``/``, ``?``, ``%`` … and dot segments included)."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the API server is: host, port, the server URL's path prefix, and TLS (None for http://)."""

    host: str
    port: int
    base_path: str
    tls: ssl.SSLContext | None

    def connection(self, timeout_s: float) -> http.client.HTTPConnection:
        if self.tls is None:
            return http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)
        return http.client.HTTPSConnection(self.host, self.port, timeout=timeout_s, context=self.tls)


class BearerToken:
    """A bearer token, fixed or read from a file the kubelet rotates (in-cluster bound tokens).

    A file token is re-read when the file's mtime changes, and at least every ``max_age_s``; :meth:`reload`
    forces a read (after a 401). If a re-read fails the last token is kept.
    """

    def __init__(
        self,
        token: str | None,
        token_file: str | None = None,
        *,
        max_age_s: float = TOKEN_MAX_AGE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._file = token_file
        self._max_age_s = max_age_s
        self._clock = clock
        self._lock = threading.Lock()
        token = (token or "").strip()
        self._header = f"Bearer {token}" if token else ""
        self._mtime_ns: int | None = None
        self._read_at = float("-inf")  # the file is first read by the first header() call

    def header(self) -> str:
        """The ``Authorization`` header value ("" when there is no token)."""
        if self._file is not None:
            mtime_ns = _mtime_ns(self._file)
            if mtime_ns != self._mtime_ns or self._clock() - self._read_at >= self._max_age_s:
                self.reload()
        return self._header

    def reload(self) -> bool:
        """Re-read the token file; False for a fixed token (nothing to re-read)."""
        if self._file is None:
            return False
        with self._lock:
            mtime_ns = _mtime_ns(self._file)
            try:
                with open(self._file, encoding="utf-8") as f:
                    token = f.read().strip()
            except OSError as e:
                if not self._header:
                    raise
                log.warning("cannot re-read the API token file, keeping the last token: %s", e)
                token = ""
            if token:
                self._header = f"Bearer {token}"
            self._mtime_ns = mtime_ns
            self._read_at = self._clock()
        return True


def _mtime_ns(path: str) -> int | None:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


class JsonGetter:
    """GETs over one keep-alive connection per calling thread; safe to call from many threads at once."""

    def __init__(self, endpoint: Endpoint, token: BearerToken | None, timeout_s: float) -> None:
        self._endpoint = endpoint
        self._token = token
        self._timeout_s = timeout_s
        self._local = threading.local()
        self._open: weakref.WeakSet[http.client.HTTPConnection] = weakref.WeakSet()
        self._open_lock = threading.Lock()

    def get(self, path: str) -> Reply:
        """GET ``path`` (below the server URL's own path), e.g. ``/api/v1/nodes/n1``."""
        reply = self._send(path)
        if reply.status == 401 and self._token is not None and self._token.reload():
            reply = self._send(path)
        return reply

    def close(self) -> None:
        """Close every thread's connection (a later GET opens a new one)."""
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            conn.close()

    def _send(self, path: str) -> Reply:
        headers = {"Accept": "application/json", "User-Agent": "gpudra"}
        auth = self._token.header() if self._token is not None else ""
        if auth:
            headers["Authorization"] = auth
        conn = self._connection()
        reused = conn.sock is not None
        target = self._endpoint.base_path + path
        try:
            return _exchange(conn, target, headers)
        except _STALE:
            conn.close()
            if not reused:
                raise
        except BaseException:
            conn.close()
            raise
        log.debug("API server closed a keep-alive connection; retrying GET %s", target)
        try:
            return _exchange(conn, target, headers)
        except BaseException:
            conn.close()
            raise

    def _connection(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._endpoint.connection(self._timeout_s)
            self._local.conn = conn
            with self._open_lock:
                self._open.add(conn)
        return conn


def _exchange(conn: http.client.HTTPConnection, target: str, headers: dict[str, str]) -> Reply:
    conn.request("GET", target, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    return Reply(resp.status, resp.reason, body, resp.getheader("Content-Type", ""))


def endpoint(config: SingleConfig) -> Endpoint | None:
    """The server of ``config``; None for a URL scheme other than http/https."""
    url = urlsplit(config.cluster.server)
    if url.scheme not in ("http", "https") or not url.hostname:
        return None
    tls = None
    if url.scheme == "https":
        tls = verify_cluster(config.cluster, config.user or User(), config.abs_file, trust_env=False)
    port = url.port or (443 if url.scheme == "https" else 80)
    return Endpoint(url.hostname, port, url.path.rstrip("/"), tls)


def supported(user: User) -> bool:
    """Whether this transport authenticates as lightkube would: a token, a token file, or nothing.

    lightkube prefers a token (file) over exec, basic auth and auth-provider, and so does this check.
    """
    if user.token_file is not None or user.token is not None:
        return True
    return not (user.exec is not None or (user.username and user.password) or user.auth_provider)


def bearer_token(user: User) -> BearerToken | None:
    """The token lightkube would send: the token file first, then the token."""
    if user.token_file is None and user.token is None:
        return None
    return BearerToken(user.token, user.token_file)


def from_config(config: SingleConfig, timeout_s: float) -> JsonGetter | None:
    """A getter for ``config``'s server, or None when this transport cannot talk to it like lightkube."""
    user = config.user or User()
    if not supported(user):
        return None
    where = endpoint(config)
    if where is None:
        return None
    return JsonGetter(where, bearer_token(user), timeout_s)
