"""``gpudra`` flags and their environment twins (issue 13, item 11): each pair goes through one validator, a
bad value is one line ``gpudra: <what> — <what to do>`` naming the flag and its twin, exit 2, before any
thread starts (so these run in-process). Today several crash with a traceback (``GPUDRA_METRICS_PORT=abc``),
and others are silently accepted (``--grpc-workers 0`` clamped, an unknown boolean taken as true, a pod UID
with ``/`` and spaces put into a socket name)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gpudra import cli

TWINS = ("GPUDRA_", "NODE_NAME", "KUBECONFIG")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(TWINS):
            monkeypatch.delenv(key)


def _base(tmp_path: Path) -> list[str]:
    """A run command line that is valid, except that its kubeconfig does not exist: today's code, which
    accepts the bad value, then stops there with an exception instead of serving."""
    return [
        "run", "--backend", "mock", "--node-name", "node-a", "--kubeconfig", str(tmp_path / "missing"),
        "--plugins-dir", str(tmp_path / "p"), "--registry-dir", str(tmp_path / "r"),
        "--cdi-root", str(tmp_path / "c"),
    ]  # fmt: skip


def _one_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert out == ""
    assert "Traceback" not in err
    [line] = err.splitlines()
    assert line.startswith("gpudra: ")
    assert " — " in line
    return line


BAD_FLAGS = [
    (["--metrics-port", "99999"], "--metrics-port '99999': not a TCP port", "GPUDRA_METRICS_PORT"),
    (["--probe-port", "http"], "--probe-port 'http': not a whole number", "GPUDRA_PROBE_PORT"),
    (["--grpc-workers", "0"], "--grpc-workers '0': out of range (1-64)", "GPUDRA_GRPC_WORKERS"),
    (["--pod-uid", "x y/../z"], "--pod-uid 'x y/../z': not a Kubernetes UID", "GPUDRA_POD_UID"),
    (["--plugins-dir", "rel/plugins"], "--plugins-dir 'rel/plugins': a relative path", "GPUDRA_PLUGINS_DIR"),
    (["--rediscover-interval", "-5"], "--rediscover-interval '-5'", "GPUDRA_REDISCOVER_INTERVAL"),
    (["--rediscover-interval", "nan"], "--rediscover-interval 'nan'", "GPUDRA_REDISCOVER_INTERVAL"),
    (
        ["--metrics-address", "localhost"],
        "--metrics-address 'localhost': not an IP",
        "GPUDRA_METRICS_ADDRESS",
    ),
    (["--node-name", "Node_A"], "--node-name 'Node_A': not a Node name", "NODE_NAME"),
    (["--cdi-spec-dirs", "/etc/cdi:cdi"], "--cdi-spec-dirs '/etc/cdi:cdi'", "GPUDRA_CDI_SPEC_DIRS"),
    (["--backend", "cuda"], "--backend 'cuda': not one of the choices", "GPUDRA_BACKEND"),
]


@pytest.mark.parametrize(("args", "what", "twin"), BAD_FLAGS, ids=[a[0] for a, _, _ in BAD_FLAGS])
def test_a_bad_flag_is_one_line_naming_its_twin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], what: str, twin: str
) -> None:
    assert cli.main([*_base(tmp_path), *args]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"gpudra: {what}"), line
    assert f"set {args[0]} or {twin} to " in line


BAD_TWINS = [
    ("GPUDRA_METRICS_PORT", "abc", "--metrics-port"),
    ("GPUDRA_PROBE_PORT", "70000", "--probe-port"),
    ("GPUDRA_GRPC_WORKERS", "0", "--grpc-workers"),
    ("GPUDRA_AMD_ADDITIONAL_GIDS", "nope", "--amd-additional-gids"),
    ("GPUDRA_POD_UID", "../../etc", "--pod-uid"),
    ("GPUDRA_STATE_DIR", "state", "--state-dir"),
    ("GPUDRA_REDISCOVER_PENDING_INTERVAL", "0", "--rediscover-pending-interval"),
    ("GPUDRA_VERBOSITY", "loud", "--verbose"),
    ("GPUDRA_LOG_FORMAT", "xml", "--log-format"),
    ("GPUDRA_PROBE_ADDRESS", "pod-ip", "--probe-address"),
    ("GPUDRA_SYSFS_ROOT", "sys", "--sysfs-root"),
]


@pytest.mark.parametrize(("twin", "value", "flag"), BAD_TWINS, ids=[t for t, _, _ in BAD_TWINS])
def test_a_bad_twin_fails_exactly_like_its_flag(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    twin: str,
    value: str,
    *,
    flag: str,
) -> None:
    monkeypatch.setenv(twin, value)
    assert cli.main(_base(tmp_path)) == 2
    line = _one_line(capsys)
    assert line.startswith(f"gpudra: {twin}={value!r} (the environment twin of {flag}): "), line
    assert f"set {flag} or {twin} to " in line


def test_the_same_port_for_metrics_and_probes_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Today: a bind error traceback once the slices are published."""
    assert cli.main([*_base(tmp_path), "--metrics-port", "18555", "--probe-port", "18555"]) == 2
    line = _one_line(capsys)
    assert "--metrics-port and --probe-port are both 18555" in line


def test_a_socket_dir_too_long_for_a_unix_socket_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    deep = tmp_path / ("d" * 120)
    assert cli.main([*_base(tmp_path), "--registry-dir", str(deep)]) == 2
    assert "choose a shorter --registry-dir" in _one_line(capsys)


def test_a_missing_node_name_and_an_unknown_flag_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _base(tmp_path)
    without_node = base[:3] + base[5:]
    assert cli.main(without_node) == 2
    assert "--node-name is not set" in _one_line(capsys)
    assert cli.main([*base, "--frobnicate"]) == 2
    assert "unrecognized arguments: --frobnicate" in _one_line(capsys)


def test_with_the_json_log_format_the_error_is_one_json_object(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli.main([*_base(tmp_path), "--log-format", "json", "--grpc-workers", "0"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    entry = json.loads(line)
    assert entry["level"] == "error"
    assert entry["what"] == "--grpc-workers '0': out of range (1-64)"
    assert entry["msg"] == f"{entry['what']} — {entry['fix']}"
    monkeypatch.setenv("GPUDRA_LOG_FORMAT", "json")  # also when the command line itself does not parse
    assert cli.main([*_base(tmp_path), "--frobnicate"]) == 2
    assert json.loads(capsys.readouterr().err)["what"] == "unrecognized arguments: --frobnicate"


# ---- what a valid value becomes ------------------------------------------------------------------------


def test_defaults_and_the_bind_addresses() -> None:
    args = cli.parse_args(["run", "--node-name", "node-a"], {})
    assert (args.metrics_port, args.probe_port, args.grpc_workers) == (0, 0, 4)
    assert (args.metrics_address, args.probe_address) == ("127.0.0.1", "::")
    assert args.amd_additional_gids is True
    assert args.cdi_spec_dirs == (Path("/etc/cdi"), Path("/var/run/cdi"))
    assert (args.rediscover_interval, args.rediscover_pending_interval) == (60.0, 15.0)
    assert (args.verbose, args.log_format, args.backend) == (0, "text", "auto")


def test_a_flag_wins_over_its_twin_and_an_empty_twin_is_unset() -> None:
    env = {"GPUDRA_METRICS_PORT": "abc", "GPUDRA_PROBE_PORT": "", "GPUDRA_GRPC_WORKERS": "8"}
    args = cli.parse_args(["run", "--node-name", "node-a", "--metrics-port", "9100"], env)
    assert (args.metrics_port, args.probe_port, args.grpc_workers) == (9100, 0, 8)


@pytest.mark.parametrize(
    ("text", "value"),
    [("TRUE", True), ("1", True), ("on", True), ("no", False), ("Off", False), ("0", False)],
)
def test_boolean_twins_take_the_usual_spellings(text: str, value: bool) -> None:
    args = cli.parse_args(["run", "--node-name", "n"], {"GPUDRA_AMD_ADDITIONAL_GIDS": text})
    assert args.amd_additional_gids is value
    flag = cli.parse_args(
        ["run", "--node-name", "n", "--no-amd-additional-gids"], {"GPUDRA_AMD_ADDITIONAL_GIDS": "1"}
    )
    assert flag.amd_additional_gids is False


def test_addresses_paths_and_uids_are_normalised() -> None:
    env = {
        "GPUDRA_PROBE_ADDRESS": "[::1]",
        "GPUDRA_METRICS_ADDRESS": "10.1.2.3",
        "GPUDRA_CDI_SPEC_DIRS": "/a::/b",
        "GPUDRA_POD_UID": "0b3c5d1e-7f2a-4c6b-9e8d-1a2b3c4d5e6f",
        "GPUDRA_VERBOSITY": "2",
    }
    args = cli.parse_args(["run", "--node-name", "node-a.example.com", "-v"], env)
    assert (args.probe_address, args.metrics_address) == ("::1", "10.1.2.3")
    assert args.cdi_spec_dirs == (Path("/a"), Path("/b"))
    assert args.pod_uid == env["GPUDRA_POD_UID"]
    assert args.verbose == 1  # -v given: the flag wins over GPUDRA_VERBOSITY
