"""Ingest the bundled `samples/` and create the sample agents, idempotently: a second run
changes nothing.

Each company folder goes into its own tenant (documents tagged from its `tenant.json`), all
three together into `sales-simulation` (each document also tagged `company:<folder>`, so a
simulation between the companies' agents finds each company's own documents by its `company`
attribute), the conference entities into `conference-demo` through `BatchUpsertEntities`.
Document ids, titles and source URIs derive only from the sample files, and the service skips
documents whose bytes and metadata are unchanged and re-embeds only entity records whose text
changed.

The sample agents have fixed ids, so the commands the banner prints stay the same across starts:
`agents/conference-assistant` in `conference-demo` (entity and document search over the
summit) and `agents/sales-assistant` in each company tenant (document search limited to that
company). An agent that exists unchanged is left alone (no new revision); one whose definition
here changed gets a new revision with the new fields.

The sample workflow (`samples/workflows/supplier-offer.yaml`) runs in `marrowick-motors` with
three more agents of fixed ids (`agents/policy-analyst` and `agents/security-analyst`, each
searching one of the company's policies, and `agents/procurement-lead`, who writes the report
and notifies) and the webhook `webhooks/sample-receiver`: the local receiver `callisto up`
starts. The webhook is registered again only when its URL, event types or secret changed (the
secret is write-only, so its description carries a fingerprint of it, never the secret).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callisto.api.orchestration.v1 import orchestration_pb2 as orchestration_pb
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.attributes import to_proto as attribute_to_proto
from callisto.client import Client
from callisto.deploy import samples_dir
from callisto.documents import document_id_from
from callisto.errors import NotFound
from callisto.ingest.folder import FileSpec, IngestReport, discover, file_spec

COMPANY_TENANTS = ("tessaline-systems", "corvane-data", "marrowick-motors")
# The tenant holding every company's documents, for simulations between the companies.
SIMULATION_TENANT = "sales-simulation"
CONFERENCE_TENANT = "conference-demo"
ENTITY_BATCH = 100
CONFERENCE_AGENT = "conference-assistant"
SALES_AGENT = "sales-assistant"
# The sample workflow: its tenant, agents, webhook and the event types the webhook takes.
WORKFLOW_TENANT = "marrowick-motors"
WORKFLOW_FILE = "supplier-offer.yaml"
POLICY_AGENT = "policy-analyst"
SECURITY_AGENT = "security-analyst"
LEAD_AGENT = "procurement-lead"
SAMPLE_WEBHOOK = "sample-receiver"
SAMPLE_WEBHOOK_EVENTS = (
    "approval.requested",
    "approval.decided",
    "step.failed",
    "run.done",
    "run.failed",
)
# The fields of an agent this module defines (the rest are the service's).
AGENT_FIELDS = ("display_name", "role", "company", "system_prompt", "tools", "knowledge_tags")


@dataclass
class SamplesReport:
    """Per tenant: what the documents' ingestion did; entities upserted for the conference."""

    documents: dict[str, IngestReport] = field(default_factory=dict)
    entities: int = 0

    @property
    def failed(self) -> dict[str, list[str]]:
        return {t: list(r.failed) for t, r in self.documents.items() if r.failed or r.error}


def company_specs(folder: Path) -> list[FileSpec]:
    """The documents of one company folder, tagged and titled from its tenant.json."""
    described = json.loads((folder / "tenant.json").read_text(encoding="utf-8"))
    tags_by_file: Mapping[str, list[str]] = described.get("tags_by_file", {})
    company = str(described.get("display_name", folder.name))
    specs = []
    for path in discover(folder):
        base = file_spec(folder, path, tags=tags_by_file.get(path.name, ()))
        specs.append(
            FileSpec(
                path=path,
                document_id=base.document_id,
                mime_type=base.mime_type,
                title=f"{company}: {base.title}",
                # Relative to samples/ so the ids and metadata do not depend on the checkout path.
                source_uri=f"samples/tenants/{folder.name}/{path.name}",
                tags=base.tags,
                attributes={"company": company},
            )
        )
    return specs


def simulation_specs(root: Path) -> list[FileSpec]:
    """The documents of every company folder under `root/tenants`, for one tenant: each keeps
    its company attribute and gains the tag `company:<folder>`; ids are prefixed by the folder
    so two companies' files of one name stay two documents."""
    specs = []
    for tenant in COMPANY_TENANTS:
        folder = root / "tenants" / tenant
        if not folder.is_dir():
            continue
        for spec in company_specs(folder):
            specs.append(
                FileSpec(
                    path=spec.path,
                    document_id=document_id_from(f"{tenant}/{spec.path.name}"),
                    mime_type=spec.mime_type,
                    title=spec.title,
                    source_uri=spec.source_uri,
                    tags=(*spec.tags, f"company:{tenant}"),
                    attributes=spec.attributes,
                )
            )
    return specs


def entity_messages(path: Path) -> list[pb.Entity]:
    entities = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        obj: dict[str, Any] = json.loads(line)
        entities.append(
            pb.Entity(
                name=f"entities/{obj['entity_id']}",
                entity_type=obj["entity_type"],
                title=obj["title"],
                master=obj["master"],
                facets={str(k): str(v) for k, v in (obj.get("facets") or {}).items()},
                attributes={
                    str(k): attribute_to_proto(v) for k, v in (obj.get("attributes") or {}).items()
                },
            )
        )
    return entities


async def ingest_samples(
    target: str,
    keys_by_tenant: Mapping[str, str],
    *,
    samples: Path | None = None,
    deadline_s: float = 600.0,
    showcase: Sequence[str] = (),
) -> SamplesReport:
    """Ingest every sample tenant that has a key in `keys_by_tenant` (tenant -> API key).
    The `showcase` tenants (the demo tenant, whose key signs in to the web console) also get
    the simulation's company documents and the conference entities."""
    root = samples or samples_dir()
    report = SamplesReport()
    for tenant in COMPANY_TENANTS:
        key = keys_by_tenant.get(tenant)
        folder = root / "tenants" / tenant
        if key is None or not await asyncio.to_thread(folder.is_dir):
            continue
        specs = await asyncio.to_thread(company_specs, folder)
        async with await Client.connect(target, api_key=key) as client:
            report.documents[tenant] = await client.retrieval.ingest(specs, timeout=deadline_s)
    for tenant in (SIMULATION_TENANT, *showcase):
        key = keys_by_tenant.get(tenant)
        if key is None:
            continue
        specs = await asyncio.to_thread(simulation_specs, root)
        if specs:
            async with await Client.connect(target, api_key=key) as client:
                report.documents[tenant] = await client.retrieval.ingest(specs, timeout=deadline_s)
    entities_path = root / "conference" / "entities.jsonl"
    for tenant in (CONFERENCE_TENANT, *showcase):
        key = keys_by_tenant.get(tenant)
        if key is None or not await asyncio.to_thread(entities_path.exists):
            continue
        entities = await asyncio.to_thread(entity_messages, entities_path)
        async with await Client.connect(target, api_key=key) as client:
            await client.retrieval.upsert_entities(
                entities, batch_size=ENTITY_BATCH, timeout=deadline_s
            )
        report.entities += len(entities)
    return report


def conference_agent(samples: Path | None = None) -> orchestration_pb.Agent:
    """The conference assistant of `conference-demo`, prompted with the summit's facts."""
    described = json.loads(
        ((samples or samples_dir()) / "conference" / "conference.json").read_text(encoding="utf-8")
    )
    name = str(described.get("name", "the conference"))
    dates = described.get("dates", {})
    venue = described.get("venue", {})
    return orchestration_pb.Agent(
        display_name=f"{described.get('short_name', name)} assistant",
        role="conference assistant",
        system_prompt=(
            f"You are the attendee assistant of {name}, {dates.get('start', '')} to "
            f"{dates.get('end', '')} at {venue.get('name', 'the venue')}, "
            f"{venue.get('address', '')}. Answer questions about sessions, speakers and "
            "exhibitors only from the search results you are given: search sessions, speakers "
            "and exhibitors with search_entities (entity_type session, speaker or exhibitor) "
            "and the event documents with search_documents. Name sessions with their day, time "
            "and room, and their speakers. Cite every fact with the number of its source, like "
            "[1]. If the results do not answer the question, say so instead of guessing."
        ),
        tools=["search_entities", "search_documents"],
    )


def sales_agent(folder: Path) -> orchestration_pb.Agent:
    """The company assistant of one sample company tenant (from its tenant.json)."""
    described = json.loads((folder / "tenant.json").read_text(encoding="utf-8"))
    company = str(described.get("display_name", folder.name))
    return orchestration_pb.Agent(
        display_name=f"{company} assistant",
        role="sales assistant",
        # Retrieval is limited to documents whose `company` attribute is this (see
        # company_specs), so the agent answers only from its own company's documents.
        company=company,
        system_prompt=(
            f"You are the assistant of {company}. {described.get('description', '')} Answer "
            f"questions about {company}'s products, prices, policies and terms only from the "
            "documents search_documents returns, and cite every fact with the number of its "
            "source, like [1]. If the documents do not say, answer that you do not know rather "
            "than guessing, and never speak for another company."
        ),
        tools=["search_documents"],
    )


def sample_agents(
    samples: Path | None = None, showcase: Sequence[str] = ()
) -> dict[str, tuple[str, orchestration_pb.Agent]]:
    """Tenant -> (agent id, agent) of every sample agent; the `showcase` tenants get the
    conference assistant too."""
    root = samples or samples_dir()
    conference = (CONFERENCE_AGENT, conference_agent(root))
    agents = {tenant: conference for tenant in (CONFERENCE_TENANT, *showcase)}
    for tenant in COMPANY_TENANTS:
        folder = root / "tenants" / tenant
        if folder.is_dir():
            agents[tenant] = (SALES_AGENT, sales_agent(folder))
    return agents


def _differs(stored: orchestration_pb.Agent, wanted: orchestration_pb.Agent) -> list[str]:
    return [f for f in AGENT_FIELDS if getattr(stored, f) != getattr(wanted, f)]


async def ensure_agent(
    client: Client, agent_id: str, wanted: orchestration_pb.Agent
) -> tuple[orchestration_pb.Agent, str]:
    """The agent `agent_id` as `wanted` says, and what was done: created, updated or unchanged."""
    try:
        stored = await client.orchestration.get_agent(agent_id)
    except NotFound:
        created = await client.orchestration.create_agent(wanted, agent_id=agent_id)
        return created, "created"
    changed = _differs(stored, wanted)
    if not changed:
        return stored, "unchanged"
    update = orchestration_pb.Agent()
    update.CopyFrom(wanted)
    update.name = stored.name
    update.etag = stored.etag
    updated = await client.orchestration.update_agent(update, update_mask=changed)
    return updated, "updated"


async def ensure_sample_agents(
    target: str,
    keys_by_tenant: Mapping[str, str],
    *,
    samples: Path | None = None,
    showcase: Sequence[str] = (),
) -> dict[str, str]:
    """Creates (or brings up to date) the sample agent of every tenant with a key; returns
    `agents/{id}@{revision}` per tenant."""
    agents = await asyncio.to_thread(sample_agents, samples, showcase)
    revisions: dict[str, str] = {}
    for tenant, (agent_id, wanted) in agents.items():
        key = keys_by_tenant.get(tenant)
        if key is None:
            continue
        async with await Client.connect(target, api_key=key) as client:
            agent, _ = await ensure_agent(client, agent_id, wanted)
        revisions[tenant] = f"{agent.name}@{agent.revision_id}"
    return revisions


def sample_workflow_path(samples: Path | None = None) -> Path:
    """The sample workflow's plan file."""
    return (samples or samples_dir()) / "workflows" / WORKFLOW_FILE


def workflow_agents(folder: Path) -> dict[str, orchestration_pb.Agent]:
    """Agent id -> agent of the sample workflow, in the company tenant of `folder`."""
    described = json.loads((folder / "tenant.json").read_text(encoding="utf-8"))
    company = str(described.get("display_name", folder.name))
    cite = "Cite every fact with the number of its source, like [1]. Be brief."

    def analyst(what: str, tag: str) -> orchestration_pb.Agent:
        return orchestration_pb.Agent(
            display_name=f"{company} {what} analyst",
            role=f"{what} analyst",
            company=company,
            system_prompt=(
                f"You check supplier offers for {company} against its {what} rules, found "
                f"with search_documents. {cite}"
            ),
            tools=["search_documents"],
            # Only the documents of that policy (see the tags in tenant.json).
            knowledge_tags=[tag],
        )

    return {
        POLICY_AGENT: analyst("procurement", "procurement"),
        SECURITY_AGENT: analyst("security", "security"),
        LEAD_AGENT: orchestration_pb.Agent(
            display_name=f"{company} procurement lead",
            role="procurement lead",
            company=company,
            system_prompt=(
                f"You lead procurement at {company}. You weigh your analysts' findings, "
                "recommend what to do in plain words, write reports and tell the buyers. "
                "Be brief."
            ),
            tools=["create_report", "send_webhook"],
        ),
    }


def secret_fingerprint(secret: str) -> str:
    """A short digest that tells secrets apart without revealing them."""
    return hashlib.sha256(secret.encode()).hexdigest()[:12]


def sample_webhook(url: str, secret: str) -> orchestration_pb.Webhook:
    return orchestration_pb.Webhook(
        url=url,
        secret=secret,
        event_types=list(SAMPLE_WEBHOOK_EVENTS),
        description=(
            "The local receiver `callisto up` starts for the sample workflow "
            f"(secret sha256:{secret_fingerprint(secret)}...)"
        ),
    )


async def ensure_webhook(
    client: Client, webhook_id: str, wanted: orchestration_pb.Webhook
) -> tuple[orchestration_pb.Webhook, str]:
    """The webhook `webhook_id` as `wanted` says, and what was done: created, replaced (its
    URL, event types or secret changed; there is no update) or unchanged."""
    try:
        stored = await client.orchestration.get_webhook(webhook_id)
    except NotFound:
        created = await client.orchestration.create_webhook(wanted, webhook_id=webhook_id)
        return created, "created"
    same = (
        stored.url == wanted.url
        and list(stored.event_types) == list(wanted.event_types)
        and stored.description == wanted.description
    )
    if same:
        return stored, "unchanged"
    await client.orchestration.delete_webhook(webhook_id)
    created = await client.orchestration.create_webhook(wanted, webhook_id=webhook_id)
    return created, "replaced"


@dataclass
class WorkflowSample:
    """What the sample workflow runs with: its agents' `agents/{id}@{revision}` and webhook."""

    tenant: str
    agents: dict[str, str] = field(default_factory=dict)
    webhook: str = ""
    webhook_change: str = ""


async def ensure_workflow_sample(
    target: str,
    key: str,
    *,
    receiver_url: str,
    secret: str,
    samples: Path | None = None,
    tenant: str = WORKFLOW_TENANT,
) -> WorkflowSample:
    """Creates (or brings up to date) the sample workflow's agents and the webhook of the
    local receiver at `receiver_url`, in `tenant` (the workflow's own by default, whose API
    key is `key`)."""
    root = samples or samples_dir()
    folder = root / "tenants" / WORKFLOW_TENANT
    agents = await asyncio.to_thread(workflow_agents, folder)
    sample = WorkflowSample(tenant)
    async with await Client.connect(target, api_key=key) as client:
        for agent_id, wanted in agents.items():
            agent, _ = await ensure_agent(client, agent_id, wanted)
            sample.agents[agent_id] = f"{agent.name}@{agent.revision_id}"
        hook, change = await ensure_webhook(
            client, SAMPLE_WEBHOOK, sample_webhook(receiver_url, secret)
        )
    sample.webhook, sample.webhook_change = hook.name, change
    return sample
