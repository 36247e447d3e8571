"""Wiring and lifecycle of the kubelet plugin: the only module that knows every layer.

Start order: load the API configuration, check everything local the plugin needs (directories, sockets,
ports: :mod:`gpudra.runtime.preflight`), discover, open the checkpoint (devices claims created are not
published as devices of their own), make the node state and start publishing it (its own threads), clean the
leftovers of a killed predecessor and the state dir (orphaned CDI specs), serve the DRA socket, and only then
offer the registration socket — the kubelet may call the DRA service the moment it sees us — then start
re-discovery. Stop order is the reverse; slices stay in the API.

Nothing is published before every local check passed: the scheduler places claims on a node whose devices
it sees, so a plugin that cannot serve them must fail first. A start-up failure is a
:class:`~gpudra.runtime.errors.StartupError` (one line for the log, exit 1) and, once the API client exists,
a Warning Event on the Node.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Protocol

from gpudra.kube.client import KubeClient, load_config
from gpudra.kube.publisher import Publisher
from gpudra.model.inventory import Inventory
from gpudra.planning.offer import plan_offer
from gpudra.runtime import health, preflight
from gpudra.runtime.claimpods import ClaimPods, PodNotingClaims
from gpudra.runtime.config import RunConfig
from gpudra.runtime.errors import StartupError
from gpudra.runtime.metrics import Metrics, NullMetrics
from gpudra.runtime.metrics import create as create_metrics
from gpudra.runtime.migmode import MigManagement, destroy_unowned
from gpudra.runtime.sharemode import ShareMode, probe_gates
from gpudra.state.checkpoint import CheckpointStore, CheckpointUnavailable, read_boot_id
from gpudra.state.health import HealthStore
from gpudra.state.node import NodeStateStore
from gpudra.state.rediscovery import Rediscovery
from gpudra.vendors.base import VendorDriver

if TYPE_CHECKING:  # imported in Plugin.start, once publishing has begun (see there)
    from gpudra.kubelet.health import HealthStreams
    from gpudra.kubelet.registration import Registrar
    from gpudra.kubelet.sockets import UnixServer
    from gpudra.runtime.usage import UsageSampler
    from gpudra.state.prepare import Preparer

log = logging.getLogger(__name__)

def _grace_s(default: float = 90.0) -> float:
    """Seconds after start before prepares a previous instance left unfinished are rolled back: longer
    than a prepare takes (creating a MIG device takes about a second). Hidden env GPUDRA_ROLLBACK_GRACE_S
    (tests); a value that is not a positive number is ignored."""
    try:
        value = float(os.environ.get("GPUDRA_ROLLBACK_GRACE_S") or default)
    except ValueError:
        return default
    return value if 0 < value < 86400 else default


ROLLBACK_GRACE_S = _grace_s()


class ProbeServerLike(Protocol):
    def start(self) -> int: ...
    def stop(self) -> None: ...


class Plugin:
    """The running plugin: the vendor driver, the node state, and the threads and servers around them."""

    def __init__(self, cfg: RunConfig, driver: VendorDriver) -> None:
        self.cfg = cfg
        self.driver = driver
        self.started_at = time.monotonic()
        self.node: NodeStateStore | None = None
        self.kube: KubeClient | None = None
        self.publisher: Publisher | None = None
        self.preparer: Preparer | None = None
        self.rediscovery: Rediscovery | None = None
        self.health: HealthStore | None = None
        self._timers: list[threading.Timer] = []
        self._dra: UnixServer | None = None
        self._health_streams: HealthStreams | None = None
        self.registrar: Registrar | None = None
        self.metrics: Metrics = NullMetrics()
        self._probe: ProbeServerLike | None = None
        self.claim_pods: ClaimPods | None = None  # pods prepare saw reserving claims (usage metrics only)
        self.usage: UsageSampler | None = None

    def start(self) -> None:
        """Start everything, or raise :class:`StartupError` (after a Node Event, when the API is known)."""
        self.kube = kube = connect(self.cfg)
        try:
            self._start(kube)
        except StartupError as e:
            kube.node_event(self.cfg.node_name, None, e.reason, str(e))
            raise

    def _start(self, kube: KubeClient) -> None:
        cfg = self.cfg
        preflight.check(cfg)
        self.metrics = metrics = self._serve_metrics()
        inv = self._discover()
        store = self._checkpoint(kube)
        created = store.claim_created
        mig = self._mig_management(kube, created, metrics)
        share = self._share_mode(kube, mig, created, metrics)
        self.node = node = mig.node = share.node = NodeStateStore(plan_offer(inv, created(), share.policy))
        metrics.mig_management(mig.policy.dynamic, len(node.current.offer.dynamic_gpus))
        metrics.fractional_gpus(share.enabled, node.current.offer.shared_devices)
        for warning in node.current.offer.warnings:
            log.warning("publishing: %s", warning)
        def event(reason: str, message: str) -> None:
            kube.node_event(cfg.node_name, None, reason, message)

        self.health = health.start_health(cfg, node, self.driver, metrics, event)
        taints = health.taint_gate(metrics, event)
        # Publishing runs in its own threads and needs only the node state and the API: start it before the
        # modules of the kubelet side are even imported (gRPC, protos, prepare: ~0.1 s), so the scheduler
        # sees the devices sooner. The kubelet calls nothing before the registration socket exists.
        self.publisher = Publisher(
            kube,
            cfg.node_name,
            node,
            on_published=lambda gen: self._published(gen, mig, share),
            on_dropped=lambda fields: (
                taints.on_dropped(fields) | share.on_dropped(fields) | share.follow(mig.on_dropped(fields))
            ),
            on_rejected=lambda obj, err: (
                share.on_rejected(obj, err) or share.follow(mig.on_rejected(obj, err))
            ),
            before_first=lambda uid: probe_gates(kube, cfg.node_name, uid, mig, share),
            on_failed=metrics.publish_failed,
        )
        self.publisher.start()
        if cfg.usage_metrics and not isinstance(metrics, NullMetrics):
            self.claim_pods = ClaimPods()
        self._serve_kubelet(kube, node, store, metrics)
        self.rediscovery = Rediscovery(
            self.driver,
            node,
            policy=lambda: share.policy,
            claim_created=created,
            interval_s=cfg.rediscover_interval_s,
            fabric_initial_s=cfg.rediscover_initial_s,
            on_pass=self._discovered,
            on_change=self.health.refresh,
        )
        self.rediscovery.start()
        if self.claim_pods is not None:  # usage metrics: a sampler thread, never on the prepare path
            from gpudra.runtime.usage import serve_usage

            self.usage = serve_usage(self.driver, node, store.snapshot, self.claim_pods, cfg.usage_interval_s)
        if cfg.mig_destroy_unowned and mig.policy.dynamic:
            inventory = node.current.offer.inventory
            if destroy_unowned(self.driver, inventory, created()):
                self.rediscovery.trigger()  # those GPUs are partitionable now
        log.info("gpudra serving: DRA %s, registration %s", cfg.dra_socket, cfg.registration_socket)

    def _published(self, generation: int, mig: MigManagement, share: ShareMode) -> None:
        self.metrics.slices_published(generation)
        if self.node is not None:
            self.metrics.devices_by_health(health.count_by_health(self.node))
        if self.node is not None:
            self.metrics.mig_management(mig.policy.dynamic, len(self.node.current.offer.dynamic_gpus))
            self.metrics.fractional_gpus(share.enabled, self.node.current.offer.shared_devices)

    def _share_mode(
        self, kube: KubeClient, mig: MigManagement, created: Callable[[], AbstractSet[str]], metrics: Metrics
    ) -> ShareMode:
        name = self.cfg.node_name
        return ShareMode(
            self.cfg.fractional_gpus, lambda: mig.policy, created,
            event=lambda reason, message: kube.node_event(name, None, reason, message),
            metric=lambda enabled: metrics.fractional_gpus(enabled, 0),
        )  # fmt: skip

    def _mig_management(
        self, kube: KubeClient, created: Callable[[], AbstractSet[str]], metrics: Metrics
    ) -> MigManagement:
        name = self.cfg.node_name
        return MigManagement(
            self.cfg.mig_dynamic, created,
            event=lambda reason, message: kube.node_event(name, None, reason, message),
            metric=lambda dynamic: metrics.mig_management(dynamic, 0),
        )  # fmt: skip

    def _roll_back_later(self, preparer: Preparer) -> None:
        """Prepares left PrepareStarted: after ROLLBACK_GRACE_S (longer than any prepare, so a call of the
        instance this one replaces has finished), those still unchanged are rolled back."""
        seen = preparer.interrupted()
        if not seen:
            return
        log.info("%d prepare(s) did not complete before this start; rolled back in %.0f s unless they "
                 "complete or are asked for again", len(seen), ROLLBACK_GRACE_S)  # fmt: skip
        timer = threading.Timer(ROLLBACK_GRACE_S, lambda: preparer.roll_back_interrupted(seen))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)

    def _serve_metrics(self) -> Metrics:
        cfg = self.cfg
        try:
            return create_metrics(cfg.metrics_port, cfg.metrics_address)
        except OSError as e:  # taken since the start-up check
            raise preflight.port_error(
                "--metrics-port", "--metrics-address", cfg.metrics_address, cfg.metrics_port, e
            ) from e

    def _discover(self) -> Inventory:
        t0 = time.monotonic()
        inv = self.driver.discover()
        self._discovered(time.monotonic() - t0, inv)
        took_ms = (time.monotonic() - t0) * 1000
        log.info("discovered %d device(s) in %.1f ms via %s", len(inv.devices), took_ms, self.driver.name)
        return inv  # the vendor driver has logged the inventory's warnings

    def _discovered(self, seconds: float, inv: Inventory) -> None:
        self.metrics.discovery(seconds, Counter((d.vendor.value, d.kind.value) for d in inv.devices))

    def _checkpoint(self, kube: KubeClient) -> CheckpointStore:
        """The checkpoint store; a checkpoint that cannot be used and was not moved aside (the store does
        that where it can, and says so with ``on_corrupt``) ends the start-up."""
        cfg = self.cfg
        state = cfg.effective_state_dir
        try:
            return CheckpointStore(
                state / "checkpoint.json",
                state / "checkpoint.lock",
                read_boot_id(),
                on_corrupt=lambda path, why: kube.node_event(
                    cfg.node_name,
                    None,
                    "GpudraCheckpointCorrupted",
                    f"gpudra's checkpoint was damaged or unusable; what it could not use is at {path}: {why}",
                ),
            )
        except CheckpointUnavailable as e:
            what = f"checkpoint {e.path} cannot be used: {e.reason}"
            raise StartupError(what, e.fix, "GpudraCheckpointUnavailable") from e
        except OSError as e:
            what = f"the checkpoint in {state} cannot be used: {e.strerror or e}"
            fix = f"check {state} and the files in it (their owner, mode, `lsattr`, and the disk)"
            raise StartupError(what, fix, "GpudraCheckpointUnavailable") from e

    def _serve_kubelet(
        self, kube: KubeClient, node: NodeStateStore, store: CheckpointStore, metrics: Metrics
    ) -> Preparer:
        """Orphaned CDI specs, the DRA socket, then the registration socket (and the probe port)."""
        from gpudra.kube.claims import ApiClaims
        from gpudra.kubelet import dra
        from gpudra.kubelet.health import HealthStreams
        from gpudra.kubelet.registration import SUPPORTED_VERSIONS, Registrar
        from gpudra.kubelet.sockets import UnixServer
        from gpudra.state.cdi import CdiWriter
        from gpudra.state.prepare import Preparer, PrepareSettings

        cfg = self.cfg
        settings = PrepareSettings(cfg.node_name, cfg.effective_state_dir, cfg.effective_run_dir)
        # The per-type device count walks every claim held: only worth it when someone scrapes it.
        on_prepared = None if isinstance(metrics, NullMetrics) else metrics.prepared_devices
        pods = self.claim_pods  # with usage metrics: note the pods each claim prepare reads is reserved for
        claims = ApiClaims(kube) if pods is None else PodNotingClaims(ApiClaims(kube), pods)
        self.preparer = preparer = Preparer(
            claims, node, store, CdiWriter(cfg.cdi_root),
            driver=self.driver, settings=settings, on_prepared=on_prepared,
        )  # fmt: skip
        removed = preflight.remove_leftovers(cfg)
        if removed:
            log.info("removed %d leftover temp file(s) of interrupted writes", removed)
        self._roll_back_later(preparer)
        preparer.reconcile()  # MPS daemons: prepared claims' ones that died started again, orphans stopped
        preparer.collect_garbage()
        # grpc_workers prepares at once; the reserve threads keep unprepare and probes free of them.
        registrars = dra.registrars(preparer, metrics, prepare_slots=cfg.grpc_workers)
        # The kubelet's health stream (KEP-4680, v1 and v1alpha1): served always, so a kubelet that opens
        # it unasked (1.36) gets device health (Unknown where not monitored), never UNIMPLEMENTED.
        self._health_streams = streams = HealthStreams(node, cfg.node_name)
        threads = dra.server_threads(cfg.grpc_workers) + streams.threads
        self._dra = UnixServer(cfg.dra_socket, [*registrars, *streams.registrars()], threads)
        self.registrar = Registrar(
            cfg.registration_socket, cfg.dra_socket, versions=(*SUPPORTED_VERSIONS, *streams.services)
        )
        try:
            self._dra.start()
            self.registrar.start()
        except OSError as e:  # the start-up check passed, so something changed since: say which path
            what = f"cannot offer the kubelet sockets: {e.strerror or e}"
            raise StartupError(what, "check the path named, then restart the plugin") from e
        if cfg.probe_port:
            self._probe = self._serve_probe()
        return preparer

    def _serve_probe(self) -> ProbeServerLike:
        from gpudra.kubelet.probe import PluginChecker, ProbeServer  # grpc_health only when probes are on

        cfg = self.cfg
        assert self.registrar is not None
        checker = PluginChecker(cfg.registration_socket, cfg.dra_socket, self.registrar.registered.is_set)
        probe = ProbeServer(cfg.probe_port, checker, host=cfg.probe_host)
        try:
            probe.start()
        except OSError as e:
            raise preflight.port_error(
                "--probe-port", "--probe-address", cfg.probe_address, cfg.probe_port, e
            ) from e
        return probe

    def rediscover(self) -> None:
        """Discover again now (SIGHUP); the pass runs on the re-discovery thread."""
        if self.rediscovery is not None:
            self.rediscovery.trigger()

    def stop(self) -> None:
        """Fast and complete: sockets removed, no thread left doing work (SIGTERM budget: 25 ms)."""
        if self.rediscovery is not None:
            self.rediscovery.stop()
        if self.usage is not None:
            self.usage.stop()
        if self.health is not None:
            self.health.stop()
        for timer in self._timers:
            timer.cancel()
        if self._probe is not None:
            self._probe.stop()
        if self.registrar is not None:
            self.registrar.stop()
        if self._health_streams is not None:
            self._health_streams.stop()  # the kubelet reads the end of its streams, not a cut
        if self._dra is not None:
            self._dra.stop(2.0)  # a prepare in flight finishes (rolling update: the kubelet gets its answer)
        if self.publisher is not None:
            self.publisher.stop()
        self.driver.close()


def connect(cfg: RunConfig) -> KubeClient:
    """The API client from ``--kubeconfig`` or the pod's service account. Raises StartupError."""
    try:
        return KubeClient(load_config(cfg.kubeconfig))
    except Exception as e:  # a file a human wrote: YAML, lightkube and OS errors alike mean "fix the file"
        reason = " ".join(str(e).split())[:300] or type(e).__name__
        if cfg.kubeconfig is not None:
            what = f"cannot use the kubeconfig {cfg.kubeconfig}: {reason}"
            fix = "give --kubeconfig (or KUBECONFIG) a valid kubeconfig file"
        else:
            what = f"no API server configuration: not in a pod with a service account token, and {reason}"
            fix = "run in the DaemonSet (in-cluster config), or give --kubeconfig (or KUBECONFIG)"
        raise StartupError(what, fix) from e


def serve(plugin: Plugin) -> int:
    """Run until SIGTERM or SIGINT; SIGHUP discovers again. Returns the process exit code.

    The signals are blocked in every thread (threads started by the plugin and by gRPC inherit the mask) and
    taken synchronously by this thread with ``sigwait``. A Python signal handler runs only once the main
    thread executes Python again; a signal the kernel delivered to one of gRPC's threads left the main
    thread asleep ~10 ms longer (measured: SIGTERM -> exit 16 ms median with handlers, see the benchmark).
    """
    stops = {signal.SIGTERM, signal.SIGINT}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {*stops, signal.SIGHUP})
    started = False
    try:
        plugin.start()
        started = True
        # What start-up built (modules, inventory, slices) lives as long as the process: keep it out of the
        # cyclic GC's reach. A full collection walked it in ~20 ms on synthetic-256, inside some kubelet call.
        gc.freeze()
        while (received := signal.sigwait({*stops, signal.SIGHUP})) not in stops:
            log.info("received SIGHUP: discovering again")
            plugin.rediscover()
        log.info("received %s, stopping", signal.Signals(received).name)
    finally:
        t0 = time.monotonic()
        plugin.stop()
        # After a failed start the error's own line is the one that matters (the caller prints it).
        (log.info if started else log.debug)("stopped in %.1f ms", (time.monotonic() - t0) * 1000)
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return 0
