"""GetCaller names the tenant a credential acts for, and nothing for a credential it refuses."""

from __future__ import annotations

import httpx
import pytest

import callisto
from callisto.errors import Unauthenticated
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ServiceProcess


async def test_each_key_is_told_its_own_tenant(
    persistence_client: callisto.Client, persistence: ServiceProcess, other_api_key: str
) -> None:
    assert await persistence_client.persistence.get_caller() == "acme"
    async with await callisto.Client.connect(persistence.address, api_key=other_api_key) as other:
        assert await other.persistence.get_caller() == "globex"


async def test_a_forged_key_is_unauthenticated(persistence: ServiceProcess) -> None:
    forged = f"cal_0123456789abcdef_{'x' * 43}"
    async with await callisto.Client.connect(persistence.address, api_key=forged) as client:
        with pytest.raises(Unauthenticated):
            await client.persistence.get_caller()


def test_the_caller_over_http_through_the_gateway(
    persistence_gateway: EnvoyGateway, api_key: str
) -> None:
    answer = httpx.get(
        persistence_gateway.http_url + "/v1/caller", headers={"authorization": f"Bearer {api_key}"}
    )
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"tenant": "acme"}
    assert httpx.get(persistence_gateway.http_url + "/v1/caller").status_code == 401
