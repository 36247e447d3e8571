"""The kubelet's exact method paths and bytes, without our generated stubs in the request path."""

from __future__ import annotations

import grpc
import pytest

from gpudra._proto import dra_v1_pb2, registration_v1_pb2
from gpudra.devtools import kubeletsim
from gpudra.devtools.fakeapi import FakeApiServer
from tests.integration.conftest import PluginProcess, device_names, make_claim

pytestmark = pytest.mark.integration


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (wire type 2); payloads here are < 128 bytes."""
    assert len(payload) < 128
    return bytes([number << 3 | 2, len(payload)]) + payload


def _claims_request(namespace: str, uid: str, name: str) -> bytes:
    claim = _field(1, namespace.encode()) + _field(2, uid.encode()) + _field(3, name.encode())
    return _field(1, claim)  # NodePrepareResourcesRequest.claims / NodeUnprepareResourcesRequest.claims


def _call(socket: str, path: str, body: bytes) -> bytes:
    with grpc.insecure_channel(f"unix://{socket}") as channel:
        method = channel.unary_unary(path, None, None)
        response: bytes = method(body, timeout=10)
        return response


@pytest.mark.parametrize("package", ["k8s.io.kubelet.pkg.apis.dra.v1", "k8s.io.kubelet.pkg.apis.dra.v1beta1"])
def test_dra_method_paths(api: FakeApiServer, plugin: PluginProcess, package: str) -> None:
    dev = device_names(api)[0]
    claim = make_claim(api, "wire", [dev])
    sock = str(plugin.dra_socket)
    raw = _call(
        sock, f"/{package}.DRAPlugin/NodePrepareResources", _claims_request("default", claim.uid, "wire")
    )
    prepared = dra_v1_pb2.NodePrepareResourcesResponse.FromString(raw)
    assert prepared.claims[claim.uid].error == ""
    assert [d.device_name for d in prepared.claims[claim.uid].devices] == [dev]
    raw = _call(
        sock, f"/{package}.DRAPlugin/NodeUnprepareResources", _claims_request("default", claim.uid, "wire")
    )
    unprepared = dra_v1_pb2.NodeUnprepareResourcesResponse.FromString(raw)
    assert list(unprepared.claims) == [claim.uid]
    assert unprepared.claims[claim.uid].error == ""


def test_registration_method_paths(plugin: PluginProcess) -> None:
    sock = str(plugin.registration_socket)
    info = registration_v1_pb2.PluginInfo.FromString(
        _call(sock, "/pluginregistration.Registration/GetInfo", b"")
    )
    assert (info.type, info.name, info.endpoint) == ("DRAPlugin", "gpudra.io", str(plugin.dra_socket))
    status = bytes([1 << 3 | 0, 1])  # RegistrationStatus.plugin_registered = true (varint field 1)
    assert _call(sock, "/pluginregistration.Registration/NotifyRegistrationStatus", status) == b""


def test_the_health_services_are_served_and_advertised(plugin: PluginProcess) -> None:
    advertised = plugin.register().supported_versions
    assert {"v1.DRAResourceHealth", "v1alpha1.DRAResourceHealth"} <= set(advertised)
    for service in ("v1", "v1alpha1"):  # a streaming method: the first message arrives, then we cancel
        with kubeletsim.HealthStream(plugin.dra_socket, service) as stream:
            assert len(stream.next(timeout_s=10)) == 8
