"""The shipped DeviceClasses: valid ``resource.k8s.io/v1`` objects whose selectors pick the right devices.

Devices are published exactly as the driver does (mock backend -> discover -> ``slices.plan_slices``) and
the selectors run on gpudra's CEL emulation (:mod:`gpudra.devtools.cel`), not on the scheduler.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpudra.devtools import cel
from gpudra.model import k8stypes, names
from gpudra.planning.offer import plan_offer
from gpudra.planning.slices import plan_slices
from gpudra.vendors.base import DiscoveryError
from gpudra.vendors.select import list_profiles, open_driver

REPO = Path(__file__).resolve().parents[2]
CLASS_DIR = REPO / "deviceclasses"
CLASS_FILES = sorted(CLASS_DIR.glob("*.gpudra.io.yaml"))
CLASS_CONSTANTS = {value for key, value in vars(names).items() if key.startswith("CLASS_")}
#: What the CEL spec allows in one selector (resource.k8s.io/v1 CELSelectorExpressionMaxLength).
MAX_EXPRESSION_BYTES = 10 * 1024


# ---- helpers shared with test_cel.py -------------------------------------------------------------------


@functools.cache
def undiscoverable(profile: str) -> str | None:
    """Why a built-in profile cannot be discovered yet (its backend is still being written), or None."""
    try:
        published(profile)
    except DiscoveryError as err:
        return f"mock profile {profile!r} cannot be discovered yet: {err}"
    return None


def discoverable_profiles() -> list[str]:
    return [p for p in list_profiles() if undiscoverable(p) is None]


@functools.cache
def published(profile: str) -> tuple[k8stypes.Device, ...]:
    """The devices gpudra publishes for a built-in mock profile."""
    backend = open_driver("mock", profile, Path("/sys"))
    try:
        inventory = backend.discover()
    finally:
        backend.close()
    slices = plan_slices(plan_offer(inventory), "node-1", None, 1)
    return tuple(device for s in slices for device in s["spec"].get("devices", []))


@functools.cache
def load_class(name: str) -> dict[str, Any]:
    document = yaml.safe_load((CLASS_DIR / f"{name}.yaml").read_text())
    assert isinstance(document, dict)
    return document


def class_selectors(name: str) -> list[str]:
    return [s["cel"]["expression"] for s in load_class(name)["spec"].get("selectors", [])]


def attribute(device: k8stypes.Device, qualified: str) -> object:
    """The published value of ``domain/name`` (unqualified in the slice when in gpudra's domain)."""
    domain, _, ident = qualified.rpartition("/")
    key = ident if domain in ("", names.DRIVER_NAME) else qualified
    attr = device.get("attributes", {}).get(key)
    return None if attr is None else next(iter(attr.values()))


def publishes(device: k8stypes.Device, qualified: str) -> bool:
    domain, _, ident = qualified.rpartition("/")
    key = ident if domain in ("", names.DRIVER_NAME) else qualified
    return key in device.get("attributes", {}) or key in device.get("capacity", {})


# ---- the files -----------------------------------------------------------------------------------------


def test_the_shipped_classes_exist() -> None:
    stems = {f.name.removesuffix(".yaml") for f in CLASS_FILES}
    assert {names.CLASS_GPU, names.CLASS_NVIDIA, names.CLASS_MIG} <= stems


@pytest.mark.parametrize("path", CLASS_FILES, ids=lambda p: p.name)
def test_class_is_a_valid_v1_device_class(path: Path) -> None:
    documents = list(yaml.safe_load_all(path.read_text()))
    assert len(documents) == 1
    doc = documents[0]
    assert doc["apiVersion"] == "resource.k8s.io/v1"
    assert doc["kind"] == "DeviceClass"
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    name = path.name.removesuffix(".yaml")
    assert doc["metadata"] == {"name": name}
    assert name in CLASS_CONSTANTS
    assert set(doc["spec"]) <= {"selectors", "config", "extendedResourceName"}
    selectors = doc["spec"]["selectors"]
    assert selectors
    for selector in selectors:
        assert set(selector) == {"cel"}
        assert set(selector["cel"]) == {"expression"}
        expression = selector["cel"]["expression"]
        assert 0 < len(expression.encode()) <= MAX_EXPRESSION_BYTES
        assert cel.compile_selector(expression).expression == expression


# ---- what they select ----------------------------------------------------------------------------------


def _kind(type_: str, vendor: str | None = None) -> Callable[[k8stypes.Device], bool]:
    def predicate(device: k8stypes.Device) -> bool:
        vendor_ok = vendor is None or attribute(device, names.ATTR_VENDOR) == vendor
        return attribute(device, names.ATTR_TYPE) == type_ and vendor_ok

    return predicate


EXPECTED_KINDS: Mapping[str, Callable[[k8stypes.Device], bool]] = {
    names.CLASS_GPU: _kind(names.TYPE_GPU),
    names.CLASS_NVIDIA: _kind(names.TYPE_GPU, names.VENDOR_NVIDIA),
    names.CLASS_MIG: _kind(names.TYPE_MIG),
    names.CLASS_AMD: _kind(names.TYPE_GPU, names.VENDOR_AMD),
    names.CLASS_AMD_PARTITION: _kind(names.TYPE_PARTITION, names.VENDOR_AMD),
}
CLASS_NAMES = [p.name.removesuffix(".yaml") for p in CLASS_FILES]


@pytest.mark.parametrize("profile", list_profiles())
@pytest.mark.parametrize("class_name", CLASS_NAMES)
def test_class_selects_exactly_its_kind_of_device(class_name: str, profile: str) -> None:
    reason = undiscoverable(profile)
    if reason:
        pytest.skip(reason)
    devices = published(profile)
    assert devices, f"profile {profile} publishes no devices"
    selectors = class_selectors(class_name)
    selected = {d["name"] for d in devices if cel.device_matches(selectors, d)}
    expected = {d["name"] for d in devices if EXPECTED_KINDS[class_name](d)}
    assert selected == expected


def test_each_full_gpu_is_in_the_gpu_class_and_in_exactly_one_vendor_class() -> None:
    vendor_classes = [c for c in (names.CLASS_NVIDIA, names.CLASS_AMD) if c in CLASS_NAMES]
    for profile in discoverable_profiles():
        for device in published(profile):
            if attribute(device, names.ATTR_TYPE) != names.TYPE_GPU:
                continue
            assert cel.device_matches(class_selectors(names.CLASS_GPU), device)
            hits = [c for c in vendor_classes if cel.device_matches(class_selectors(c), device)]
            assert len(hits) == 1, (profile, device["name"], hits)


@pytest.mark.parametrize("class_name", CLASS_NAMES)
def test_class_ignores_other_drivers_devices_without_an_error(class_name: str) -> None:
    """The scheduler runs a class's selectors on every driver's devices; theirs have no gpudra.io map."""
    foreign: k8stypes.Device = {
        "name": "gpu-0",
        "attributes": {"type": {"string": "gpu"}, "productName": {"string": "NVIDIA H100 80GB HBM3"}},
        "capacity": {"memory": {"value": "80Gi"}},
    }
    assert not cel.device_matches(class_selectors(class_name), foreign, driver="gpu.nvidia.com")


def test_a_device_without_a_type_is_a_runtime_error_not_a_silent_miss() -> None:
    """The classes read ``type`` unguarded: gpudra always publishes it, and a bug should be loud."""
    untyped: k8stypes.Device = {"name": "gpu-0", "attributes": {"vendor": {"string": "nvidia"}}}
    with pytest.raises(cel.CelRuntimeError, match=r"^no such key: type$"):
        cel.device_matches(class_selectors(names.CLASS_GPU), untyped)


def test_every_mig_device_publishes_what_the_mig_class_promises() -> None:
    """mig.gpudra.io says claims may read ``profile`` and ``parentUUID`` without a guard."""
    selectors = class_selectors(names.CLASS_MIG)
    for profile in discoverable_profiles():
        for device in published(profile):
            if cel.device_matches(selectors, device):
                assert publishes(device, names.ATTR_PROFILE), (profile, device["name"])
                assert publishes(device, names.ATTR_PARENT_UUID), (profile, device["name"])
