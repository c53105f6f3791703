"""Ingest the bundled `samples/` idempotently: a second run changes nothing.

Each company folder goes into its own tenant (documents tagged from its `tenant.json`), the
conference entities into `conference-demo` through `BatchUpsertEntities`. Document ids, titles
and source URIs derive only from the sample files, and the service skips documents whose bytes
and metadata are unchanged and re-embeds only entity records whose text changed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.attributes import to_proto as attribute_to_proto
from callisto.client import Client
from callisto.deploy import samples_dir
from callisto.ingest.folder import FileSpec, IngestReport, discover, file_spec

COMPANY_TENANTS = ("tessaline-systems", "corvane-data", "marrowick-motors")
CONFERENCE_TENANT = "conference-demo"
ENTITY_BATCH = 100


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
) -> SamplesReport:
    """Ingest every sample tenant that has a key in `keys_by_tenant` (tenant -> API key)."""
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
    key = keys_by_tenant.get(CONFERENCE_TENANT)
    entities_path = root / "conference" / "entities.jsonl"
    if key is not None and await asyncio.to_thread(entities_path.exists):
        entities = await asyncio.to_thread(entity_messages, entities_path)
        async with await Client.connect(target, api_key=key) as client:
            await client.retrieval.upsert_entities(
                entities, batch_size=ENTITY_BATCH, timeout=deadline_s
            )
        report.entities += len(entities)
    return report
