"""Retrieval on a Milvus server (the shape of several retrieval replicas): a server that
restarts comes back with its collections released, and the store loads them again and answers,
rather than refusing the search."""

from __future__ import annotations

import time
from pathlib import Path

from retrieval_test_support import HashingEmbedder
from test_milvus_store import CORPUS, doc, ingest

from callisto.mesh.processes import MilvusLiteServer, free_port
from callisto.services.retrieval.milvus_store import MilvusConfig, MilvusStore
from callisto.services.retrieval.search import Retriever, SearchRequest


def _started(server: MilvusLiteServer) -> None:
    server.start()
    deadline = time.monotonic() + 30
    while not server.answering:
        server.check_alive()
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.1)


async def test_a_restarted_milvus_server_has_its_collections_loaded_again(tmp_path: Path) -> None:
    server = MilvusLiteServer(tmp_path / "milvus", free_port(), log_path=tmp_path / "milvus.log")
    _started(server)
    embedder = HashingEmbedder()
    store = await MilvusStore.open(MilvusConfig(uri=server.uri, dim=embedder.dim, timeout_s=10))
    try:
        await ingest(store, embedder, [doc("acme", name, text) for name, text in CORPUS.items()])
        await store.flush()
        request = SearchRequest(tenant="acme", query="sparse BM25 vectors hybrid search", top_k=2)
        before = await Retriever(store, embedder).search(request)
        server.kill()  # what a crash does: the write-ahead log keeps the rows
        _started(server)
        after = await Retriever(store, embedder).search(request)
        assert [hit.document_id for hit in after] == [hit.document_id for hit in before]
        assert after[0].document_id == "milvus-guide"
    finally:
        await store.close()
        server.stop()
