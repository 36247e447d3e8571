"""open_driver: the mock, honest refusals, and real pynvml on this GPU-less machine."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest

from gpudra.vendors.base import DiscoveryError
from gpudra.vendors.mock.driver import MockDriver
from gpudra.vendors.select import list_profiles, open_driver

HAS_NVML = ctypes.util.find_library("nvidia-ml") is not None


def test_mock_defaults_to_dgx_h100(tmp_path: Path) -> None:
    backend = open_driver("mock", None, tmp_path)
    try:
        assert isinstance(backend, MockDriver)
        assert backend.name == "mock"
        devices = backend.discover().devices
        assert len(devices) == 8
        assert {d.product_name for d in devices} == {"NVIDIA H100 80GB HBM3"}
    finally:
        backend.close()


def test_mock_with_a_named_profile(tmp_path: Path) -> None:
    backend = open_driver("mock", "h100", tmp_path)
    try:
        assert [d.uuid for d in backend.discover().devices] == ["GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63"]
    finally:
        backend.close()


def test_mock_bad_profile_is_a_discovery_error(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="unknown profile 'nope'"):
        open_driver("mock", "nope", tmp_path)


def test_mock_init_failure_from_profile(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{"devices": [], "errors": {"nvmlInit": "NVML_ERROR_DRIVER_NOT_LOADED"}}')
    with pytest.raises(DiscoveryError, match="Driver Not Loaded"):
        open_driver("mock", str(path), tmp_path)


def test_amd_backend_reads_the_given_sysfs_root(tmp_path: Path) -> None:
    backend = open_driver("amd", None, tmp_path)  # an empty tree: no amdgpu device, no KFD
    try:
        assert backend.name == "amd"
        assert backend.discover().devices == ()
    finally:
        backend.close()


def test_mock_routes_amd_profiles_to_the_amd_fakes() -> None:
    backend = open_driver("mock", "mi300x-8-cpx-nps4", Path("/sys"))
    try:
        devices = backend.discover().devices
    finally:
        backend.close()
    assert len(devices) == 64
    assert {d.vendor.value for d in devices} == {"amd"}


def test_profile_only_with_mock(tmp_path: Path) -> None:
    with pytest.raises(DiscoveryError, match="only applies to --backend mock"):
        open_driver("nvml", "h100", tmp_path)


def test_list_profiles() -> None:
    profiles = list_profiles()
    assert profiles == sorted(profiles)
    nvidia = {"dgx-a100", "dgx-h100", "gb200-nvl72-tray", "h100", "h100-mig-mixed", "pcie-l4-x2"}
    assert nvidia <= set(profiles)


@pytest.mark.skipif(HAS_NVML, reason="libnvidia-ml is installed on this machine")
@pytest.mark.parametrize("kind", ["auto", "nvml"])
def test_real_pynvml_without_the_library(tmp_path: Path, kind: str) -> None:
    with pytest.raises(DiscoveryError) as caught:
        open_driver(kind, None, tmp_path)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "libnvidia-ml.so.1" in message
    assert "--backend mock --profile dgx-h100" in message
    assert isinstance(caught.value.__cause__, pynvml.NVMLError_LibraryNotFound)


def test_importing_gpudra_never_loads_libnvidia_ml() -> None:
    code = (
        "import gpudra.vendors.select, gpudra.vendors.mock.fake_nvml, pynvml\n"
        "import gpudra.vendors.nvidia.discovery\n"
        "assert pynvml.nvmlLib is None, 'NVML library loaded at import'\n"
        "assert 'libnvidia-ml' not in open('/proc/self/maps').read()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
