"""Fixtures of the persistence tests: an async channel and stub to the session's real service
(started by tests/conftest.py on the real redis-server) and the two tenants' credentials."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
import pytest_asyncio
from persistence_test_support import Metadata, bearer

from callisto.api.persistence.v1 import persistence_pb2_grpc as pb_grpc
from callisto.mesh.processes import ServiceProcess


@pytest_asyncio.fixture(scope="session")
async def channel(persistence: ServiceProcess) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(persistence.address) as opened:
        yield opened


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> pb_grpc.PersistenceServiceAsyncStub:
    return pb_grpc.PersistenceServiceStub(channel)


@pytest.fixture(scope="session")
def auth(api_key: str) -> Metadata:
    return bearer(api_key)


@pytest.fixture(scope="session")
def other_auth(other_api_key: str) -> Metadata:
    return bearer(other_api_key)
