"""sysfs reading (NUMA node, PCIe root) over tmp_path trees, and the PCI bus-id normaliser."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.vendors.sysfs import (
    is_k8s_pci_bus_id,
    normalize_pci_bus_id,
    pci_device_link,
    read_numa_node,
    read_pcie_root,
)

BDF = "0000:1b:00.0"


def _real_layout(root: Path, bdf: str, *path: str) -> Path:
    """Like a node: bus/pci/devices/<bdf> is a relative symlink into devices/<path...>/<bdf>."""
    target = root.joinpath("devices", *path, bdf)
    target.mkdir(parents=True)
    link = pci_device_link(root, bdf)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))
    return target


@pytest.mark.parametrize(
    ("nvml", "k8s"),
    [
        ("00000000:1B:00.0", "0000:1b:00.0"),
        ("00000000:00:06.0", "0000:00:06.0"),  # the real H100 capture
        ("00000008:06:00.0", "0008:06:00.0"),  # GB300: non-zero domain kept
        ("0000:CA:00.0", "0000:ca:00.0"),  # busIdLegacy form
        ("0001:05:00.3", "0001:05:00.3"),
    ],
)
def test_normalize_known_forms(nvml: str, k8s: str) -> None:
    assert normalize_pci_bus_id(nvml) == k8s


@pytest.mark.parametrize(
    "bad", ["", "garbage", "0000:1b:00", "0000:1b:00.0.0", "00010000:1b:00.0", "0000:1g:00.0"]
)
def test_normalize_rejects(bad: str) -> None:
    assert normalize_pci_bus_id(bad) is None


@given(
    address=st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFF), st.integers(0, 0x1F), st.integers(0, 7)),
    eight_digits=st.booleans(),
    upper=st.booleans(),
)
def test_normalize_any_bus_id(address: tuple[int, int, int, int], eight_digits: bool, upper: bool) -> None:
    domain, bus, device, function = address
    text = f"{domain:08x}" if eight_digits else f"{domain:04x}"
    text = f"{text}:{bus:02x}:{device:02x}.{function}"
    text = text.upper() if upper else text
    result = normalize_pci_bus_id(text)
    assert result == f"{domain:04x}:{bus:02x}:{device:02x}.{function}"
    assert is_k8s_pci_bus_id(result)
    assert normalize_pci_bus_id(result) == result


@given(st.integers(0x10000, 0xFFFFFFFF))
def test_normalize_refuses_domains_kubernetes_cannot_express(domain: int) -> None:
    assert normalize_pci_bus_id(f"{domain:08X}:1B:00.0") is None


@given(st.text(max_size=24))
def test_normalize_output_is_always_kubernetes_form(text: str) -> None:
    result = normalize_pci_bus_id(text)
    assert result is None or is_k8s_pci_bus_id(result)


@pytest.mark.parametrize(("content", "expected"), [("0\n", 0), ("1\n", 1), ("-1\n", None), ("x\n", None)])
def test_numa_node_file(tmp_path: Path, content: str, expected: int | None) -> None:
    _real_layout(tmp_path, BDF, "pci0000:16").joinpath("numa_node").write_text(content)
    assert read_numa_node(tmp_path, BDF) == expected


def test_numa_node_absent(tmp_path: Path) -> None:
    _real_layout(tmp_path, BDF, "pci0000:16")
    assert read_numa_node(tmp_path, BDF) is None
    assert read_numa_node(tmp_path, "0000:99:00.0") is None  # no device entry at all


def test_pcie_root_through_bridges(tmp_path: Path) -> None:
    _real_layout(tmp_path, BDF, "pci0000:16", "0000:16:02.0", "0000:17:00.0")
    assert read_pcie_root(tmp_path, BDF) == "pci0000:16"


def test_pcie_root_device_on_root_bus(tmp_path: Path) -> None:
    _real_layout(tmp_path, "0008:06:00.0", "pci0008:00")
    assert read_pcie_root(tmp_path, "0008:06:00.0") == "pci0008:00"


def test_pcie_root_unknown_without_symlink(tmp_path: Path) -> None:
    pci_device_link(tmp_path, BDF).mkdir(parents=True)
    assert read_pcie_root(tmp_path, BDF) is None
    assert read_pcie_root(tmp_path, "0000:99:00.0") is None


def test_pcie_root_ignores_links_leaving_the_devices_tree(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere" / "pci0000:16" / BDF
    elsewhere.mkdir(parents=True)
    link = pci_device_link(tmp_path, BDF)
    link.parent.mkdir(parents=True)
    link.symlink_to(elsewhere)
    assert read_pcie_root(tmp_path, BDF) is None


def test_pcie_root_ignores_a_target_that_is_another_device(tmp_path: Path) -> None:
    other = _real_layout(tmp_path, "0000:1c:00.0", "pci0000:16")
    link = pci_device_link(tmp_path, BDF)
    link.symlink_to(os.path.relpath(other, link.parent))
    assert read_pcie_root(tmp_path, BDF) is None
