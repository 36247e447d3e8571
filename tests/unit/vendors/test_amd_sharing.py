"""Sharing on AMD through the real AmdDriver over the fake sysfs: a share of a GPU is accepted and nothing is
recorded (ROCm cannot enforce it), a share larger than the device and NVIDIA-only settings fail the claim."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Final

import pytest

from gpudra.model.applied import NOTHING_APPLIED
from gpudra.planning.plan import ClaimRef, DeviceToPrepare
from gpudra.planning.sharing_config import GpuConfig, MpsConfig, Sharing, Strategy
from gpudra.vendors.base import ApplyError
from gpudra.vendors.mock.hotswap import load_node_profile
from gpudra.vendors.mock.node import FakeNode

CLAIM: Final = ClaimRef("team", "c", "0a000000-0000-4000-8000-000000000001")
SHARE: Final = "5e0c1a9e-0000-4000-8000-000000000001"


def test_amd_shares_are_checked_not_enforced(tmp_path: Path) -> None:
    node = FakeNode(load_node_profile("mi300x-8-spx-nps1"), tmp_path)
    try:
        gpu = node.driver.discover().devices[0]
        assert gpu.memory_bytes is not None

        def share(memory: int, *configs: object) -> DeviceToPrepare:
            cap = (("memory", Fraction(memory)),)
            where = "status.allocation.devices.results[0]"
            return DeviceToPrepare("gpu", "node-a", "gpu-0", gpu, share_id=SHARE, configs=configs,
                                   consumed_capacity=cap, path=where)  # fmt: skip

        assert node.driver.intend(CLAIM, [share(20 * 2**30)]) == NOTHING_APPLIED
        with pytest.raises(ApplyError, match=r"results\[0\]\.consumedCapacity\[memory\]: .* is more than"):
            node.driver.intend(CLAIM, [share(gpu.memory_bytes + 2**20)])
        mps = GpuConfig(Sharing(Strategy.MPS, mps=MpsConfig()))
        with pytest.raises(ApplyError, match=r"is an AMD GPU: GpuConfig sharing\.strategy MPS"):
            node.driver.intend(CLAIM, [share(20 * 2**30, mps)])
    finally:
        node.close()
