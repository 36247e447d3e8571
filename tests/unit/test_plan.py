"""Claim planning: validating a ResourceClaim against this node; may a held device be shared."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.model import names
from gpudra.model.inventory import Device, DeviceKind, Vendor
from gpudra.model.k8stypes import DeviceAllocationConfiguration, DeviceRequestAllocationResult, ResourceClaim
from gpudra.planning import config
from gpudra.planning.plan import (
    ClaimPlan,
    ClaimRef,
    DeviceToPrepare,
    DeviceUse,
    PlanError,
    find_conflict,
    plan_claim,
)

POOL = "node-a"
UID = "1111-aaaa"
SHARE = "5e0c1a9e-0000-4000-8000-000000000007"  # share IDs are UIDs in normalized form
REF = ClaimRef("team", "train", UID)
API = "gpudra.io/v1alpha1"


def gpu(n: int) -> Device:
    return Device(
        kind=DeviceKind.GPU, vendor=Vendor.NVIDIA, uuid=f"GPU-{n}", product_name="Test GPU", index=n
    )


DEVICES: Mapping[str, Device] = {f"gpu-{n}": gpu(n) for n in range(4)}


@dataclass(frozen=True, slots=True)
class Tagged:
    kind: str
    tag: str


def _tagged(kind: str) -> config.Decoder:
    return lambda params: Tagged(kind, str(params.get("tag", "")))


KINDS: Mapping[tuple[str, str], config.Decoder] = {
    (API, "Alpha"): _tagged("Alpha"),
    (API, "Beta"): _tagged("Beta"),
}


def result(
    device: str, request: str = "gpu", pool: str = POOL, driver: str = names.DRIVER_NAME, **extra: Any
) -> DeviceRequestAllocationResult:
    r: DeviceRequestAllocationResult = {"request": request, "driver": driver, "pool": pool, "device": device}
    r.update(cast(DeviceRequestAllocationResult, extra))
    return r


def cfg(kind: str, tag: str, requests: list[str], source: str = "FromClaim") -> DeviceAllocationConfiguration:
    params: dict[str, object] = {"apiVersion": API, "kind": kind, "tag": tag}
    return cast(
        DeviceAllocationConfiguration,
        {
            "source": source,
            "requests": requests,
            "opaque": {"driver": names.DRIVER_NAME, "parameters": params},
        },
    )


def claim(
    results: list[DeviceRequestAllocationResult],
    configs: list[DeviceAllocationConfiguration] | None = None,
    uid: str = UID,
) -> ResourceClaim:
    return {
        "metadata": {"namespace": "team", "name": "train", "uid": uid},
        "status": {"allocation": {"devices": {"results": results, "config": configs or []}}},
    }


def plan(c: ResourceClaim) -> ClaimPlan:
    return plan_claim(REF, c, DEVICES, POOL, KINDS)


# ---- why a claim cannot be planned -------------------------------------------------------------------


def test_uid_mismatch_names_both_uids_and_the_claim() -> None:
    with pytest.raises(PlanError) as err:
        plan(claim([result("gpu-0")], uid="2222-bbbb"))
    msg = str(err.value)
    assert "team/train" in msg
    assert "2222-bbbb" in msg
    assert UID in msg


def test_claim_without_uid_is_a_mismatch() -> None:
    c = claim([result("gpu-0")])
    del c["metadata"]["uid"]
    with pytest.raises(PlanError, match=f"kubelet asked for {UID}"):
        plan(c)


@pytest.mark.parametrize(
    "claim_json",
    [
        {"metadata": {"uid": UID}},
        {"metadata": {"uid": UID}, "status": {}},
        {"metadata": {"uid": UID}, "status": {"allocation": {}}},
        {"metadata": {"uid": UID}, "status": {"allocation": {"devices": {}}}},
        {"metadata": {"uid": UID}, "status": {"allocation": {"devices": {"results": []}}}},
    ],
    ids=["no-status", "empty-status", "empty-allocation", "no-device-results", "empty-results"],
)
def test_unallocated_claim(claim_json: dict[str, Any]) -> None:
    with pytest.raises(PlanError) as err:
        plan(cast(ResourceClaim, claim_json))
    assert str(err.value) == f"ResourceClaim {REF} is not allocated any device of driver gpudra.io"
    assert "team/train:1111-aaaa" in str(err.value)


def test_results_only_for_other_drivers() -> None:
    c = claim([result("gpu-0", driver="gpu.example.com"), result("nic-0", driver="net.example.com")])
    with pytest.raises(
        PlanError, match=r"team/train:1111-aaaa is not allocated any device of driver gpudra\.io"
    ):
        plan(c)


def test_wrong_pool_names_device_and_both_pools() -> None:
    with pytest.raises(PlanError) as err:
        plan(claim([result("gpu-0"), result("gpu-1", pool="node-b")]))
    msg = str(err.value)
    assert msg.startswith("status.allocation.devices.results[1].pool: ")
    assert "node-b/gpu-1" in msg
    assert "'node-b'" in msg
    assert f"publishes pool {POOL!r}" in msg


def test_unknown_device_names_it() -> None:
    with pytest.raises(PlanError, match=r"^status\.allocation\.devices\.results\[1\]\.device: device gpu-9 "):
        plan(claim([result("gpu-0"), result("gpu-9")]))


def test_bad_config_becomes_plan_error_with_its_message() -> None:
    with pytest.raises(PlanError, match=r"unknown opaque config gpudra\.io/v1alpha1 kind Gamma") as err:
        plan(claim([result("gpu-0")], [cfg("Gamma", "x", [])]))
    assert isinstance(err.value.__cause__, config.ConfigError)


def test_config_without_kind_is_malformed_and_names_the_field() -> None:
    bad = cast(
        DeviceAllocationConfiguration,
        {"source": "FromClaim", "opaque": {"driver": names.DRIVER_NAME, "parameters": {"apiVersion": API}}},
    )
    with pytest.raises(PlanError) as err:
        plan(claim([result("gpu-0")], [bad]))
    assert str(err.value) == (
        "ResourceClaim team/train is malformed: "
        "status.allocation.devices.config[0].opaque.parameters.kind: required value is missing"
    )
    assert err.value.kind == "invalid"


def test_default_registry_refuses_our_configs() -> None:
    with pytest.raises(PlanError, match="kind NoSuchKindEver"):
        plan_claim(REF, claim([result("gpu-0")], [cfg("NoSuchKindEver", "x", [])]), DEVICES, POOL)


# ---- what a valid claim becomes ----------------------------------------------------------------------


def test_multi_device_claim_with_configs_per_request() -> None:
    c = claim(
        [
            result("gpu-0", request="train"),
            result("nic-0", request="net", driver="net.example.com", pool="other"),
            result("gpu-2", request="train", shareID=SHARE),
            result("gpu-3", request="debug/any", adminAccess=True),
        ],
        [
            cfg("Alpha", "claim-train", ["train"]),
            cfg("Alpha", "class-all", [], source="FromClass"),
            cfg("Beta", "class-debug", ["debug"], source="FromClass"),
            cast(DeviceAllocationConfiguration, {"opaque": {"driver": "net.example.com", "parameters": []}}),
        ],
    )
    train = (Tagged("Alpha", "claim-train"),)
    debug = (Tagged("Alpha", "class-all"), Tagged("Beta", "class-debug"))
    assert plan(c) == ClaimPlan(
        REF,
        (
            DeviceToPrepare("train", POOL, "gpu-0", DEVICES["gpu-0"], configs=train),
            DeviceToPrepare("train", POOL, "gpu-2", DEVICES["gpu-2"], share_id=SHARE, configs=train),
            DeviceToPrepare("debug/any", POOL, "gpu-3", DEVICES["gpu-3"], admin_access=True, configs=debug),
        ),
    )


def test_no_share_id_and_false_admin_access_mean_exclusive() -> None:
    (d,) = plan(claim([result("gpu-1", adminAccess=False)])).devices
    assert d.share_id is None
    assert d.admin_access is False
    assert d.configs == ()


def test_an_empty_share_id_is_no_uid_and_refused() -> None:
    """The API refuses an empty shareID (it is not a UID); reading it as "no share ID" would guess."""
    with pytest.raises(PlanError, match=r"results\[0\]\.shareID: invalid value \"\": must be a UID"):
        plan(claim([result("gpu-1", shareID="")]))


def test_results_of_other_drivers_need_not_be_in_our_pool_or_inventory() -> None:
    c = claim([result("elsewhere", pool="other-pool", driver="gpu.example.com"), result("gpu-1")])
    assert [d.name for d in plan(c).devices] == ["gpu-1"]


def _ours(dev: str, req: str, admin: bool, share: str | None) -> DeviceRequestAllocationResult:
    return result(dev, request=req, adminAccess=admin, **({} if share is None else {"shareID": share}))


_OUR_RESULTS = st.lists(
    st.builds(
        _ours,
        st.sampled_from(sorted(DEVICES)),
        st.sampled_from(["a", "b", "a/x"]),
        st.booleans(),
        st.sampled_from([None, SHARE, SHARE.replace("7", "8")]),
    ),
    min_size=1,
    max_size=5,
)
_FOREIGN = result("x", driver="other.example.com", pool="p")


@given(_OUR_RESULTS, st.data())
def test_plan_keeps_our_results_in_order(
    ours: list[DeviceRequestAllocationResult], data: st.DataObject
) -> None:
    mixed: list[DeviceRequestAllocationResult] = []
    for r in ours:
        mixed.extend([_FOREIGN] * data.draw(st.integers(0, 2)))
        mixed.append(r)
    planned = plan(claim(mixed)).devices
    assert [(d.request, d.name, d.admin_access, d.share_id) for d in planned] == [
        (r["request"], r["device"], r["adminAccess"], r.get("shareID")) for r in ours
    ]
    assert all(d.device is DEVICES[d.name] and d.pool == POOL for d in planned)


# ---- find_conflict -----------------------------------------------------------------------------------


def prepared(*devs: tuple[str, bool, str | None], uid: str = UID) -> ClaimPlan:
    return ClaimPlan(
        ClaimRef("team", "train", uid),
        tuple(DeviceToPrepare("gpu", POOL, n, DEVICES[n], admin_access=a, share_id=s) for n, a, s in devs),
    )


def test_no_uses_no_conflict() -> None:
    assert find_conflict(prepared(("gpu-0", False, None)), []) is None


def test_same_claim_never_conflicts_with_itself() -> None:
    uses = [DeviceUse(UID, "gpu-0"), DeviceUse(UID, "gpu-1")]
    assert find_conflict(prepared(("gpu-0", False, None), ("gpu-1", False, None)), uses) is None


def test_other_devices_do_not_conflict() -> None:
    assert find_conflict(prepared(("gpu-0", False, None)), [DeviceUse("other", "gpu-1")]) is None


def test_exclusive_vs_exclusive_names_device_and_other_claim() -> None:
    msg = find_conflict(prepared(("gpu-1", False, None)), [DeviceUse("9999-zzzz", "gpu-1")])
    assert msg is not None
    assert "device gpu-1" in msg
    assert "claim 9999-zzzz" in msg
    assert "adminAccess" in msg


@pytest.mark.parametrize(("new_admin", "held_admin"), [(True, False), (False, True), (True, True)])
def test_admin_access_on_either_side_may_share(new_admin: bool, held_admin: bool) -> None:
    uses = [DeviceUse("other", "gpu-0", admin_access=held_admin)]
    assert find_conflict(prepared(("gpu-0", new_admin, None)), uses) is None


def test_share_id_on_both_sides_may_share() -> None:
    uses = [DeviceUse("other", "gpu-0", share_id="s-1")]
    assert find_conflict(prepared(("gpu-0", False, "s-2")), uses) is None


@pytest.mark.parametrize(
    ("new_share", "held_share"), [("s-1", None), (None, "s-1"), ("s-1", ""), ("", "s-1")]
)
def test_share_id_on_one_side_only_conflicts(new_share: str | None, held_share: str | None) -> None:
    uses = [DeviceUse("other", "gpu-0", share_id=held_share)]
    msg = find_conflict(prepared(("gpu-0", False, new_share)), uses)
    assert msg is not None
    assert "claim other" in msg


def test_one_exclusive_holder_among_sharers_conflicts() -> None:
    uses = [
        DeviceUse("a", "gpu-0", share_id="s"),
        DeviceUse("b", "gpu-0", admin_access=True),
        DeviceUse("c", "gpu-0"),
    ]
    msg = find_conflict(prepared(("gpu-0", False, "s2")), iter(uses))
    assert msg is not None
    assert "claim c" in msg


_CONFLICT = re.compile(r"^device (\S+) is already prepared for claim (\S+);")
_NAMES = st.sampled_from(["gpu-0", "gpu-1", "gpu-2"])
_SHARE = st.sampled_from([None, "", "s1", "s2"])
_UIDS = st.sampled_from([UID, "uid-b", "uid-c"])


def _oracle(p: ClaimPlan, uses: list[DeviceUse]) -> set[tuple[str, str]]:
    """Every (device, other claim) pair where the new allocation and the holder may not share."""
    bad = set()
    for d in p.devices:
        for u in uses:
            shared = d.admin_access or u.admin_access or (bool(d.share_id) and bool(u.share_id))
            if u.claim_uid != p.ref.uid and u.device == d.name and not shared:
                bad.add((d.name, u.claim_uid))
    return bad


@given(
    st.lists(st.tuples(_NAMES, st.booleans(), _SHARE), max_size=3, unique_by=lambda t: t[0]),
    st.lists(st.builds(DeviceUse, _UIDS, _NAMES, st.booleans(), _SHARE), max_size=6),
)
def test_find_conflict_matches_oracle(
    devs: list[tuple[str, bool, str | None]], uses: list[DeviceUse]
) -> None:
    p = prepared(*devs)
    expected = _oracle(p, uses)
    msg = find_conflict(p, uses)
    if not expected:
        assert msg is None
        return
    assert msg is not None
    m = _CONFLICT.match(msg)
    assert m is not None, msg
    assert (m.group(1), m.group(2)) in expected
