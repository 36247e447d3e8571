"""CDI specs: minimum cdiVersion, names, merge, validation, and the spec files on disk."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from gpudra.model.cdi import (
    CdiDevice,
    CdiSpecError,
    ContainerEdits,
    DeviceNode,
    Hook,
    Mount,
    build_spec,
    cdi_device_id,
    cdi_device_name,
    min_cdi_version,
)
from gpudra.state.cdi import CdiWriter

UID = "a3b5c7d9-1111-4222-8333-944455556666"  # starts with a letter
DIGIT_UID = "0f9e8d7c-1111-4222-8333-944455556666"
ENV = ContainerEdits(env=("A=1",))


def _spec(devices: list[dict[str, Any]] | None = None, **top: Any) -> dict[str, Any]:
    return {"cdiVersion": "0.3.0", "kind": "k8s.gpudra.io/claim",
            "devices": devices or [{"name": "dev", "containerEdits": {"env": ["A=1"]}}], **top}


def _dev(edits: dict[str, Any], name: str = "dev", **extra: Any) -> list[dict[str, Any]]:
    return [{"name": name, "containerEdits": edits, **extra}]


# ---- minimum version (the table in cdi.py) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "version"),
    [
        (_spec(), "0.3.0"),
        (_spec(_dev({"mounts": [{"hostPath": "/a", "containerPath": "/b"}]})), "0.3.0"),
        (_spec(_dev({"mounts": [{"hostPath": "/a", "containerPath": "/b", "type": "bind"}]})), "0.4.0"),
        (_spec(containerEdits={"mounts": [{"hostPath": "/a", "containerPath": "/b", "type": "x"}]}), "0.4.0"),
        (_spec(_dev({"deviceNodes": [{"path": "/dev/x"}]})), "0.3.0"),
        (_spec(_dev({"deviceNodes": [{"path": "/dev/x", "hostPath": "/host/dev/x"}]})), "0.5.0"),
        (_spec(containerEdits={"deviceNodes": [{"path": "/dev/x", "hostPath": "/h"}]}), "0.5.0"),
        (_spec(_dev({"env": ["A=1"]}, name="0abc")), "0.5.0"),
        (_spec(_dev({"env": ["A=1"]}, name="abc0")), "0.3.0"),
        (_spec(annotations={"a": "b"}), "0.6.0"),
        (_spec(_dev({"env": ["A=1"]}, annotations={"a": "b"})), "0.6.0"),
        (_spec(kind="vendor.com/cl.ass"), "0.6.0"),
        (_spec(kind="vendor.com/class"), "0.3.0"),
        (_spec(containerEdits={"additionalGids": [44]}), "0.7.0"),
        (_spec(_dev({"additionalGids": [44]})), "0.7.0"),
        (_spec(containerEdits={"intelRdt": {"closID": "x"}}), "0.7.0"),
        (_spec(_dev({"intelRdt": {"closID": "x"}})), "0.7.0"),
        (_spec(_dev({"netDevices": [{"hostInterfaceName": "eth1", "name": "net1"}]})), "1.1.0"),
        (_spec(containerEdits={"intelRdt": {"schemata": ["L3:0=f"]}}), "1.1.0"),
        (_spec(_dev({"intelRdt": {"enableMonitoring": True}})), "1.1.0"),
        # several features: the highest requirement wins
        (_spec(_dev({"additionalGids": [1], "deviceNodes": [{"path": "/d", "hostPath": "/h"}]}, name="9"),
               annotations={"a": "b"}), "0.7.0"),
    ],
)
def test_min_cdi_version(spec: dict[str, Any], version: str) -> None:
    assert min_cdi_version(spec) == version


def test_build_spec_picks_the_lowest_version() -> None:
    dev = [CdiDevice(cdi_device_name(UID, "gpu-0"), ENV)]
    assert build_spec(UID, dev, ContainerEdits())["cdiVersion"] == "0.3.0"
    digit = [CdiDevice(cdi_device_name(DIGIT_UID, "gpu-0"), ENV)]
    assert build_spec(DIGIT_UID, digit, ContainerEdits())["cdiVersion"] == "0.5.0"
    host = ContainerEdits(device_nodes=(DeviceNode("/dev/nvidia0", host_path="/host/dev/nvidia0"),))
    assert build_spec(UID, [CdiDevice(dev[0].name, host)], ContainerEdits())["cdiVersion"] == "0.5.0"
    gids = ContainerEdits(additional_gids=(44,))
    assert build_spec(UID, dev, gids)["cdiVersion"] == "0.7.0"


@given(st.uuids().map(str), st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True))
def test_uid_first_character_decides_between_0_3_and_0_5(uid: str, device: str) -> None:
    spec = build_spec(uid, [CdiDevice(cdi_device_name(uid, device), ENV)], ContainerEdits())
    assert spec["cdiVersion"] == ("0.5.0" if uid[0].isdigit() else "0.3.0")
    assert spec["devices"][0]["name"] == f"{uid}-{device}"


# ---- names and the spec shape -----------------------------------------------------------------------


def test_names() -> None:
    assert cdi_device_name(UID, "gpu-1") == f"{UID}-gpu-1"
    assert cdi_device_id(UID, "gpu-1") == f"k8s.gpudra.io/claim={UID}-gpu-1"
    expected = Path(f"/var/run/cdi/k8s.gpudra.io-claim_{UID}.yaml")
    assert CdiWriter(Path("/var/run/cdi")).path_for(UID) == expected


def test_build_spec_shape() -> None:
    node = DeviceNode("/dev/nvidia0", type="c", major=195, minor=0, permissions="rw")
    common = ContainerEdits(env=("NVIDIA_VISIBLE_DEVICES=void",),
                            mounts=(Mount("/h/desc.json", "/c/desc.json", ("ro", "bind")),))
    spec = build_spec(UID, [CdiDevice(f"{UID}-gpu-0", ContainerEdits(device_nodes=(node,)))], common)
    assert spec == {
        "cdiVersion": "0.3.0",
        "kind": "k8s.gpudra.io/claim",
        "devices": [{"name": f"{UID}-gpu-0", "containerEdits": {"deviceNodes": [
            {"path": "/dev/nvidia0", "type": "c", "major": 195, "minor": 0, "permissions": "rw"}]}}],
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "mounts": [{"hostPath": "/h/desc.json", "containerPath": "/c/desc.json",
                        "options": ["ro", "bind"]}],
        },
    }
    assert "containerEdits" not in build_spec(UID, [CdiDevice(f"{UID}-x", ENV)], ContainerEdits())


@pytest.mark.parametrize(
    ("uid", "devices", "common", "message"),
    [
        (UID, [], ContainerEdits(), "at least one device"),
        ("../etc", [CdiDevice("x", ENV)], ContainerEdits(), "claim UID"),
        ("", [CdiDevice("x", ENV)], ContainerEdits(), "claim UID"),
        (UID, [CdiDevice("gpu-0", ENV)], ContainerEdits(), "invalid CDI device name"),
        (UID, [CdiDevice(f"{UID}-gpu 0", ENV)], ContainerEdits(), "invalid CDI device name"),
        (UID, [CdiDevice(f"{UID}-gpu-", ENV)], ContainerEdits(), "invalid CDI device name"),
        (UID, [CdiDevice(f"{UID}-a", ENV), CdiDevice(f"{UID}-a", ENV)], ContainerEdits(), "duplicate"),
        (UID, [CdiDevice(f"{UID}-a", ContainerEdits())], ContainerEdits(), "no container edits"),
        (UID, [CdiDevice(f"{UID}-a", ContainerEdits(env=("=1",)))], ContainerEdits(), "environment"),
        (UID, [CdiDevice(f"{UID}-a", ContainerEdits(env=("NOVALUE",)))], ContainerEdits(), "environment"),
        (UID, [CdiDevice(f"{UID}-a", ENV)], ContainerEdits(device_nodes=(DeviceNode("dev/x"),)), "absolute"),
        (UID, [CdiDevice(f"{UID}-a", ContainerEdits(device_nodes=(DeviceNode("/d", type="x"),)))],
         ContainerEdits(), "invalid type"),
        (UID, [CdiDevice(f"{UID}-a", ContainerEdits(device_nodes=(DeviceNode("/d", permissions="rx"),)))],
         ContainerEdits(), "invalid permissions"),
        (UID, [CdiDevice(f"{UID}-a", ENV)], ContainerEdits(mounts=(Mount("", "/c"),)), "mount"),
        (UID, [CdiDevice(f"{UID}-a", ENV)], ContainerEdits(additional_gids=(-1,)), "gid"),
    ],
)
def test_build_spec_rejects_what_cdi_would_reject(
    uid: str, devices: list[CdiDevice], common: ContainerEdits, message: str
) -> None:
    with pytest.raises(CdiSpecError, match=message):
        build_spec(uid, devices, common)


# ---- hooks and the less common fields ---------------------------------------------------------------

LDCACHE = Hook("createContainer", "/usr/bin/nvidia-cdi-hook", ("nvidia-cdi-hook", "update-ldcache"))


def test_hooks_mount_type_and_node_ownership_in_the_spec() -> None:
    hook = Hook("poststop", "/bin/cleanup", ("cleanup", "--all"), env=("X=1",), timeout=5)
    node = DeviceNode("/dev/nvidia-caps/nvidia-cap3", type="c", major=241, minor=3, file_mode=0o444,
                      uid=0, gid=0)
    edits = ContainerEdits(device_nodes=(node,), hooks=(LDCACHE, hook))
    spec = build_spec(UID, [CdiDevice(f"{UID}-mig", edits)], ContainerEdits())
    assert spec["cdiVersion"] == "0.3.0"  # hooks, fileMode, uid and gid are all baseline fields
    assert spec["devices"][0]["containerEdits"] == {
        "deviceNodes": [{"path": "/dev/nvidia-caps/nvidia-cap3", "type": "c", "major": 241, "minor": 3,
                         "fileMode": 0o444, "uid": 0, "gid": 0}],
        "hooks": [
            {"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
             "args": ["nvidia-cdi-hook", "update-ldcache"]},
            {"hookName": "poststop", "path": "/bin/cleanup", "args": ["cleanup", "--all"], "env": ["X=1"],
             "timeout": 5},
        ],
    }
    typed = ContainerEdits(mounts=(Mount("tmpfs", "/scratch", ("nosuid",), type="tmpfs"),))
    spec = build_spec(UID, [CdiDevice(f"{UID}-a", typed)], ContainerEdits())
    assert spec["devices"][0]["containerEdits"]["mounts"][0]["type"] == "tmpfs"
    assert spec["cdiVersion"] == "0.4.0"


def test_hooks_alone_are_edits_and_merge_in_order() -> None:
    other = Hook("createContainer", "/usr/bin/nvidia-cdi-hook", ("nvidia-cdi-hook", "create-symlinks"))
    only_hooks = ContainerEdits(hooks=(LDCACHE,))
    assert not only_hooks.is_empty()
    merged = only_hooks.merge(ContainerEdits(hooks=(other, LDCACHE)))
    assert merged.hooks == (LDCACHE, other)  # exact duplicates once, first position kept


@pytest.mark.parametrize(
    ("hook", "message"),
    [
        (Hook("preStart", "/bin/h"), "invalid hook name"),
        (Hook("prestart", "bin/h"), "not absolute"),
        (Hook("prestart", "/bin/h", env=("NOVALUE",)), "invalid environment"),
        (Hook("prestart", "/bin/h", timeout=0), "timeout"),
    ],
)
def test_invalid_hooks_are_refused(hook: Hook, message: str) -> None:
    with pytest.raises(CdiSpecError, match=message):
        build_spec(UID, [CdiDevice(f"{UID}-a", ContainerEdits(hooks=(hook,)))], ContainerEdits())


# ---- merge ------------------------------------------------------------------------------------------

_env = st.from_regex(r"[A-Z]{1,3}=[a-z0-9]{0,3}", fullmatch=True)
_edits = st.builds(
    ContainerEdits,
    env=st.lists(_env, max_size=3).map(lambda e: tuple({v.partition("=")[0]: v for v in e}.values())),
    device_nodes=st.lists(st.sampled_from(["/dev/a", "/dev/b", "/dev/c"]), unique=True, max_size=3).map(
        lambda ps: tuple(DeviceNode(p) for p in ps)),
    mounts=st.lists(st.sampled_from(["/m/a", "/m/b"]), unique=True, max_size=2).map(
        lambda ps: tuple(Mount("/host" + p, p, ("ro",)) for p in ps)),
    additional_gids=st.lists(st.integers(0, 5), unique=True, max_size=3).map(tuple),
)


@given(_edits)
def test_merge_identity_and_idempotence(e: ContainerEdits) -> None:
    assert e.merge(ContainerEdits()) == e
    assert ContainerEdits().merge(e) == e
    assert e.merge(e) == e


@given(_edits, _edits)
def test_merge_is_a_union_or_a_conflict(a: ContainerEdits, b: ContainerEdits) -> None:
    try:
        merged = a.merge(b)
    except CdiSpecError:
        keys_a = {v.partition("=")[0]: v for v in a.env}
        assert any(keys_a.get(v.partition("=")[0], v) != v for v in b.env)
        return
    assert set(merged.env) == set(a.env) | set(b.env)
    assert set(merged.device_nodes) == set(a.device_nodes) | set(b.device_nodes)
    assert set(merged.mounts) == set(a.mounts) | set(b.mounts)
    assert set(merged.additional_gids) == set(a.additional_gids) | set(b.additional_gids)
    assert len(merged.additional_gids) == len(set(merged.additional_gids))


def test_merge_keeps_order_and_reports_conflicts() -> None:
    a = ContainerEdits(env=("A=1", "B=2"), device_nodes=(DeviceNode("/dev/x"),), additional_gids=(5,))
    b = ContainerEdits(env=("B=2", "C=3"), device_nodes=(DeviceNode("/dev/y"), DeviceNode("/dev/x")),
                       additional_gids=(5, 6))
    assert a.merge(b) == ContainerEdits(
        env=("A=1", "B=2", "C=3"),
        device_nodes=(DeviceNode("/dev/x"), DeviceNode("/dev/y")),
        additional_gids=(5, 6),
    )
    with pytest.raises(CdiSpecError, match="environment"):
        a.merge(ContainerEdits(env=("A=2",)))
    with pytest.raises(CdiSpecError, match="device nodes"):
        a.merge(ContainerEdits(device_nodes=(DeviceNode("/dev/x", host_path="/elsewhere"),)))
    with pytest.raises(CdiSpecError, match="mounts"):
        ContainerEdits(mounts=(Mount("/a", "/c"),)).merge(ContainerEdits(mounts=(Mount("/b", "/c"),)))


# ---- files ------------------------------------------------------------------------------------------


def test_writer_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "run" / "cdi"  # created on demand
    writer = CdiWriter(root)
    spec = build_spec(DIGIT_UID, [CdiDevice(cdi_device_name(DIGIT_UID, "gpu-0"), ENV)],
                      ContainerEdits(additional_gids=(44,)))
    path = writer.write(DIGIT_UID, spec)
    assert path == writer.path_for(DIGIT_UID)
    loaded = yaml.safe_load(path.read_text())
    assert loaded == spec
    assert loaded["cdiVersion"] == "0.7.0"
    # JSON content (a YAML subset: the YAML parser above read it), version and kind first like CDI's own specs
    assert list(json.loads(path.read_text()))[:2] == ["cdiVersion", "kind"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    writer.write(DIGIT_UID, spec)  # rewriting is fine and leaves no temp file
    assert [p.name for p in root.iterdir()] == [path.name]


def test_claim_uids_on_disk_and_remove(tmp_path: Path) -> None:
    writer = CdiWriter(tmp_path)
    assert CdiWriter(tmp_path / "missing").claim_uids_on_disk() == set()
    for uid in (UID, DIGIT_UID):
        writer.write(uid, build_spec(uid, [CdiDevice(f"{uid}-d", ENV)], ContainerEdits()))
    (tmp_path / "nvidia.yaml").write_text("{}")  # somebody else's spec
    (tmp_path / f".k8s.gpudra.io-claim_{UID}.yaml.x1.tmp").write_text("")  # a crashed writer's temp file
    (tmp_path / "k8s.gpudra.io-claim_bad uid.yaml").write_text("")
    assert writer.claim_uids_on_disk() == {UID, DIGIT_UID}
    assert writer.remove(UID) is True
    assert writer.remove(UID) is False
    assert writer.claim_uids_on_disk() == {DIGIT_UID}


def test_writer_refuses_path_tricks(tmp_path: Path) -> None:
    writer = CdiWriter(tmp_path)
    for uid in ("../x", "a/b", ""):
        with pytest.raises(CdiSpecError):
            writer.path_for(uid)
