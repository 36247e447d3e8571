"""NVIDIA host readers: /proc parsers, CDI containerEdits parsing, the Toolkit spec, the driver root."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra.model.cdi import CdiSpecError, ContainerEdits, DeviceNode, Hook, Mount
from gpudra.vendors.base import EditsError
from gpudra.vendors.nvidia.driver_root import (
    driver_files_edits,
    driver_root_files,
    library_candidates,
    pick_version,
    scan_driver_root,
)
from gpudra.vendors.nvidia.host import (
    ToolkitSpec,
    container_edits_from_cdi,
    driver_version_of,
    find_toolkit_spec,
    parse_char_majors,
    parse_mig_minors,
    parse_toolkit_spec,
    read_caps_major,
    read_mig_minors,
)
from tests.unit import nvidia_fake_host as fake

# ---- /proc ------------------------------------------------------------------------------------------


def test_mig_minors_of_the_driver_layout() -> None:
    minors = parse_mig_minors(fake.mig_minors_text(2))
    assert minors["config"] == 1
    assert minors["monitor"] == 2
    assert minors["gpu0/gi0/access"] == 3
    assert minors["gpu0/gi0/ci0/access"] == 4
    assert minors["gpu1/gi2/ci3/access"] == fake.ci_minor(1, 2, 3)
    assert len(minors) == 2 + 2 * 15 * 9


@pytest.mark.parametrize(
    "line", ["gpu0/gi1/access", "gpu0/gi1/access x", "gpu0/gi1/access 3 4", "gpu0/gi1/access -3",
             "gpu0/gi1/access ³", "", "   "],
)
def test_mig_minors_skip_malformed_lines(line: str) -> None:
    assert parse_mig_minors(f"config 1\n{line}\nmonitor 2\n") == {"config": 1, "monitor": 2}


_KEY = st.from_regex(r"gpu[0-9]{1,2}/gi[0-9]{1,2}(/ci[0-7])?/access", fullmatch=True)


@given(st.dictionaries(_KEY, st.integers(0, 2**20), max_size=20), st.lists(st.text(max_size=30), max_size=5))
def test_mig_minors_round_trip_among_garbage(entries: dict[str, int], garbage: list[str]) -> None:
    def valid(line: str) -> bool:
        fields = line.split()
        return len(fields) == 2 and fields[1].isascii() and fields[1].isdigit()

    junk = [g for g in garbage if not valid(g)]
    text = "\n".join([*junk, *(f"{k} {v}" for k, v in entries.items())])
    assert parse_mig_minors(text) == entries


def test_char_majors_read_only_character_devices() -> None:
    majors = parse_char_majors(fake.PROC_DEVICES)
    assert majors["nvidia-caps"] == 241
    assert majors["nvidia-uvm"] == 238
    assert majors["nvidia-frontend"] == 195
    assert "loop" not in majors
    assert "not-nvidia-caps" not in majors
    assert parse_char_majors("Block devices:\n241 nvidia-caps\n") == {}
    assert parse_char_majors("Character devices:\nx nvidia-caps\n241\n 241 nvidia-caps extra\n") == {}


def test_readers_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(EditsError, match=str(tmp_path / "driver/nvidia-caps/mig-minors")):
        read_mig_minors(tmp_path)
    proc = fake.make_proc(tmp_path, devices="Character devices:\n195 nvidia\n")
    assert read_mig_minors(proc)["gpu7/gi14/ci7/access"] == fake.ci_minor(7, 14, 7)
    with pytest.raises(EditsError, match="lists no nvidia-caps"):
        read_caps_major(proc)
    (proc / "devices").write_text(fake.PROC_DEVICES)
    assert read_caps_major(proc) == fake.CAPS_MAJOR


# ---- containerEdits of another spec -----------------------------------------------------------------

_PATH = st.from_regex(r"/[a-z0-9]{1,8}(/[a-z0-9.]{1,8}){0,2}", fullmatch=True)
_EDITS = st.builds(
    ContainerEdits,
    env=st.lists(st.from_regex(r"[A-Z][A-Z0-9_]{0,6}=[a-z0-9]{0,4}", fullmatch=True), max_size=3,
                 unique_by=lambda e: e.partition("=")[0]).map(tuple),
    device_nodes=st.lists(st.builds(DeviceNode, _PATH, type=st.sampled_from([None, "c", "b"]),
                                    major=st.none() | st.integers(1, 511),
                                    minor=st.none() | st.integers(0, 9),
                                    file_mode=st.none() | st.integers(0, 0o777)),
                          max_size=3, unique_by=lambda n: n.path).map(tuple),
    mounts=st.lists(st.builds(Mount, _PATH, _PATH, st.sampled_from([(), ("ro", "bind")]),
                              type=st.sampled_from([None, "bind"])),
                    max_size=3, unique_by=lambda m: m.container_path).map(tuple),
    hooks=st.lists(st.builds(Hook, st.sampled_from(["createContainer", "poststop"]), _PATH,
                             st.lists(st.text(max_size=5), max_size=3).map(tuple),
                             timeout=st.none() | st.integers(1, 60)),
                   max_size=3, unique=True).map(tuple),
    additional_gids=st.lists(st.integers(0, 2**32 - 1), max_size=2, unique=True).map(tuple),
)


@settings(max_examples=50)
@given(_EDITS)
def test_container_edits_round_trip(edits: ContainerEdits) -> None:
    assert container_edits_from_cdi(json.loads(json.dumps(edits.to_cdi()))) == edits


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"intelRdt": {"closID": "x"}}, "unsupported field"),
        ({"netDevices": [{"hostInterfaceName": "eth0", "name": "eth1"}]}, "unsupported field"),
        ({"deviceNodes": [{"path": "/dev/x", "cgroupPath": "y"}]}, r"deviceNodes\[0\]: unsupported"),
        ({"deviceNodes": [{"hostPath": "/dev/x"}]}, r"deviceNodes\[0\].path"),
        ({"deviceNodes": [{"path": "/dev/x", "major": -1}]}, "non-negative"),
        ({"deviceNodes": [{"path": "/dev/x", "major": True}]}, "non-negative"),
        ({"mounts": {"hostPath": "/a"}}, "not a list"),
        ({"mounts": [{"hostPath": "/a"}]}, "containerPath"),
        ({"mounts": [{"hostPath": "/a", "containerPath": "/b", "options": "ro"}]}, "options"),
        ({"hooks": [{"hookName": "preStart", "path": "/h"}]}, "invalid hook name"),
        ({"hooks": [{"hookName": "poststop", "path": "h"}]}, "not absolute"),
        ({"hooks": [{"hookName": "poststop", "path": "/h", "timeout": 0}]}, "positive"),
        ({"hooks": [{"hookName": "poststop", "path": "/h", "args": [1]}]}, "list of strings"),
        ({"env": ["NOVALUE"]}, "environment"),
        ({"additionalGids": [None]}, "missing"),
        ({"mounts": [{"hostPath": "/a", "containerPath": "/c"}, {"hostPath": "/b", "containerPath": "/c"}]},
         "conflicting mounts"),
        ([], "not an object"),
    ],
)
def test_container_edits_refused(raw: Any, message: str) -> None:
    with pytest.raises(CdiSpecError, match=message):
        container_edits_from_cdi(raw)


def test_major_zero_means_unset_and_duplicates_collapse() -> None:
    node = {"path": "/dev/x", "type": "c", "major": 0, "minor": 0}
    edits = container_edits_from_cdi({"deviceNodes": [node, node]})
    assert edits.device_nodes == (DeviceNode("/dev/x", type="c", major=None, minor=0),)
    assert container_edits_from_cdi(None) == ContainerEdits()


# ---- the Toolkit's spec -----------------------------------------------------------------------------


def test_toolkit_spec_parsed_from_yaml_and_json(tmp_path: Path) -> None:
    spec = fake.toolkit_spec()
    parsed = parse_toolkit_spec(tmp_path / "nvidia.yaml", yaml.safe_dump(spec))
    assert isinstance(parsed, ToolkitSpec)
    assert parsed == parse_toolkit_spec(tmp_path / "nvidia.yaml", json.dumps(spec))  # JSON is YAML too
    as_json = parse_toolkit_spec(tmp_path / "nvidia.json", json.dumps(spec))
    assert isinstance(as_json, ToolkitSpec)
    assert as_json.common == parsed.common
    assert parsed.common.env == ("NVIDIA_VISIBLE_DEVICES=void",)
    assert [h.args[1] for h in parsed.common.hooks] == ["create-symlinks", "update-ldcache"]
    assert driver_version_of(parsed.common.mounts) == fake.VERSION


@pytest.mark.parametrize(
    ("text", "name", "expected"),
    [
        ("kind: amd.com/gpu\ndevices: []\n", "amd.yaml", None),
        ("kind: management.nvidia.com/gpu\n", "m.yaml", None),
        ("[1, 2]\n", "list.yaml", None),
        ("kind: nvidia.com/gpu\ncontainerEdits: {env: [A=1]}\n", "n.yaml", "mount no driver files"),
        ("kind: nvidia.com/gpu\ncontainerEdits: {intelRdt: {}}\n", "n.yaml", "unsupported field"),
        ("kind: [\n", "n.yaml", "not valid YAML"),
        ("{", "n.json", "not valid JSON"),
    ],
)
def test_toolkit_spec_rejections(tmp_path: Path, text: str, name: str, expected: str | None) -> None:
    parsed = parse_toolkit_spec(tmp_path / name, text)
    if expected is None:
        assert parsed is None
    else:
        assert isinstance(parsed, str)
        assert expected in parsed
        assert str(tmp_path / name) in parsed


def test_later_cdi_dir_wins_and_claim_specs_are_not_read(tmp_path: Path) -> None:
    etc, run = tmp_path / "etc", tmp_path / "run"
    fake.write_toolkit_spec(etc)
    fake.write_toolkit_spec(run, fake.toolkit_spec(fake.OLD_VERSION))
    (run / "k8s.gpudra.io-claim_x.yaml").write_text("kind: nvidia.com/gpu\n")  # would be a problem if read
    (run / "broken.yaml").write_text("kind: nvidia.com/gpu\n")  # unusable: recorded, skipped
    (run / "notes.txt").write_text("{")
    lookup = find_toolkit_spec((etc, run, tmp_path / "missing"))
    assert lookup.spec is not None
    assert lookup.spec.path == run / "nvidia.yaml"
    assert lookup.problems == (f"{run / 'broken.yaml'}: its containerEdits mount no driver files",)
    assert find_toolkit_spec((run, etc)).spec == find_toolkit_spec((etc,)).spec
    assert find_toolkit_spec(()).spec is None


def test_spec_cache_sees_a_rewritten_file(tmp_path: Path) -> None:
    path = fake.write_toolkit_spec(tmp_path)
    first = find_toolkit_spec((tmp_path,)).spec
    assert first is not None
    assert driver_version_of(first.common.mounts) == fake.VERSION
    fake.write_toolkit_spec(tmp_path, fake.toolkit_spec(fake.OLD_VERSION + "1"))  # new size
    os.utime(path, ns=(1, 1))  # and a new mtime
    second = find_toolkit_spec((tmp_path,)).spec
    assert second is not None
    assert driver_version_of(second.common.mounts) == fake.OLD_VERSION + "1"
    path.unlink()
    assert find_toolkit_spec((tmp_path,)).spec is None


# ---- the driver root --------------------------------------------------------------------------------


def test_pick_version() -> None:
    names = ["libcuda.so", "libcuda.so.1", "libcuda.so.535.104.05", "libcuda.so.580.105.08", "libcuda.so.9.1"]
    assert pick_version(names, "libcuda.so.535.104.05") == "535.104.05"  # what libcuda.so.1 points to
    assert pick_version(names, None) == "580.105.08"  # numerically highest, not lexically
    assert pick_version(names, "libcuda.so.1") == "580.105.08"
    assert pick_version(["libcuda.so.1", "libcudart.so.12.4"], None) is None


_LIB_NAME = st.from_regex(r"lib(cuda|cudart|cuda-x|nvidia-ml)\.so(\.[0-9]{1,3}){0,3}(\.bak)?", fullmatch=True)


@given(st.lists(_LIB_NAME))
def test_library_candidates(names: list[str]) -> None:
    got = library_candidates(names, "libcuda")
    assert got == sorted(n for n in names if n.startswith("libcuda.so") and not n.endswith(".bak"))


def test_driver_root_scan(tmp_path: Path) -> None:
    root = fake.make_driver_root(tmp_path)
    found = scan_driver_root(root)
    assert found is not None
    assert (found.version, found.lib_dir, found.hook) == (fake.VERSION, fake.LIB, None)
    libs = {f"{fake.LIB}/{n}.so.{v}" for n in fake.LIBS for v in (fake.VERSION, "1")}
    assert set(found.files) == libs | {f"{fake.LIB}/libcuda.so", "usr/bin/nvidia-smi",
                                       "usr/bin/nvidia-debugdump", fake.FIRMWARE}
    edits = driver_files_edits(root, found)
    assert edits.hooks == ()
    assert edits.env == ()  # no LD_LIBRARY_PATH: it would replace the image's own
    smi = next(m for m in edits.mounts if m.container_path == "/usr/bin/nvidia-smi")
    ro = ("ro", "nosuid", "nodev", "bind")
    assert smi == Mount(str(root / "usr/bin/nvidia-smi"), "/usr/bin/nvidia-smi", ro)


def test_driver_root_hook_and_cache(tmp_path: Path) -> None:
    root = fake.make_driver_root(tmp_path)
    first = driver_root_files(root)
    assert first is not None
    assert first.hook is None
    (root / "usr/bin/nvidia-cdi-hook").write_bytes(b"#!")  # changes usr/bin's mtime: the cache re-scans
    found = driver_root_files(root)
    assert found is not None
    edits = driver_files_edits(root, found)
    assert edits.hooks == (Hook("createContainer", str(root / "usr/bin/nvidia-cdi-hook"),
                                ("nvidia-cdi-hook", "update-ldcache", "--folder", f"/{fake.LIB}")),)


def test_driver_root_without_libcuda(tmp_path: Path) -> None:
    (tmp_path / "usr/lib64").mkdir(parents=True)
    (tmp_path / "usr/lib64/libcuda.so.1").symlink_to("nowhere")
    assert scan_driver_root(tmp_path) is None
    assert scan_driver_root(tmp_path / "missing") is None
