"""Opaque config: known kinds, decoding, precedence, request matching.

The configs come from a claim's JSON through :func:`gpudra.planning.claimjson.check_claim`, which keeps ours
and checks their shape (tests/unit/test_claim_json.py has the shape checks)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.model import names
from gpudra.model.k8stypes import DeviceAllocationConfiguration
from gpudra.planning import claimjson, config

API = "gpudra.io/v1alpha1"
Source = Literal["FromClass", "FromClaim"]


@dataclass(frozen=True, slots=True)
class Decoded:
    """What the test decoders return: the kind and the ``tag`` parameter, so a result names its config."""

    kind: str
    tag: str


def _decoder(kind: str) -> config.Decoder:
    def decode(params: Mapping[str, Any]) -> object:
        tag = params.get("tag", "")
        if not isinstance(tag, str):
            raise config.ConfigError(f"{kind}: tag must be a string")
        return Decoded(kind, tag)

    return decode


KINDS: Mapping[tuple[str, str], config.Decoder] = {
    (API, "Alpha"): _decoder("Alpha"),
    (API, "Beta"): _decoder("Beta"),
}


def entry(
    kind: str = "Alpha",
    tag: str = "",
    requests: list[str] | None = None,
    source: Source = "FromClaim",
    driver: str = names.DRIVER_NAME,
) -> DeviceAllocationConfiguration:
    e: DeviceAllocationConfiguration = {
        "source": source,
        "opaque": {"driver": driver, "parameters": {"apiVersion": API, "kind": kind, "tag": tag}},
    }
    if requests is not None:
        e["requests"] = requests
    return e


def raw_entry(opaque: dict[str, object], source: Source = "FromClaim") -> DeviceAllocationConfiguration:
    """An entry whose opaque part is deliberately malformed (what the TypedDict would not allow)."""
    return cast(DeviceAllocationConfiguration, {"source": source, "opaque": opaque})


def ours(entries: list[DeviceAllocationConfiguration]) -> tuple[config.OpaqueConfig, ...]:
    """Our configs among ``entries``, as the claim's JSON check hands them on."""
    claim = {"status": {"allocation": {"devices": {"config": entries}}}}
    return claimjson.check_claim(claim).configs


def resolve(
    entries: list[DeviceAllocationConfiguration],
    requests: list[str],
    kinds: Mapping[tuple[str, str], config.Decoder] = config.KNOWN_KINDS,
) -> dict[str, tuple[object, ...]]:
    return config.resolve(ours(entries), requests, kinds)


def tags(resolved: dict[str, tuple[object, ...]], request: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in resolved[request]:
        assert isinstance(value, Decoded)
        out[value.kind] = value.tag
    return out


# ---- which configs are ours --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "opaque",
    [
        {"driver": "other.example.com"},
        {"driver": "other.example.com", "parameters": [1, 2]},
        {"driver": "other.example.com", "parameters": {"kind": "X"}},
        {"driver": "other.example.com", "parameters": {"apiVersion": "v1", "kind": "NoSuchKind"}},
        {"driver": "GPUDRA.IO", "parameters": "junk"},
    ],
)
def test_other_drivers_configs_are_ignored_even_if_malformed(opaque: dict[str, object]) -> None:
    assert ours([raw_entry(opaque)]) == ()
    assert resolve([raw_entry(opaque), entry(tag="ours")], ["r"], KINDS) == {"r": (Decoded("Alpha", "ours"),)}


def test_entry_without_opaque_is_ignored() -> None:
    no_opaque: DeviceAllocationConfiguration = {"source": "FromClass", "requests": ["r"]}
    assert ours([no_opaque]) == ()
    assert resolve([no_opaque], ["r"], KINDS) == {"r": ()}


# ---- known kinds and decoding ------------------------------------------------------------------------


def test_unknown_kind_names_it_and_lists_known_kinds() -> None:
    with pytest.raises(config.ConfigError) as err:
        resolve([entry(kind="Gamma")], ["r"], KINDS)
    msg = str(err.value)
    assert "kind Gamma" in msg
    assert API in msg
    assert f"{API}/Alpha" in msg
    assert f"{API}/Beta" in msg


def test_known_kind_under_another_api_version_is_unknown() -> None:
    e = raw_entry(
        {"driver": names.DRIVER_NAME, "parameters": {"apiVersion": "gpudra.io/v9", "kind": "Alpha"}}
    )
    with pytest.raises(config.ConfigError, match=r"unknown opaque config gpudra\.io/v9 kind Alpha"):
        resolve([e], ["r"], KINDS)


def test_without_registered_kinds_every_config_of_ours_is_refused() -> None:
    with pytest.raises(config.ConfigError, match="none are defined yet") as err:
        resolve([entry(kind="Alpha")], ["r"], {})
    assert "kind Alpha" in str(err.value)


def test_default_registry_refuses_an_undefined_kind() -> None:
    with pytest.raises(config.ConfigError, match="kind NoSuchKindEver"):
        resolve([entry(kind="NoSuchKindEver")], ["r"])


def test_unknown_kind_is_refused_even_when_it_applies_to_no_request() -> None:
    with pytest.raises(config.ConfigError, match="kind Gamma"):
        resolve([entry(kind="Gamma", requests=["elsewhere"])], ["r"], KINDS)


def test_decoder_error_propagates_as_config_error() -> None:
    bad = raw_entry(
        {"driver": names.DRIVER_NAME, "parameters": {"apiVersion": API, "kind": "Beta", "tag": 7}}
    )
    with pytest.raises(config.ConfigError, match="Beta: tag must be a string"):
        resolve([bad], ["r"], KINDS)


def test_decoder_gets_the_whole_parameters_object_once_per_config() -> None:
    seen: list[dict[str, Any]] = []

    def record(params: Mapping[str, Any]) -> object:
        seen.append(dict(params))
        return "decoded"

    e = raw_entry(
        {"driver": names.DRIVER_NAME, "parameters": {"apiVersion": API, "kind": "Rec", "x": {"y": 1}}}
    )
    out = resolve([e], ["a", "b", "c"], {(API, "Rec"): record})
    assert seen == [{"apiVersion": API, "kind": "Rec", "x": {"y": 1}}]
    assert out == {"a": ("decoded",), "b": ("decoded",), "c": ("decoded",)}


# ---- what is handed on -------------------------------------------------------------------------------


def test_check_keeps_fields_and_where_the_parameters_are() -> None:
    e = entry(kind="Beta", tag="t", requests=["a", "b/x"])
    (checked,) = ours([entry(driver="other.example.com"), e])
    assert checked == config.OpaqueConfig(
        source="FromClaim",
        requests=("a", "b/x"),
        api_version=API,
        kind="Beta",
        parameters={"apiVersion": API, "kind": "Beta", "tag": "t"},
        path="status.allocation.devices.config[1].opaque.parameters",
    )


def test_precedence_orders_class_before_claim_stably() -> None:
    entries = [
        entry(tag="claim-1"),
        entry(tag="class-1", source="FromClass"),
        entry(tag="claim-2"),
        entry(tag="class-2", source="FromClass"),
    ]
    ordered = config.by_precedence(ours(entries))
    assert [c.parameters["tag"] for c in ordered] == ["class-1", "class-2", "claim-1", "claim-2"]
    assert [c.source for c in ordered] == ["FromClass", "FromClass", "FromClaim", "FromClaim"]


def test_errors_name_the_config_they_come_from() -> None:
    where = r"^status\.allocation\.devices\.config\[{}\]\.opaque\.parameters: "
    with pytest.raises(config.ConfigError, match=where.format(1) + "unknown opaque config"):
        resolve([entry(tag="fine"), entry(kind="Gamma")], ["r"], KINDS)
    bad = raw_entry(
        {"driver": names.DRIVER_NAME, "parameters": {"apiVersion": API, "kind": "Beta", "tag": 7}}
    )
    with pytest.raises(config.ConfigError, match=where.format(0) + "Beta: tag must be a string"):
        resolve([bad], ["r"], KINDS)


# ---- request matching --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requests", "request_name", "applies"),
    [
        ((), "anything", True),
        ((), "r/sub", True),
        (("r",), "r", True),
        (("r",), "r/x", True),
        (("r",), "r/y", True),
        (("r/x",), "r/x", True),
        (("r/x",), "r/y", False),
        (("r/x",), "r", False),
        (("r",), "rr", False),
        (("r",), "rr/x", False),
        (("rr",), "r", False),
        (("a", "b"), "b/z", True),
        (("a", "b"), "c", False),
    ],
)
def test_applies_to(requests: tuple[str, ...], request_name: str, applies: bool) -> None:
    cfg = config.OpaqueConfig("FromClaim", requests, API, "Alpha", {})
    assert cfg.applies_to(request_name) is applies


def test_resolve_matches_subrequests_and_leaves_others_empty() -> None:
    entries = [entry(tag="main", requests=["gpu"]), entry(kind="Beta", tag="small", requests=["gpu/small"])]
    out = resolve(entries, ["gpu/big", "gpu/small", "other"], KINDS)
    assert tags(out, "gpu/big") == {"Alpha": "main"}
    assert tags(out, "gpu/small") == {"Alpha": "main", "Beta": "small"}
    assert out["other"] == ()


def test_empty_requests_applies_to_all() -> None:
    out = resolve([entry(tag="all", requests=[])], ["a", "b/c"], KINDS)
    assert tags(out, "a") == tags(out, "b/c") == {"Alpha": "all"}


def test_resolve_without_configs_maps_every_request_to_nothing() -> None:
    assert resolve([], ["a", "b"], KINDS) == {"a": (), "b": ()}


# ---- precedence --------------------------------------------------------------------------------------


def test_claim_config_overrides_class_config_listed_after_it() -> None:
    entries = [entry(tag="claim"), entry(tag="class", source="FromClass")]
    assert tags(resolve(entries, ["r"], KINDS), "r") == {"Alpha": "claim"}


def test_later_config_of_same_source_and_kind_wins() -> None:
    entries = [entry(tag="first", source="FromClass"), entry(tag="second", source="FromClass")]
    assert tags(resolve(entries, ["r"], KINDS), "r") == {"Alpha": "second"}


def test_precedence_is_per_kind_and_per_request() -> None:
    entries = [
        entry(kind="Alpha", tag="class-alpha", source="FromClass"),
        entry(kind="Beta", tag="class-beta", source="FromClass"),
        entry(kind="Alpha", tag="claim-alpha-a", requests=["a"]),
    ]
    out = resolve(entries, ["a", "b"], KINDS)
    assert tags(out, "a") == {"Alpha": "claim-alpha-a", "Beta": "class-beta"}
    assert tags(out, "b") == {"Alpha": "class-alpha", "Beta": "class-beta"}
    assert len(out["a"]) == len(out["b"]) == 2


REQUESTS = ["a", "b", "a/x", "a/y", "b/x"]
_NAMED = st.sampled_from(["a", "b", "a/x", "b/y", "c"])
Ours = tuple[Source, tuple[str, ...], str, str]  # (source, requests, kind, tag) of one of our configs


@st.composite
def config_entries(draw: st.DrawFn) -> tuple[list[DeviceAllocationConfiguration], list[Ours]]:
    """Random configs, ours and other drivers'; also returns ours in list order."""
    entries: list[DeviceAllocationConfiguration] = []
    ours: list[Ours] = []
    for i in range(draw(st.integers(0, 8))):
        source: Source = draw(st.sampled_from(["FromClass", "FromClaim"]))
        reqs = draw(st.lists(_NAMED, max_size=3))
        if draw(st.booleans()):
            kind = draw(st.sampled_from(["Alpha", "Beta"]))
            entries.append(entry(kind=kind, tag=f"t{i}", requests=reqs, source=source))
            ours.append((source, tuple(reqs), kind, f"t{i}"))
        else:
            entries.append(
                entry(kind="Junk", tag=f"t{i}", requests=reqs, source=source, driver="else.example.com")
            )
    return entries, ours


def _oracle(ours: list[Ours], request: str) -> dict[str, str]:
    """Winning tag per kind: walk class configs, then claim configs, each in order; the last match wins."""
    ordered = [c for c in ours if c[0] == "FromClass"] + [c for c in ours if c[0] == "FromClaim"]
    main = request.split("/", maxsplit=1)[0]
    winner: dict[str, str] = {}
    for _, reqs, kind, tag in ordered:
        if not reqs or request in reqs or main in reqs:
            winner[kind] = tag
    return winner


@given(config_entries())
def test_precedence_matches_oracle(generated: tuple[list[DeviceAllocationConfiguration], list[Ours]]) -> None:
    entries, ours = generated
    out = resolve(entries, REQUESTS, KINDS)
    assert set(out) == set(REQUESTS)
    for request in REQUESTS:
        expected = _oracle(ours, request)
        assert tags(out, request) == expected
        assert len(out[request]) == len(expected)
