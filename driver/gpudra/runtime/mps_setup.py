"""Where claims' MPS control daemons run under ``gpudra run`` (``--mps-launcher``), and their directories.

Each daemon has its directories under ``<run dir>/mps`` (the DaemonSet's run dir is a hostPath at the same
path, so the container runtime finds the pipe and shm directories CDI names). How it runs:

- ``pod`` (the default): a Pod per daemon in the plugin's namespace (:mod:`gpudra.runtime.mps_pods`), which
  outlives plugin restarts and rolling updates. Its namespace is ``POD_NAMESPACE``, else the service
  account's; its image ``GPUDRA_MPS_IMAGE``, else the plugin's own (its Pod, which ``HOSTNAME`` names, read
  once at the first launch, with its image pull secrets). Nothing is asked of the API before a claim needs
  MPS.
- ``process``: a detached process of the control binary (:mod:`gpudra.vendors.nvidia.mps_process`). It
  outlives ``kill -9`` of the plugin, not its container: for a plugin running on the host.

The mock backend runs its fake daemons as processes whatever is asked
(:func:`gpudra.vendors.mock.driver.open_mock`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from gpudra.kube.client import KubeClient, load_config
from gpudra.kube.errors import KubeError
from gpudra.runtime.config import RunConfig
from gpudra.runtime.mps_pods import MpsPodLauncher, MpsPodSettings, PodApi
from gpudra.vendors.nvidia.mps import MpsDaemonInfo, MpsDaemonSpec, MpsError
from gpudra.vendors.nvidia.sharing_options import MpsOptions

MPS_DIR: Final = "mps"
NAMESPACE_FILE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def mps_options(cfg: RunConfig, environ: Mapping[str, str] | None = None) -> MpsOptions:
    """The MPS options ``cfg`` asks for (the launcher is built lazily: no API call at start)."""
    env = os.environ if environ is None else environ
    root = cfg.effective_run_dir / MPS_DIR
    if cfg.mps_launcher != "pod":
        return MpsOptions(root=root)
    launcher = LazyPodLauncher(cfg, env, lambda: KubeClient(load_config(cfg.kubeconfig)))
    return MpsOptions(root=root, launcher=launcher)


class LazyPodLauncher:
    """An :class:`~gpudra.runtime.mps_pods.MpsPodLauncher` made at its first use: the API client, the
    namespace and, for a launch, the image are found then (:class:`MpsError` naming what is missing)."""

    def __init__(self, cfg: RunConfig, environ: Mapping[str, str], connect: Callable[[], PodApi]) -> None:
        self._cfg = cfg
        self._env = dict(environ)
        self._connect = connect
        self._lock = threading.Lock()
        self._launcher: MpsPodLauncher | None = None
        self._image_known = False

    def launch(self, spec: MpsDaemonSpec, info: MpsDaemonInfo, env: Mapping[str, str]) -> str:
        return self._get(image=True).launch(spec, info, env)

    def stop(self, daemon_id: str, where: str) -> None:
        self._get(image=False).stop(daemon_id, where)

    def alive(self, daemon_id: str, where: str) -> bool:
        return self._get(image=False).alive(daemon_id, where)

    def _get(self, *, image: bool) -> MpsPodLauncher:
        with self._lock:
            if self._launcher is None:
                self._launcher = self._make()
            if image and not self._image_known:
                self._launcher = MpsPodLauncher(self._launcher.api, self._with_image(self._launcher))
                self._image_known = True
            return self._launcher

    def _make(self) -> MpsPodLauncher:
        try:
            api = self._connect()
        except Exception as e:  # a kubeconfig the plugin itself started with: unlikely, said in full
            raise MpsError(f"MPS daemon Pods: no API client: {e}") from e
        namespace = self._env.get("POD_NAMESPACE") or _read(NAMESPACE_FILE)
        if not namespace:
            raise MpsError(
                "MPS daemon Pods need the plugin's namespace: set POD_NAMESPACE (the downward API's "
                "metadata.namespace), or run the daemons as processes (--mps-launcher process)"
            )
        driver_root = self._cfg.host_driver_root or self._cfg.driver_root
        settings = MpsPodSettings(namespace=namespace, image="", node_name=self._cfg.node_name,
                                  driver_root=driver_root)  # fmt: skip
        return MpsPodLauncher(api, settings)

    def _with_image(self, launcher: MpsPodLauncher) -> MpsPodSettings:
        settings = launcher.settings
        image = self._env.get("GPUDRA_MPS_IMAGE", "")
        if image:
            return replace(settings, image=image)
        name = self._env.get("HOSTNAME", "")
        try:
            pod: Mapping[str, Any] = launcher.api.get_pod(settings.namespace, name) if name else {}
        except KubeError as e:
            where = f"{settings.namespace}/{name}"
            raise MpsError(f"MPS daemon Pods: cannot read the plugin's Pod {where}: {e}") from e
        spec = pod.get("spec") or {}
        containers = spec.get("containers") or [{}]
        image = str(containers[0].get("image") or "")
        if not image:
            raise MpsError(
                "MPS daemon Pods need an image to run the driver's nvidia-cuda-mps-control in: set "
                "GPUDRA_MPS_IMAGE (the plugin's image), or run the daemons as processes "
                "(--mps-launcher process)"
            )
        secrets = tuple(str(s.get("name")) for s in spec.get("imagePullSecrets") or [] if s.get("name"))
        return replace(settings, image=image, image_pull_secrets=secrets)


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""
