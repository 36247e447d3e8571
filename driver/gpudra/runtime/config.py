"""``gpudra run``'s configuration: paths, ports, intervals, and what follows from them.

Bind addresses: the kubelet's gRPC probe has no host field, it always dials the pod's IP, so the probe must
listen there. Without the downward API the plugin cannot know that IP, so the probe listens on all
addresses by default (``::``, IPv4 too). In a pod network namespace that is the pod IP and loopback; with
``hostNetwork`` it would be every address of the node, which is why the DaemonSet sets
``GPUDRA_PROBE_ADDRESS`` to ``status.podIP`` (the node's address then: exactly where the kubelet connects).
The probe only says SERVING or NOT_SERVING. Metrics say more (the node's devices, claim rates): they listen
on loopback unless an address is given; the DaemonSet gives the pod IP, where Prometheus scrapes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gpudra.kubelet.paths import fit_socket_path, socket_name
from gpudra.model import names
from gpudra.runtime.errors import UsageError
from gpudra.vendors.base import HostRoots

#: All addresses, IPv6 and IPv4 (gRPC falls back to IPv4 alone where IPv6 is off).
ALL_ADDRESSES: Final = "::"


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
    metrics_address: str = "127.0.0.1"  # an IP literal; see the module docstring for both defaults
    probe_address: str = ALL_ADDRESSES
    # Calls served at once. Each holds the GIL for its CPU work, so more workers add contention: with 8
    # calls in flight on 2 cores, 8 workers prepared 270 claims/s at 3.3 ms CPU each, 4 workers 300-360
    # at 2.8-3.1 ms, 2 workers 320-370 at 2.4-2.7 ms. 4 keeps calls waiting on a slow API server apart.
    grpc_workers: int = 4
    rediscover_interval_s: float = 60.0  # between re-discovery passes; 0: only on SIGHUP (and fabric)
    rediscover_initial_s: float = 15.0  # first re-discovery while NVLink fabric registration is pending
    mig_dynamic: bool = True  # --mig-management dynamic (partitionable devices) or static
    mig_destroy_unowned: bool = False  # dynamic MIG: destroy MIG devices no claim created, at start
    fractional_gpus: bool = True  # --fractional-gpus: publish devices for claims to share by memory
    mps_launcher: str = "pod"  # --mps-launcher: MPS daemons as Pods ("pod") or detached processes ("process")
    health_monitoring: bool = True  # watch device health (taints, refusals, the kubelet's health stream)
    #: quiet period per condition kind ("xid", "ecc", "reset", "thermal") before its taint goes
    health_quiet_s: Mapping[str, float] = field(default_factory=dict)
    ignored_xids: tuple[int, ...] = (13, 31, 43, 45, 68, 109)  # NVIDIA application Xids
    usage_metrics: bool = True  # sample device usage for per-device and per-claim metrics (with metrics_port)
    usage_interval_s: float = 10.0  # between usage samples

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
        return fit_socket_path(self.registry_dir, _registration_name(self.pod_uid))

    @property
    def probe_host(self) -> str:
        """The probe address as gRPC wants it (IPv6 in brackets)."""
        return grpc_host(self.probe_address)

    @property
    def host_roots(self) -> HostRoots:
        return HostRoots(
            dev=self.dev_root,
            proc=self.proc_root,
            driver=self.driver_root,
            host_driver=self.host_driver_root,
            cdi_dirs=self.cdi_spec_dirs,
            additional_gids=self.amd_additional_gids,
        )


def _registration_name(pod_uid: str | None) -> str:
    stem = f"{names.DRIVER_NAME}-{pod_uid}" if pod_uid else names.DRIVER_NAME
    return f"{stem}-reg.sock"


def grpc_host(address: str) -> str:
    return f"[{address}]" if ipaddress.ip_address(address).version == 6 else address


def check(cfg: RunConfig) -> None:
    """What no flag shows alone: raises :class:`UsageError`."""
    if cfg.metrics_port and cfg.metrics_port == cfg.probe_port:
        raise UsageError(
            f"--metrics-port and --probe-port are both {cfg.metrics_port}",
            "give them different ports (GPUDRA_METRICS_PORT, GPUDRA_PROBE_PORT)",
        )
    for flag, directory, name in (
        ("--plugins-dir", cfg.plugin_dir, socket_name("dra", cfg.pod_uid)),
        ("--registry-dir", cfg.registry_dir, _registration_name(cfg.pod_uid)),
    ):
        try:
            fit_socket_path(directory, name)
        except ValueError as e:
            fix = f"choose a shorter {flag} (a unix socket path has at most 107 bytes)"
            raise UsageError(str(e), fix) from None
