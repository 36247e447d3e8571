"""A Preparer over a mock driver and the claims a test hands it (the API side is a dict of claim JSON)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpudra.model.k8stypes import ResourceClaim
from gpudra.planning.offer import plan_offer
from gpudra.planning.plan import ClaimRef
from gpudra.state.cdi import CdiWriter
from gpudra.state.checkpoint import CheckpointStore
from gpudra.state.node import NodeStateStore
from gpudra.state.prepare import ClaimReadError, Preparer, PrepareSettings
from gpudra.vendors.base import VendorDriver
from gpudra.vendors.select import open_driver


class Claims:
    """The API server's side: claims allocated to named devices of pool ``node`` (one request ``r``)."""

    def __init__(self) -> None:
        self.by_name: dict[str, Any] = {}

    def add(self, name: str, device: str) -> ClaimRef:
        uid = f"00000000-0000-4000-8000-{len(self.by_name):012d}"
        result = {"request": "r", "driver": "gpudra.io", "pool": "node", "device": device}
        self.by_name[name] = {
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "status": {"allocation": {"devices": {"results": [result]}}},
        }
        return ClaimRef("ns", name, uid)

    def get_claim(self, namespace: str, name: str) -> ResourceClaim:
        claim = self.by_name.get(name)
        if claim is None:
            raise ClaimReadError(f"resourceclaims {name} not found", not_found=True)
        result: ResourceClaim = claim
        return result


@dataclass
class Rig:
    preparer: Preparer
    claims: Claims
    store: CheckpointStore
    cdi: CdiWriter
    driver: VendorDriver
    node: NodeStateStore


@contextmanager
def mock_rig(tmp_path: Path, profile: str = "dgx-h100", cdi: CdiWriter | None = None) -> Iterator[Rig]:
    """A Preparer over ``--backend mock`` for ``profile`` with its files under ``tmp_path``."""
    driver = open_driver("mock", profile, Path("/sys"), files_dir=tmp_path / "claims")
    try:
        node = NodeStateStore(plan_offer(driver.discover()))
        store = CheckpointStore(tmp_path / "cp.json", tmp_path / "cp.lock", "boot")
        writer = cdi or CdiWriter(tmp_path / "cdi")
        claims = Claims()
        settings = PrepareSettings("node", tmp_path)
        preparer = Preparer(claims, node, store, writer, driver=driver, settings=settings)
        yield Rig(preparer, claims, store, writer, driver, node)
    finally:
        driver.close()
