"""NvidiaDriver over FakeNvml: exact discovery of the built-in profiles and every NVML failure path."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pynvml
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpudra.model.inventory import Device, DeviceKind, PciPlacement, Semver, Vendor
from gpudra.model.names import local_fabric_domain
from gpudra.vendors.base import DiscoveryError
from gpudra.vendors.mock.fake_nvml import FakeNvml
from gpudra.vendors.mock.profile import Profile, load_profile
from gpudra.vendors.nvidia.discovery import cuda_version, driver_version, multiprocessors
from gpudra.vendors.nvidia.driver import NvidiaDriver
from tests.unit.mig_tables import H100_TABLE

from .helpers import variant

OpenNvml = Callable[[Profile], tuple[NvidiaDriver, FakeNvml]]

# Values of shared/fixtures/hardware/nvidia-systems.json systems["dgx-h100"] (UUIDs there are synthetic).
DGX_BUS_IDS = [
    "0000:1b:00.0", "0000:43:00.0", "0000:52:00.0", "0000:61:00.0",
    "0000:9d:00.0", "0000:c3:00.0", "0000:d1:00.0", "0000:df:00.0",
]  # fmt: skip
DGX_NUMA = [0, 0, 0, 0, 1, 1, 1, 1]


def _uuid(index: int) -> str:
    return f"GPU-0b100000-0000-0000-0000-{index:012x}"


def _dgx_device(index: int, island: tuple[int, ...] = tuple(range(8))) -> Device:
    """GPU ``index`` of dgx-h100; ``island``: the GPUs discovered, all joined over NVSwitch (P2P OK)."""
    return Device(
        kind=DeviceKind.GPU,
        vendor=Vendor.NVIDIA,
        uuid=_uuid(index),
        product_name="NVIDIA H100 80GB HBM3",
        index=index,
        minor=index,
        brand="Nvidia",
        architecture="Hopper",
        memory_bytes=85520809984,
        multiprocessors=132,
        cuda_compute_capability=Semver(9, 0, 0),
        pci=PciPlacement(bus_id=DGX_BUS_IDS[index], pcie_root=None, numa_node=DGX_NUMA[index]),
        mig_capable=True,
        mig_enabled=False,
        mig_profiles=H100_TABLE,  # the whole table with placements, read with MIG mode off
        nvlink_links=18,
        # fabric info is COMPLETED with a zero cluster UUID (no clique): the node-local NVLink island
        fabric_domain=local_fabric_domain(_uuid(i) for i in island),
    )


def _dgx_without(skipped: int) -> tuple[Device, ...]:
    rest = tuple(i for i in range(8) if i != skipped)
    return tuple(_dgx_device(i, rest) for i in rest)


def _lost(index: int, call: str, code: str) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        data["devices"][index]["errors"] = {call: code}

    return edit


def test_dgx_h100_discovered_exactly(open_nvml: OpenNvml) -> None:
    driver, _ = open_nvml(load_profile("dgx-h100"))
    inventory = driver.discover()
    assert inventory.devices == tuple(_dgx_device(i) for i in range(8))
    assert inventory.driver_version == Semver(580, 105, 8)
    assert inventory.cuda_driver_version == Semver(13, 0, 0)
    assert inventory.warnings == ()


def test_h100_capture_discovered_exactly(open_nvml: OpenNvml) -> None:
    driver, fake = open_nvml(load_profile("h100"))
    inventory = driver.discover()
    assert inventory.devices == (
        Device(
            kind=DeviceKind.GPU,
            vendor=Vendor.NVIDIA,
            uuid="GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63",
            product_name="NVIDIA H100 80GB HBM3",
            index=0,
            minor=0,
            brand="Nvidia",
            architecture="Hopper",
            memory_bytes=85520809984,
            multiprocessors=132,  # 16896 cores / 128 per SM at CC 9.0
            cuda_compute_capability=Semver(9, 0, 0),
            # the VM has no sysfs numa_node: unknown (NVML's NUMA call is NotSupported there anyway)
            pci=PciPlacement(bus_id="0000:00:06.0", pcie_root="pci0000:00", numa_node=None),
            mig_capable=True,  # MIG mode [0, 0] was readable
            mig_enabled=False,
            mig_profiles=H100_TABLE,  # the capture's GI profile table and `nvidia-smi mig -lgipp`
            addressing_mode="None",  # NVML_DEVICE_ADDRESSING_MODE_NONE, as nvidia-smi printed it
            nvlink_links=None,  # all 36 links NotSupported in the capture: unknown, not 0
        ),
    )
    assert str(inventory.driver_version) == "580.159.4"
    assert str(inventory.cuda_driver_version) == "13.0.0"
    assert (inventory.warnings, inventory.fabric_pending) == ((), False)
    assert "nvmlDeviceGetNumaNodeId" not in fake.calls  # NUMA comes from sysfs only


def test_numa_node_comes_from_sysfs_even_where_nvml_answers(open_nvml: OpenNvml) -> None:
    # GB200: NVML names the GPU's own memory NUMA node (2, 10, 18, 26); sysfs the node it hangs off (0, 1)
    driver, _ = open_nvml(load_profile("gb200-nvl72-tray"))
    devices = driver.discover().devices
    assert [d.pci.numa_node if d.pci else None for d in devices] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("nvmlDeviceGetBrand", "brand"),
        ("nvmlDeviceGetArchitecture", "architecture"),
        ("nvmlDeviceGetMinorNumber", "minor"),
        ("nvmlDeviceGetMemoryInfo", "memory_bytes"),
        ("nvmlDeviceGetNumGpuCores", "multiprocessors"),
        ("nvmlDeviceGetCudaComputeCapability", "cuda_compute_capability"),
    ],
)
@pytest.mark.parametrize(
    "code",
    [
        "NVML_ERROR_NOT_SUPPORTED",
        "NVML_ERROR_NO_PERMISSION",
        "NVML_ERROR_FUNCTION_NOT_FOUND",
        "NVML_ERROR_NOT_FOUND",
    ],
)
def test_unsupported_call_drops_only_that_value(
    open_nvml: OpenNvml, call: str, field: str, code: str
) -> None:
    driver, _ = open_nvml(variant("dgx-h100", _lost(2, call, code)))
    inventory = driver.discover()
    expected = _dgx_device(2)
    if field == "cuda_compute_capability":  # SMs are derived from cores and CC: both go
        expected = _replace(expected, cuda_compute_capability=None, multiprocessors=None)
    else:
        expected = _replace(expected, **{field: None})
    assert inventory.devices[2] == expected
    assert inventory.devices[:2] + inventory.devices[3:] == tuple(_dgx_device(i) for i in range(8) if i != 2)
    assert inventory.warnings == ()


@pytest.mark.parametrize(
    ("call", "field", "unsupported"),
    [
        ("nvmlDeviceGetMigMode", "mig", (False, False)),  # NotSupported answers "not MIG capable"
        ("nvmlDeviceGetAddressingMode", "addressing_mode", None),
        ("nvmlDeviceGetNvLinkState", "nvlink_links", None),
    ],
)
@pytest.mark.parametrize("code", ["NVML_ERROR_NOT_SUPPORTED", "NVML_ERROR_FUNCTION_NOT_FOUND"])
def test_new_calls_fail_alone(
    open_nvml: OpenNvml, call: str, field: str, unsupported: Any, code: str
) -> None:
    driver, _ = open_nvml(variant("gb200-nvl72-tray", _lost(1, call, code)))
    inventory = driver.discover()
    reference = backend_devices(open_nvml, "gb200-nvl72-tray")
    got, want = inventory.devices[1], reference[1]
    if field == "mig":
        expected = (None, None) if code == "NVML_ERROR_FUNCTION_NOT_FOUND" else unsupported
        assert (got.mig_capable, got.mig_enabled) == expected
        assert got.mig_profiles == ()  # not MIG-capable as far as gpudra can tell: no table read
        assert _replace(got, mig_capable=True, mig_enabled=False, mig_profiles=want.mig_profiles) == want
    else:
        assert getattr(got, field) is None
        assert _replace(got, **{field: getattr(want, field)}) == want
    assert inventory.devices[:1] + inventory.devices[2:] == reference[:1] + reference[2:]
    assert inventory.warnings == ()


def backend_devices(open_nvml: OpenNvml, name: str) -> tuple[Device, ...]:
    driver, _ = open_nvml(load_profile(name))
    return driver.discover().devices


def test_unexpected_error_drops_the_value_with_a_warning(open_nvml: OpenNvml) -> None:
    driver, _ = open_nvml(variant("dgx-h100", _lost(1, "nvmlDeviceGetBrand", "NVML_ERROR_TIMEOUT")))
    inventory = driver.discover()
    assert inventory.devices[1] == _replace(_dgx_device(1), brand=None)
    assert len(inventory.warnings) == 1
    assert "nvmlDeviceGetBrand" in inventory.warnings[0]
    assert "Timeout" in inventory.warnings[0]


@pytest.mark.parametrize(
    "call", ["nvmlDeviceGetHandleByIndex", "nvmlDeviceGetMemoryInfo", "nvmlDeviceGetName", "*"]
)
@pytest.mark.parametrize("code", ["NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_UNKNOWN"])
def test_lost_gpu_is_skipped_and_the_rest_kept(
    open_nvml: OpenNvml, call: str, code: str, caplog: pytest.LogCaptureFixture
) -> None:
    driver, _ = open_nvml(variant("dgx-h100", _lost(3, call, code)))
    inventory = driver.discover()
    assert inventory.devices == _dgx_without(3)
    assert len(inventory.warnings) == 1
    assert inventory.warnings[0].startswith("GPU index 3 skipped")
    assert "GPU index 3 skipped" in caplog.text


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["devices"][0].update(uuid=None),
        lambda d: d["devices"][0].update(errors={"nvmlDeviceGetUUID": "NVML_ERROR_NO_PERMISSION"}),
        lambda d: d["devices"][0].update(pci=None),
        lambda d: d["devices"][0].update(errors={"nvmlDeviceGetPciInfo_v3": "NVML_ERROR_NOT_SUPPORTED"}),
        lambda d: d["devices"][0].update(name=None),
    ],
    ids=["uuid-null", "uuid-no-permission", "pci-null", "pci-not-supported", "name-null"],
)
def test_gpu_without_identity_is_skipped(open_nvml: OpenNvml, edit: Callable[[dict[str, Any]], None]) -> None:
    driver, _ = open_nvml(variant("dgx-h100", edit))
    inventory = driver.discover()
    assert inventory.devices == _dgx_without(0)
    assert len(inventory.warnings) == 1
    assert "GPU index 0 skipped" in inventory.warnings[0]


def test_duplicate_uuid_is_published_once(open_nvml: OpenNvml) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["devices"][1]["uuid"] = data["devices"][0]["uuid"]

    driver, _ = open_nvml(variant("dgx-h100", edit))
    inventory = driver.discover()
    assert [d.index for d in inventory.devices] == [0, 2, 3, 4, 5, 6, 7]
    assert "duplicate UUID" in inventory.warnings[0]


def test_system_versions_unknown(open_nvml: OpenNvml) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["driver_version"] = None
        data["errors"] = {"nvmlSystemGetCudaDriverVersion": "NVML_ERROR_NOT_SUPPORTED"}

    driver, fake = open_nvml(variant("h100", edit))
    inventory = driver.discover()
    assert inventory.driver_version is None
    assert inventory.cuda_driver_version == Semver(13, 0, 0)  # from the _v2 call
    assert "nvmlSystemGetCudaDriverVersion_v2" in fake.calls
    assert len(inventory.devices) == 1


@pytest.mark.parametrize(
    ("code", "needle"),
    [
        ("NVML_ERROR_LIBRARY_NOT_FOUND", "libnvidia-ml.so.1"),
        ("NVML_ERROR_DRIVER_NOT_LOADED", "Driver Not Loaded"),
        ("NVML_ERROR_NO_PERMISSION", "Insufficient Permissions"),
    ],
)
def test_init_failure_is_a_discovery_error(tmp_path: Path, code: str, needle: str) -> None:
    fake = FakeNvml(variant("h100", lambda d: d.update(errors={"nvmlInit": code})))
    with pytest.raises(DiscoveryError, match="--backend mock") as caught:
        NvidiaDriver(fake, sysfs_root=tmp_path)
    assert needle in str(caught.value)
    assert fake.init_count == 0


def test_device_count_failure_is_a_discovery_error(open_nvml: OpenNvml) -> None:
    driver, _ = open_nvml(
        variant("h100", lambda d: d.update(errors={"nvmlDeviceGetCount": "NVML_ERROR_UNKNOWN"}))
    )
    with pytest.raises(DiscoveryError, match="cannot count"):
        driver.discover()


def test_close_shuts_nvml_down_once(open_nvml: OpenNvml) -> None:
    driver, fake = open_nvml(load_profile("h100"))
    assert fake.init_count == 1
    driver.close()
    driver.close()
    assert fake.init_count == 0
    assert fake.calls.count("nvmlShutdown") == 1
    with pytest.raises(DiscoveryError, match="closed"):
        driver.discover()


def test_pci_info_falls_back_when_v3_is_missing(tmp_path: Path) -> None:
    class OldPynvml(FakeNvml):
        nvmlDeviceGetPciInfo_v3 = None  # type: ignore[assignment]  # an older pynvml without the _v3 wrapper

    fake = OldPynvml(load_profile("h100"))
    driver = NvidiaDriver(fake, sysfs_root=tmp_path)
    devices = driver.discover().devices
    driver.close()
    assert devices[0].pci == PciPlacement(bus_id="0000:00:06.0")
    assert "nvmlDeviceGetPciInfo" in fake.calls
    assert "nvmlDeviceGetPciInfo_v3" not in fake.calls


def test_unknown_enums_are_omitted(open_nvml: OpenNvml) -> None:
    def edit(data: dict[str, Any]) -> None:
        data["devices"][0].update(architecture=pynvml.NVML_DEVICE_ARCH_UNKNOWN, brand=0)

    driver, _ = open_nvml(variant("h100", edit))
    device = driver.discover().devices[0]
    assert (device.architecture, device.brand) == (None, None)


@given(major=st.integers(1, 99), minor=st.integers(0, 99))
def test_cuda_version_from_nvml_integer(major: int, minor: int) -> None:
    assert cuda_version(major * 1000 + minor * 10) == Semver(major, minor, 0)


def test_cuda_version_examples() -> None:
    assert str(cuda_version(13000)) == "13.0.0"
    assert str(cuda_version(12040)) == "12.4.0"
    assert cuda_version(0) is None


@given(st.tuples(st.integers(0, 999), st.integers(0, 999), st.integers(0, 99)), st.booleans())
def test_driver_version_drops_leading_zeros(parts: tuple[int, int, int], pad: bool) -> None:
    text = f"{parts[0]}.{parts[1]}.{parts[2]:02d}" if pad else ".".join(map(str, parts))
    assert driver_version(text) == Semver(*parts)


def test_driver_version_examples() -> None:
    assert str(driver_version("580.159.04")) == "580.159.4"
    assert str(driver_version("580.65")) == "580.65.0"
    assert driver_version("580.65-beta") is None


@pytest.mark.parametrize(
    ("cores", "cc", "sms"),
    [
        (16896, (9, 0), 132),
        (6912, (8, 0), 108),
        (18176, (8, 9), 142),
        (2560, (7, 5), 40),
        (100, (9, 0), None),
    ],
)
def test_multiprocessors_from_cores(cores: int, cc: tuple[int, int], sms: int | None) -> None:
    assert multiprocessors(cores, cc) == sms


def test_multiprocessors_unknown_capability_is_not_guessed() -> None:
    assert multiprocessors(18944, (10, 0)) is None


def _replace(device: Device, **changes: Any) -> Device:
    return replace(device, **changes)
