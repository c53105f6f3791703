"""Retrieval helpers against the real retrieval service and tritonserver's embedder: ingestion
of files and bytes with progress callbacks, search, and entity upsert and search."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

import callisto
from callisto import errors
from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.documents import MARKDOWN, TEXT
from callisto.ingest import BytesDocument, file_spec
from callisto.mesh.processes import RedisServer, ServiceProcess
from callisto.services.common.auth import create_api_key

pytestmark = pytest.mark.timeout(600)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def rc(
    sdk_retrieval: ServiceProcess, redis_server: RedisServer
) -> AsyncIterator[callisto.Client]:
    key = await create_api_key(redis_server.url, "sdk-retrieval", label="tests")
    async with await callisto.Client.connect(sdk_retrieval.address, api_key=key) as client:
        yield client


async def test_ingest_reports_each_document_and_progress_then_skips_unchanged(
    rc: callisto.Client, tmp_path: Path
) -> None:
    path = tmp_path / "harbour-notes.md"
    path.write_text("# Harbour\n\nThe lighthouse keeper logs every ship entering the harbour.\n")
    documents = [
        file_spec(tmp_path, path, tags=["sdk"]),
        BytesDocument(
            data=b"Quarterly pricing for the orbital telescope rental is 40 credits per hour.",
            document_id="pricing",
            mime_type=TEXT,
            tags=("sdk",),
        ),
        BytesDocument(data=b"## Empty heading only", document_id="tiny", mime_type=MARKDOWN),
    ]
    results: list[pb.DocumentResult] = []
    progress: list[pb.IngestProgress] = []
    report = await rc.retrieval.ingest(
        documents, on_result=results.append, on_progress=progress.append
    )
    assert report.error is None
    assert sorted(r.document_id for r in results) == sorted(d.document_id for d in documents)
    assert set(report.created) >= {"harbour-notes.md", "pricing"}
    assert progress and progress[-1].documents_parsed >= 2
    assert report.chunks_stored >= 2

    again = await rc.retrieval.ingest(documents[:2])
    assert sorted(again.unchanged) == ["harbour-notes.md", "pricing"]


async def test_search_returns_typed_hits_with_citations(rc: callisto.Client) -> None:
    await rc.retrieval.ingest(
        [
            BytesDocument(
                data=b"The volcano observatory measures tremors with seismographs.",
                document_id="volcano",
                mime_type=TEXT,
            )
        ]
    )
    hits = await rc.retrieval.search("seismograph tremors", page_size=3)
    assert hits and hits[0].citation.document_id == "volcano"
    assert hits[0].rank == 1
    keyword = await rc.retrieval.search("seismographs", mode=pb.SEARCH_MODE_KEYWORD, page_size=3)
    assert keyword[0].citation.document_id == "volcano"
    documents = [d.name async for d in rc.retrieval.list_documents(page_size=1)]
    assert "documents/volcano" in documents


async def test_a_bad_search_raises_invalid_argument(rc: callisto.Client) -> None:
    with pytest.raises(errors.InvalidArgument) as raised:
        await rc.retrieval.search("", page_size=3)
    assert "query" in raised.value.field_violations


async def test_upserted_entities_are_found_by_entity_search(rc: callisto.Client) -> None:
    stored = await rc.retrieval.upsert_entities(
        [
            pb.Entity(
                name="entities/speaker-ada",
                entity_type="speaker",
                title="Ada Lovelace",
                master="Ada Lovelace talks about analytical engines and early programs.",
                facets={"topics": "computing history, mathematics"},
            )
        ]
    )
    assert [e.name for e in stored] == ["entities/speaker-ada"]
    await asyncio.sleep(0)
    hits = await rc.retrieval.search_entities("analytical engines", entity_types=["speaker"])
    assert hits[0].entity.name == "entities/speaker-ada"
