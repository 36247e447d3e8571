"""Kubelet plugin registration: the socket the kubelet's plugin watcher finds in its registry directory.

``GetInfo`` tells the kubelet who we are, where the DRA service listens and which gRPC services that socket
serves. If the kubelet restarts and wipes its registry directory, our socket disappears with it; a watchdog
notices and binds it again so the kubelet registers us anew.

The service list ("supported versions") must name exactly the services the DRA socket serves: the kubelet
picks its DRAPlugin version from it, and opens the device-health stream only for a plugin that lists a
health service (1.37 on; 1.36 opened it for every plugin). Names are ``<proto package's last part>.<service>``
as the kubelet spells them, which for the DRAPlugin service is not the gRPC name.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Final

import grpc

from gpudra._proto import registration_v1_pb2, registration_v1_pb2_grpc
from gpudra.kubelet.sockets import UnixServer
from gpudra.model import names

log = logging.getLogger(__name__)

#: Advertised name -> the gRPC service the kubelet then calls on the DRA socket.
KNOWN_SERVICES: Final[Mapping[str, str]] = {
    "v1.DRAPlugin": "k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin",
    "v1beta1.DRAPlugin": "k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin",
    "v1.DRAResourceHealth": "v1.DRAResourceHealth",
    "v1alpha1.DRAResourceHealth": "v1alpha1.DRAResourceHealth",
}
#: The services :func:`gpudra.kubelet.dra.registrars` puts on the DRA socket (the default list); add
#: :attr:`gpudra.kubelet.health.HealthStreams.services` when the health streams are served there too.
SUPPORTED_VERSIONS: Final = ("v1.DRAPlugin", "v1beta1.DRAPlugin")


class _RegistrationServicer(registration_v1_pb2_grpc.RegistrationServicer):
    def __init__(
        self, endpoint: str, versions: Sequence[str], on_status: Callable[[bool, str], None]
    ) -> None:
        self._info = registration_v1_pb2.PluginInfo(
            type="DRAPlugin", name=names.DRIVER_NAME, endpoint=endpoint, supported_versions=list(versions)
        )
        self._on_status = on_status

    def GetInfo(
        self, request: registration_v1_pb2.InfoRequest, context: grpc.ServicerContext
    ) -> registration_v1_pb2.PluginInfo:
        return self._info

    def NotifyRegistrationStatus(
        self, request: registration_v1_pb2.RegistrationStatus, context: grpc.ServicerContext
    ) -> registration_v1_pb2.RegistrationStatusResponse:
        self._on_status(bool(request.plugin_registered), str(request.error))
        return registration_v1_pb2.RegistrationStatusResponse()


class Registrar:
    """Serves the registration socket and re-binds it when it vanishes."""

    def __init__(
        self,
        socket_path: Path,
        endpoint: Path,
        versions: Sequence[str] = SUPPORTED_VERSIONS,
        watch_interval_s: float = 1.0,
    ) -> None:
        unknown = [v for v in versions if v not in KNOWN_SERVICES]
        no_dra = not any(v.endswith(".DRAPlugin") for v in versions)
        if unknown or no_dra or len(set(versions)) != len(versions):
            raise ValueError(
                f"advertised services must be distinct, known, one a DRAPlugin: {list(versions)}"
            )
        self.registered = threading.Event()
        servicer = _RegistrationServicer(str(endpoint), versions, self._on_status)
        self._server = UnixServer(
            socket_path,
            [lambda s: registration_v1_pb2_grpc.add_RegistrationServicer_to_server(servicer, s)],
            2,
        )
        self._interval = watch_interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def path(self) -> Path:
        return self._server.path

    def _on_status(self, ok: bool, error: str) -> None:
        if ok:
            log.info("kubelet registered plugin %s", names.DRIVER_NAME)
            self.registered.set()
        else:
            log.error("kubelet rejected plugin registration: %s", error)
            self.registered.clear()

    def start(self) -> None:
        self._server.start()
        self._thread = threading.Thread(target=self._watch, name="registration-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._server.stop(0)

    def _watch(self) -> None:
        while not self._stop.wait(self._interval):
            if self._server.path.exists():
                continue
            log.warning("registration socket %s vanished (kubelet restart?); binding it again", self.path)
            self.registered.clear()
            try:
                self._server.stop(0)
                self._server.start()
            except OSError as e:
                log.error("cannot re-create registration socket: %s", e)
