"""The checkpoint across schema versions: a newer file is read and never downgraded, unknown fields are kept
while their claim lives, and migrations run in a chain (a broken chain is corruption)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gpudra.state.checkpoint import PREPARE_COMPLETED, PREPARE_STARTED, ClaimRecord, PreparedDevice
from tests.unit.test_checkpoint import BOOT, _claim, _on_disk, _save, _store


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "state" / "checkpoint.json", tmp_path / "state" / "checkpoint.lock"


# ---- versions ---------------------------------------------------------------------------------------


def _write_json(path: Path, document: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))


def test_newer_version_is_read_and_never_downgraded(paths: tuple[Path, Path]) -> None:
    device = {"request": "gpu", "pool": "node-a", "device": "gpu-0", "cdiDeviceIds": ["x"],
              "adminAccess": False, "shareId": None, "futureDeviceField": {"k": [1, 2]}}
    _write_json(paths[0], {
        "version": 7,
        "bootId": BOOT,
        "futureTop": {"keep": True},
        "claims": {
            "a": {"namespace": "ns", "name": "a", "state": PREPARE_COMPLETED, "cdiSpec": "/cdi/a.yaml",
                  "devices": [device], "futureClaimField": "x"},
            "b": {"namespace": "ns", "name": "b", "state": "UnprepareStarted", "devices": []},
        },
    })
    store = _store(paths)
    claims = store.snapshot()
    assert claims["a"].devices == (PreparedDevice("gpu", "node-a", "gpu-0", ("x",)),)
    assert claims["b"].state == PREPARE_STARTED  # an unknown state reads as "not completed"
    _save(store, _claim("c"))
    written = _on_disk(paths[0])
    assert written["version"] == 7
    assert written["futureTop"] == {"keep": True}
    assert written["claims"]["a"]["futureClaimField"] == "x"
    assert written["claims"]["a"]["devices"] == [device]
    assert written["claims"]["b"]["state"] == "UnprepareStarted"  # untouched claim: its state survives
    assert set(written["claims"]) == {"a", "b", "c"}
    _save(store, replace(claims["b"], state=PREPARE_COMPLETED))
    assert _on_disk(paths[0])["claims"]["b"]["state"] == PREPARE_COMPLETED


def test_unknown_fields_of_a_removed_claim_go_with_it(paths: tuple[Path, Path]) -> None:
    _write_json(paths[0], {"version": 3, "claims": {"a": {
        "namespace": "ns", "name": "a", "state": PREPARE_STARTED, "devices": [], "extra": 1}}})
    with _store(paths).transaction() as txn:
        txn.put(replace(_claim("a"), devices=()))
        txn.commit()
        assert _on_disk(paths[0])["claims"]["a"]["extra"] == 1  # same claim: kept
        txn.remove("a")
        txn.commit()
        txn.put(replace(_claim("a"), devices=()))
        txn.commit()
    assert "extra" not in _on_disk(paths[0])["claims"]["a"]


def _v1_to_v2(doc: dict[str, Any]) -> dict[str, Any]:
    doc["claims"] = {c.pop("uid"): c for c in doc.pop("claimList")}
    return doc


def _v2_to_v3(doc: dict[str, Any]) -> dict[str, Any]:
    for claim in doc["claims"].values():
        claim["state"] = {"started": PREPARE_STARTED, "done": PREPARE_COMPLETED}[claim.pop("phase")]
    return doc


def test_migration_chain(paths: tuple[Path, Path]) -> None:
    _write_json(paths[0], {"version": 1, "bootId": BOOT, "claimList": [
        {"uid": "a", "namespace": "ns", "name": "a", "phase": "done", "devices": []}]})
    store = _store(paths, schema_version=3, migrations={1: _v1_to_v2, 2: _v2_to_v3})
    expected = ClaimRecord("a", "ns", "a", PREPARE_COMPLETED, (), None)
    assert store.snapshot() == {"a": expected}
    assert json.loads(paths[0].read_text())["version"] == 1  # reading does not write
    with store.transaction() as txn:
        assert txn.commit()  # the migrated form is written even though no claim changed
    written = json.loads(paths[0].read_text())  # rewritten as one snapshot line
    assert written["version"] == 3
    assert written["claims"]["a"]["state"] == PREPARE_COMPLETED


@pytest.mark.parametrize("migrations", [{1: _v1_to_v2}, {1: _v1_to_v2, 2: lambda d: d["nope"]}])
def test_broken_migration_chain_is_corruption(paths: tuple[Path, Path], migrations: Any) -> None:
    _write_json(paths[0], {"version": 1, "claimList": []})
    seen: list[str] = []
    store = _store(paths, schema_version=3, migrations=migrations, on_corrupt=lambda p, why: seen.append(why))
    assert store.snapshot() == {}
    assert len(seen) == 1
    assert "version 2" in seen[0] or "2 -> 3" in seen[0]
