"""The errors that end ``gpudra run`` before it serves: each says what is wrong and what the admin should do,
and the command prints them as one line, ``gpudra: <what> — <what to do>`` (or one JSON object)."""

from __future__ import annotations

from typing import ClassVar


class FatalError(Exception):
    """An error the admin must fix; the process exits with :attr:`exit_code`."""

    exit_code: ClassVar[int] = 1

    def __init__(self, what: str, fix: str) -> None:
        super().__init__(what, fix)
        self.what = what
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.what} — {self.fix}"


class UsageError(FatalError):
    """A flag or its environment twin is wrong (exit 2, like a command-line parser's error)."""

    exit_code = 2


class StartupError(FatalError):
    """Something on the node keeps the plugin from starting (exit 1). ``reason`` is the Node Event's."""

    def __init__(self, what: str, fix: str, reason: str = "GpudraStartupFailed") -> None:
        super().__init__(what, fix)
        self.reason = reason
