"""Fixtures for the backend tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpudra.vendors.mock.fake_nvml import FakeNvml, write_sysfs_tree
from gpudra.vendors.mock.profile import Profile
from gpudra.vendors.nvidia.driver import NvidiaDriver


@pytest.fixture
def open_nvml(tmp_path: Path) -> Iterator[Callable[[Profile], tuple[NvidiaDriver, FakeNvml]]]:
    """Open the real NvidiaDriver over FakeNvml(profile) and the profile's sysfs tree under tmp_path."""
    opened: list[NvidiaDriver] = []

    def _open(profile: Profile) -> tuple[NvidiaDriver, FakeNvml]:
        root = tmp_path / "sys"
        write_sysfs_tree(root, profile)
        fake = FakeNvml(profile)
        driver = NvidiaDriver(fake, sysfs_root=root)
        opened.append(driver)
        return driver, fake

    yield _open
    for driver in opened:
        driver.close()
