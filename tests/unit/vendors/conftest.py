"""Fixtures for the backend tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpudra.vendors.mock.fake_nvml import FakeNvml, write_sysfs_tree
from gpudra.vendors.mock.profile import Profile
from gpudra.vendors.nvidia.discovery import NvmlBackend


@pytest.fixture
def open_nvml(tmp_path: Path) -> Iterator[Callable[[Profile], tuple[NvmlBackend, FakeNvml]]]:
    """Open the real NvmlBackend over FakeNvml(profile) and the profile's sysfs tree under tmp_path."""
    opened: list[NvmlBackend] = []

    def _open(profile: Profile) -> tuple[NvmlBackend, FakeNvml]:
        root = tmp_path / "sys"
        write_sysfs_tree(root, profile)
        fake = FakeNvml(profile)
        backend = NvmlBackend(fake, sysfs_root=root)
        opened.append(backend)
        return backend, fake

    yield _open
    for backend in opened:
        backend.close()
