"""A stand-in for the kubelet's side of the plugin protocol, over the real unix sockets.

It does what the kubelet does: find the registration socket, ask ``GetInfo``, check what it is told,
answer ``NotifyRegistrationStatus``, then call the DRA service at the advertised endpoint with the
version it prefers. ``gpudra demo``, the integration tests and the benchmark drive the plugin with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

from gpudra import names
from gpudra._proto import (
    dra_v1_pb2,
    dra_v1_pb2_grpc,
    dra_v1beta1_pb2,
    dra_v1beta1_pb2_grpc,
    registration_v1_pb2,
    registration_v1_pb2_grpc,
)

Version = Literal["v1", "v1beta1"]
_PB = {"v1": (dra_v1_pb2, dra_v1_pb2_grpc), "v1beta1": (dra_v1beta1_pb2, dra_v1beta1_pb2_grpc)}


class KubeletError(Exception):
    """The plugin answered something the kubelet would refuse."""


@dataclass(frozen=True, slots=True)
class Claim:
    namespace: str
    name: str
    uid: str


@dataclass(frozen=True, slots=True)
class PluginInfo:
    type: str
    name: str
    endpoint: str
    supported_versions: tuple[str, ...]


def _channel(path: Path | str) -> grpc.Channel:
    return grpc.insecure_channel(f"unix://{path}")


def register(registration_socket: Path, timeout_s: float = 5.0) -> PluginInfo:
    """GetInfo + NotifyRegistrationStatus, validating like the kubelet's plugin manager."""
    with _channel(registration_socket) as ch:
        stub = registration_v1_pb2_grpc.RegistrationStub(ch)
        info = stub.GetInfo(registration_v1_pb2.InfoRequest(), timeout=timeout_s)
        result = PluginInfo(info.type, info.name, info.endpoint, tuple(info.supported_versions))
        problem = _validate(result)
        stub.NotifyRegistrationStatus(
            registration_v1_pb2.RegistrationStatus(plugin_registered=problem is None, error=problem or ""),
            timeout=timeout_s,
        )
    if problem is not None:
        raise KubeletError(problem)
    return result


def _validate(info: PluginInfo) -> str | None:
    if info.type != "DRAPlugin":
        return f"plugin type {info.type!r} is not DRAPlugin"
    if info.name != names.DRIVER_NAME:
        return f"plugin name {info.name!r} is not {names.DRIVER_NAME}"
    if not {"v1.DRAPlugin", "v1beta1.DRAPlugin"} & set(info.supported_versions):
        return f"no supported DRA version in {info.supported_versions}"
    if not Path(info.endpoint).is_socket():
        return f"endpoint {info.endpoint} is not a socket"
    return None


class DraClient:
    """NodePrepareResources / NodeUnprepareResources at a plugin's DRA endpoint, in one API version."""

    def __init__(self, endpoint: Path | str, version: Version = "v1") -> None:
        self._pb, grpc_mod = _PB[version]
        self._channel = _channel(endpoint)
        self._stub = grpc_mod.DRAPluginStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DraClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _claims(self, claims: Sequence[Claim]) -> list[Any]:
        return [self._pb.Claim(namespace=c.namespace, name=c.name, uid=c.uid) for c in claims]

    def prepare(self, claims: Sequence[Claim], timeout_s: float = 30.0) -> Any:
        request = self._pb.NodePrepareResourcesRequest(claims=self._claims(claims))
        return self._stub.NodePrepareResources(request, timeout=timeout_s)

    def unprepare(self, claims: Sequence[Claim], timeout_s: float = 30.0) -> Any:
        request = self._pb.NodeUnprepareResourcesRequest(claims=self._claims(claims))
        return self._stub.NodeUnprepareResources(request, timeout=timeout_s)
