"""MPS control daemons as Pods: the Pod launcher over the real Kubernetes client against the stand-in API
server on HTTP: the Pod it creates, one that exists already, delete, and a Pod that is gone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.kube.client import KubeClient, KubeError, load_config
from gpudra.runtime.mps_pods import MpsPodLauncher, MpsPodSettings, parse_where, pod_manifest
from gpudra.vendors.nvidia.mps import MpsControl, MpsDaemons, MpsDaemonSpec, MpsError, daemon_id_for
from gpudra.vendors.nvidia.mps_control import MIB

NODE = "gpu-node-1"
NAMESPACE = "gpudra-system"
CLAIM = "5f0d7c4e-2b1a-4c3d-9e8f-0a1b2c3d4e5f"
GPU = "GPU-0b100000-0000-0000-0000-000000000000"
SPEC = MpsDaemonSpec(daemon_id_for(CLAIM), (GPU,), 50, ((GPU, 10240 * MIB),))
SETTINGS = MpsPodSettings(
    namespace=NAMESPACE,
    image="registry.example/gpudra:0.1.0",
    node_name=NODE,
    service_account="gpudra",
    driver_root=Path("/run/nvidia/driver"),
)
POD = f"gpudra-mps-{CLAIM}"
WHERE = f"pod:{NAMESPACE}/{POD}"


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as running:
        yield running


@pytest.fixture
def kube(server: FakeApiServer, tmp_path: Path) -> Iterator[KubeClient]:
    client = KubeClient(load_config(server.write_kubeconfig(tmp_path / "kubeconfig")), timeout_s=10)
    yield client
    client.close()


@pytest.fixture
def launcher(kube: KubeClient) -> MpsPodLauncher:
    return MpsPodLauncher(kube, SETTINGS)


def daemons(tmp_path: Path, launcher: MpsPodLauncher) -> MpsDaemons:
    return MpsDaemons(
        tmp_path / "mps", launcher, MpsControl("nvidia-cuda-mps-control"), host_root=Path("/var/lib/mps")
    )


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}


def launch(tmp_path: Path, launcher: MpsPodLauncher, spec: MpsDaemonSpec = SPEC) -> str:
    manager = daemons(tmp_path, launcher)
    info = manager.info(spec.daemon_id)
    return launcher.launch(spec, info, {"CUDA_VISIBLE_DEVICES": GPU, "CUDA_MPS_PIPE_DIRECTORY": "/x"})


def test_launch_creates_a_pod_bound_to_the_node(
    tmp_path: Path, launcher: MpsPodLauncher, server: FakeApiServer
) -> None:
    assert launch(tmp_path, launcher) == WHERE
    pod = server.get_object("Pod", POD, NAMESPACE)
    assert pod is not None
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["labels"]["app.kubernetes.io/name"] == "gpudra-mps"
    assert meta["labels"]["gpudra.io/claim-uid"] == CLAIM
    assert "ownerReferences" not in meta  # a rolling update of the plugin must not take it along
    assert spec["nodeName"] == NODE
    assert spec["restartPolicy"] == "Always"
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["serviceAccountName"] == "gpudra"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    container = spec["containers"][0]
    assert container["image"] == SETTINGS.image
    assert container["command"] == ["/driver-root/usr/bin/nvidia-cuda-mps-control", "-f"]
    env = env_of(pod)
    assert env["CUDA_VISIBLE_DEVICES"] == GPU
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == "/tmp/nvidia-mps"  # as the container sees it
    assert env["CUDA_MPS_LOG_DIRECTORY"] == "/var/log/nvidia-mps"
    host_paths = {v["name"]: v["hostPath"] for v in spec["volumes"]}
    base = f"/var/lib/mps/{SPEC.daemon_id}"
    assert host_paths == {
        "driver-root": {"path": "/run/nvidia/driver", "type": "Directory"},
        "mps-pipe": {"path": f"{base}/pipe", "type": "Directory"},
        "mps-log": {"path": f"{base}/log", "type": "Directory"},
        "mps-shm": {"path": f"{base}/shm", "type": "Directory"},
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["mps-pipe"] == "/tmp/nvidia-mps"
    assert mounts["mps-shm"] == "/dev/shm"
    assert launcher.alive(SPEC.daemon_id, WHERE)
    assert launcher.found() == ((SPEC.daemon_id, WHERE),)


def test_launch_reuses_the_pod_of_the_same_daemon(
    tmp_path: Path, launcher: MpsPodLauncher, server: FakeApiServer
) -> None:
    assert launch(tmp_path, launcher) == WHERE
    assert launch(tmp_path, launcher) == WHERE  # AlreadyExists: the daemon is launched
    assert len(server.list_objects("Pod", NAMESPACE)) == 1
    assert server.count("POST", f"/api/v1/namespaces/{NAMESPACE}/pods") == 2


def test_launch_refuses_a_pod_of_that_name_that_is_not_the_daemons(
    tmp_path: Path, launcher: MpsPodLauncher, server: FakeApiServer
) -> None:
    squatter = pod_manifest(SPEC, daemons(tmp_path, launcher).info(SPEC.daemon_id), {}, SETTINGS)
    squatter["metadata"]["annotations"] = {}
    server.put_object(dict(squatter))
    with pytest.raises(MpsError, match="is not MPS daemon"):
        launch(tmp_path, launcher)
    assert not launcher.alive(SPEC.daemon_id, WHERE)


def test_stop_deletes_the_pod_and_a_missing_pod_is_no_error(
    tmp_path: Path, launcher: MpsPodLauncher, server: FakeApiServer
) -> None:
    launch(tmp_path, launcher)
    launcher.stop(SPEC.daemon_id, WHERE)
    assert server.get_object("Pod", POD, NAMESPACE) is None
    assert not launcher.alive(SPEC.daemon_id, WHERE)  # not found
    launcher.stop(SPEC.daemon_id, WHERE)  # not found: nothing to do
    assert launcher.found() == ()


@pytest.mark.parametrize(
    "change",
    [
        {"status": {"phase": "Failed"}},
        {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}},
    ],
)
def test_a_finished_or_deleted_pod_is_not_alive(
    tmp_path: Path, launcher: MpsPodLauncher, server: FakeApiServer, change: dict[str, Any]
) -> None:
    launch(tmp_path, launcher)
    pod = server.get_object("Pod", POD, NAMESPACE)
    assert pod is not None
    for key, value in change.items():
        pod[key] = {**pod.get(key, {}), **value}
    server.put_object(pod)
    assert not launcher.alive(SPEC.daemon_id, WHERE)


def test_the_manager_stops_a_pod_daemon(
    tmp_path: Path, launcher: MpsPodLauncher, server: FakeApiServer
) -> None:
    launch(tmp_path, launcher)
    manager = daemons(tmp_path, launcher)
    manager.info(SPEC.daemon_id).pipe_dir.mkdir(parents=True)
    manager.stop(SPEC.daemon_id, WHERE)  # quit finds no binary (logged), the Pod goes, the dirs go
    assert server.get_object("Pod", POD, NAMESPACE) is None
    assert manager.found() == ()


def test_api_failures_are_mps_errors(tmp_path: Path, launcher: MpsPodLauncher, server: FakeApiServer) -> None:
    server.stop()
    with pytest.raises(MpsError, match="cannot create the MPS control daemon Pod"):
        launch(tmp_path, launcher)
    with pytest.raises(MpsError, match="cannot read the MPS control daemon Pod"):
        launcher.alive(SPEC.daemon_id, WHERE)


def test_the_stand_in_validates_pods(kube: KubeClient) -> None:
    bad = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": NAMESPACE},
        "spec": {
            "restartPolicy": "Sometimes",
            "containers": [{"name": "c", "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
            "volumes": [{"name": "w", "hostPath": {"path": "/w", "type": "Folder"}}],
        },
    }
    with pytest.raises(KubeError) as raised:
        kube.create_pod(bad)
    assert raised.value.code == 422
    message = str(raised.value)
    for part in (
        'spec.restartPolicy: Unsupported value: "Sometimes"',
        "spec.containers[0].image: Required value",
        'spec.containers[0].volumeMounts[0].name: Not found: "v"',
        'spec.volumes[0].hostPath.type: Unsupported value: "Folder"',
    ):
        assert part in message


def test_where_is_parsed_strictly() -> None:
    assert parse_where(WHERE) == (NAMESPACE, POD)
    for bad in ("pid:12", "pod:ns", "pod:/name", "pod:ns/a/b", ""):
        with pytest.raises(MpsError):
            parse_where(bad)
