"""``gpudra run``'s configuration: paths, ports, intervals, and what follows from them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gpudra.kubelet.paths import fit_socket_path, socket_name
from gpudra.model import names
from gpudra.vendors.base import HostRoots


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
    rediscover_interval_s: float = 60.0  # between re-discovery passes; 0: only on SIGHUP (and fabric)
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
