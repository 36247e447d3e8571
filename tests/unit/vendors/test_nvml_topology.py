"""NVLink fabric domains: fabric cliques, pending registration, node-local NVLink islands, NVLink counts.

The node-local domain is ``node-`` + a hash of the island's sorted GPU UUIDs (names.local_fabric_domain):
equal on every GPU of the island, stable across restarts and enumeration order, and different on any other
node because UUIDs are globally unique. The UUIDs in the profiles are the fixtures' synthetic ones.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Callable
from typing import Any

import pynvml
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.model.inventory import Inventory
from gpudra.model.names import local_fabric_domain
from gpudra.vendors.mock.fake_nvml import FakeNvml
from gpudra.vendors.mock.profile import Profile, load_profile
from gpudra.vendors.nvidia.driver import NvidiaDriver
from gpudra.vendors.nvidia.topology import connected_components, interpret_fabric

from .helpers import variant

OpenNvml = Callable[[Profile], tuple[NvidiaDriver, FakeNvml]]
GB200_DOMAIN = "5ca1ab1e-0000-4000-8000-00000000b200.2"  # synthetic clusterUuid of the fixture, clique 2
OK, NOT_SUPPORTED = 0, 5  # nvmlGpuP2PStatus_t


def _discover(open_nvml: OpenNvml, profile: Profile) -> tuple[Inventory, FakeNvml]:
    driver, fake = open_nvml(profile)
    return driver.discover(), fake


def _domains(inventory: Inventory) -> list[str | None]:
    return [d.fabric_domain for d in inventory.devices]


def _p2p(groups: list[list[int]], n: int = 8) -> Callable[[dict[str, Any]], None]:
    """P2P NVLINK OK inside each group, NOT_SUPPORTED across groups."""
    group_of = {i: g for g, members in enumerate(groups) for i in members}

    def status(i: int, j: int) -> int | None:
        if i == j:
            return None
        return OK if i in group_of and group_of.get(i) == group_of.get(j) else NOT_SUPPORTED

    def edit(data: dict[str, Any]) -> None:
        data["p2p_status"] = {"NVLINK": [[status(i, j) for j in range(n)] for i in range(n)]}

    return edit


def test_gb200_tray_publishes_the_fabric_clique(open_nvml: OpenNvml) -> None:
    inventory, fake = _discover(open_nvml, load_profile("gb200-nvl72-tray"))
    assert _domains(inventory) == [GB200_DOMAIN] * 4
    assert [d.nvlink_links for d in inventory.devices] == [18] * 4  # links 18..35 answer INVALID_ARGUMENT
    assert "nvmlDeviceGetP2PStatus" not in fake.calls  # a clique needs no island search
    assert (inventory.warnings, inventory.fabric_pending) == ((), False)


@pytest.mark.parametrize(("name", "links"), [("dgx-h100", 18), ("dgx-a100", 12)])
def test_nvswitch_node_without_clique_gets_one_node_local_island(
    open_nvml: OpenNvml, name: str, links: int
) -> None:
    inventory, _ = _discover(open_nvml, load_profile(name))
    expected = local_fabric_domain(d.uuid for d in inventory.devices)
    assert re.fullmatch(r"node-[0-9a-f]{16}", expected)
    assert _domains(inventory) == [expected] * 8
    assert [d.nvlink_links for d in inventory.devices] == [links] * 8
    assert inventory.warnings == ()


def _reverse(data: dict[str, Any]) -> None:
    data["devices"].reverse()
    for index, device in enumerate(data["devices"]):
        device["index"] = index


def test_island_id_is_stable_across_runs_and_enumeration_order(open_nvml: OpenNvml) -> None:
    first, _ = _discover(open_nvml, load_profile("dgx-a100"))
    again, _ = _discover(open_nvml, load_profile("dgx-a100"))
    reversed_order, _ = _discover(open_nvml, variant("dgx-a100", _reverse))
    assert _domains(first) == _domains(again)
    assert set(_domains(reversed_order)) == set(_domains(first))


def test_separate_islands_get_separate_domains_and_a_lone_gpu_none(open_nvml: OpenNvml) -> None:
    inventory, _ = _discover(open_nvml, variant("dgx-a100", _p2p([[0, 1, 2], [3, 4, 5, 6]])))
    uuids = [d.uuid for d in inventory.devices]
    first, second = local_fabric_domain(uuids[0:3]), local_fabric_domain(uuids[3:7])
    assert _domains(inventory) == [first] * 3 + [second] * 4 + [None]
    assert first != second


def test_nvlink_bridged_pcie_pair(open_nvml: OpenNvml) -> None:
    def edit(data: dict[str, Any]) -> None:
        for device in data["devices"]:
            device["nvlink"] = {"states": [1, 1, 1, 1]}
        data["p2p_status"]["NVLINK"] = [[None, OK], [OK, None]]

    inventory, _ = _discover(open_nvml, variant("pcie-l4-x2", edit))
    assert _domains(inventory) == [local_fabric_domain(d.uuid for d in inventory.devices)] * 2
    assert [d.nvlink_links for d in inventory.devices] == [4, 4]


def test_gpus_without_nvlink_get_no_domain_and_no_p2p_probing(open_nvml: OpenNvml) -> None:
    inventory, fake = _discover(open_nvml, load_profile("pcie-l4-x2"))
    assert _domains(inventory) == [None, None]
    assert [d.nvlink_links for d in inventory.devices] == [None, None]  # every link NotSupported: unknown
    assert "nvmlDeviceGetP2PStatus" not in fake.calls
    assert inventory.warnings == ()


def test_inactive_links_are_not_counted(open_nvml: OpenNvml) -> None:
    profile = variant("dgx-h100", lambda d: d["devices"][0].update(nvlink={"states": [1] * 16 + [0, 0]}))
    inventory, _ = _discover(open_nvml, profile)
    assert inventory.devices[0].nvlink_links == 16


@pytest.mark.parametrize("state", [1, 2])  # NOT_STARTED, IN_PROGRESS
def test_pending_registration_withholds_the_domain_until_it_completes(
    open_nvml: OpenNvml, state: int
) -> None:
    pending = variant("gb200-nvl72-tray", lambda d: d["devices"][2]["fabric"].update(state=state))
    driver, fake = open_nvml(pending)
    inventory = driver.discover()
    assert _domains(inventory) == [GB200_DOMAIN, GB200_DOMAIN, None, GB200_DOMAIN]
    assert inventory.fabric_pending is True
    assert len(inventory.warnings) == 1
    assert "fabric registration is " in inventory.warnings[0]
    assert inventory.devices[2].uuid in inventory.warnings[0]
    fake.profile = load_profile("gb200-nvl72-tray")  # registration completes on the same node
    again = driver.discover()
    assert _domains(again) == [GB200_DOMAIN] * 4
    assert (again.fabric_pending, again.warnings) == (False, ())


def test_failed_registration_warns_and_publishes_no_clique(open_nvml: OpenNvml) -> None:
    profile = variant("gb200-nvl72-tray", lambda d: d["devices"][0]["fabric"].update(status=999))
    inventory, _ = _discover(open_nvml, profile)
    assert _domains(inventory) == [None] + [GB200_DOMAIN] * 3
    assert "NVML error 999" in inventory.warnings[0]
    assert inventory.fabric_pending is False


@pytest.mark.parametrize("code", ["NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND"])
def test_unsupported_fabric_info_falls_back_to_the_island(open_nvml: OpenNvml, code: str) -> None:
    def edit(data: dict[str, Any]) -> None:
        for device in data["devices"]:
            device["errors"] = {"nvmlDeviceGetGpuFabricInfoV": code}

    inventory, _ = _discover(open_nvml, variant("gb200-nvl72-tray", edit))
    assert _domains(inventory) == [local_fabric_domain(d.uuid for d in inventory.devices)] * 4
    assert inventory.warnings == ()


def test_lost_gpu_during_p2p_probing_only_leaves_that_gpu_out(open_nvml: OpenNvml) -> None:
    profile = variant(
        "dgx-a100",
        lambda d: d["devices"][7].update(errors={"nvmlDeviceGetP2PStatus": "NVML_ERROR_GPU_IS_LOST"}),
    )
    inventory, _ = _discover(open_nvml, profile)
    rest = local_fabric_domain(d.uuid for d in inventory.devices[:7])
    assert _domains(inventory) == [rest] * 7 + [None]
    assert len(inventory.warnings) == 7
    assert all("treated as not connected" in w for w in inventory.warnings)


def test_fabric_struct_of_an_unknown_version_is_refused_like_nvml(open_nvml: OpenNvml) -> None:
    driver, fake = open_nvml(load_profile("gb200-nvl72-tray"))
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    info = pynvml.c_nvmlGpuFabricInfoV_t()
    info.version = 1
    with pytest.raises(pynvml.NVMLError_ArgumentVersionMismatch):
        fake.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.byref(info))
    with pytest.raises(TypeError, match="byref"):
        fake.nvmlDeviceGetGpuFabricInfoV(handle, pynvml.c_nvmlGpuFabricInfoV_t())
    v3 = pynvml.c_nvmlGpuFabricInfo_v3_t()
    assert fake.nvmlDeviceGetGpuFabricInfoV(handle, ctypes.pointer(v3)) == pynvml.NVML_SUCCESS
    assert (v3.state, v3.cliqueId, v3.healthMask) == (3, 2, 170)
    assert driver.discover().devices[0].fabric_domain == GB200_DOMAIN


UUID_BYTES = st.binary(min_size=16, max_size=16)


@given(st.integers(0, 5), st.integers(0, 1000), UUID_BYTES, st.integers(0, 2**32 - 1))
def test_interpret_fabric(state: int, status: int, cluster: bytes, clique: int) -> None:
    reading = interpret_fabric(state, status, cluster, clique)
    assert reading.pending == (state in (1, 2))
    published = state == 3 and status == 0 and any(cluster)
    assert (reading.domain is not None) == published
    if reading.domain is not None:
        assert re.fullmatch(r"[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}\.[0-9]+", reading.domain)
        assert reading.domain.endswith(f".{clique}")
        assert len(reading.domain) <= 64  # fits a string attribute
    assert (reading.warning is not None) == (reading.pending or (state == 3 and status != 0))


NODES = st.lists(st.sampled_from("abcdefghij"), unique=True, min_size=1, max_size=10)


@given(NODES, st.lists(st.tuples(st.sampled_from("abcdefghijk"), st.sampled_from("abcdefghijk"))))
def test_connected_components_partition_the_nodes(nodes: list[str], edges: list[tuple[str, str]]) -> None:
    components = connected_components(nodes, edges)
    assert sorted(n for c in components for n in c) == sorted(nodes)  # a partition: each node exactly once
    where = {n: c for c in components for n in c}
    for a, b in edges:
        if a in where and b in where:
            assert where[a] is where[b]
    known = [(a, b) for a, b in edges if a in where and b in where]
    for component in components:  # each component is connected through the given edges
        seen, todo = set(), [next(iter(component))]
        while todo:
            node = todo.pop()
            seen.add(node)
            todo += [b for a, b in known if a == node and b not in seen]
            todo += [a for a, b in known if b == node and a not in seen]
        assert seen == component
