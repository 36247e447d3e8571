"""Editing the profile file of a running mock is a hardware change.

``--backend mock --profile <file.json>`` watches that file: at every discovery pass (the plugin's periodic
re-discovery, SIGHUP, start-up) :class:`HotSwapDriver` asks :class:`ProfileFile` whether the file changed
since it was last read - a cheap fingerprint first (inode, ``mtime_ns``, size), then the content - and, when
it did, re-reads and validates it and makes the node's fakes serve it (:meth:`FakeNode.serve
<gpudra.vendors.mock.node.FakeNode.serve>`). That same pass then discovers the new hardware through the real
vendor code, exactly as on a real node: a GPU lost (``"errors": {"*": "NVML_ERROR_GPU_IS_LOST"}``) or gone
from the list, another MIG layout, MIG mode toggled, an AMD partition mode switched.

A file that is now invalid (unreadable, not JSON, a schema error, another vendor, amdsmi appearing or
vanishing) changes nothing: the node keeps the hardware it had, and one warning per distinct bad content says
why (not one per pass). Editing it back to the content being served is no change at all. A built-in profile
name is never watched. Two edits within one file-system timestamp tick that keep the size and the inode are
seen only with the next edit (write the file anew - editors and ``kubectl cp`` do - or touch it).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gpudra.model.applied import AppliedState
from gpudra.model.health import Observation
from gpudra.model.inventory import Inventory
from gpudra.model.usage import DeviceUsage
from gpudra.vendors.base import ClaimDevice, ClaimIdentity, DeviceEdits
from gpudra.vendors.mock.amd_profile import AmdProfile, is_amd_profile, load_amd_profile, parse_amd_profile
from gpudra.vendors.mock.node import FakeNode, NodeProfile
from gpudra.vendors.mock.profile import ProfileError, builtin_profile_names, load_profile, parse_profile

log = logging.getLogger(__name__)


def is_builtin(name_or_path: str) -> bool:
    """True when ``--profile name_or_path`` names a built-in profile (those win over a file of that name)."""
    return name_or_path in builtin_profile_names()


def load_node_profile(name_or_path: str) -> NodeProfile:
    """A built-in profile by name, or the one in a JSON file, of either vendor; :class:`ProfileError` says
    what is wrong and where."""
    return load_amd_profile(name_or_path) if is_amd_profile(name_or_path) else load_profile(name_or_path)


def parse_node_profile(text: str, origin: str, default_name: str) -> NodeProfile:
    """Profile JSON text of either vendor (``"vendor": "amd"`` selects the AMD schema)."""
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raw = None  # parse_profile says what is wrong with it
    if isinstance(raw, dict) and raw.get("vendor") == "amd":
        return parse_amd_profile(text, origin=origin, default_name=default_name)
    return parse_profile(text, origin=origin, default_name=default_name)


@dataclass(frozen=True, slots=True)
class _Fingerprint:
    inode: int
    mtime_ns: int
    size: int


class ProfileFile:
    """A profile file and what was last read from it. Not thread-safe: :class:`HotSwapDriver` serialises."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._label = f"profile file {str(path)!r}"
        self._fingerprint: _Fingerprint | None = None
        self._served: str | None = None  # the content the node serves
        self._refused: str | None = None  # the last bad content (or read error) warned about

    def read(self) -> NodeProfile:
        """Read and validate the file now (when the mock opens); raises :class:`ProfileError`."""
        self._fingerprint = self._stat()  # before reading: an edit racing the read is seen next time
        text = self._text()
        profile = parse_node_profile(text, self._label, self.path.stem)
        self._served = text
        return profile

    def poll(self, serve: Callable[[NodeProfile], None]) -> bool:
        """When the file changed since the last look and is valid, ``serve`` its profile; True if it did.

        ``serve`` refuses with :class:`ProfileError` (or ``OSError``); that, or an invalid file, keeps the
        old hardware, with one warning per distinct content.
        """
        fingerprint = self._stat()
        if fingerprint == self._fingerprint:
            return False
        self._fingerprint = fingerprint
        try:
            text = self._text()
        except ProfileError as err:
            return self._refuse(f"\0{err}", str(err))  # "\0": never a text the file could hold
        if text == self._served:  # edited back (or only touched): no change; a later bad edit warns again
            self._refused = None
            return False
        if text == self._refused:
            return False
        try:
            profile = parse_node_profile(text, self._label, self.path.stem)
        except ProfileError as err:
            return self._refuse(text, str(err))
        try:
            serve(profile)
        except (ProfileError, OSError) as err:
            return self._refuse(text, f"{self._label}: {err}")
        self._served, self._refused = text, None
        log.info("%s changed: the mock's hardware is now %r (%s)", self._label, profile.name, _size(profile))
        return True

    def _refuse(self, key: str, why: str) -> bool:
        if key != self._refused:
            self._refused = key
            log.warning("%s; the mock keeps serving the hardware it had", why)
        return False

    def _stat(self) -> _Fingerprint | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return _Fingerprint(st.st_ino, st.st_mtime_ns, st.st_size)

    def _text(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ProfileError(f"cannot read {self._label}: {err}") from err


class HotSwapDriver:
    """A :class:`~gpudra.vendors.base.VendorDriver`: the real vendor driver of ``node``, whose hardware
    follows ``file`` (looked at before every discovery pass).

    Looking, swapping the hardware and the discovery pass run under one lock, so a pass never sees half a
    change and two threads may discover at once. Edits and claim changes go straight to the vendor driver.
    """

    def __init__(self, node: FakeNode, file: ProfileFile) -> None:
        self._node = node
        self._file = file
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._node.driver.name

    def discover(self) -> Inventory:
        with self._lock:
            self._file.poll(self._node.serve)
            return self._node.driver.discover()

    def watch_health(self, report: Callable[[Observation], None], stop: threading.Event) -> None:
        """The vendor driver's health watching (not under the lock: it runs until ``stop``); the hardware
        changes this driver makes are what it sees."""
        self._node.driver.watch_health(report, stop)

    def read_usage(self, uuids: Iterable[str]) -> Mapping[str, DeviceUsage]:
        """The vendor driver's readings of the fake hardware (not under the lock: a swap in flight costs at
        most one sample's values)."""
        return self._node.driver.read_usage(uuids)

    def edits(self, claim: ClaimIdentity, device: ClaimDevice, applied: AppliedState) -> DeviceEdits:
        return self._node.driver.edits(claim, device, applied)

    def intend(self, claim: ClaimIdentity, devices: Sequence[ClaimDevice]) -> AppliedState:
        return self._node.driver.intend(claim, devices)

    def settle(self, intended: AppliedState, others: Iterable[AppliedState]) -> AppliedState:
        return self._node.driver.settle(intended, others)

    def apply(
        self, claim: ClaimIdentity, devices: Sequence[ClaimDevice], intended: AppliedState
    ) -> AppliedState:
        return self._node.driver.apply(claim, devices, intended)

    def undo(self, applied: AppliedState, others: Iterable[AppliedState] = ()) -> None:
        self._node.driver.undo(applied, others)

    def reconcile(self, held: Sequence[AppliedState], pending: Sequence[AppliedState]) -> None:
        self._node.driver.reconcile(held, pending)

    def close(self) -> None:
        with self._lock:
            self._node.close()


def _size(profile: NodeProfile) -> str:
    count = len(profile.gpus) if isinstance(profile, AmdProfile) else len(profile.devices)
    return f"{count} GPU{'s' if count != 1 else ''}"
