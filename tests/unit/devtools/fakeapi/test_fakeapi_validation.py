"""ResourceSlice validation answers: HTTP 422 with the apiserver's messages (DRA-FACTS.md), over real HTTP."""

from __future__ import annotations

from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from tests.unit.devtools.fakeapi.fakeapi_helpers import SLICES, Api, device, resource_slice

NAME = "node-1-gpudra.io-abcde"
PREFIX = f'ResourceSlice.resource.k8s.io "{NAME}" is invalid: '
SUBDOMAIN = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


def rejected(api: Api, body: dict[str, Any]) -> str:
    reply = api.post(SLICES, body)
    assert reply.status == 422, reply.body
    assert reply.body["kind"] == "Status"
    assert reply.body["reason"] == "Invalid"
    message: str = reply.body["message"]
    assert message.startswith(PREFIX)
    return message.removeprefix(PREFIX)


def with_attributes(**attributes: dict[str, Any]) -> dict[str, Any]:
    return resource_slice(devices=[device(attributes=attributes)])


def test_too_many_devices(api: Api) -> None:
    body = resource_slice(devices=[device(f"gpu-{i}") for i in range(129)])
    assert rejected(api, body) == "spec.devices: Too many: 129: must have at most 128 items"


def test_128_devices_are_accepted(api: Api) -> None:
    body = resource_slice(devices=[device(f"gpu-{i}") for i in range(128)])
    assert api.post(SLICES, body).status == 201


def test_too_many_attributes_and_capacities(api: Api) -> None:
    attributes = {f"a{i}": {"int": i} for i in range(32)}
    body = resource_slice(devices=[device(attributes=attributes)])  # + 1 capacity = 33
    expected = (
        "spec.devices[0]: Invalid value: 33: the total number of attributes and capacities must not exceed 32"
    )
    assert rejected(api, body) == expected


def test_attribute_name_too_long_names_the_map_not_the_key(api: Api) -> None:
    body = with_attributes(**{"a" * 33: {"int": 1}})
    assert rejected(api, body) == "spec.devices[0].attributes: Too long: may not be more than 32 bytes"


def test_string_value_too_long(api: Api) -> None:
    body = with_attributes(productName={"string": "x" * 65})
    expected = "spec.devices[0].attributes[productName].string: Too long: may not be more than 64 bytes"
    assert rejected(api, body) == expected


@pytest.mark.parametrize("version", ["580.159.04", "9.0", "v1.2.3", "1.2.3-01"])
def test_version_must_be_strict_semver(api: Api, version: str) -> None:
    body = with_attributes(driverVersion={"version": version})
    expected = (
        f'spec.devices[0].attributes[driverVersion].version: Invalid value: "{version}": '
        "must be a string compatible with semver.org spec 2.0.0"
    )
    assert rejected(api, body) == expected


@pytest.mark.parametrize("version", ["580.159.4", "9.0.0", "1.2.3-rc.1+build.5", "13.0.0"])
def test_semver_versions_are_accepted(api: Api, version: str) -> None:
    assert api.post(SLICES, with_attributes(driverVersion={"version": version})).status == 201


def test_device_name_with_dots(api: Api) -> None:
    body = resource_slice(devices=[device("gpu.0")])
    assert rejected(api, body) == 'spec.devices[0].name: Invalid value: "gpu.0": must not contain dots'


def test_device_name_not_a_dns_label(api: Api) -> None:
    body = resource_slice(devices=[device("GPU_0")])
    assert rejected(api, body) == f'spec.devices[0].name: Invalid value: "GPU_0": {LABEL}'


def test_driver_name_not_a_subdomain(api: Api) -> None:
    body = resource_slice(driver="gpu.test.io/v1")
    assert rejected(api, body) == f'spec.driver: Invalid value: "gpu.test.io/v1": {SUBDOMAIN}'


def test_attribute_needs_exactly_one_value(api: Api) -> None:
    assert rejected(api, with_attributes(x={})) == (
        'spec.devices[0].attributes[x]: Invalid value: "": exactly one value must be specified'
    )
    message = rejected(api, with_attributes(x={"int": 1, "bool": True}))
    assert message.startswith("spec.devices[0].attributes[x]: Invalid value: {")
    assert message.endswith("}: exactly one value must be specified")


def test_attribute_domain_is_a_subdomain(api: Api) -> None:
    body = with_attributes(**{"Bad_Domain/x": {"int": 1}, "/y": {"int": 2}})
    assert rejected(api, body) == (
        f'[spec.devices[0].attributes: Invalid value: "Bad_Domain": {SUBDOMAIN}, '
        'spec.devices[0].attributes: Invalid value: "": the domain must not be empty]'
    )


def test_node_selection_exactly_one(api: Api) -> None:
    body = resource_slice()
    del body["spec"]["nodeName"]
    one_of = "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required"
    assert rejected(api, body) == f"spec: Required value: {one_of}"
    both = resource_slice(allNodes=True)
    assert rejected(api, both) == (
        f'spec: Invalid value: "{{`nodeName`, `allNodes`}}": {one_of}, but multiple fields are set'
    )


def test_pool_fields(api: Api) -> None:
    body = resource_slice(pool={"name": "", "generation": -1, "resourceSliceCount": 0})
    assert rejected(api, body) == (
        "[spec.pool.name: Required value, "
        "spec.pool.resourceSliceCount: Invalid value: 0: must be greater than zero, "
        "spec.pool.generation: Invalid value: -1: must be greater than or equal to zero]"
    )


def test_duplicate_device_names(api: Api) -> None:
    body = resource_slice(devices=[device("gpu-0"), device("gpu-0")])
    assert rejected(api, body) == 'spec.devices[1]: Duplicate value: "gpu-0"'


def test_all_errors_are_reported_with_causes(api: Api) -> None:
    body = resource_slice(driver="Bad Driver", devices=[device("gpu.0")])
    reply = api.post(SLICES, body)
    causes = reply.body["details"]["causes"]
    assert [c["field"] for c in causes] == ["spec.driver", "spec.devices[0].name"]
    assert {c["reason"] for c in causes} == {"FieldValueInvalid"}
    assert causes[1]["message"] == 'Invalid value: "gpu.0": must not contain dots'
    assert reply.body["details"]["group"] == "resource.k8s.io"
    assert reply.body["details"]["kind"] == "ResourceSlice"
    assert reply.body["message"].startswith(PREFIX + "[spec.driver: Invalid value:")


def test_missing_name(api: Api) -> None:
    body = resource_slice()
    del body["metadata"]["name"]
    reply = api.post(SLICES, body)
    assert reply.status == 422
    assert reply.body["message"] == (
        'ResourceSlice.resource.k8s.io "" is invalid: '
        "metadata.name: Required value: name or generateName is required"
    )


def test_bad_quantity_is_a_bad_request(api: Api) -> None:
    body = resource_slice(devices=[device(capacity={"memory": {"value": "80 GB"}})])
    reply = api.post(SLICES, body)
    assert reply.status == 400
    assert reply.body["reason"] == "BadRequest"
    assert reply.body["message"] == (
        'ResourceSlice in version "v1" cannot be handled as a ResourceSlice: '
        "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
    )


def test_wrong_json_type_is_a_bad_request(api: Api) -> None:
    reply = api.post(SLICES, with_attributes(index={"int": "zero"}))
    assert reply.status == 400
    assert "cannot unmarshal string into Go struct field" in reply.body["message"]


def test_update_keeps_driver_and_pool_immutable(api: Api) -> None:
    created = api.post(SLICES, resource_slice()).body
    created["spec"]["driver"] = "other.example.com"
    reply = api.put(f"{SLICES}/{NAME}", created)
    assert reply.status == 422
    assert (
        reply.body["message"]
        == PREFIX + 'spec.driver: Invalid value: "other.example.com": field is immutable'
    )


def test_taints_lower_the_device_limit_to_64() -> None:
    taint = {"key": "gpudra.io/unhealthy", "effect": "NoSchedule"}
    with FakeApiServer(feature_gates={"DRADeviceTaints": True}) as server:
        api = Api(server.url)
        body = resource_slice(devices=[device(f"gpu-{i}", taints=[taint]) for i in range(65)])
        assert rejected(api, body) == "spec.devices: Too many: 65: must have at most 64 items"
        body["spec"]["devices"].pop()
        assert api.post(SLICES, body).status == 201


def test_taint_effect_must_be_supported() -> None:
    with FakeApiServer(feature_gates={"DRADeviceTaints": True}) as server:
        body = resource_slice(devices=[device(taints=[{"key": "k", "effect": "Sometimes"}])])
        assert rejected(Api(server.url), body) == (
            'spec.devices[0].taints[0].effect: Unsupported value: "Sometimes": '
            'supported values: "NoExecute", "NoSchedule", "None"'
        )
