"""API failures as one :class:`KubeError`, whatever answered: the API server, a proxy before it, or nothing.

The API server answers an error with a Kubernetes ``Status`` (JSON). A load balancer, an ingress or an
authenticating proxy may answer instead: a 404 with no Content-Type, an HTML error page, a body cut short.
Every such answer becomes a one-line :class:`KubeError` that names the HTTP status, the Content-Type and a
short excerpt of the body, so the caller logs one warning line (never a traceback) per failed attempt.
"""

from __future__ import annotations

import json
from typing import Any

import httpx2
import msgspec
from lightkube import ApiError

_EXCERPT = 120  # characters of a body that is not the API server's, in a message


class KubeError(Exception):
    """An API call failed. ``code`` is the HTTP status, or None when no answer came (not reached, cut off,
    or an answer that could not be read). ``reason`` is the Kubernetes Status reason ("" when the answer
    carried no Status: it came from something in front of the API server)."""

    def __init__(self, message: str, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason

    @property
    def not_found(self) -> bool:
        """The API server said the object does not exist (a proxy's bare 404 says nothing of the kind)."""
        return self.code == 404 and self.reason == "NotFound"

    @property
    def conflict(self) -> bool:
        return self.code == 409

    @property
    def transient(self) -> bool:
        """Worth retrying: unreachable, throttled, or a server-side failure."""
        return self.code is None or self.code == 429 or self.code >= 500


def one_line(text: str, limit: int = 400) -> str:
    """``text`` with its whitespace runs (newlines included) folded into single spaces, cut at ``limit``."""
    folded = " ".join(text.split())
    return folded if len(folded) <= limit else folded[: limit - 1] + "…"


def excerpt(body: bytes) -> str:
    """The start of an answer's body, on one line."""
    text = one_line(body[: _EXCERPT * 4].decode("utf-8", "replace"), _EXCERPT)
    return text or "(empty body)"


def status_error(op: str, status: dict[str, Any], http_status: int | None) -> KubeError:
    """A Kubernetes ``Status`` as a KubeError (its own code, else the HTTP status)."""
    message, code, reason = status.get("message"), status.get("code"), status.get("reason")
    text = one_line(message) if isinstance(message, str) and message else "(a Status without a message)"
    return KubeError(
        f"{op}: {text}",
        code if isinstance(code, int) and code > 0 else http_status,
        reason if isinstance(reason, str) else "",
    )


def answer_error(op: str, code: int, phrase: str, content_type: str, body: bytes) -> KubeError:
    """A non-2xx answer: the ``Status`` it carries, or — when it carries none — what it was."""
    try:
        status = json.loads(body)
    except ValueError:
        status = None
    if isinstance(status, dict) and _is_status(status):
        return status_error(op, status, code)
    what = content_type or "no Content-Type"
    return KubeError(f"{op}: HTTP {code} {phrase}, not a Kubernetes Status ({what}): {excerpt(body)}", code)


def _is_status(obj: dict[str, Any]) -> bool:
    """A Kubernetes ``Status``: its kind says so, or (where a server leaves the kind out) its fields do."""
    return obj.get("kind") == "Status" or (isinstance(obj.get("code"), int) and "reason" in obj)


def undecodable(op: str, detail: str, body: bytes | None = None) -> KubeError:
    """A 2xx answer whose body is not the object asked for (cut short, HTML from a proxy, ...)."""
    shown = "" if body is None else f": {excerpt(body)}"
    return KubeError(f"{op}: the answer is not a Kubernetes object ({one_line(detail, 160)}){shown}")


def from_client(op: str, e: Exception) -> KubeError | None:
    """What a lightkube / httpx2 call raised, as a KubeError; None for an exception that is no API failure
    (a bug, to be raised as it is).

    lightkube expects every error answer to be a JSON Status; an answer without one makes it raise
    ``KeyError`` (no Content-Type), ``HTTPStatusError`` (another Content-Type) or a JSON error from inside
    its own error handling. The HTTP answer is then found in the exception's context.
    """
    answer = _answer_in(e)
    if isinstance(e, ApiError) and answer is None:  # built from a Status that came without an answer
        return status_error(op, msgspec.to_builtins(e.status), None)
    if answer is not None:  # lightkube's own Status for it may be made up of defaults: read the body
        kind = answer.headers.get("content-type", "")
        return answer_error(op, answer.status_code, answer.reason_phrase, kind, _body(answer))
    if isinstance(e, httpx2.HTTPError):
        return KubeError(f"{op}: {type(e).__name__}: {one_line(str(e)) or 'no detail'}")
    if isinstance(e, (ValueError, msgspec.MsgspecError)):  # a 2xx answer lightkube could not decode
        return undecodable(op, f"{type(e).__name__}: {e}")
    return None


def _answer_in(e: BaseException) -> httpx2.Response | None:
    """The error answer an HTTPStatusError in ``e`` or its context carries."""
    seen: BaseException | None = e
    for _ in range(8):  # a short chain: the exception, what it was raised while handling, and so on
        if seen is None:
            return None
        if isinstance(seen, httpx2.HTTPStatusError):
            response: httpx2.Response | None = seen.response  # None in an ApiError built from a Status
            return response
        seen = seen.__context__ or seen.__cause__
    return None


def _body(response: httpx2.Response) -> bytes:
    try:
        return response.content
    except httpx2.ResponseNotRead:
        return b""
