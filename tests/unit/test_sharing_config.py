"""The sharing config API ``gpudra.io/v1alpha1``: strict decoding, explicit defaults, precedence, MPS limits.

Configs go the way prepare reads them: a claim's JSON through :func:`gpudra.planning.claimjson.check_claim`
and :func:`gpudra.planning.config.resolve` with the registered kinds. The good and bad cases are shared with
the admission policy's test (tests/unit/sharing_cases.py), so the plugin and ``kubectl apply`` agree.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra.model import names
from gpudra.planning import claimjson, config, configfields, sharing_config
from gpudra.planning.configfields import ConfigFieldError
from gpudra.planning.sharing_config import (
    API_VERSION,
    GpuConfig,
    Interval,
    MigDeviceConfig,
    MpsConfig,
    Sharing,
    Strategy,
    TimeSlicingConfig,
)
from tests.unit.sharing_cases import BAD, GOOD, GPU_UUID, MIG_UUID, Case, gpu, mig, mps
from tests.unit.sharing_shapes import OBJECTS, PLACES, dotted, get, put

BASE = "status.allocation.devices.config[1].opaque.parameters"


def claim_with(*entries: dict[str, Any]) -> dict[str, Any]:
    other = {"source": "FromClass", "opaque": {"driver": "other.example.com", "parameters": {"kind": "X"}}}
    return {"status": {"allocation": {"devices": {"config": [other, *entries]}}}}


def ours(
    params: dict[str, Any], source: str = "FromClaim", requests: list[str] | None = None
) -> dict[str, Any]:
    entry: dict[str, Any] = {"source": source, "opaque": {"driver": names.DRIVER_NAME, "parameters": params}}
    if requests is not None:
        entry["requests"] = requests
    return entry


def resolve(*entries: dict[str, Any], requests: tuple[str, ...] = ("gpu",)) -> dict[str, tuple[object, ...]]:
    """What prepare decodes for each request, through the claim JSON check and the registered kinds."""
    return config.resolve(claimjson.check_claim(claim_with(*entries)).configs, requests)


def decode(params: dict[str, Any]) -> object:
    (value,) = resolve(ours(params))["gpu"]
    return value


def error_of(params: dict[str, Any]) -> str:
    with pytest.raises((claimjson.ClaimJsonError, config.ConfigError)) as err:
        resolve(ours(params))
    return str(err.value)


def matches(message: str, expected: str) -> bool:
    """The decoder says what the policy says, with at most a ``, got <JSON type>`` tail."""
    return message == expected or (message.startswith(expected + ", got ") and "\n" not in message)


# ---- the shared table -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", GOOD, ids=lambda c: c.id)
def test_good_configs_decode_with_explicit_defaults(case: Case) -> None:
    assert decode(case.params) == case.decoded


@pytest.mark.parametrize("case", BAD, ids=lambda c: c.id)
def test_bad_configs_name_the_field(case: Case) -> None:
    assert case.error is not None
    message = error_of(case.params)
    assert matches(message, BASE + case.error), message


def test_the_table_covers_both_kinds_every_strategy_and_interval() -> None:
    decoded = [c.decoded for c in GOOD]
    assert {type(d) for d in decoded} == {GpuConfig, MigDeviceConfig}
    strategies = {
        d.sharing.strategy for d in decoded if isinstance(d, GpuConfig | MigDeviceConfig) and d.sharing
    }
    assert strategies == set(Strategy)
    intervals = {
        d.sharing.time_slicing.interval
        for d in decoded
        if isinstance(d, GpuConfig) and d.sharing and d.sharing.time_slicing
    }
    assert intervals == set(Interval)


# ---- values -----------------------------------------------------------------------------------------------


def test_interval_levels_are_the_nvidia_smi_timeslice_values() -> None:
    assert [(i.value, i.level) for i in Interval] == [
        ("Default", 0),
        ("Short", 1),
        ("Medium", 2),
        ("Long", 3),
    ]


def test_quantities_become_exact_integers() -> None:
    value = decode(mps(defaultPinnedDeviceMemoryLimit="1.5Gi"))
    assert isinstance(value, GpuConfig)
    assert value.sharing is not None
    assert value.sharing.mps is not None
    limit = value.sharing.mps.default_pinned_device_memory_limit
    assert limit == 1610612736
    assert type(limit) is int
    with pytest.raises(config.ConfigError, match=r"\[0\]: \"3e9\" is not a multiple of 1Mi"):
        decode(mps(defaultPerDevicePinnedMemoryLimit={"0": "3e9"}))


def test_decoded_configs_are_frozen_and_hashable() -> None:
    value = decode(mps(defaultPerDevicePinnedMemoryLimit={"1": "1Gi", "0": "2Gi"}))
    assert hash(value) == hash(decode(mps(defaultPerDevicePinnedMemoryLimit={"0": "2Gi", "1": "1Gi"})))
    assert isinstance(value, GpuConfig)
    with pytest.raises(AttributeError):
        value.sharing = None  # type: ignore[misc]


def test_decoders_are_registered_for_the_api_version() -> None:
    assert set(config.KNOWN_KINDS) == {(API_VERSION, "GpuConfig"), (API_VERSION, "MigDeviceConfig")}
    assert config.ConfigError is configfields.ConfigError


# ---- precedence -------------------------------------------------------------------------------------------


def test_claim_config_overrides_class_config_of_the_same_kind() -> None:
    class_ts = ours(
        gpu(sharing={"strategy": "TimeSlicing", "timeSlicingConfig": {"interval": "Long"}}), "FromClass"
    )
    claim_mps = ours(mps(defaultActiveThreadPercentage=30), requests=["train"])
    out = resolve(claim_mps, class_ts, requests=("train", "infer"))
    long = GpuConfig(Sharing(Strategy.TIME_SLICING, time_slicing=TimeSlicingConfig(Interval.LONG)))
    assert out["infer"] == (long,)
    assert out["train"] == (
        GpuConfig(Sharing(Strategy.MPS, mps=MpsConfig(default_active_thread_percentage=30))),
    )


def test_gpu_and_mig_configs_both_apply() -> None:
    out = resolve(ours(gpu(sharing={"strategy": "MPS"})), ours(mig(sharing={"strategy": "TimeSlicing"})))
    assert out["gpu"] == (
        GpuConfig(Sharing(Strategy.MPS, mps=MpsConfig())),
        MigDeviceConfig(Sharing(Strategy.TIME_SLICING)),
    )


def test_a_bad_config_for_another_request_still_fails_the_claim() -> None:
    bad = ours(mps(defaultActiveThreadPercentage=0), requests=["other"])
    with pytest.raises(config.ConfigError, match=r"config\[2\]\.opaque\.parameters\.sharing\.mpsConfig"):
        resolve(ours(gpu()), bad)


# ---- MPS pinned memory limits per device ------------------------------------------------------------------


UUIDS = (GPU_UUID, "GPU-0b100000-0000-0000-0000-000000000002", "GPU-0b100000-0000-0000-0000-000000000003")


def test_pinned_limits_default_then_overrides_by_index_and_uuid() -> None:
    config_ = MpsConfig(
        default_pinned_device_memory_limit=8 << 30,
        default_per_device_pinned_memory_limit=(("1", 2 << 30), (UUIDS[2], 4 << 30)),
    )
    assert config_.pinned_memory_limits(UUIDS) == {UUIDS[0]: 8 << 30, UUIDS[1]: 2 << 30, UUIDS[2]: 4 << 30}


def test_pinned_limits_without_default_cover_only_the_named_devices() -> None:
    config_ = MpsConfig(default_per_device_pinned_memory_limit=(("0", 1 << 30),))
    assert config_.pinned_memory_limits(UUIDS) == {UUIDS[0]: 1 << 30}
    assert MpsConfig().pinned_memory_limits(UUIDS) == {}


@pytest.mark.parametrize(
    ("key", "problem"),
    [("3", "names none of the 3 device(s)"), (MIG_UUID, "names none of the 3 device(s)")],
)
def test_pinned_limit_for_a_device_the_config_does_not_serve(key: str, problem: str) -> None:
    config_ = MpsConfig(default_per_device_pinned_memory_limit=((key, 1 << 30),))
    with pytest.raises(ConfigFieldError) as err:
        config_.pinned_memory_limits(UUIDS)
    assert err.value.path == f"sharing.mpsConfig.defaultPerDevicePinnedMemoryLimit[{key}]"
    assert problem in err.value.problem


def test_two_pinned_limits_for_one_device_are_refused() -> None:
    config_ = MpsConfig(default_per_device_pinned_memory_limit=(("0", 1 << 30), (GPU_UUID, 2 << 30)))
    with pytest.raises(ConfigFieldError, match=r"\[GPU-0b1.*\]: names the same device as '0'"):
        config_.pinned_memory_limits(UUIDS)


# ---- wrong shapes anywhere --------------------------------------------------------------------------------

_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
)
JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
KNOWN_FIELDS = {
    *sharing_config.TOP_FIELDS,
    *sharing_config.SHARING_FIELDS,
    *sharing_config.TIME_SLICING_FIELDS,
    *sharing_config.MPS_FIELDS,
}


def outcome(params: dict[str, Any]) -> ConfigFieldError | None:
    """Decode with the registered decoder of the params' kind: the error, or None when they are good.

    Any exception but :class:`ConfigFieldError` propagates and fails the test.
    """
    try:
        config.KNOWN_KINDS[(API_VERSION, params["kind"])](params)
    except ConfigFieldError as err:
        return err
    return None


@settings(max_examples=300, deadline=None)
@given(place=st.sampled_from(PLACES), value=JSON)
def test_random_json_at_any_field_decodes_or_names_that_field(
    place: tuple[dict[str, Any], tuple[str, ...]], value: object
) -> None:
    params, path = place
    err = outcome(put(params, path, value))
    if err is not None:
        field = dotted(path)
        allowed: tuple[str, ...] = (field + ".", field + "[")
        if path == ("sharing", "strategy"):  # another strategy: a sub-config that does not go with it
            allowed += ("sharing.timeSlicingConfig", "sharing.mpsConfig")
        assert err.path == field or err.path.startswith(allowed), (err.path, field)


@settings(max_examples=200, deadline=None)
@given(place=st.sampled_from(OBJECTS), key=st.text(max_size=12), value=JSON)
def test_an_unknown_field_in_any_object_is_named(
    place: tuple[dict[str, Any], tuple[str, ...]], key: str, value: object
) -> None:
    params, path = place
    if key in get(params, path) or key in KNOWN_FIELDS:
        return
    err = outcome(put(params, (*path, key), value))
    assert err is not None
    assert err.path == dotted((*path, key))
    assert err.problem.startswith("unknown field (known fields: ")


@settings(max_examples=200, deadline=None)
@given(
    params=st.dictionaries(st.text(max_size=10), JSON, max_size=4),
    kind=st.sampled_from(["GpuConfig", "MigDeviceConfig"]),
)
def test_random_parameters_never_raise_anything_but_config_error(params: dict[str, Any], kind: str) -> None:
    err = outcome({**params, "apiVersion": API_VERSION, "kind": kind})
    if err is not None:
        assert str(err) == (f"{err.path}: {err.problem}" if err.path else err.problem)
        assert err.problem
