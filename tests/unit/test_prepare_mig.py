"""Prepare on a MIG profile (mock mode): MIG devices by their published names; MIG-mode parents refused."""

from __future__ import annotations

import json
from pathlib import Path

from gpudra.model.inventory import DeviceKind
from gpudra.planning.devices import device_name
from gpudra.state.cdi import CdiWriter
from tests.unit.preparer_rig import Rig, mock_rig


def test_mig_devices_prepare_by_published_name_and_parents_are_refused(tmp_path: Path) -> None:
    with mock_rig(tmp_path, "h100-mig-mixed") as rig:
        _check_mig_claims(tmp_path, rig)


def _check_mig_claims(tmp_path: Path, rig: Rig) -> None:
    inv = rig.node.current.offer.inventory
    migs = [d for d in inv.devices if d.kind is DeviceKind.MIG]
    parent = next(d for d in inv.devices if d.kind is DeviceKind.GPU and d.mig_enabled)
    assert len(migs) == 3
    claims, preparer, cdi_root = rig.claims, rig.preparer, rig.cdi.root

    mig_name = device_name(migs[0])
    ok = claims.add("mig", mig_name)
    stale = claims.add("parent", device_name(parent))
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
