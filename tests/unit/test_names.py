"""Pins gpudra's public vocabulary: renaming any of it breaks users' selectors, so it must fail here first."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra import names

PINNED = {
    "DRIVER_NAME": "gpudra.io",
    "CDI_VENDOR": "k8s.gpudra.io",
    "CDI_CLASS": "claim",
    "CDI_KIND": "k8s.gpudra.io/claim",
    "VENDOR_NVIDIA": "nvidia",
    "VENDOR_AMD": "amd",
    "TYPE_GPU": "gpu",
    "TYPE_MIG": "mig",
    "TYPE_PARTITION": "partition",
    "ATTR_VENDOR": "vendor",
    "ATTR_TYPE": "type",
    "ATTR_UUID": "uuid",
    "ATTR_PRODUCT_NAME": "productName",
    "ATTR_BRAND": "brand",
    "ATTR_ARCHITECTURE": "architecture",
    "ATTR_DRIVER_VERSION": "driverVersion",
    "ATTR_CUDA_COMPUTE_CAPABILITY": "cudaComputeCapability",
    "ATTR_CUDA_DRIVER_VERSION": "cudaDriverVersion",
    "ATTR_INDEX": "index",
    "ATTR_MINOR": "minor",
    "ATTR_PARENT_UUID": "parentUUID",
    "ATTR_PARENT_PCI_BUS_ID": "parentPciBusID",
    "ATTR_PROFILE": "profile",
    "ATTR_MIG_CAPABLE": "migCapable",
    "ATTR_MIG_ENABLED": "migEnabled",
    "ATTR_ADDRESSING_MODE": "addressingMode",
    "ATTR_FABRIC_DOMAIN": "fabricDomain",
    "ATTR_NVLINK_COUNT": "nvlinkCount",
    "ATTR_GFX_VERSION": "gfxVersion",
    "ATTR_DEVICE_ID": "deviceID",
    "ATTR_PARTITION_PROFILE": "partitionProfile",
    "STD_DOMAIN": "resource.kubernetes.io",
    "ATTR_STD_PCI_BUS_ID": "resource.kubernetes.io/pciBusID",
    "ATTR_STD_PCIE_ROOT": "resource.kubernetes.io/pcieRoot",
    "ATTR_STD_NUMA_NODE": "resource.kubernetes.io/numaNode",
    "CAP_MEMORY": "memory",
    "CAP_MULTIPROCESSORS": "multiprocessors",
    "CAP_COPY_ENGINES": "copyEngines",
    "CAP_DECODERS": "decoders",
    "CAP_ENCODERS": "encoders",
    "CAP_JPEG_ENGINES": "jpegEngines",
    "CAP_OFA_ENGINES": "ofaEngines",
    "CAP_COMPUTE_UNITS": "computeUnits",
    "CAP_SIMD_UNITS": "simdUnits",
    "CLASS_GPU": "gpu.gpudra.io",
    "CLASS_NVIDIA": "nvidia.gpudra.io",
    "CLASS_MIG": "mig.gpudra.io",
    "CLASS_AMD": "amd.gpudra.io",
    "CLASS_AMD_PARTITION": "amd-partition.gpudra.io",
    "CONFIG_API_GROUP": "gpudra.io",
}

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
C_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")


def public_constants() -> dict[str, str]:
    public = {k: v for k, v in vars(names).items() if k.isupper() and not k.startswith("_")}
    return {k: v for k, v in public.items() if isinstance(v, str)}


def test_every_public_value_is_pinned() -> None:
    assert public_constants() == PINNED


def test_driver_name_is_a_lowercase_dns_subdomain_of_at_most_63_chars() -> None:
    assert len(names.DRIVER_NAME) <= 63
    assert DNS_SUBDOMAIN.fullmatch(names.DRIVER_NAME)


def test_attribute_and_capacity_names_are_valid_api_names() -> None:
    for key, value in PINNED.items():
        if key.startswith("ATTR_STD_"):
            domain, ident = value.split("/")
            assert domain == names.STD_DOMAIN
            assert C_IDENTIFIER.fullmatch(ident), value
        elif key.startswith(("ATTR_", "CAP_")):
            assert C_IDENTIFIER.fullmatch(value), value


def test_gpu_device_name_of_a_real_nvidia_uuid() -> None:
    uuid = "GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63"
    assert names.gpu_device_name(uuid) == "gpu-bb61b538-f5d8-b0ab-2cb5-fef794dece63"


def test_gpu_device_name_of_an_amd_style_identity_gets_the_prefix() -> None:
    assert names.gpu_device_name("0x8c2f5a1b3e7d9f01") == "gpu-0x8c2f5a1b3e7d9f01"


def test_dns_label_keeps_a_label_that_is_already_valid() -> None:
    assert names.dns_label("gpu-0") == "gpu-0"


def test_dns_label_folds_case_and_punctuation() -> None:
    assert names.dns_label("MIG 1g.10gb+me") == "mig-1g-10gb-me"


@pytest.mark.parametrize("text", ["", "---", "!!!", "ÄÖÜ", "-" * 80])
def test_dns_label_of_text_without_label_characters_is_still_valid(text: str) -> None:
    label = names.dns_label(text)
    assert DNS_LABEL.fullmatch(label), label


@settings(max_examples=300)
@given(st.text())
def test_dns_label_is_always_a_valid_label(text: str) -> None:
    label = names.dns_label(text)
    assert len(label) <= 63
    assert DNS_LABEL.fullmatch(label), label


@given(st.text())
def test_dns_label_is_deterministic(text: str) -> None:
    assert names.dns_label(text) == names.dns_label(text)


@given(st.text())
def test_gpu_device_name_is_a_valid_label_with_the_gpu_prefix(identity: str) -> None:
    name = names.gpu_device_name(identity)
    assert len(name) <= 63
    assert DNS_LABEL.fullmatch(name), name
    assert name.startswith("gpu")
    assert name == names.gpu_device_name(identity)


LONG = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=64, max_size=200)


@settings(max_examples=50)
@given(st.lists(LONG, min_size=2, max_size=50, unique=True))
def test_distinct_long_inputs_do_not_collide(texts: list[str]) -> None:
    labels = [names.dns_label(t) for t in texts]
    assert len(set(labels)) == len(labels)


@given(st.lists(st.uuids().map(lambda u: f"GPU-{u}"), min_size=2, max_size=50, unique=True))
def test_distinct_nvidia_uuids_give_distinct_device_names(uuids: list[str]) -> None:
    device_names = [names.gpu_device_name(u) for u in uuids]
    assert len(set(device_names)) == len(device_names)
