"""The NVLink half of the fake pynvml: fabric info, NVLink state, P2P status, addressing mode.

``nvmlDeviceGetGpuFabricInfoV`` behaves like the C call behind pynvml's thin wrapper: the caller passes
``ctypes.byref(c_nvmlGpuFabricInfoV_t())`` and the fake fills that structure in place, after checking its
``version`` (NVML answers ARGUMENT_VERSION_MISMATCH otherwise). Passing anything but a byref/pointer to a
structure is a TypeError here, where real NVML would read garbage.
"""

from __future__ import annotations

import ctypes
from typing import Any

import pynvml

from gpudra.vendors.mock.fake_nvml_base import FakeNvmlBase, byref_target, fail, present

_FABRIC_VERSIONS = {
    getattr(pynvml, "nvmlGpuFabricInfo_v2", None): getattr(pynvml, "c_nvmlGpuFabricInfo_v2_t", None),
    getattr(pynvml, "nvmlGpuFabricInfo_v3", None): getattr(pynvml, "c_nvmlGpuFabricInfo_v3_t", None),
}


class FakeLinkCalls(FakeNvmlBase):
    def nvmlDeviceGetAddressingMode(self, device: Any) -> int:
        return present(self.gpu("nvmlDeviceGetAddressingMode", device).addressing_mode)

    def nvmlDeviceGetGpuFabricInfoV(self, device: Any, gpuFabricInfo: Any) -> int:
        gpu = self.gpu("nvmlDeviceGetGpuFabricInfoV", device)
        info = byref_target(gpuFabricInfo)
        expected = _FABRIC_VERSIONS.get(getattr(info, "version", None))
        if expected is None or not isinstance(info, expected):
            raise fail(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        fabric = present(gpu.fabric)
        info.clusterUuid = (ctypes.c_uint8 * len(fabric.cluster_uuid))(*fabric.cluster_uuid)
        for name, value in (
            ("status", fabric.status), ("cliqueId", fabric.clique_id), ("state", fabric.state),
            ("healthMask", fabric.health_mask),
        ):  # fmt: skip
            setattr(info, name, value)
        return int(pynvml.NVML_SUCCESS)

    def nvmlDeviceGetNvLinkState(self, device: Any, link: int) -> int:
        nvlink = self.gpu("nvmlDeviceGetNvLinkState", device).nvlink
        if not 0 <= link < pynvml.NVML_NVLINK_MAX_LINKS:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if nvlink is None:
            raise fail(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if link >= len(nvlink.states):
            raise fail(nvlink.beyond)
        return nvlink.states[link]

    def nvmlDeviceGetP2PStatus(self, device1: Any, device2: Any, p2pIndex: int) -> int:
        call = "nvmlDeviceGetP2PStatus"
        a = self.index_of(self.resolve(call, device1, ("gpu",)))
        b = self.index_of(self.resolve(call, device2, ("gpu",), entered=True))
        index = p2pIndex[0] if isinstance(p2pIndex, tuple) else p2pIndex  # pynvml spells READ as (0,)
        if a == b:
            raise fail(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        matrix = self.profile.p2p_status.get(index)
        return present(matrix[a][b] if matrix is not None else None)
