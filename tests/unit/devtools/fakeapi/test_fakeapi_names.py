"""Property tests of the name rules the stand-in applies to ResourceSlices (validation module, no HTTP)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gpudra.devtools.fakeapi.validation import validate_slice

LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
C_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,40}"


def slice_with(device: dict[str, object]) -> dict[str, object]:
    return {
        "metadata": {"name": "s"},
        "spec": {
            "driver": "gpudra.io",
            "nodeName": "node-1",
            "pool": {"name": "node-1", "generation": 0, "resourceSliceCount": 1},
            "devices": [device],
        },
    }


def messages(device: dict[str, object]) -> list[str]:
    return [str(error) for error in validate_slice(slice_with(device), None)]


@given(st.from_regex(LABEL, fullmatch=True))
def test_dns_labels_are_valid_device_names(name: str) -> None:
    assert messages({"name": name}) == []


@given(st.lists(st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True), min_size=2, max_size=4))
def test_dotted_names_must_not_contain_dots(parts: list[str]) -> None:
    name = ".".join(parts)
    assert messages({"name": name}) == [
        f'spec.devices[0].name: Invalid value: "{name}": must not contain dots'
    ]


@given(st.from_regex(C_IDENTIFIER, fullmatch=True))
def test_attribute_identifiers_up_to_32_bytes(ident: str) -> None:
    found = messages({"name": "gpu-0", "attributes": {ident: {"bool": True}}})
    if len(ident) <= 32:
        assert found == []
    else:
        assert found == ["spec.devices[0].attributes: Too long: may not be more than 32 bytes"]


@given(st.text(min_size=0, max_size=80))
def test_string_values_up_to_64_bytes(value: str) -> None:
    found = messages({"name": "gpu-0", "attributes": {"label": {"string": value}}})
    too_long = ["spec.devices[0].attributes[label].string: Too long: may not be more than 64 bytes"]
    assert found == (too_long if len(value.encode()) > 64 else [])


@given(st.integers(min_value=0, max_value=200), st.integers(min_value=0, max_value=200))
def test_semver_core_versions_are_valid(major: int, minor: int) -> None:
    assert messages({"name": "gpu-0", "attributes": {"v": {"version": f"{major}.{minor}.0"}}}) == []
    invalid = messages({"name": "gpu-0", "attributes": {"v": {"version": f"{major}.{minor}"}}})
    assert invalid == [
        f'spec.devices[0].attributes[v].version: Invalid value: "{major}.{minor}": '
        "must be a string compatible with semver.org spec 2.0.0"
    ]
