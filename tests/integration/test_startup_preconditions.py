"""``gpudra run`` on a node where something local is unusable (issue 13, items 2 and 11): it checks every
local precondition before it publishes, and a failure is one line ``gpudra: <what> — <what to do>`` (or one
JSON object), exit 1, a Node Event, and no ResourceSlice — the scheduler never sees devices of a node whose
plugin cannot serve them. The Event shows the plugin reached the API: it acted, and still published nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from gpudra.model import names
from tests.integration.conftest import NODE, PluginProcess, device_names, node_slices

pytestmark = pytest.mark.integration

STARTUP_FAILED = "GpudraStartupFailed"
CHECKPOINT_UNAVAILABLE = "GpudraCheckpointUnavailable"


@dataclass
class Exit:
    code: int
    output: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.startswith("gpudra: ")]

    def one_line(self) -> str:
        """The single error line (the plugin's INFO lines before it are allowed; a traceback is not)."""
        assert "Traceback" not in self.output, self.output
        [line] = self.error_lines
        assert " — " in line, line
        assert self.output.rstrip().endswith(line), self.output
        return line


def run_to_exit(
    root: Path,
    api: FakeApiServer | None,
    *args: str,
    env: dict[str, str] | None = None,
    wrap: list[str] | None = None,
) -> Exit:
    """``gpudra run`` (mock backend, dirs under ``root``) until it exits, bounded in time."""
    command = [sys.executable, "-m", "gpudra", "run", "--backend", "mock", "--node-name", NODE]
    if api is not None:
        command += ["--kubeconfig", str(api.write_kubeconfig(root / "kubeconfig"))]
    defaults = {"--plugins-dir": "plugins", "--registry-dir": "registry", "--cdi-root": "cdi"}
    command += [a for flag, sub in defaults.items() if flag not in args for a in (flag, str(root / sub))]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPUDRA_") and k != "KUBECONFIG"}
    done = subprocess.run(
        [*(wrap or []), *command, *args],
        env={**clean, "HOME": str(root), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=15,
        check=False,
    )
    return Exit(done.returncode, done.stdout.decode(errors="replace"))


def _events(api: FakeApiServer, reason: str) -> list[dict[str, Any]]:
    return [e for e in api.list_objects("Event") if e.get("reason") == reason]


def assert_refused_before_publishing(api: FakeApiServer, result: Exit, *expected: str) -> str:
    """Exit 1, one line naming ``expected``, a Node Event saying the same, and no ResourceSlice."""
    assert result.code == 1, result.output
    line = result.one_line()
    for text in expected:
        assert text in line, line
    events = _events(api, STARTUP_FAILED) + _events(api, CHECKPOINT_UNAVAILABLE)
    assert [e["involvedObject"]["name"] for e in events] == [NODE], result.output  # it reached the API
    assert events[0]["message"] == line.removeprefix("gpudra: ")
    assert node_slices(api) == []
    return line


@pytest.fixture
def mount_namespace() -> list[str]:
    """A command prefix running the plugin in its own mount namespace (mounts vanish with it)."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"], check=False).returncode:
        pytest.skip("needs a private mount namespace (unshare -m) for a read-only bind mount")
    return ["unshare", "-m", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"']


# ---- directories ------------------------------------------------------------------------------------


def test_a_state_dir_that_is_a_file_is_refused_before_publishing(api: FakeApiServer, short_tmp: Path) -> None:
    (short_tmp / "state").write_text("not a directory")
    result = run_to_exit(short_tmp, api, "--state-dir", str(short_tmp / "state"))
    assert_refused_before_publishing(api, result, f"--state-dir {short_tmp / 'state'}", "move it away")


def test_a_read_only_state_dir_is_refused_before_publishing(
    api: FakeApiServer, short_tmp: Path, mount_namespace: list[str]
) -> None:
    """Today: slices published, then exit 1 with a traceback (the scheduler places claims on this node)."""
    state = short_tmp / "state"
    state.mkdir()
    result = run_to_exit(short_tmp, api, "--state-dir", str(state), wrap=[*mount_namespace, str(state)])
    assert_refused_before_publishing(api, result, "--state-dir", "Read-only file system", "read-write")


def test_a_cdi_root_that_is_a_file_is_refused_before_publishing(api: FakeApiServer, short_tmp: Path) -> None:
    (short_tmp / "cdi").write_text("not a directory")  # today: published, then a traceback
    result = run_to_exit(short_tmp, api)
    assert_refused_before_publishing(api, result, f"--cdi-root {short_tmp / 'cdi'}")


def test_a_run_dir_below_a_file_is_refused_before_publishing(api: FakeApiServer, short_tmp: Path) -> None:
    (short_tmp / "file").write_text("x")  # today: the plugin serves, and every prepare fails
    result = run_to_exit(short_tmp, api, "--run-dir", str(short_tmp / "file" / "run"))
    assert_refused_before_publishing(api, result, "--run-dir", "Not a directory")


# ---- sockets ----------------------------------------------------------------------------------------


def test_a_registry_dir_that_is_a_file_is_refused_before_publishing(
    api: FakeApiServer, short_tmp: Path
) -> None:
    (short_tmp / "registry").write_text("not a directory")  # today: published, then a traceback
    result = run_to_exit(short_tmp, api)
    assert_refused_before_publishing(api, result, f"--registry-dir {short_tmp / 'registry'}")


def test_a_directory_where_the_dra_socket_goes_is_refused_before_publishing(
    api: FakeApiServer, short_tmp: Path
) -> None:
    blocker = short_tmp / "plugins" / names.DRIVER_NAME / "dra.sock"
    blocker.mkdir(parents=True)  # today: published, then an IsADirectoryError traceback
    result = run_to_exit(short_tmp, api)
    assert_refused_before_publishing(api, result, f"{blocker} is a directory", "move it away")
    assert blocker.is_dir()  # not ours to remove


# ---- ports ------------------------------------------------------------------------------------------


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process (this test) listens on, on all addresses (IPv4's alone where IPv6 is off)."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        sock.bind(("::", 0))
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("0.0.0.0", 0))
    with sock:
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("flag", ["--metrics-port", "--probe-port"])
def test_a_port_in_use_is_refused_before_publishing(
    api: FakeApiServer, short_tmp: Path, taken_port: int, flag: str
) -> None:
    """Today the probe port fails after the slices are published (a traceback, then a crash loop)."""
    address = "--metrics-address" if flag == "--metrics-port" else "--probe-address"
    result = run_to_exit(short_tmp, api, flag, str(taken_port), address, "::")
    line = assert_refused_before_publishing(api, result, f"{flag} {taken_port}", "Address already in use")
    assert "stop it or choose another port" in line


def test_an_address_that_is_not_ours_is_refused_before_publishing(
    api: FakeApiServer, short_tmp: Path
) -> None:
    result = run_to_exit(short_tmp, api, "--probe-port", "0", "--metrics-port", "18931", "--metrics-address",
                         "192.0.2.1")  # fmt: skip  # TEST-NET-1: never an address of this machine
    assert_refused_before_publishing(api, result, "cannot listen on 192.0.2.1", "--metrics-address")


# ---- the checkpoint (item 2) ------------------------------------------------------------------------


def test_a_checkpoint_that_cannot_be_opened_or_moved_is_one_line_and_an_event(
    api: FakeApiServer, short_tmp: Path, mount_namespace: list[str]
) -> None:
    """The checkpoint on a read-only mount (its directory writable): it cannot be opened for writing and
    cannot be moved aside. Today: an OSError traceback, no Event, exit 1 (a crash loop saying nothing)."""
    state = short_tmp / "plugins" / names.DRIVER_NAME
    state.mkdir(parents=True)
    checkpoint = state / "checkpoint.json"
    checkpoint.write_text("")
    result = run_to_exit(short_tmp, api, wrap=[*mount_namespace, str(checkpoint)])
    line = assert_refused_before_publishing(api, result, f"checkpoint {checkpoint}", "Read-only file system")
    [event] = _events(api, CHECKPOINT_UNAVAILABLE)
    assert event["message"] == line.removeprefix("gpudra: ")


def test_a_checkpoint_lock_that_is_a_directory_is_moved_aside_and_the_plugin_runs(
    api: FakeApiServer, short_tmp: Path
) -> None:
    plugin = PluginProcess(short_tmp, api)
    (plugin.state_dir / "checkpoint.lock").mkdir(parents=True)  # today: IsADirectoryError, exit 1
    plugin.start()
    try:
        assert api.wait_for(lambda: device_names(api), timeout=10), plugin.log()
        assert list(plugin.state_dir.glob("checkpoint.lock.unusable-*"))
        assert api.wait_for(lambda: _events(api, "GpudraCheckpointCorrupted"), timeout=5), plugin.log()
        plugin.assert_alive()
    finally:
        plugin.terminate()


# ---- the API configuration --------------------------------------------------------------------------


def test_no_kubeconfig_outside_a_pod_is_one_line(short_tmp: Path) -> None:
    result = run_to_exit(short_tmp, None)  # no --kubeconfig, no KUBECONFIG, no service account, no ~/.kube
    assert result.code == 1, result.output
    line = result.one_line()
    assert "no API server configuration" in line
    assert "--kubeconfig" in line


def test_a_garbage_kubeconfig_is_one_line(short_tmp: Path) -> None:
    garbage = short_tmp / "garbage"
    garbage.write_text("{{{ this is not: a kubeconfig")
    result = run_to_exit(short_tmp, None, "--kubeconfig", str(garbage))
    assert result.code == 1, result.output
    assert f"cannot use the kubeconfig {garbage}" in result.one_line()


def test_a_failure_is_one_json_object_with_the_json_log_format(api: FakeApiServer, short_tmp: Path) -> None:
    (short_tmp / "cdi").write_text("not a directory")
    result = run_to_exit(short_tmp, api, "--log-format", "json")
    assert result.code == 1, result.output
    assert "Traceback" not in result.output
    entries = [json.loads(line) for line in result.output.splitlines()]  # every line is one JSON object
    last = entries[-1]
    assert last["level"] == "error"
    assert last["what"].startswith(f"--cdi-root {short_tmp / 'cdi'}")
    assert last["msg"] == f"{last['what']} — {last['fix']}"
    assert node_slices(api) == []
