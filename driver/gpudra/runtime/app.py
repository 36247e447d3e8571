"""Wiring and lifecycle of the kubelet plugin: the only module that knows every layer.

Start order: discover, start publishing ResourceSlices (its own thread), prepare the state dir
(checkpoint, orphaned CDI specs), serve the DRA socket, and only then offer the registration socket — the
kubelet may call the DRA service the moment it sees us. Stop order is the reverse; slices stay in the API.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from gpudra.kube.client import KubeClient, KubeError, load_config
from gpudra.kube.publisher import Publisher
from gpudra.kubelet.paths import fit_socket_path, socket_name
from gpudra.model import names
from gpudra.model.inventory import Inventory
from gpudra.runtime.metrics import Metrics, NullMetrics
from gpudra.runtime.metrics import create as create_metrics
from gpudra.state.rediscovery import Rediscovery
from gpudra.vendors.base import HardwareBackend

if TYPE_CHECKING:  # imported in Plugin.start, once publishing has begun (see there)
    from gpudra.kubelet.registration import Registrar
    from gpudra.kubelet.sockets import UnixServer
    from gpudra.state.prepare import Preparer

EditsMode = Literal["hardware", "mock"]  # gpudra.state.prepare.EditsMode, without importing it here

log = logging.getLogger(__name__)


class ProbeServerLike(Protocol):
    def start(self) -> int: ...
    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True)
class RunConfig:
    node_name: str
    kubeconfig: Path | None = None
    plugins_dir: Path = Path("/var/lib/kubelet/plugins")
    registry_dir: Path = Path("/var/lib/kubelet/plugins_registry")
    cdi_root: Path = Path("/var/run/cdi")
    state_dir: Path | None = None  # default: <plugins_dir>/gpudra.io
    run_dir: Path | None = None  # per-boot files containers mount (device metadata); default: the state dir
    dev_root: Path = Path("/dev")
    proc_root: Path = Path("/proc")
    driver_root: Path = Path("/")  # NVIDIA driver root ("/run/nvidia/driver" with the GPU operator)
    host_driver_root: Path | None = None  # the driver root as the host sees it, when mounted elsewhere
    cdi_spec_dirs: tuple[Path, ...] = (Path("/etc/cdi"), Path("/var/run/cdi"))  # NVIDIA toolkit specs
    amd_additional_gids: bool = True  # CDI additionalGids for the render group (cdiVersion 0.7.0)
    pod_uid: str | None = None  # set during rolling updates: per-pod socket names
    metrics_port: int = 0  # 0: no metrics endpoint
    probe_port: int = 0  # 0: no grpc.health.v1 endpoint for kubelet probes
    # Calls served at once. Each holds the GIL for its CPU work, so more workers add contention: with 8
    # calls in flight on 2 cores, 8 workers prepared 270 claims/s at 3.3 ms CPU each, 4 workers 300-360
    # at 2.8-3.1 ms, 2 workers 320-370 at 2.4-2.7 ms. 4 keeps calls waiting on a slow API server apart.
    grpc_workers: int = 4
    rediscover_initial_s: float = 15.0  # first re-discovery while NVLink fabric registration is pending

    @property
    def plugin_dir(self) -> Path:
        return self.plugins_dir / names.DRIVER_NAME

    @property
    def effective_state_dir(self) -> Path:
        return self.state_dir or self.plugin_dir

    @property
    def effective_run_dir(self) -> Path:
        return self.run_dir or self.effective_state_dir

    @property
    def dra_socket(self) -> Path:
        return fit_socket_path(self.plugin_dir, socket_name("dra", self.pod_uid))

    @property
    def registration_socket(self) -> Path:
        stem = f"{names.DRIVER_NAME}-{self.pod_uid}" if self.pod_uid else names.DRIVER_NAME
        return fit_socket_path(self.registry_dir, f"{stem}-reg.sock")


class Plugin:
    """The running plugin: servers, publisher and the state they share."""

    def __init__(self, cfg: RunConfig, backend: HardwareBackend, edits_mode: EditsMode) -> None:
        self.cfg = cfg
        self._backend = backend
        self._edits_mode = edits_mode
        self.started_at = time.monotonic()
        self.inventory: Inventory | None = None
        self.kube: KubeClient | None = None
        self.publisher: Publisher | None = None
        self.preparer: Preparer | None = None
        self._dra: UnixServer | None = None
        self.registrar: Registrar | None = None
        self.metrics: Metrics = NullMetrics()
        self._probe: ProbeServerLike | None = None
        self._rediscovery = Rediscovery(backend, self._inventory_changed, cfg.rediscover_initial_s)

    def start(self) -> None:
        cfg = self.cfg
        self.metrics = metrics = create_metrics(cfg.metrics_port)
        t0 = time.monotonic()
        self.inventory = inv = self._backend.discover()
        took = time.monotonic() - t0
        metrics.discovery(took, len(inv.devices))
        for warning in inv.warnings:
            log.warning("discovery: %s", warning)
        log.info(
            "discovered %d device(s) in %.1f ms via %s", len(inv.devices), took * 1000, self._backend.name
        )
        self.kube = kube = KubeClient(load_config(cfg.kubeconfig))
        # Publishing runs in its own thread and needs only the inventory and the API: start it before the
        # modules of the kubelet side are even imported (gRPC, protos, prepare: ~0.1 s), so the scheduler
        # sees the devices sooner. The kubelet calls nothing before the registration socket exists.
        self.publisher = Publisher(kube, cfg.node_name, inv, on_published=metrics.slices_published)
        self.publisher.start()
        self._serve_kubelet(kube, inv, metrics)
        self._rediscovery.start(inv)
        log.info("gpudra serving: DRA %s, registration %s", cfg.dra_socket, cfg.registration_socket)

    def _serve_kubelet(self, kube: KubeClient, inv: Inventory, metrics: Metrics) -> None:
        """The checkpoint, orphaned CDI specs, the DRA socket, then the registration socket."""
        from gpudra.kubelet import dra
        from gpudra.kubelet.registration import Registrar
        from gpudra.kubelet.sockets import UnixServer
        from gpudra.model import cdi
        from gpudra.state.checkpoint import CheckpointStore, read_boot_id
        from gpudra.state.prepare import Preparer, PrepareSettings
        from gpudra.vendors.edits import HostRoots

        cfg = self.cfg
        state = cfg.effective_state_dir
        state.mkdir(parents=True, exist_ok=True)
        store = CheckpointStore(
            state / "checkpoint.json",
            state / "checkpoint.lock",
            read_boot_id(),
            on_corrupt=lambda path, why: kube.node_event(
                cfg.node_name,
                None,
                "GpudraCheckpointCorrupted",
                f"gpudra moved a corrupted checkpoint aside to {path}: {why}",
            ),
        )
        roots = HostRoots(
            dev=cfg.dev_root,
            proc=cfg.proc_root,
            driver=cfg.driver_root,
            host_driver=cfg.host_driver_root,
            cdi_dirs=cfg.cdi_spec_dirs,
            additional_gids=cfg.amd_additional_gids,
        )
        settings = PrepareSettings(cfg.node_name, state, roots, self._edits_mode, cfg.effective_run_dir)
        # The per-type device count walks every claim held: only worth it when someone scrapes it.
        on_prepared = None if isinstance(metrics, NullMetrics) else metrics.prepared_devices
        self.preparer = preparer = Preparer(
            kube, inv, store, cdi.CdiWriter(cfg.cdi_root), settings, on_prepared=on_prepared
        )
        preparer.collect_garbage()
        self._dra = UnixServer(cfg.dra_socket, dra.registrars(preparer, metrics), cfg.grpc_workers)
        self._dra.start()
        self.registrar = Registrar(cfg.registration_socket, cfg.dra_socket)
        self.registrar.start()
        if cfg.probe_port:
            from gpudra.kubelet.probe import PluginChecker, ProbeServer  # grpc_health only when probes are on

            checker = PluginChecker(cfg.registration_socket, cfg.dra_socket, self.registrar.registered.is_set)
            self._probe = ProbeServer(cfg.probe_port, checker)
            self._probe.start()

    def _inventory_changed(self, inv: Inventory) -> None:
        """A later discovery differs (e.g. the NVLink fabric registered): serve and publish the new view."""
        for warning in inv.warnings:
            log.warning("discovery: %s", warning)
        self.inventory = inv
        if self.preparer is not None:
            self.preparer.set_inventory(inv)
        if self.publisher is not None:
            try:
                self.publisher.update_inventory(inv)
            except KubeError as e:  # the publisher's own loop publishes it on its next reconcile
                log.warning("publishing the re-discovered devices failed for now: %s", e)

    def stop(self) -> None:
        """Fast and complete: sockets removed, no thread left doing work (SIGTERM budget: 25 ms)."""
        self._rediscovery.stop()
        if self._probe is not None:
            self._probe.stop()
        if self.registrar is not None:
            self.registrar.stop()
        if self._dra is not None:
            self._dra.stop(2.0)  # a prepare in flight finishes (rolling update: the kubelet gets its answer)
        if self.publisher is not None:
            self.publisher.stop()
        self._backend.close()


def serve(plugin: Plugin) -> int:
    """Run until SIGTERM or SIGINT. Returns the process exit code.

    The two signals are blocked in every thread (threads started by the plugin and by gRPC inherit the mask)
    and taken synchronously by this thread with ``sigwait``. A Python signal handler runs only once the
    main thread executes Python again; a signal the kernel delivered to one of gRPC's threads left the main
    thread asleep ~10 ms longer (measured: SIGTERM -> exit 16 ms median with handlers, see the benchmark).
    """
    signals = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        plugin.start()
        # What start-up built (modules, inventory, slices) lives as long as the process: keep it out of the
        # cyclic GC's reach. A full collection walked it in ~20 ms on synthetic-256, inside some kubelet call.
        gc.freeze()
        received = signal.sigwait(signals)
        log.info("received %s, stopping", signal.Signals(received).name)
    finally:
        t0 = time.monotonic()
        plugin.stop()
        log.info("stopped in %.1f ms", (time.monotonic() - t0) * 1000)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0
