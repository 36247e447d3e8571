"""MPS control daemons as Pods: how a claim's daemon outlives plugin restarts and rolling updates.

A process the plugin starts dies with the plugin's container (its pid namespace ends with it), and a
rolling update replaces that container while the claim's pods keep running. So in a cluster each claim's
daemon runs in a Pod of its own (:class:`MpsPodLauncher`, behind the same
:class:`~gpudra.vendors.nvidia.mps.MpsLauncher` protocol as the process launcher). NVIDIA's driver uses a
Deployment per claim; gpudra uses a bare Pod, because it is bound to one node and one claim and is never
rescheduled: ``spec.nodeName`` binds it to this node (no scheduler), ``restartPolicy: Always`` has the kubelet
restart a daemon that exits, and no owner reference ties it to the plugin's Pod (a rolling update must not
garbage-collect it). It is deleted when the claim is unprepared; at start the plugin lists this node's
daemon Pods (:meth:`MpsPodLauncher.found`) to stop those no claim holds.

The Pod (:func:`pod_manifest`): the plugin's image; the command is ``nvidia-cuda-mps-control -f`` from the
driver root mounted at ``/driver-root`` (with the driver's ``usr/bin`` first on ``PATH``, where the control
daemon finds ``nvidia-cuda-mps-server``, and its library directories on ``LD_LIBRARY_PATH``); hostPath
volumes for the claim's pipe, log and shm directories (type ``Directory``: the kubelet never recreates them
once unprepare removed them) at ``/tmp/nvidia-mps``, ``/var/log/nvidia-mps`` and ``/dev/shm``;
``CUDA_VISIBLE_DEVICES`` set to the claim's UUIDs. Like NVIDIA's, it is privileged (the GPU device nodes) and
shares the host's pid namespace (MPS tracks its clients, in other pods, by pid). It tolerates every taint
and has priority ``system-node-critical``: the daemon of a running workload must not be evicted before it.

The plugin's ServiceAccount needs ``create``, ``get``, ``list`` and ``delete`` on Pods in ``namespace``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, NotRequired, Protocol, TypedDict

from gpudra.kube.errors import KubeError
from gpudra.model.k8stypes import ObjectMeta
from gpudra.vendors.nvidia.driver_root import LIB_DIRS
from gpudra.vendors.nvidia.mps import (
    CONTAINER_PIPE_DIR,
    CONTAINER_SHM_DIR,
    DAEMON_ID_PREFIX,
    MpsDaemonInfo,
    MpsDaemonSpec,
    MpsError,
)
from gpudra.vendors.nvidia.mps_control import CONTROL_BINARY, LOG_DIR_ENV, PIPE_DIR_ENV

log = logging.getLogger(__name__)

APP_LABEL: Final = "app.kubernetes.io/name"
APP_NAME: Final = "gpudra-mps"
CLAIM_UID_LABEL: Final = "gpudra.io/claim-uid"
DAEMON_ID_ANNOTATION: Final = "gpudra.io/mps-daemon-id"
GPUS_ANNOTATION: Final = "gpudra.io/gpus"
POD_PREFIX: Final = "gpudra-"
WHERE_PREFIX: Final = "pod:"
DRIVER_ROOT_MOUNT: Final = "/driver-root"
CONTAINER_LOG_DIR: Final = "/var/log/nvidia-mps"
CONTAINER_NAME: Final = "mps-control-daemon"
_SYSTEM_PATH: Final = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MAX_NAME: Final = 63


class EnvVar(TypedDict):
    name: str
    value: str


class VolumeMount(TypedDict):
    name: str
    mountPath: str
    readOnly: NotRequired[bool]
    mountPropagation: NotRequired[str]


class Container(TypedDict, total=False):
    name: str
    image: str
    imagePullPolicy: str
    command: list[str]
    env: list[EnvVar]
    securityContext: dict[str, Any]
    volumeMounts: list[VolumeMount]
    resources: dict[str, dict[str, str]]


class HostPathSource(TypedDict):
    path: str
    type: str


class Volume(TypedDict):
    name: str
    hostPath: HostPathSource


class PodSpec(TypedDict, total=False):
    nodeName: str
    restartPolicy: str
    priorityClassName: str
    serviceAccountName: str
    automountServiceAccountToken: bool
    hostPID: bool
    enableServiceLinks: bool
    terminationGracePeriodSeconds: int
    tolerations: list[dict[str, str]]
    imagePullSecrets: list[dict[str, str]]
    containers: list[Container]
    volumes: list[Volume]


class Pod(TypedDict, total=False):
    apiVersion: str
    kind: str
    metadata: ObjectMeta
    spec: PodSpec
    status: dict[str, Any]


class PodApi(Protocol):
    """The Pod calls of :class:`gpudra.kube.client.KubeClient` (raising :class:`KubeError`)."""

    def create_pod(self, obj: Mapping[str, Any]) -> dict[str, Any]: ...

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]: ...

    def delete_pod(self, namespace: str, name: str, grace_period_s: int | None = None) -> None: ...

    def list_pods(
        self, namespace: str, labels: Mapping[str, str], node_name: str | None = None
    ) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class MpsPodSettings:
    namespace: str  # the plugin's namespace
    image: str  # the plugin's image
    node_name: str
    service_account: str = ""  # "" : the namespace's default
    driver_root: Path = Path("/")  # the NVIDIA driver root on the host
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: tuple[str, ...] = ()
    #: The container's command; default ``/driver-root/usr/bin/nvidia-cuda-mps-control -f``.
    command: tuple[str, ...] = ()
    grace_period_s: int = 10


def pod_name(daemon_id: str) -> str:
    """``gpudra-mps-<claim uid>``."""
    return f"{POD_PREFIX}{daemon_id}"


def parse_where(where: str) -> tuple[str, str]:
    """(namespace, name) of ``pod:<namespace>/<name>``; MpsError for anything else."""
    namespace, slash, name = where.removeprefix(WHERE_PREFIX).partition("/")
    if not where.startswith(WHERE_PREFIX) or not slash or not namespace or not name or "/" in name:
        raise MpsError(f"not an MPS daemon Pod: {where!r}")
    return namespace, name


def _env(env: Mapping[str, str]) -> list[EnvVar]:
    """The launcher's variables with the directories as the container sees them, and the driver's paths."""
    inside = {**env, PIPE_DIR_ENV: CONTAINER_PIPE_DIR, LOG_DIR_ENV: CONTAINER_LOG_DIR}
    inside["PATH"] = f"{DRIVER_ROOT_MOUNT}/usr/bin:{DRIVER_ROOT_MOUNT}/usr/sbin:{_SYSTEM_PATH}"
    inside["LD_LIBRARY_PATH"] = ":".join(f"{DRIVER_ROOT_MOUNT}/{d}" for d in LIB_DIRS)
    return [EnvVar(name=k, value=v) for k, v in sorted(inside.items())]


def _volumes(info: MpsDaemonInfo, driver_root: Path) -> tuple[list[Volume], list[VolumeMount]]:
    where = (
        ("driver-root", str(driver_root), DRIVER_ROOT_MOUNT),
        ("mps-pipe", str(info.host_pipe_dir), CONTAINER_PIPE_DIR),
        ("mps-log", str(info.host_log_dir), CONTAINER_LOG_DIR),
        ("mps-shm", str(info.host_shm_dir), CONTAINER_SHM_DIR),
    )
    volumes = [Volume(name=n, hostPath=HostPathSource(path=p, type="Directory")) for n, p, _ in where]
    mounts = [VolumeMount(name=n, mountPath=m) for n, _, m in where]
    mounts[0]["readOnly"] = True
    mounts[0]["mountPropagation"] = "HostToContainer"  # a driver container may mount the root later
    return volumes, mounts


def pod_manifest(
    spec: MpsDaemonSpec, info: MpsDaemonInfo, env: Mapping[str, str], settings: MpsPodSettings
) -> Pod:
    """The Pod that runs ``spec``'s daemon on ``settings.node_name`` (pure)."""
    name = pod_name(spec.daemon_id)
    if len(name) > _MAX_NAME:
        raise MpsError(f"MPS daemon Pod name {name!r} is longer than {_MAX_NAME} characters")
    volumes, mounts = _volumes(info, settings.driver_root)
    command = list(settings.command) or [f"{DRIVER_ROOT_MOUNT}/{CONTROL_BINARY}", "-f"]
    container = Container(
        name=CONTAINER_NAME,
        image=settings.image,
        imagePullPolicy=settings.image_pull_policy,
        command=command,
        env=_env(env),
        securityContext={"privileged": True},
        volumeMounts=mounts,
        resources={"requests": {"cpu": "10m", "memory": "32Mi"}},
    )
    pod_spec = PodSpec(
        nodeName=settings.node_name,
        restartPolicy="Always",
        priorityClassName="system-node-critical",
        automountServiceAccountToken=False,  # the daemon never calls the API
        hostPID=True,
        enableServiceLinks=False,
        terminationGracePeriodSeconds=settings.grace_period_s,
        tolerations=[{"operator": "Exists"}],
        containers=[container],
        volumes=volumes,
    )
    if settings.service_account:
        pod_spec["serviceAccountName"] = settings.service_account
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": s} for s in settings.image_pull_secrets]
    labels = {APP_LABEL: APP_NAME, "app.kubernetes.io/part-of": "gpudra"}
    labels[CLAIM_UID_LABEL] = spec.daemon_id.removeprefix(DAEMON_ID_PREFIX)
    meta = ObjectMeta(
        name=name,
        namespace=settings.namespace,
        labels=labels,
        annotations={DAEMON_ID_ANNOTATION: spec.daemon_id, GPUS_ANNOTATION: ",".join(spec.gpu_uuids)},
    )
    return Pod(apiVersion="v1", kind="Pod", metadata=meta, spec=pod_spec)


def _daemon_id(pod: Mapping[str, Any]) -> str:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(DAEMON_ID_ANNOTATION, "")
    return value if isinstance(value, str) else ""


def _serving(pod: Mapping[str, Any], daemon_id: str) -> bool:
    """The Pod is this daemon's, not being deleted, and not finished (``Always`` restarts a daemon that
    exits: its phase stays Running)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return False
    return _daemon_id(pod) == daemon_id


class MpsPodLauncher:
    """Runs each daemon in a Pod of ``settings.namespace`` bound to ``settings.node_name``."""

    def __init__(self, api: PodApi, settings: MpsPodSettings) -> None:
        self.api = api
        self.settings = settings

    def launch(self, spec: MpsDaemonSpec, info: MpsDaemonInfo, env: Mapping[str, str]) -> str:
        """Create the Pod; one that exists already for this daemon is taken as launched."""
        pod = pod_manifest(spec, info, env, self.settings)
        namespace, name = self.settings.namespace, pod_name(spec.daemon_id)
        where = f"{WHERE_PREFIX}{namespace}/{name}"
        try:
            self.api.create_pod(pod)
        except KubeError as e:
            if e.code != 409 or e.reason != "AlreadyExists":
                raise MpsError(f"cannot create the MPS control daemon Pod {namespace}/{name}: {e}") from e
            self._check_existing(spec.daemon_id, namespace, name)
            log.info("MPS daemon Pod %s/%s exists already: reused", namespace, name)
        return where

    def _check_existing(self, daemon_id: str, namespace: str, name: str) -> None:
        try:
            pod = self.api.get_pod(namespace, name)
        except KubeError as e:
            raise MpsError(f"cannot read the MPS control daemon Pod {namespace}/{name}: {e}") from e
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            raise MpsError(f"the MPS control daemon Pod {namespace}/{name} is still being deleted; retry")
        if _daemon_id(pod) != daemon_id:
            raise MpsError(f"Pod {namespace}/{name} exists and is not MPS daemon {daemon_id}'s")

    def alive(self, daemon_id: str, where: str) -> bool:
        namespace, name = parse_where(where)
        try:
            pod = self.api.get_pod(namespace, name)
        except KubeError as e:
            if e.not_found:
                return False
            raise MpsError(f"cannot read the MPS control daemon Pod {namespace}/{name}: {e}") from e
        return _serving(pod, daemon_id)

    def stop(self, daemon_id: str, where: str) -> None:
        namespace, name = parse_where(where)
        try:
            self.api.delete_pod(namespace, name, self.settings.grace_period_s)
        except KubeError as e:
            if e.not_found:
                return
            raise MpsError(f"cannot delete the MPS control daemon Pod {namespace}/{name}: {e}") from e
        log.info("MPS daemon %s: Pod %s/%s deleted", daemon_id, namespace, name)

    def found(self) -> tuple[tuple[str, str], ...]:
        """(daemon id, where) of every MPS daemon Pod of this node (for orphan clean-up at start)."""
        namespace = self.settings.namespace
        try:
            pods = self.api.list_pods(namespace, {APP_LABEL: APP_NAME}, self.settings.node_name)
        except KubeError as e:
            raise MpsError(f"cannot list the MPS control daemon Pods in {namespace}: {e}") from e
        found = []
        for pod in pods:
            daemon_id, name = _daemon_id(pod), (pod.get("metadata") or {}).get("name", "")
            if daemon_id and name:
                found.append((daemon_id, f"{WHERE_PREFIX}{namespace}/{name}"))
        return tuple(sorted(found))
