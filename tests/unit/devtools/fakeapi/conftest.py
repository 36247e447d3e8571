"""Fixtures for the stand-in API server tests: a running server and a client for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gpudra.devtools.fakeapi import FakeApiServer
from tests.unit.devtools.fakeapi.fakeapi_helpers import Api


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as running:
        yield running


@pytest.fixture
def api(server: FakeApiServer) -> Api:
    return Api(server.url)
