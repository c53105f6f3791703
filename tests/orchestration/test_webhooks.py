"""Webhook resources over the real orchestration service (default outbound settings: no
private network allowed): create, get, list (paged), delete; the secret is write-only; URLs
that are not HTTP(S), literal loopback / private / link-local addresses and hostnames
resolving to loopback are refused at `webhook.url`; the other fields are validated at theirs;
another tenant's webhook and its deliveries are NOT_FOUND."""

from __future__ import annotations

import grpc
import pytest
from outbound_test_support import SECRET, OutboundMesh, client_of, module_mesh

from callisto import errors
from callisto.api.orchestration.v1 import orchestration_pb2 as pb

pytestmark = pytest.mark.asyncio(loop_scope="session")

mesh = module_mesh({})
PUBLIC = "https://93.184.215.14/callisto"


async def test_create_get_list_delete_and_the_secret_is_never_returned(mesh: OutboundMesh) -> None:
    async with client_of(mesh, "acme") as client:
        orchestration = client.orchestration
        created = await orchestration.create_webhook(
            webhook_id="crm-hook",
            url=PUBLIC,
            secret=SECRET,
            event_types=["run.done", "approval.requested"],
            description="CRM notifications",
        )
        assert created.name == "webhooks/crm-hook" and created.secret == ""
        assert list(created.event_types) == ["run.done", "approval.requested"]
        assert created.HasField("create_time")
        got = await orchestration.get_webhook("webhooks/crm-hook")
        assert got.url == PUBLIC and got.secret == "" and got.description == "CRM notifications"
        listed = [w async for w in orchestration.list_webhooks()]
        assert [w.name for w in listed] == ["webhooks/crm-hook"]
        assert all(w.secret == "" for w in listed)
        assert SECRET not in str(listed) + str(got) + str(created)
        await orchestration.delete_webhook("webhooks/crm-hook")
        with pytest.raises(errors.NotFound):
            await orchestration.get_webhook("webhooks/crm-hook")
        with pytest.raises(errors.NotFound):
            await orchestration.delete_webhook("webhooks/crm-hook")


async def test_webhooks_are_listed_newest_first_in_pages(mesh: OutboundMesh) -> None:
    async with client_of(mesh, "paging") as client:
        for index in range(5):
            await client.orchestration.create_webhook(
                webhook_id=f"hook-{index}", url=PUBLIC, secret=SECRET
            )
        stub = client.orchestration.stub
        first = await stub.ListWebhooks(pb.ListWebhooksRequest(page_size=2))
        assert [w.name for w in first.webhooks] == ["webhooks/hook-4", "webhooks/hook-3"]
        assert first.next_page_token
        names = [w.name async for w in client.orchestration.list_webhooks(page_size=2)]
        assert names == [f"webhooks/hook-{i}" for i in range(4, -1, -1)]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListWebhooks(pb.ListWebhooksRequest(page_token="forged.token"))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://files.example.com/drop", "http:// or https://"),
        ("file:///etc/passwd", "http:// or https://"),
        ("javascript:alert(1)", "http:// or https://"),
        ("http://admin:pw@93.184.215.14/", "user name"),
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost:8080/hook", "loopback"),
        ("http://10.0.0.5/hook", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[::ffff:127.0.0.1]/hook", "loopback"),
        ("", "required"),
    ],
)
async def test_refused_urls_are_field_violations_at_create(
    mesh: OutboundMesh, url: str, why: str
) -> None:
    async with client_of(mesh, "acme") as client:
        with pytest.raises(errors.InvalidArgument) as caught:
            await client.orchestration.create_webhook(url=url, secret=SECRET)
    violations = caught.value.field_violations
    assert why in violations["webhook.url"]


async def test_secret_event_types_description_and_id_are_validated(mesh: OutboundMesh) -> None:
    async with client_of(mesh, "acme") as client:
        with pytest.raises(errors.InvalidArgument) as caught:
            await client.orchestration.create_webhook(
                webhook_id="Bad_Id",
                url=PUBLIC,
                secret="short",
                event_types=["run.done", "run.done", "user.deleted"],
                description="x" * 1001,
            )
    violations = caught.value.field_violations
    assert set(violations) == {
        "webhook_id",
        "webhook.secret",
        "webhook.event_types[1]",
        "webhook.event_types[2]",
        "webhook.description",
    }
    assert "16-256 bytes" in violations["webhook.secret"]
    assert "duplicate" in violations["webhook.event_types[1]"]


async def test_another_tenants_webhook_and_its_deliveries_are_not_found(
    mesh: OutboundMesh,
) -> None:
    async with client_of(mesh, "acme") as acme, client_of(mesh, "globex") as globex:
        hook = await acme.orchestration.create_webhook(url=PUBLIC, secret=SECRET)
        with pytest.raises(errors.NotFound):
            await globex.orchestration.get_webhook(hook.name)
        with pytest.raises(errors.NotFound):
            [d async for d in globex.orchestration.list_webhook_deliveries(hook.name)]
        with pytest.raises(errors.NotFound):
            await globex.orchestration.delete_webhook(hook.name)
        assert [w async for w in globex.orchestration.list_webhooks()] == []
        # Still there for its owner.
        assert (await acme.orchestration.get_webhook(hook.name)).name == hook.name
        assert [d async for d in acme.orchestration.list_webhook_deliveries(hook.name)] == []
        await acme.orchestration.delete_webhook(hook.name)


async def test_a_tenant_holds_a_bounded_number_of_webhooks(mesh: OutboundMesh) -> None:
    async with client_of(mesh, "many-hooks") as client:
        for index in range(20):
            await client.orchestration.create_webhook(
                webhook_id=f"h{index}", url=PUBLIC, secret=SECRET
            )
        with pytest.raises(errors.ResourceExhausted):
            await client.orchestration.create_webhook(url=PUBLIC, secret=SECRET)


async def test_secrets_never_reach_the_service_log(mesh: OutboundMesh) -> None:
    async with client_of(mesh, "logged") as client:
        hook = await client.orchestration.create_webhook(url=PUBLIC, secret=SECRET)
        with pytest.raises(errors.InvalidArgument):
            await client.orchestration.create_webhook(url="ftp://x/", secret=SECRET)
        await client.orchestration.delete_webhook(hook.name)
    assert SECRET not in mesh.orchestration.log_path.read_text(errors="replace")
