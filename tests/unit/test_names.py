"""Pins gpudra's public vocabulary: renaming any of it breaks users' selectors, so it must fail here first."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpudra.model import names

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
    "ATTR_MEMORY_PARTITION": "memoryPartition",
    "ATTR_MEMORY_SHARED_WITH": "memorySharedWith",
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
    # dynamic MIG counters (Kueue quota names them)
    "COUNTER_MEMORY_SLICE_PREFIX": "memory-slice-",
    "COUNTER_COMPUTE_SLICES": "compute-slices",
    "COUNTER_MEMORY": "memory",
    "COUNTER_COPY_ENGINES": "copy-engines",
    "COUNTER_DECODERS": "decoders",
    "COUNTER_ENCODERS": "encoders",
    "COUNTER_JPEG_ENGINES": "jpeg-engines",
    "COUNTER_OFA_ENGINES": "ofa-engines",
    "CAP_COMPUTE_UNITS": "computeUnits",
    "CAP_SIMD_UNITS": "simdUnits",
    "CAP_MEMORY_POOL": "memoryPool",
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


# ---- MIG device names ----------------------------------------------------------------------------------

#: GPU-instance profiles (name, profile id, compute slices, placement starts) of the H100 80GB and the
#: A100 40GB, from shared/fixtures/hardware/nvidia-gpus.json models[...].mig.gpu_instance_profiles (the H100
#: rows are the real capture's; the A100 rows go-nvml's "real values" table). GB200's 7g.186gb is the longest
#: profile name in the fixtures.
GI_TABLES: dict[str, list[tuple[str, int, int, Sequence[int]]]] = {
    "H100-SXM5-80GB": [
        ("1g.10gb", 19, 1, range(7)), ("1g.10gb+me", 20, 1, range(7)), ("1g.20gb", 15, 1, (0, 2, 4, 6)),
        ("2g.20gb", 14, 2, (0, 2, 4)), ("3g.40gb", 9, 3, (0, 4)), ("4g.40gb", 5, 4, (0,)),
        ("7g.80gb", 0, 7, (0,)),
    ],
    "A100-SXM4-40GB": [
        ("1g.5gb", 19, 1, range(7)), ("1g.5gb+me", 20, 1, range(7)), ("1g.10gb", 15, 1, (0, 2, 4, 6)),
        ("2g.10gb", 14, 2, (0, 2, 4)), ("3g.20gb", 9, 3, (0, 4)), ("4g.20gb", 5, 4, (0,)),
        ("7g.40gb", 0, 7, (0,)),
    ],
    "GB200": [("7g.186gb", 0, 7, (0,))],
}  # fmt: skip
#: Compute-instance profile id -> compute slices (NVML_COMPUTE_INSTANCE_PROFILE_1/2/3/4/7_SLICE; id == index).
CI_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7}


def mig_combinations(model: str) -> list[tuple[str, int, int, int | None, int | None]]:
    """Every (profile, GI profile id, GI start, CI profile id, CI start) a GPU instance of ``model`` can hold.

    A compute instance spanning the whole GPU instance is named without its CI part; every narrower one,
    at every start inside the GI, with it. (A superset of NVML's real CI placements, which is fine here.)
    """
    out: list[tuple[str, int, int, int | None, int | None]] = []
    for name, gi_id, slices, starts in GI_TABLES[model]:
        for start in starts:
            out.append((name, gi_id, start, None, None))
            for ci_id, ci_slices in CI_SLICES.items():
                for ci_start in range(slices - ci_slices + 1) if ci_slices < slices else ():
                    out.append((f"{ci_slices}c.{name}", gi_id, start, ci_id, ci_start))
    return out


@settings(max_examples=30)
@given(st.uuids().map(lambda u: f"GPU-{u}"), st.sampled_from(sorted(GI_TABLES)))
def test_mig_names_are_short_unique_labels_for_every_placement(parent: str, model: str) -> None:
    combos = mig_combinations(model)
    device_names = [
        names.mig_device_name(parent, profile, gi, start, ci_profile_id=ci, ci_start=ci_start)
        for profile, gi, start, ci, ci_start in combos
    ]
    assert len(set(device_names)) == len(combos)
    for name, (profile, gi, start, ci, ci_start) in zip(device_names, combos, strict=True):
        assert DNS_LABEL.fullmatch(name), name
        assert len(name) <= 63
        tail = f"-{gi}-{start}" + (f"-{ci}-{ci_start}" if ci is not None else "")
        # never shortened by dns_label's hash: the parent and the whole placement are readable
        assert name == f"gpu-{parent[4:].lower()}-mig-{profile.replace('.', '').replace('+', '')}{tail}"
    assert not set(device_names) & {names.gpu_device_name(parent)}


def test_mig_device_name_examples() -> None:
    parent = "GPU-bb61b538-f5d8-b0ab-2cb5-fef794dece63"
    assert names.mig_device_name(parent, "1g.10gb+me", 20, 3) == (
        "gpu-bb61b538-f5d8-b0ab-2cb5-fef794dece63-mig-1g10gbme-20-3"
    )
    assert names.mig_device_name(parent, "1c.3g.40gb", 9, 4, ci_profile_id=0, ci_start=2) == (
        "gpu-bb61b538-f5d8-b0ab-2cb5-fef794dece63-mig-1c3g40gb-9-4-0-2"
    )
    with pytest.raises(ValueError, match="both"):
        names.mig_device_name(parent, "1c.3g.40gb", 9, 4, ci_profile_id=0)


@given(st.text(), st.text(), st.integers(0, 10**6), st.integers(0, 10**6))
def test_mig_device_name_is_always_a_valid_label(parent: str, profile: str, gi: int, start: int) -> None:
    name = names.mig_device_name(parent, profile, gi, start)
    assert DNS_LABEL.fullmatch(name), name
    assert len(name) <= 63


# ---- fabric domains ------------------------------------------------------------------------------------


def test_clique_fabric_domain() -> None:
    # the synthetic cluster UUID of shared/fixtures' gb200-nvl72-tray, clique 2
    assert names.clique_fabric_domain("5CA1AB1E-0000-4000-8000-00000000B200", 2) == (
        "5ca1ab1e-0000-4000-8000-00000000b200.2"
    )


@given(st.lists(st.uuids().map(lambda u: f"GPU-{u}"), min_size=1, max_size=16, unique=True), st.randoms())
def test_local_fabric_domain_is_order_free_and_short(uuids: list[str], rnd: Any) -> None:
    domain = names.local_fabric_domain(uuids)
    shuffled = list(uuids)
    rnd.shuffle(shuffled)
    assert names.local_fabric_domain(shuffled) == domain
    assert re.fullmatch(r"node-[0-9a-f]{16}", domain)


@given(st.lists(st.uuids().map(lambda u: f"GPU-{u}"), min_size=2, max_size=16, unique=True))
def test_local_fabric_domain_differs_for_different_islands(uuids: list[str]) -> None:
    # other nodes (other UUIDs) and other islands of the same node never share an id
    half = len(uuids) // 2
    assert names.local_fabric_domain(uuids[:half]) != names.local_fabric_domain(uuids[half:])
    assert names.local_fabric_domain(uuids) != names.local_fabric_domain(uuids[1:])


def test_counter_names_and_counter_set_names() -> None:
    assert names.memory_slice_counter(0) == "memory-slice-0"
    assert names.memory_slice_counter(7) == "memory-slice-7"
    uuid = "GPU-bb61b538-f5d8-4b43-8f5b-7d2f3a2c9e10"
    assert names.mig_counter_set_name(uuid) == "gpu-bb61b538-f5d8-4b43-8f5b-7d2f3a2c9e10"
