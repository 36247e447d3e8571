"""``consumedCapacity`` of an allocation result (KEP-5075), checked at the edge: capacity names to exact,
non-negative quantities, every problem a PlanError naming the field as the apiserver does; the plan's device
carries what was consumed."""

from __future__ import annotations

from fractions import Fraction
from typing import Any, Final, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.model import names
from gpudra.model.inventory import Device, DeviceKind, Vendor
from gpudra.model.k8stypes import ResourceClaim
from gpudra.planning import claimjson
from gpudra.planning.plan import ClaimRef, DeviceToPrepare, PlanError, plan_claim

UID: Final = "0f1e2d3c-0000-4000-8000-000000000001"
SHARE: Final = "5e0c1a9e-0000-4000-8000-000000000007"
POOL: Final = "node-a"
DEVICES: Final = {"gpu-0": Device(DeviceKind.GPU, Vendor.NVIDIA, "GPU-0", "H100", 0)}
FIELD: Final = "status.allocation.devices.results[1].consumedCapacity"


def claim(consumed: object) -> dict[str, Any]:
    other = {"request": "nic", "driver": "net.example.com", "pool": "p", "device": "nic-0"}
    ours = {"request": "gpu", "driver": names.DRIVER_NAME, "pool": POOL, "device": "gpu-0", "shareID": SHARE,
            "consumedCapacity": consumed}  # fmt: skip
    return {
        "metadata": {"name": "c", "namespace": "team", "uid": UID},
        "status": {"allocation": {"devices": {"results": [other, ours]}}},
    }


def planned(consumed: object) -> DeviceToPrepare:
    data = cast(ResourceClaim, claim(consumed))
    (device,) = plan_claim(ClaimRef("team", "c", UID), data, DEVICES, POOL).devices
    return device


def test_quantities_are_exact_and_sorted_by_name() -> None:
    device = planned({"multiprocessors": "0", "memory": "20Gi", "example.com/slices": "1.5"})
    assert device.consumed_capacity == (
        ("example.com/slices", Fraction(3, 2)),
        ("memory", Fraction(20 * 2**30)),
        ("multiprocessors", Fraction(0)),
    )
    assert device.consumed("memory") == 20 * 2**30
    assert device.consumed("copyEngines") is None
    assert device.path == "status.allocation.devices.results[1]"


def test_absent_is_nothing_consumed() -> None:
    data = claim({})
    del data["status"]["allocation"]["devices"]["results"][1]["consumedCapacity"]
    (device,) = claimjson.check_claim(data).devices
    assert device.consumed_capacity == ()


@pytest.mark.parametrize(
    ("consumed", "problem"),
    [
        (["memory"], f"{FIELD}: expected an object, got list"),
        (None, f"{FIELD}: expected an object, got null"),
        ({"memory": 20}, f"{FIELD}[memory]: expected a string, got number"),
        ({"memory": None}, f"{FIELD}[memory]: expected a string, got null"),
        ({"memory": "20GB"}, f"{FIELD}[memory]: invalid quantity '20GB': unknown suffix 'GB'"),
        ({"memory": "-1Gi"}, f'{FIELD}[memory]: "-1Gi" is negative'),
        ({"1memory": "1"}, f"{FIELD}[1memory]: invalid capacity name"),
        ({"Bad_Domain/x": "1"}, f"{FIELD}[Bad_Domain/x]: invalid capacity name"),
        ({f"c{i}": "1" for i in range(33)}, f"{FIELD}: must have at most 32 entries"),
    ],
)
def test_a_bad_consumed_capacity_names_the_field(consumed: object, problem: str) -> None:
    with pytest.raises(PlanError) as err:
        planned(consumed)
    assert problem in str(err.value)
    assert err.value.kind == "invalid"


@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.lists(st.text(max_size=3)),
                 st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))  # fmt: skip
def test_wrong_shapes_of_a_quantity_are_plan_errors(value: object) -> None:
    with pytest.raises(PlanError, match=r"consumedCapacity\[memory\]: expected a string"):
        planned({"memory": value})
