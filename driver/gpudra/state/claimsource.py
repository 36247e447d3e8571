"""Where prepare reads claims from: the protocol the API client implements, and its error."""

from __future__ import annotations

from typing import Protocol

from gpudra.model.k8stypes import ResourceClaim


class ClaimReadError(Exception):
    """The ResourceClaim could not be read from the API (``not_found`` when it does not exist)."""

    def __init__(self, message: str, *, not_found: bool = False) -> None:
        super().__init__(message)
        self.not_found = not_found


class ClaimSource(Protocol):
    def get_claim(self, namespace: str, name: str) -> ResourceClaim:
        """The claim as the API holds it; raises :class:`ClaimReadError`."""
        ...
