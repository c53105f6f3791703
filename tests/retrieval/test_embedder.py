"""The Triton embedder client against a real tritonserver serving deploy/triton/embedder."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import numpy as np
import pytest

from callisto.services.retrieval.embedder import TritonEmbedder
from callisto.services.retrieval.errors import BackendUnavailable


@pytest.fixture
async def triton_embedder(triton_embedder_url: str) -> AsyncIterator[TritonEmbedder]:
    client = TritonEmbedder(triton_embedder_url, max_batch_size=64, max_concurrency=3)
    yield client
    await client.close()


async def test_real_embedder_batches_and_returns_unit_vectors(
    triton_embedder: TritonEmbedder,
) -> None:
    assert await triton_embedder.ready()
    texts = [f"Session {i} covers vector search in production." for i in range(150)]
    texts[0] = "Milvus stores vectors for similarity search."
    texts[1] = "A vector database indexes embeddings for nearest neighbour lookup."
    texts[2] = "The chef bakes sourdough bread every morning."
    started = time.perf_counter()
    vectors = await triton_embedder.embed(texts)  # 150 texts -> 3 concurrent batches (64/64/22)
    elapsed = time.perf_counter() - started
    assert vectors.shape == (150, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2]) + 0.1
    again = await triton_embedder.embed(texts[:1])
    assert np.allclose(again[0], vectors[0], atol=1e-4)
    print(f"embedded 150 texts in {elapsed * 1000:.0f} ms")


async def test_embedder_timeout_is_typed(triton_embedder_url: str) -> None:
    client = TritonEmbedder(triton_embedder_url, timeout_s=0.001)
    try:
        with pytest.raises(BackendUnavailable):
            await client.embed(["x"] * 64)
    finally:
        await client.close()


async def test_the_timeout_bounds_each_request_not_a_whole_document(
    triton_embedder_url: str,
) -> None:
    texts = [f"Clause {i} of the long contract covers delivery terms." for i in range(64)]
    probe = TritonEmbedder(triton_embedder_url, max_batch_size=16)
    try:
        await probe.embed(texts[:16])
        # The fastest of a few requests: one slow probe on a busy machine would otherwise size
        # a document that finishes within a single timeout.
        durations = []
        for _ in range(5):
            started = time.perf_counter()
            await probe.embed(texts[:16])
            durations.append(time.perf_counter() - started)
        one = min(durations)
    finally:
        await probe.close()
    timeout = max(2.0, 10 * one)
    # Enough 16-text requests that the whole document takes about four timeouts.
    document = texts * max(1, int(4 * timeout / one * 16 / len(texts)) + 1)
    client = TritonEmbedder(triton_embedder_url, max_batch_size=16, timeout_s=timeout)
    try:
        started = time.perf_counter()
        vectors = await client.embed(document)
        elapsed = time.perf_counter() - started
    finally:
        await client.close()
    assert vectors.shape == (len(document), 384)
    assert elapsed > timeout, "the document must take longer than one request's timeout"


async def test_queries_do_not_wait_behind_ingestion_batches(triton_embedder_url: str) -> None:
    client = TritonEmbedder(triton_embedder_url, max_batch_size=16, max_concurrency=1)
    texts = [f"Row {i} of the bulk catalogue lists a spare part." for i in range(16 * 60)]
    try:
        await client.embed(["warm up"])
        started = time.perf_counter()
        bulk = asyncio.create_task(client.ingestion.embed(texts))
        await asyncio.sleep(0.5)
        query_started = time.perf_counter()
        await client.embed(["where are the spare parts?"])
        query = time.perf_counter() - query_started
        await bulk
        total = time.perf_counter() - started
    finally:
        await client.close()
    assert total > 2.0, "the bulk embedding must outlast the query by far"
    assert query < total / 4, f"query took {query:.2f} s of the bulk's {total:.2f} s"
