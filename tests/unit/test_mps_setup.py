"""``--mps-launcher``: where claims' MPS daemons run under ``gpudra run``. The Pod launcher is made at its
first use, against the stand-in API server over HTTP: the namespace and image from the environment, else the
plugin's own Pod; nothing is asked of the API before a daemon is needed; what is missing is named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest

from gpudra.cli import parse_args
from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.runtime.config import RunConfig
from gpudra.runtime.errors import UsageError
from gpudra.runtime.mps_setup import LazyPodLauncher, mps_options
from gpudra.vendors.nvidia.mps import MpsDaemonInfo, MpsDaemonSpec, MpsError, daemon_id_for

NODE: Final = "gpu-node-1"
NAMESPACE: Final = "gpudra-system"
CLAIM: Final = "5f0d7c4e-2b1a-4c3d-9e8f-0a1b2c3d4e5f"
GPU: Final = "GPU-0b100000-0000-0000-0000-000000000000"
SPEC: Final = MpsDaemonSpec(daemon_id_for(CLAIM), (GPU,), None, ())


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as running:
        yield running


def config(server: FakeApiServer, tmp_path: Path, launcher: str = "pod") -> RunConfig:
    kubeconfig = server.write_kubeconfig(tmp_path / "kubeconfig")
    return RunConfig(node_name=NODE, kubeconfig=kubeconfig, run_dir=tmp_path / "run", mps_launcher=launcher)


def info(tmp_path: Path) -> MpsDaemonInfo:
    base = tmp_path / "run" / "mps" / SPEC.daemon_id
    pipe, log, shm = base / "pipe", base / "log", base / "shm"
    return MpsDaemonInfo(SPEC.daemon_id, pipe, log, shm, pipe, shm, "")


def plugin_pod(server: FakeApiServer) -> None:
    server.put_object({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gpudra-abcde", "namespace": NAMESPACE},
        "spec": {"nodeName": NODE, "containers": [{"name": "plugin", "image": "registry.example/gpudra:1.2"}],
                 "imagePullSecrets": [{"name": "regcred"}]},
    })  # fmt: skip


def test_the_options_follow_the_flag(server: FakeApiServer, tmp_path: Path) -> None:
    process = mps_options(config(server, tmp_path, "process"), {})
    assert (process.root, process.launcher) == (tmp_path / "run" / "mps", None)
    assert isinstance(mps_options(config(server, tmp_path), {}).launcher, LazyPodLauncher)


def test_the_daemon_pod_takes_the_plugin_s_image_and_namespace(server: FakeApiServer, tmp_path: Path) -> None:
    plugin_pod(server)
    options = mps_options(config(server, tmp_path), {"POD_NAMESPACE": NAMESPACE, "HOSTNAME": "gpudra-abcde"})
    launcher = options.launcher
    assert launcher is not None
    where = launcher.launch(SPEC, info(tmp_path), {"CUDA_VISIBLE_DEVICES": GPU})
    assert where == f"pod:{NAMESPACE}/gpudra-{SPEC.daemon_id}"
    pod = server.get_object("Pod", f"gpudra-{SPEC.daemon_id}", NAMESPACE)
    assert pod is not None
    assert pod["spec"]["containers"][0]["image"] == "registry.example/gpudra:1.2"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["nodeName"] == NODE
    assert launcher.alive(SPEC.daemon_id, where)
    launcher.stop(SPEC.daemon_id, where)
    assert not launcher.alive(SPEC.daemon_id, where)


def test_an_image_given_is_used_as_it_is(server: FakeApiServer, tmp_path: Path) -> None:
    env = {"POD_NAMESPACE": NAMESPACE, "GPUDRA_MPS_IMAGE": "registry.example/mps:9"}
    launcher = mps_options(config(server, tmp_path), env).launcher
    assert launcher is not None
    launcher.launch(SPEC, info(tmp_path), {})
    pod = server.get_object("Pod", f"gpudra-{SPEC.daemon_id}", NAMESPACE)
    assert pod is not None
    assert pod["spec"]["containers"][0]["image"] == "registry.example/mps:9"


def test_what_is_missing_is_named(server: FakeApiServer, tmp_path: Path) -> None:
    no_image = mps_options(config(server, tmp_path), {"POD_NAMESPACE": NAMESPACE}).launcher
    assert no_image is not None
    with pytest.raises(MpsError, match="set GPUDRA_MPS_IMAGE"):
        no_image.launch(SPEC, info(tmp_path), {})
    assert not server.list_objects("Pod", NAMESPACE)


def test_the_flag_and_its_twin() -> None:
    base = ["run", "--node-name", "node-a"]
    assert parse_args(base, {}).mps_launcher is None  # unset: `gpudra run` takes pod
    assert parse_args(base, {"GPUDRA_MPS_LAUNCHER": "process"}).mps_launcher == "process"
    given = parse_args([*base, "--mps-launcher", "pod"], {"GPUDRA_MPS_LAUNCHER": "process"})
    assert given.mps_launcher == "pod"
    with pytest.raises(UsageError, match="--mps-launcher 'deployment': not one of the choices"):
        parse_args([*base, "--mps-launcher", "deployment"], {})
