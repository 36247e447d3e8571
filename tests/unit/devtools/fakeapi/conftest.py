"""Fixtures for the stand-in API server tests: a running server and a client for it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fakeapi_helpers import Api

from gpudra.devtools.fakeapi import FakeApiServer


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    with FakeApiServer() as running:
        yield running


@pytest.fixture
def api(server: FakeApiServer) -> Api:
    return Api(server.url)
