"""Fixtures for the retrieval backend tests: a real Milvus Lite store in a temp dir and a
deterministic word-hashing embedder (for storage/search tests only; the Triton embedder has its
own test in test_embedder.py)."""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from callisto.services.retrieval.milvus_store import MilvusConfig, MilvusStore

_WORD = re.compile(r"[a-z0-9]+")


class HashingEmbedder:
    """Bag of hashed words (plus word bigrams) in 384 dims, L2-normalised: texts sharing words
    get similar vectors, which is all the storage/search tests need."""

    dim = 384

    def __init__(self) -> None:
        self.calls = 0
        self.texts_embedded = 0

    def vector(self, text: str) -> npt.NDArray[np.float32]:
        out = np.zeros(self.dim, dtype=np.float32)
        words = _WORD.findall(text.lower())
        for token in [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]:
            digest = hashlib.blake2b(token.encode(), digest_size=8).digest()
            index = int.from_bytes(digest[:4], "little") % self.dim
            out[index] += 1.0 if digest[4] & 1 else -1.0
        norm = float(np.linalg.norm(out))
        if norm == 0:
            out[0] = 1.0
            return out
        return out / norm

    async def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += 1
        self.texts_embedded += len(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self.vector(t) for t in texts])


@pytest.fixture(scope="session")
def milvus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("milvus")


@pytest.fixture(scope="session")
async def store(milvus_dir: Path) -> AsyncIterator[MilvusStore]:
    # One store per session: Milvus Lite start-up costs seconds; tests isolate by tenant.
    opened = await MilvusStore.open(MilvusConfig(uri=str(milvus_dir / "callisto.db")))
    yield opened
    await opened.close()


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


_tenant_counter = itertools.count()


@pytest.fixture
def tenant(request: pytest.FixtureRequest) -> str:
    """A fresh tenant per test so tests sharing the session store never see each other."""
    name = re.sub(r"[^A-Za-z0-9]", "", request.node.name)[:40]
    return f"t{next(_tenant_counter)}-{name}"
