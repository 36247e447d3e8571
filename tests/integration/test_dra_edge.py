"""What the DRA service does with requests no kubelet should send: the real plugin over its real socket."""

from __future__ import annotations

import grpc
import pytest

from gpudra.devtools import kubeletsim
from gpudra.devtools.fakeapi import FakeApiServer
from tests.integration.conftest import PluginProcess, device_names, make_claim

pytestmark = pytest.mark.integration

METHODS = ("NodePrepareResources", "NodeUnprepareResources")


@pytest.mark.parametrize("version", ["v1", "v1beta1"])
def test_a_body_that_is_not_a_request_is_refused_in_one_line(plugin: PluginProcess, version: str) -> None:
    before = plugin.log()
    with grpc.insecure_channel(f"unix://{plugin.dra_socket}") as channel:
        for method in METHODS:
            path = f"/k8s.io.kubelet.pkg.apis.dra.{version}.DRAPlugin/{method}"
            call = channel.unary_unary(path, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as err:
                call(b"\xff\xfe\x01 not protobuf", timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    added = plugin.log()[len(before) :]
    assert added.count("refused a body that is not a request") == 2
    assert "Traceback" not in added
    plugin.assert_alive()


def test_one_uid_named_twice_differently_is_refused_and_its_neighbour_served(
    api: FakeApiServer, plugin: PluginProcess
) -> None:
    a, b = (make_claim(api, n, [d]) for n, d in zip(("a", "b"), device_names(api)[:2], strict=True))
    impostor = kubeletsim.Claim(a.namespace, "someone-else", a.uid)
    bad_uid = kubeletsim.Claim("default", "c", "../../etc")
    with plugin.client() as client:
        answer = client.prepare([a, b, impostor, bad_uid]).claims
    assert "named twice in one call" in answer[a.uid].error
    assert answer[b.uid].error == ""
    assert "is not a Kubernetes UID" in answer["../../etc"].error
    with plugin.client() as client:
        twice = client.prepare([a, a]).claims  # the same claim twice is one claim
        assert list(twice) == [a.uid]
        assert twice[a.uid].error == ""
    plugin.assert_alive()
