"""Helpers of the tool tests: a service key, real `Backends` for a test's services, contexts,
handlers whose failures the tests script, and the documents and entities the tests ingest."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from callisto.api.orchestration.v1 import orchestration_pb2
from callisto.api.retrieval.v1 import retrieval_pb2
from callisto.attributes import Scalar, to_proto
from callisto.ingest.folder import BytesDocument
from callisto.services.common.tenancy import bound_tenant
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.tools.registry import ToolContext, ToolResult

# Schema of the tools the tests register: one string argument.
TEXT_PARAMETERS: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 50}},
    "required": ["text"],
    "additionalProperties": False,
}


def context(
    backends: Backends,
    tenant: str,
    *,
    company: str = "",
    knowledge_tags: tuple[str, ...] = (),
    conversation: str = "",
) -> ToolContext:
    agent = orchestration_pb2.Agent(
        name="agents/tools-test",
        display_name="Tools test",
        system_prompt="Answer.",
        company=company,
        knowledge_tags=list(knowledge_tags),
    )
    return ToolContext(tenant=tenant, conversation=conversation, agent=agent, backends=backends)


class ScriptedHandler:
    """A tool handler that raises the scripted errors in turn, then answers; counts its runs."""

    def __init__(self, *errors: Exception, delay_s: float = 0.0) -> None:
        self._errors = list(errors)
        self._delay_s = delay_s
        self.runs = 0
        # The tenant the handler's backends act for (the one bound while it runs).
        self.tenants: list[str | None] = []

    async def __call__(self, arguments: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        self.runs += 1
        self.tenants.append(bound_tenant())
        if self._delay_s:
            await asyncio.sleep(self._delay_s)
        if self._errors:
            raise self._errors.pop(0)
        return ToolResult(data={"echo": arguments["text"]}, summary=f"echo {arguments['text']}")


def always_failing(error: Callable[[], Exception]) -> Callable[..., Awaitable[ToolResult]]:
    async def handler(_arguments: dict[str, Any], _ctx: ToolContext) -> ToolResult:
        raise error()

    return handler


@dataclass(frozen=True)
class SampleDocument:
    document_id: str
    company: str
    tags: tuple[str, ...]
    text: str


# Documents of the tools tests: two companies in one tenant, and a rival tenant holding a
# document of the same company name and the same words (which no one else may ever see).
TENANT = "tools-acme"
RIVAL = "tools-rival"
TESSALINE = "Tessaline Systems"
CORVANE = "Corvane Data"
DOCUMENTS: dict[str, tuple[SampleDocument, ...]] = {
    TENANT: (
        SampleDocument(
            "tessa-pricing",
            TESSALINE,
            ("pricing",),
            "Tessaline Edge Node volume discount: orders above 200 edge nodes receive 15 "
            "percent off the list price of 1450 EUR per node.",
        ),
        SampleDocument(
            "tessa-returns",
            TESSALINE,
            ("policy", "returns"),
            "Tessaline return policy: edge node appliances may be returned within 30 days of "
            "delivery for a full refund of the node price.",
        ),
        SampleDocument(
            "corvane-pricing",
            CORVANE,
            ("pricing",),
            "Corvane Strata volume discount: subscriptions above 200 edge nodes receive 20 "
            "percent off the monthly price per node.",
        ),
    ),
    RIVAL: (
        SampleDocument(
            "rival-pricing",
            TESSALINE,
            ("pricing",),
            "Rival tenant price list: edge node volume discount of 50 percent above 200 nodes.",
        ),
    ),
}


def bytes_documents(tenant: str) -> list[BytesDocument]:
    return [
        BytesDocument(
            data=doc.text.encode(),
            document_id=doc.document_id,
            mime_type="text/plain",
            title=f"{doc.company}: {doc.document_id}",
            tags=doc.tags,
            attributes={"company": doc.company},
        )
        for doc in DOCUMENTS[tenant]
    ]


SESSION_ATTRIBUTES: dict[str, Scalar] = {
    "day": "2026-05-13",
    "start_time": "14:00",
    "end_time": "14:40",
    "room_name": "Rhine Hall (Room B)",
    "speakers": "Ada Lindqvist",
    "capacity": 300,
}


def conference_entities() -> list[retrieval_pb2.Entity]:
    """A session, its speaker and an exhibitor, all about cold-chain monitoring."""
    return [
        retrieval_pb2.Entity(
            name="entities/tools-session-coldchain",
            entity_type="session",
            title="Cold-chain monitoring with wireless sensors",
            master="A talk on cold-chain monitoring of vaccines and food with wireless sensors.",
            facets={"topic": "cold-chain monitoring, temperature loggers, logistics"},
            attributes={key: to_proto(value) for key, value in SESSION_ATTRIBUTES.items()},
        ),
        retrieval_pb2.Entity(
            name="entities/tools-speaker-ada",
            entity_type="speaker",
            title="Ada Lindqvist",
            master="Ada Lindqvist leads cold-chain analytics at Frostline Logistics.",
            facets={"bio": "Fifteen years of cold-chain monitoring and temperature analytics."},
        ),
        retrieval_pb2.Entity(
            name="entities/tools-exhibitor-frostline",
            entity_type="exhibitor",
            title="Frostline Sensors",
            master="Frostline Sensors sells cold-chain monitoring loggers and dashboards.",
            facets={"products": "wireless temperature loggers for cold-chain monitoring"},
        ),
    ]
