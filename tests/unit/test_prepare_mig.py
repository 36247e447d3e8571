"""Prepare on a MIG profile (mock mode): MIG devices by their published names; MIG-mode parents refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gpudra.model.cdi import CdiWriter
from gpudra.model.inventory import DeviceKind
from gpudra.planning import slices
from gpudra.planning.plan import ClaimRef
from gpudra.state.checkpoint import CheckpointStore
from gpudra.state.prepare import Preparer, PrepareSettings
from gpudra.vendors.edits import HostRoots
from gpudra.vendors.select import open_backend


class Claims:
    def __init__(self) -> None:
        self.by_name: dict[str, Any] = {}

    def add(self, name: str, device: str) -> ClaimRef:
        uid = f"00000000-0000-4000-8000-{len(self.by_name):012d}"
        self.by_name[name] = {
            "metadata": {"name": name, "namespace": "ns", "uid": uid},
            "status": {
                "allocation": {
                    "devices": {
                        "results": [{"request": "r", "driver": "gpudra.io", "pool": "node", "device": device}]
                    }
                }
            },
        }
        return ClaimRef("ns", name, uid)

    def get_claim(self, namespace: str, name: str) -> Any:
        return self.by_name[name]


def test_mig_devices_prepare_by_published_name_and_parents_are_refused(tmp_path: Path) -> None:
    backend = open_backend("mock", "h100-mig-mixed", Path("/sys"))
    try:
        inv = backend.discover()
    finally:
        backend.close()
    migs = [d for d in inv.devices if d.kind is DeviceKind.MIG]
    parent = next(d for d in inv.devices if d.kind is DeviceKind.GPU and d.mig_enabled)
    assert len(migs) == 3
    claims = Claims()
    store = CheckpointStore(tmp_path / "cp.json", tmp_path / "cp.lock", "boot")
    cdi_root = tmp_path / "cdi"
    preparer = Preparer(
        claims,
        inv,
        store,
        CdiWriter(cdi_root),
        PrepareSettings("node", tmp_path, HostRoots(dev=tmp_path), "mock"),
    )

    mig_name = slices.device_name(migs[0])
    ok = claims.add("mig", mig_name)
    stale = claims.add("parent", slices.device_name(parent))
    results = preparer.prepare([ok, stale])

    assert results[ok.uid].error is None
    assert [d.device for d in results[ok.uid].devices] == [mig_name]
    stale_error = results[stale.uid].error
    assert stale_error is not None
    assert "not on this node" in stale_error
    spec = json.loads(CdiWriter(cdi_root).path_for(ok.uid).read_text())
    env = spec["devices"][0]["containerEdits"]["env"]
    key = "GPUDRA_" + mig_name.upper().replace("-", "_") + "_UUID"
    assert f"{key}={migs[0].uuid}" in env
    assert migs[0].uuid.startswith("MIG-")
    description = json.loads((tmp_path / "claims" / f"{ok.uid}-{mig_name}.json").read_text())
    assert (description["device"]["name"], description["device"]["uuid"]) == (mig_name, migs[0].uuid)
