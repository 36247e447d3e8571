"""The kubelet-facing gRPC contract: generated bindings are fresh, match upstream on the wire, and work.

The expected tables below were checked field by field against the upstream .proto files in the
kubernetes/kubelet staging mirror (same files as kubernetes/kubernetes
staging/src/k8s.io/kubelet/pkg/apis/...):
  - tags v0.34.0 (2108ddc49ed2), v0.35.0 (07d8bcee9f6a), v0.36.0 (eb8f71c979ae), v0.36.3 (bbb4f8f0907a),
    v0.37.0-beta.0 (92e97d7be72b) and master 63b3249724f7 (2026-07-23);
  - files dra/v1/api.proto, dra/v1beta1/api.proto, pluginregistration/v1/api.proto,
    dra-health/v1alpha1/api.proto, and dra-health/v1/api.proto (master only: added by kubelet commit
    20b239517c2e, kubernetes PR #139477, merged 2026-07-22 after v0.37.0-beta.0; package "v1", the same
    messages, fields and enum as v1alpha1).
Version notes: dra/v1 Device.share_id (5, proto3 optional) appeared in 1.35; v1beta1 never got it.
DeviceHealth.health_check_timeout_seconds (4) appeared in 1.35, DeviceHealth.message (5) in 1.36.
pluginregistration/v1 is unchanged 1.34..1.37.
"""

from __future__ import annotations

import filecmp
import subprocess
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
from google.protobuf import descriptor_pb2
from hypothesis import given
from hypothesis import strategies as st

from gpudra._proto import (
    dra_health_v1_pb2,
    dra_health_v1_pb2_grpc,
    dra_health_v1alpha1_pb2,
    dra_health_v1alpha1_pb2_grpc,
    dra_v1_pb2,
    dra_v1_pb2_grpc,
    dra_v1beta1_pb2,
    dra_v1beta1_pb2_grpc,
    registration_v1_pb2,
    registration_v1_pb2_grpc,
)

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "driver" / "gpudra" / "_proto"
DRA_V1 = "k8s.io.kubelet.pkg.apis.dra.v1"
DRA_V1BETA1 = "k8s.io.kubelet.pkg.apis.dra.v1beta1"
CALL_TIMEOUT = 10.0

# ---------------------------------------------------------------------------------------------
# Freshness of the committed bindings
# ---------------------------------------------------------------------------------------------


def _generated_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.is_file() and p.suffix in {".py", ".pyi"})


def test_committed_bindings_match_a_fresh_generation(tmp_path: Path) -> None:
    out = tmp_path / "proto_out"
    subprocess.run(["bash", str(REPO / "hack" / "gen-proto"), str(out)], check=True, cwd=REPO)
    fresh, committed = _generated_files(out), _generated_files(GENERATED)
    hint = "driver/gpudra/_proto is stale: run hack/gen-proto and keep its output"
    assert fresh == committed, hint
    _, mismatch, errors = filecmp.cmpfiles(out, GENERATED, fresh, shallow=False)
    assert (mismatch, errors) == ([], []), hint


# ---------------------------------------------------------------------------------------------
# Wire contract: service names and method paths
# ---------------------------------------------------------------------------------------------

_PREP, _UNPREP = "NodePrepareResources", "NodeUnprepareResources"
# (module, full method path the kubelet calls, request type, response type, server streaming);
# no method streams from the client.
METHODS = [
    (registration_v1_pb2, "/pluginregistration.Registration/GetInfo", "InfoRequest", "PluginInfo", False),
    (
        registration_v1_pb2,
        "/pluginregistration.Registration/NotifyRegistrationStatus",
        "RegistrationStatus",
        "RegistrationStatusResponse",
        False,
    ),
    *[
        (module, f"/{package}.DRAPlugin/{method}", f"{method}Request", f"{method}Response", False)
        for module, package in ((dra_v1_pb2, DRA_V1), (dra_v1beta1_pb2, DRA_V1BETA1))
        for method in (_PREP, _UNPREP)
    ],
    *[
        (
            module,
            f"/{package}.DRAResourceHealth/NodeWatchResources",
            "NodeWatchResourcesRequest",
            "NodeWatchResourcesResponse",
            True,
        )
        for module, package in ((dra_health_v1alpha1_pb2, "v1alpha1"), (dra_health_v1_pb2, "v1"))
    ],
]


def _file_proto(module: ModuleType) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)


@pytest.mark.parametrize(
    "module",
    [registration_v1_pb2, dra_v1_pb2, dra_v1beta1_pb2, dra_health_v1alpha1_pb2, dra_health_v1_pb2],
    ids=lambda m: m.__name__.rsplit(".", 1)[-1],
)
def test_every_method_path_is_the_one_the_kubelet_calls(module: ModuleType) -> None:
    fd = _file_proto(module)
    got = {
        (f"/{fd.package}.{svc.name}/{m.name}", m.input_type, m.output_type, m.server_streaming)
        for svc in fd.service
        for m in svc.method
        if not m.client_streaming
    }
    expected = {
        (path, f".{fd.package}.{request}", f".{fd.package}.{response}", streams)
        for mod, path, request, response, streams in METHODS
        if mod is module
    }
    assert got == expected
    assert sum(len(svc.method) for svc in fd.service) == len(expected)


# ---------------------------------------------------------------------------------------------
# Wire contract: every field of every message
# ---------------------------------------------------------------------------------------------

# (message, field, number, type as written in a .proto, label as written in a .proto). The label is
# "repeated", "optional" (proto3 explicit presence) or "" (plain proto3 singular field; maps too).
Row = tuple[str, str, int, str, str]


def _dra_rows(with_share_id: bool) -> list[Row]:
    rows: list[Row] = [
        ("NodePrepareResourcesRequest", "claims", 1, "Claim", "repeated"),
        ("NodePrepareResourcesResponse", "claims", 1, "map<string, NodePrepareResourceResponse>", ""),
        ("NodePrepareResourceResponse", "devices", 1, "Device", "repeated"),
        ("NodePrepareResourceResponse", "error", 2, "string", ""),
        ("Device", "request_names", 1, "string", "repeated"),
        ("Device", "pool_name", 2, "string", ""),
        ("Device", "device_name", 3, "string", ""),
        ("Device", "cdi_device_ids", 4, "string", "repeated"),
        ("NodeUnprepareResourcesRequest", "claims", 1, "Claim", "repeated"),
        ("NodeUnprepareResourcesResponse", "claims", 1, "map<string, NodeUnprepareResourceResponse>", ""),
        ("NodeUnprepareResourceResponse", "error", 1, "string", ""),
        ("Claim", "namespace", 1, "string", ""),
        ("Claim", "uid", 2, "string", ""),
        ("Claim", "name", 3, "string", ""),
    ]
    if with_share_id:
        rows.append(("Device", "share_id", 5, "string", "optional"))
    return rows


_HEALTH_ROWS: list[Row] = [
    ("DeviceIdentifier", "pool_name", 1, "string", ""),
    ("DeviceIdentifier", "device_name", 2, "string", ""),
    ("DeviceHealth", "device", 1, "DeviceIdentifier", ""),
    ("DeviceHealth", "health", 2, "enum HealthStatus", ""),
    ("DeviceHealth", "last_updated_time", 3, "int64", ""),
    ("DeviceHealth", "health_check_timeout_seconds", 4, "int64", ""),
    ("DeviceHealth", "message", 5, "string", ""),
    ("NodeWatchResourcesResponse", "devices", 1, "DeviceHealth", "repeated"),
]

FIELDS: dict[ModuleType, list[Row]] = {
    registration_v1_pb2: [
        ("PluginInfo", "type", 1, "string", ""),
        ("PluginInfo", "name", 2, "string", ""),
        ("PluginInfo", "endpoint", 3, "string", ""),
        ("PluginInfo", "supported_versions", 4, "string", "repeated"),
        ("RegistrationStatus", "plugin_registered", 1, "bool", ""),
        ("RegistrationStatus", "error", 2, "string", ""),
    ],
    dra_v1_pb2: _dra_rows(with_share_id=True),
    dra_v1beta1_pb2: _dra_rows(with_share_id=False),
    dra_health_v1alpha1_pb2: _HEALTH_ROWS,
    dra_health_v1_pb2: _HEALTH_ROWS,
}

# Every message of each file, including those without fields (map entries are not listed).
_DRA_MESSAGES = {row[0] for row in _dra_rows(with_share_id=True)}
_HEALTH_MESSAGES = {
    "NodeWatchResourcesRequest",
    "DeviceIdentifier",
    "DeviceHealth",
    "NodeWatchResourcesResponse",
}
MESSAGES: dict[ModuleType, set[str]] = {
    registration_v1_pb2: {"PluginInfo", "RegistrationStatus", "RegistrationStatusResponse", "InfoRequest"},
    dra_v1_pb2: _DRA_MESSAGES,
    dra_v1beta1_pb2: _DRA_MESSAGES,
    dra_health_v1alpha1_pb2: _HEALTH_MESSAGES,
    dra_health_v1_pb2: _HEALTH_MESSAGES,
}

_FieldProto = descriptor_pb2.FieldDescriptorProto


def _type_of(field: _FieldProto, package: str, entries: dict[str, descriptor_pb2.DescriptorProto]) -> str:
    """Spell a field's type the way a .proto file does."""
    name = field.type_name.removeprefix(f".{package}.")
    if name in entries:
        key, value = (_type_of(f, package, entries) for f in entries[name].field)
        return f"map<{key}, {value}>"
    if field.type == _FieldProto.TYPE_ENUM:
        return f"enum {name}"
    return name or _FieldProto.Type.Name(field.type).removeprefix("TYPE_").lower()


def _label_of(field: _FieldProto, is_map: bool) -> str:
    if field.proto3_optional:
        return "optional"
    return "repeated" if field.label == _FieldProto.LABEL_REPEATED and not is_map else ""


def _rows(module: ModuleType) -> tuple[set[str], list[Row]]:
    """Message names (map entries left out) and field rows of one generated module."""
    fd = _file_proto(module)
    entries = {f"{m.name}.{n.name}": n for m in fd.message_type for n in m.nested_type if n.options.map_entry}
    nested_other = [n.name for m in fd.message_type for n in m.nested_type if not n.options.map_entry]
    assert nested_other == [], "upstream has no nested messages besides map entries"
    rows: list[Row] = []
    for msg in fd.message_type:
        for f in msg.field:
            type_name = _type_of(f, fd.package, entries)
            rows.append((msg.name, f.name, f.number, type_name, _label_of(f, type_name.startswith("map<"))))
    return {m.name for m in fd.message_type}, rows


@pytest.mark.parametrize("module", list(FIELDS), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_every_field_matches_upstream(module: ModuleType) -> None:
    messages, rows = _rows(module)
    assert sorted(rows) == sorted(FIELDS[module])
    assert messages == MESSAGES[module]
    fd = _file_proto(module)
    assert fd.syntax == "proto3"
    assert not fd.dependency, "the kubelet APIs import nothing (gogoproto options are not needed on the wire)"


@pytest.mark.parametrize("module", [dra_health_v1alpha1_pb2, dra_health_v1_pb2], ids=["v1alpha1", "v1"])
def test_health_status_enum_values(module: ModuleType) -> None:
    fd = _file_proto(module)
    assert [(e.name, [(v.name, v.number) for v in e.value]) for e in fd.enum_type] == [
        ("HealthStatus", [("UNKNOWN", 0), ("HEALTHY", 1), ("UNHEALTHY", 2)])
    ]


def test_hand_encoded_bytes() -> None:
    claim = dra_v1_pb2.Claim(namespace="n", uid="u", name="c")
    assert claim.SerializeToString() == b"\x0a\x01n\x12\x01u\x1a\x01c"
    # share_id has explicit presence: an empty but set value is still sent as field 5.
    assert dra_v1_pb2.Device(share_id="").SerializeToString() == b"\x2a\x00"
    assert dra_v1_pb2.Device().SerializeToString() == b""
    health = dra_health_v1alpha1_pb2.DeviceHealth(
        health=dra_health_v1alpha1_pb2.UNHEALTHY, health_check_timeout_seconds=60, message="x"
    )
    assert health.SerializeToString() == b"\x10\x02\x20\x3c\x2a\x01x"


@given(
    names=st.lists(st.text(max_size=8), max_size=3),
    pool=st.text(max_size=12),
    device=st.text(max_size=12),
    cdi=st.lists(st.text(max_size=12), max_size=3),
    share_id=st.none() | st.text(max_size=12),
)
def test_v1_device_bytes_read_as_v1beta1(
    names: list[str], pool: str, device: str, cdi: list[str], share_id: str | None
) -> None:
    sent = dra_v1_pb2.Device(
        request_names=names, pool_name=pool, device_name=device, cdi_device_ids=cdi, share_id=share_id
    )
    old = dra_v1beta1_pb2.Device.FromString(sent.SerializeToString())
    old.DiscardUnknownFields()  # share_id: unknown to v1beta1, kept only as raw bytes
    assert old == dra_v1beta1_pb2.Device(
        request_names=names, pool_name=pool, device_name=device, cdi_device_ids=cdi
    )
    back = dra_v1_pb2.Device.FromString(sent.SerializeToString())
    assert back.HasField("share_id") == (share_id is not None)
    assert back == sent


# ---------------------------------------------------------------------------------------------
# Round trip through a real gRPC server on a unix socket
# ---------------------------------------------------------------------------------------------


INFO = registration_v1_pb2.PluginInfo(
    type="DRAPlugin", name="gpudra.io", endpoint="/p/dra.sock", supported_versions=["v1.DRAPlugin"]
)
PREPARED = dra_v1_pb2.Device(
    pool_name="node-a", device_name="gpu-0", cdi_device_ids=["k8s.gpudra.io/claim=x"]
)


class _Registration(registration_v1_pb2_grpc.RegistrationServicer):
    def GetInfo(
        self, request: registration_v1_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> registration_v1_pb2.PluginInfo:
        return INFO

    def NotifyRegistrationStatus(
        self, request: registration_v1_pb2.RegistrationStatus, context: grpc.ServicerContext
    ) -> registration_v1_pb2.RegistrationStatusResponse:
        return registration_v1_pb2.RegistrationStatusResponse()


class _DRAv1(dra_v1_pb2_grpc.DRAPluginServicer):
    def NodePrepareResources(
        self, request: dra_v1_pb2.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1_pb2.NodePrepareResourcesResponse:
        reply = dra_v1_pb2.NodePrepareResourcesResponse()
        for claim in request.claims:
            reply.claims[claim.uid].devices.add().CopyFrom(PREPARED)
            reply.claims[claim.uid].devices[0].share_id = claim.name
        return reply

    def NodeUnprepareResources(
        self, request: dra_v1_pb2.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1_pb2.NodeUnprepareResourcesResponse:
        return dra_v1_pb2.NodeUnprepareResourcesResponse(
            claims={c.uid: dra_v1_pb2.NodeUnprepareResourceResponse() for c in request.claims}
        )


class _DRAv1beta1(dra_v1beta1_pb2_grpc.DRAPluginServicer):
    def NodePrepareResources(
        self, request: dra_v1beta1_pb2.NodePrepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1beta1_pb2.NodePrepareResourcesResponse:
        return dra_v1beta1_pb2.NodePrepareResourcesResponse()

    def NodeUnprepareResources(
        self, request: dra_v1beta1_pb2.NodeUnprepareResourcesRequest, context: grpc.ServicerContext
    ) -> dra_v1beta1_pb2.NodeUnprepareResourcesResponse:
        reply = dra_v1beta1_pb2.NodeUnprepareResourcesResponse()
        for claim in request.claims:
            reply.claims[claim.uid].error = f"not prepared: {claim.namespace}/{claim.name}"
        return reply


class _Health(dra_health_v1alpha1_pb2_grpc.DRAResourceHealthServicer):
    def NodeWatchResources(
        self, request: dra_health_v1alpha1_pb2.NodeWatchResourcesRequest, context: grpc.ServicerContext
    ) -> Iterator[dra_health_v1alpha1_pb2.NodeWatchResourcesResponse]:
        for status in (dra_health_v1alpha1_pb2.UNKNOWN, dra_health_v1alpha1_pb2.UNHEALTHY):
            device = dra_health_v1alpha1_pb2.DeviceHealth(
                device=dra_health_v1alpha1_pb2.DeviceIdentifier(pool_name="node-a", device_name="gpu-0"),
                health=status,
                last_updated_time=1_700_000_000,
                health_check_timeout_seconds=60,
                message="ecc",
            )
            yield dra_health_v1alpha1_pb2.NodeWatchResourcesResponse(devices=[device])


class _HealthV1(dra_health_v1_pb2_grpc.DRAResourceHealthServicer):
    def NodeWatchResources(
        self, request: dra_health_v1_pb2.NodeWatchResourcesRequest, context: grpc.ServicerContext
    ) -> Iterator[dra_health_v1_pb2.NodeWatchResourcesResponse]:
        yield dra_health_v1_pb2.NodeWatchResourcesResponse()


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    socket = tmp_path_factory.mktemp("grpc") / "p.sock"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    registration_v1_pb2_grpc.add_RegistrationServicer_to_server(_Registration(), server)
    dra_v1_pb2_grpc.add_DRAPluginServicer_to_server(_DRAv1(), server)
    dra_v1beta1_pb2_grpc.add_DRAPluginServicer_to_server(_DRAv1beta1(), server)
    dra_health_v1alpha1_pb2_grpc.add_DRAResourceHealthServicer_to_server(_Health(), server)
    dra_health_v1_pb2_grpc.add_DRAResourceHealthServicer_to_server(_HealthV1(), server)
    server.add_insecure_port(f"unix://{socket}")
    server.start()
    try:
        with grpc.insecure_channel(f"unix://{socket}") as chan:
            yield chan
    finally:
        server.stop(grace=None)


def test_registration_get_info(channel: grpc.Channel) -> None:
    info = registration_v1_pb2_grpc.RegistrationStub(channel).GetInfo(
        registration_v1_pb2.InfoRequest(), timeout=CALL_TIMEOUT
    )
    assert info == INFO


def test_dra_v1_prepare(channel: grpc.Channel) -> None:
    request = dra_v1_pb2.NodePrepareResourcesRequest(
        claims=[dra_v1_pb2.Claim(namespace="default", uid="uid-1", name="c1")]
    )
    reply = dra_v1_pb2_grpc.DRAPluginStub(channel).NodePrepareResources(request, timeout=CALL_TIMEOUT)
    expected = dra_v1_pb2.Device(share_id="c1")
    expected.MergeFrom(PREPARED)
    assert dict(reply.claims) == {"uid-1": dra_v1_pb2.NodePrepareResourceResponse(devices=[expected])}
    assert reply.claims["uid-1"].devices[0].HasField("share_id")


def test_dra_v1beta1_unprepare(channel: grpc.Channel) -> None:
    request = dra_v1beta1_pb2.NodeUnprepareResourcesRequest(
        claims=[dra_v1beta1_pb2.Claim(namespace="ns", uid="uid-2", name="c2")]
    )
    reply = dra_v1beta1_pb2_grpc.DRAPluginStub(channel).NodeUnprepareResources(request, timeout=CALL_TIMEOUT)
    assert dict(reply.claims) == {
        "uid-2": dra_v1beta1_pb2.NodeUnprepareResourceResponse(error="not prepared: ns/c2")
    }


def test_health_stream(channel: grpc.Channel) -> None:
    stream = dra_health_v1alpha1_pb2_grpc.DRAResourceHealthStub(channel).NodeWatchResources(
        dra_health_v1alpha1_pb2.NodeWatchResourcesRequest(), timeout=CALL_TIMEOUT
    )
    seen = [
        (d.device.device_name, d.health, d.health_check_timeout_seconds, d.message)
        for r in stream
        for d in r.devices
    ]
    assert seen == [
        ("gpu-0", dra_health_v1alpha1_pb2.UNKNOWN, 60, "ecc"),
        ("gpu-0", dra_health_v1alpha1_pb2.UNHEALTHY, 60, "ecc"),
    ]


@pytest.mark.parametrize(("path", "streaming"), [(row[1], row[4]) for row in METHODS])
def test_kubelet_paths_are_served(channel: grpc.Channel, path: str, streaming: bool) -> None:
    """Call each exact path the kubelet uses with raw bytes: UNIMPLEMENTED would mean a wrong package."""
    if streaming:
        replies = list(channel.unary_stream(path, None, None)(b"", timeout=CALL_TIMEOUT))
        assert all(isinstance(r, bytes) for r in replies)
        assert replies
    else:
        reply = channel.unary_unary(path, None, None)(b"", timeout=CALL_TIMEOUT)
        assert isinstance(reply, bytes)
