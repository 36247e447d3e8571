"""A stand-in for the kubelet's side of the plugin protocol, over the real unix sockets.

It does what the kubelet does: find the registration socket, ask ``GetInfo``, check what it is told,
answer ``NotifyRegistrationStatus``, then call the DRA service at the advertised endpoint with the
version it prefers. ``gpudra demo``, the integration tests and the benchmark drive the plugin with it.
:class:`HealthStream` holds the device-health stream (KEP-4680) as the kubelet does, in the version the
kubelet would pick (:func:`health_version`).

:class:`Kubelet` adds what the kubelet does with the answers: it keeps the prepared claims of pods, gives
each container the CDI ids of the requests it names (compared exactly with the answer's request names), and
asks the runtime emulation (:mod:`gpudra.devtools.cdiinject`) what the container then sees.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

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
from gpudra.devtools import cdiinject
from gpudra.model import names

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


# ---- the device-health stream --------------------------------------------------------------------------

HealthVersion = Literal["v1", "v1alpha1"]
_HEALTH_PB: dict[HealthVersion, tuple[Any, Any]] = {
    "v1": (dra_health_v1_pb2, dra_health_v1_pb2_grpc),
    "v1alpha1": (dra_health_v1alpha1_pb2, dra_health_v1alpha1_pb2_grpc),
}
#: The kubelet's preference, newest first, with the name a plugin advertises for each version.
_HEALTH_SERVICES: tuple[tuple[HealthVersion, str], ...] = (
    ("v1", "v1.DRAResourceHealth"),
    ("v1alpha1", "v1alpha1.DRAResourceHealth"),
)


def health_version(info: PluginInfo) -> HealthVersion | None:
    """The health API a 1.37 kubelet watches: v1 when advertised, else v1alpha1, else none (no stream)."""
    for version, service in _HEALTH_SERVICES:
        if service in info.supported_versions:
            return version
    return None


@dataclass(frozen=True, slots=True)
class DeviceHealthReport:
    """One device's line of a health message."""

    pool: str
    device: str
    health: str  # "HEALTHY" | "UNHEALTHY" | "UNKNOWN"
    last_updated: int
    timeout_s: int
    message: str


class HealthStreamEnded(KubeletError):
    """The plugin ended the stream; ``code`` is its status (OK for a clean end)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"health stream ended: {code.name} {details}".rstrip())
        self.code = code
        self.details = details


class HealthStream:
    """One ``NodeWatchResources`` stream, open from construction until :meth:`cancel`. A reader thread
    takes the messages as they come, so :meth:`next` can wait with a timeout."""

    def __init__(self, endpoint: Path | str, version: HealthVersion = "v1") -> None:
        pb, grpc_mod = _HEALTH_PB[version]
        self._channel = _channel(endpoint)
        self._call = grpc_mod.DRAResourceHealthStub(self._channel).NodeWatchResources(
            pb.NodeWatchResourcesRequest()
        )
        self._messages: queue.Queue[tuple[DeviceHealthReport, ...] | HealthStreamEnded] = queue.Queue()
        self._reader = threading.Thread(target=self._read, name="health-stream", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            for response in self._call:
                self._messages.put(tuple(_report(d) for d in response.devices))
            self._messages.put(HealthStreamEnded(grpc.StatusCode.OK, ""))
        except grpc.RpcError as e:
            self._messages.put(HealthStreamEnded(e.code(), e.details() or ""))

    def next(self, timeout_s: float = 10.0) -> tuple[DeviceHealthReport, ...]:
        """The next message; raises :class:`HealthStreamEnded` at the end, KubeletError on a timeout."""
        try:
            item = self._messages.get(timeout=timeout_s)
        except queue.Empty:
            raise KubeletError(f"no health message within {timeout_s} s") from None
        if isinstance(item, HealthStreamEnded):
            self._messages.put(item)  # every later call sees the end too
            raise item
        return item

    def cancel(self, timeout_s: float = 10.0) -> None:
        """Cancel the call, as a kubelet does when it deregisters the plugin or stops."""
        self._call.cancel()
        self._reader.join(timeout_s)
        self._channel.close()

    def __enter__(self) -> HealthStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


def _report(d: Any) -> DeviceHealthReport:
    return DeviceHealthReport(
        pool=d.device.pool_name,
        device=d.device.device_name,
        health=dra_health_v1_pb2.HealthStatus.Name(d.health),  # the same enum in both versions
        last_updated=d.last_updated_time,
        timeout_s=d.health_check_timeout_seconds,
        message=d.message,
    )


# ---- pods and containers: which CDI ids each container gets -------------------------------------------


@dataclass(frozen=True, slots=True)
class ContainerClaim:
    """One ``containers[].resources.claims[]`` entry."""

    name: str  # a pod.spec.resourceClaims[].name
    request: str = ""  # a request of that claim; "" = every device of the claim


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    claims: tuple[ContainerClaim, ...] = ()


@dataclass(frozen=True, slots=True)
class PodClaim:
    """One ``pod.spec.resourceClaims[]`` entry, resolved to the ResourceClaim it names (directly, or the one
    generated from its template, as ``pod.status.resourceClaimStatuses`` says)."""

    name: str
    claim: Claim


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    uid: str
    claims: tuple[PodClaim, ...]
    containers: tuple[Container, ...]

    def container(self, name: str) -> Container:
        for c in self.containers:
            if c.name == name:
                return c
        raise KeyError(f"pod {self.name} has no container {name}")


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """A device of a prepared claim as the kubelet keeps it from the plugin's answer."""

    request_names: tuple[str, ...]
    pool: str
    device: str
    cdi_ids: tuple[str, ...]


@dataclass
class _ClaimInfo:
    claim: Claim
    pods: set[str]
    devices: list[PreparedDevice]
    prepared: bool = False

    def cdi_ids(self, request: str) -> list[str]:
        """The kubelet's rule: a device goes to a container naming no request, or one of its request names
        exactly, or to every container when the plugin gave it no request names."""
        return [
            i
            for d in self.devices
            if not request or not d.request_names or request in d.request_names
            for i in d.cdi_ids
        ]


class Kubelet:
    """The kubelet's DRA manager for one plugin: a claim cache shared by pods (a claim is prepared once,
    whatever the number of pods using it, and unprepared when its last pod goes), one NodePrepareResources
    call per pod for its claims not prepared yet, and per container the CDI ids of the requests it names,
    handed to the runtime (:mod:`gpudra.devtools.cdiinject`) with the plugin's CDI spec directories."""

    def __init__(self, client: DraClient, cdi_dirs: Sequence[Path]) -> None:
        self._client = client
        self._cdi_dirs = tuple(cdi_dirs)
        self._cache: dict[tuple[str, str], _ClaimInfo] = {}

    def prepared(self, claim: Claim) -> tuple[PreparedDevice, ...] | None:
        info = self._cache.get((claim.namespace, claim.name))
        return tuple(info.devices) if info is not None and info.prepared else None

    def prepare_pod(self, pod: Pod, timeout_s: float = 30.0) -> None:
        batch: list[Claim] = []
        for pc in pod.claims:
            info = self._cache.get((pc.claim.namespace, pc.claim.name))
            if info is None:
                info = self._cache[(pc.claim.namespace, pc.claim.name)] = _ClaimInfo(pc.claim, set(), [])
            elif info.claim.uid != pc.claim.uid:
                raise KubeletError(
                    f"old ResourceClaim with same name {pc.claim.name} and different UID {info.claim.uid} "
                    "still exists"
                )
            info.pods.add(pod.uid)
            if not info.prepared and pc.claim not in batch:
                batch.append(pc.claim)
        if not batch:
            return
        response = self._client.prepare(batch, timeout_s)
        by_uid = {c.uid: c for c in batch}
        for uid, result in response.claims.items():
            claim = by_uid.get(uid)
            if claim is None:
                raise KubeletError(f"NodePrepareResources returned result for unknown claim UID {uid}")
            if result.error:
                raise KubeletError(
                    f"NodePrepareResources failed for ResourceClaim {claim.name}: {result.error}"
                )
            self._cache[(claim.namespace, claim.name)].devices = [
                PreparedDevice(tuple(d.request_names), d.pool_name, d.device_name, tuple(d.cdi_device_ids))
                for d in result.devices
            ]
        if len(response.claims) != len(batch):
            skipped = len(batch) - len(response.claims)
            raise KubeletError(f"NodePrepareResources skipped {skipped} ResourceClaims")
        for claim in batch:
            self._cache[(claim.namespace, claim.name)].prepared = True

    def unprepare_pod(self, pod: Pod, timeout_s: float = 30.0) -> None:
        batch: list[Claim] = []
        for pc in pod.claims:
            info = self._cache.get((pc.claim.namespace, pc.claim.name))
            if info is None:
                continue
            if len(info.pods - {pod.uid}) > 0:
                info.pods.discard(pod.uid)
                continue
            batch.append(info.claim)
        if not batch:
            return
        response = self._client.unprepare(batch, timeout_s)
        for claim in batch:
            result = response.claims.get(claim.uid)
            if result is None:
                raise KubeletError(f"NodeUnprepareResources skipped ResourceClaim {claim.name}")
            if result.error:
                raise KubeletError(
                    f"NodeUnprepareResources failed for ResourceClaim {claim.name}: {result.error}"
                )
            del self._cache[(claim.namespace, claim.name)]

    def cdi_ids(self, pod: Pod, container: str) -> list[str]:
        """The CDI ids the kubelet gives ``container`` (GetResources): per pod claim, per entry of the
        container naming it."""
        ids: list[str] = []
        for pc in pod.claims:
            for ref in pod.container(container).claims:
                if ref.name != pc.name:
                    continue
                info = self._cache.get((pc.claim.namespace, pc.claim.name))
                if info is None:
                    raise KubeletError(
                        f"internal error: unable to get claim info for ResourceClaim {pc.claim.name}"
                    )
                ids.extend(info.cdi_ids(ref.request))
        return ids

    def container_view(self, pod: Pod, container: str) -> cdiinject.ContainerView:
        """What the runtime gives ``container``: its CDI ids resolved and applied from the specs on disk."""
        try:
            return cdiinject.inject(self.cdi_ids(pod, container), self._cdi_dirs)
        except cdiinject.CdiInjectError as e:
            raise KubeletError(f"container {container} of pod {pod.name}: {e}") from e
