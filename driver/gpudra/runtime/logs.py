"""Logging set-up: human-readable lines by default, one JSON object per line with ``--log-format json``.

Verbosity: 0 = warnings and the few lifecycle lines at INFO from gpudra itself (default), 1 (-v) = INFO
for everything, 2 (-vv) = DEBUG (one line per prepared claim), 3+ = DEBUG including gRPC/HTTP libraries.

An error that ends the process is one line too (:func:`fatal`): ``gpudra: <what> — <what to do>``, or with
the JSON format one object carrying ``what`` and ``fix`` as well.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import UTC, datetime


def _timestamp(created: float) -> str:
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": _timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup(verbosity: int = 0, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 3 else logging.WARNING if verbosity == 0 else logging.INFO)
    logging.getLogger("gpudra").setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)
    if verbosity < 3:
        for noisy in ("httpx2", "httpcore2", "grpc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def fatal(what: str, fix: str, fmt: str = "text") -> None:
    """Print the one line of an error that ends the process, to stderr (the pod's log)."""
    if fmt == "json":
        entry = {
            "ts": _timestamp(time.time()),
            "level": "error",
            "logger": "gpudra",
            "msg": f"{what} — {fix}",
        }
        line = json.dumps({**entry, "what": what, "fix": fix})
    else:
        line = f"gpudra: {what} — {fix}"
    print(line.replace("\n", " "), file=sys.stderr, flush=True)
