"""Listing the bound tenant's persistence sessions of one kind (agents, webhooks, HTTP
tools): pages whose tokens wrap persistence's, bound to what is listed, and every session of
a small kind at once."""

from __future__ import annotations

from callisto import errors as sdk
from callisto.api.persistence.v1 import persistence_pb2
from callisto.persistence import PersistenceClient
from callisto.services.common.errors import InvalidArgument
from callisto.services.common.pagination import page_tokens
from callisto.services.orchestration.relay import relayed


async def session_page(
    persistence: PersistenceClient, kind: str, page_size: int, page_token: str, listing: str
) -> tuple[list[persistence_pb2.Session], str]:
    """One page of sessions of `kind`, newest first, and the next page's token (a token of
    another listing is refused)."""
    query = {"list": listing}
    cursor = await page_tokens.decode(page_token, query)
    inner = cursor.get("p") if cursor is not None else ""
    if not isinstance(inner, str):
        raise InvalidArgument.field("page_token", "is not a token this service issued")
    try:
        page = await persistence.list_sessions_page(
            kind=kind, page_size=page_size, page_token=inner
        )
    except sdk.CallistoError as error:
        raise relayed(error) from None
    token = await page_tokens.encode({"p": page.next_page_token}, query)
    return list(page.sessions), token if page.next_page_token else ""


async def all_sessions(persistence: PersistenceClient, kind: str) -> list[persistence_pb2.Session]:
    """Every session of a kind the service bounds per tenant (a few dozen)."""
    try:
        return [s async for s in persistence.list_sessions(kind=kind, page_size=100)]
    except sdk.CallistoError as error:
        raise relayed(error) from None
