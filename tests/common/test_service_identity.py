"""Service identity against the real persistence process and the real Envoy: only a service
principal's key may name the tenant a call acts for (`x-callisto-on-behalf-of`); a tenant key's
forged header changes nothing; the gateway strips the header from every outside request; a
revoked service key is refused; `callisto keys list` shows tenant keys only."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from redis.asyncio import Redis

import callisto
from callisto.client import ON_BEHALF_OF
from callisto.errors import NotFound, PermissionDenied, Unauthenticated
from callisto.gateway.config import GatewaySpec, render_config
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.launcher import PERSISTENCE_SERVICE
from callisto.mesh.processes import RedisServer, ServiceProcess
from callisto.services.common.auth import ApiKeyStore


@pytest_asyncio.fixture(loop_scope="session")
async def key_store(redis_server: RedisServer) -> AsyncIterator[ApiKeyStore]:
    redis = Redis.from_url(redis_server.url)
    try:
        yield ApiKeyStore(redis)
    finally:
        await redis.aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def service_key(key_store: ApiKeyStore) -> AsyncIterator[str]:
    """A fresh key of the service principal `orchestration` (revoked afterwards)."""
    key = await key_store.create_service("orchestration")
    try:
        yield key
    finally:
        await key_store.revoke_service(key)


def _id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _conversation_of(target: str, key: str, title: str) -> str:
    """Creates a conversation with `key` (its own tenant) and returns its name."""
    async with await callisto.Client.connect(target, api_key=key) as client:
        created = await client.persistence.create_conversation(
            conversation_id=_id("identity"), title=title
        )
    return created.name


async def _titles(client: callisto.Client) -> set[str]:
    return {c.title async for c in client.persistence.list_conversations(page_size=100)}


async def test_a_forged_on_behalf_of_header_on_a_tenant_key_changes_nothing(
    persistence: ServiceProcess, api_key: str, other_api_key: str
) -> None:
    globex_title = _id("globex-private")
    globex_conversation = await _conversation_of(persistence.address, other_api_key, globex_title)
    forged = ((ON_BEHALF_OF, "globex"),)
    async with await callisto.Client.connect(persistence.address, api_key=api_key) as acme:
        with pytest.raises(NotFound):
            await acme.persistence.get_conversation(globex_conversation, metadata=forged)
        listed = {
            c.title
            async for c in acme.persistence.list_conversations(page_size=100, metadata=forged)
        }
        assert globex_title not in listed
        # What it writes with the forged header lands in its own tenant, not in globex.
        written = await acme.persistence.create_conversation(
            conversation_id=_id("forged"), title="written with a forged header", metadata=forged
        )
        assert (await acme.persistence.get_conversation(written.name)).title == written.title
    async with await callisto.Client.connect(persistence.address, api_key=other_api_key) as globex:
        with pytest.raises(NotFound):
            await globex.persistence.get_conversation(written.name)


async def test_a_service_key_acts_for_the_tenant_its_header_names(
    persistence: ServiceProcess, api_key: str, other_api_key: str, service_key: str
) -> None:
    acme_title, globex_title = _id("acme-own"), _id("globex-own")
    acme_conversation = await _conversation_of(persistence.address, api_key, acme_title)
    globex_conversation = await _conversation_of(persistence.address, other_api_key, globex_title)
    async with await callisto.Client.connect(
        persistence.address, api_key=service_key, on_behalf_of="acme"
    ) as for_acme:
        assert (await for_acme.persistence.get_conversation(acme_conversation)).title == acme_title
        with pytest.raises(NotFound):
            await for_acme.persistence.get_conversation(globex_conversation)
        titles = await _titles(for_acme)
        assert acme_title in titles and globex_title not in titles
        # The header of one call wins over the client's: the same key acts for globex now.
        as_globex = ((ON_BEHALF_OF, "globex"),)
        got = await for_acme.persistence.get_conversation(globex_conversation, metadata=as_globex)
        assert got.title == globex_title


async def test_a_service_key_asked_per_call_follows_the_current_tenant(
    persistence: ServiceProcess, api_key: str, service_key: str
) -> None:
    title = _id("per-call")
    conversation = await _conversation_of(persistence.address, api_key, title)
    current = {"tenant": "globex"}
    async with await callisto.Client.connect(
        persistence.address, api_key=service_key, on_behalf_of=lambda: current["tenant"]
    ) as service:
        with pytest.raises(NotFound):
            await service.persistence.get_conversation(conversation)
        current["tenant"] = "acme"
        assert (await service.persistence.get_conversation(conversation)).title == title


@pytest.mark.parametrize("header", [None, "", "Not A Tenant!", "../acme"])
async def test_a_service_key_without_a_valid_tenant_is_permission_denied(
    persistence: ServiceProcess, service_key: str, header: str | None
) -> None:
    metadata = () if header is None else ((ON_BEHALF_OF, header),)
    async with await callisto.Client.connect(persistence.address, api_key=service_key) as client:
        with pytest.raises(PermissionDenied) as raised:
            await client.persistence.get_conversation(_id("any"), metadata=metadata)
    assert ON_BEHALF_OF in raised.value.message


async def test_a_revoked_service_key_is_unauthenticated(
    persistence: ServiceProcess, key_store: ApiKeyStore, api_key: str
) -> None:
    conversation = await _conversation_of(persistence.address, api_key, _id("before-revoke"))
    key = await key_store.create_service("orchestration")
    async with await callisto.Client.connect(
        persistence.address, api_key=key, on_behalf_of="acme"
    ) as client:
        await client.persistence.get_conversation(conversation)
        await key_store.revoke_service(key)
        with pytest.raises(Unauthenticated):
            await client.persistence.get_conversation(conversation)


async def test_the_gateway_strips_on_behalf_of_even_from_a_service_key(
    persistence_gateway: EnvoyGateway, persistence: ServiceProcess, api_key: str, service_key: str
) -> None:
    conversation = await _conversation_of(persistence.address, api_key, _id("behind-envoy"))
    async with await callisto.Client.connect(
        persistence_gateway.grpc_target, api_key=service_key, on_behalf_of="acme"
    ) as outside:
        with pytest.raises(PermissionDenied):
            await outside.persistence.get_conversation(conversation)
    # The same call straight to the service is honoured: the refusal above is Envoy's doing.
    async with await callisto.Client.connect(
        persistence.address, api_key=service_key, on_behalf_of="acme"
    ) as inside:
        await inside.persistence.get_conversation(conversation)
    # A tenant key's forged header through the gateway still reads its own tenant only.
    async with await callisto.Client.connect(
        persistence_gateway.grpc_target, api_key=api_key, on_behalf_of="globex"
    ) as tenant:
        await tenant.persistence.get_conversation(conversation)


def test_the_gateway_config_removes_the_on_behalf_of_header_on_every_route(
    tmp_path: Path,
) -> None:
    spec = GatewaySpec(
        upstreams={PERSISTENCE_SERVICE: ("127.0.0.1", 50051)},
        descriptor_path=tmp_path / "callisto.binpb",
    )
    config: Any = render_config(spec)
    (listener,) = config["static_resources"]["listeners"]
    (connection_manager,) = listener["filter_chains"][0]["filters"]
    route_config = connection_manager["typed_config"]["route_config"]
    assert ON_BEHALF_OF in route_config["request_headers_to_remove"]
    # Nothing lower down adds it back or lets a route keep it.
    text = repr(route_config["virtual_hosts"])
    assert ON_BEHALF_OF not in text


async def _callisto(*arguments: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "callisto"), *arguments]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return subprocess.CompletedProcess(command, process.returncode, out.decode(), err.decode())


async def test_keys_list_shows_tenant_keys_and_never_service_keys(
    redis_server: RedisServer, key_store: ApiKeyStore, service_key: str
) -> None:
    tenant = _id("listed")
    _, info = await key_store.create(tenant, label="listed by the CLI")
    listed = await key_store.list()
    assert info.key_id in {k.key_id for k in listed}
    assert all(k.tenant for k in listed)
    service_key_id = service_key.split("_")[1]
    assert service_key_id not in {k.key_id for k in listed}
    listing = await _callisto("keys", "list", "--redis-url", redis_server.url)
    assert listing.returncode == 0, listing.stderr
    assert info.key_id in listing.stdout and tenant in listing.stdout
    assert service_key_id not in listing.stdout
    # A service key is no tenant's to revoke from the CLI.
    revoked = await _callisto("keys", "revoke", service_key_id, "--redis-url", redis_server.url)
    assert revoked.returncode == 1
    assert await key_store.verify_principal(service_key) is not None
