"""The Triton embedder client against a real tritonserver serving deploy/triton/embedder."""

from __future__ import annotations

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
