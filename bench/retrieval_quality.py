"""Retrieval quality: nDCG@10 and recall@10 of dense, keyword and hybrid search, side by side.

The labelled collection is generated (:mod:`quality_corpus`: fictional product manuals plus
buying-guide distractors, one judged passage per query), ingested through the service's
IngestDocuments and searched through its Search RPC, so the figures include parsing, chunking,
the real embedder (all-MiniLM-L6-v2 on Triton), the keyword analyzer and fusion.

Besides the service's own modes, ``--sweep`` fuses the service's dense and keyword result lists
(each fetched 100 deep through Search) offline with other fusion settings, to show how the default
compares with the alternatives.

Run: `.venv/bin/python bench/retrieval_bench.py --quality` (or this file directly).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality_corpus import Collection, Query, generate, passage_key

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.client import auth_metadata
from callisto.ingest.folder import FileSpec, ingest_specs
from callisto.mesh.processes import RedisServer, ServiceProcess, free_port
from callisto.mesh.triton import running_triton
from callisto.services.common.auth import create_api_key
from callisto.services.retrieval import fusion as fusing

TENANT = "bench-quality"
CUTOFF = 10
Ranking = list[str]


def ndcg(ranking: Sequence[str], relevant: Mapping[str, int], cutoff: int = CUTOFF) -> float:
    """Normalised discounted cumulative gain (graded, log2 discount) of the first ``cutoff``."""
    gains = [relevant.get(key, 0) for key in _dedupe(ranking)[:cutoff]]
    dcg = sum(g / math.log2(i + 2) for i, g in enumerate(gains))
    ideal = sorted(relevant.values(), reverse=True)[:cutoff]
    best = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / best if best else 0.0


def recall(ranking: Sequence[str], relevant: Mapping[str, int], cutoff: int = CUTOFF) -> float:
    found = set(_dedupe(ranking)[:cutoff])
    wanted = {k for k, g in relevant.items() if g > 0}
    return len(found & wanted) / len(wanted) if wanted else 0.0


def _dedupe(ranking: Sequence[str]) -> list[str]:
    # Several chunks of one passage count once, at the first one's rank.
    return list(dict.fromkeys(ranking))


@dataclass(frozen=True)
class Score:
    ndcg: float
    recall: float
    per_query: tuple[float, ...]


def score(rankings: Sequence[Ranking], queries: Sequence[Query]) -> Score:
    values = [ndcg(r, q.relevant) for r, q in zip(rankings, queries, strict=True)]
    recalls = [recall(r, q.relevant) for r, q in zip(rankings, queries, strict=True)]
    return Score(statistics.fmean(values), statistics.fmean(recalls), tuple(values))


def hit_key(hit: pb.SearchHit) -> str:
    return passage_key(hit.citation.document_id, hit.citation.section)


async def ingest(stub: pb_grpc.RetrievalServiceAsyncStub, collection: Collection,
                 folder: Path, metadata: tuple[tuple[str, str], ...]) -> float:  # fmt: skip
    specs = []
    for document_id, (title, text) in collection.documents.items():
        path = folder / f"{document_id}.md"
        path.write_text(text, encoding="utf-8")
        specs.append(FileSpec(path, document_id, "text/markdown", title, f"bench://{document_id}"))
    started = time.perf_counter()
    report = await ingest_specs(stub, specs, metadata)
    if report.failed or report.error is not None:
        raise RuntimeError(f"ingestion failed: {report.failed or report.error}")
    return time.perf_counter() - started


async def rankings(
    stub: pb_grpc.RetrievalServiceAsyncStub,
    queries: Sequence[Query],
    metadata: tuple[tuple[str, str], ...],
    page_size: int = CUTOFF,
    **fields: object,
) -> tuple[list[list[pb.SearchHit]], list[float]]:
    """Each query's hits through Search, and each call's latency in ms."""
    results: list[list[pb.SearchHit]] = []
    latencies: list[float] = []
    for query in queries:
        started = time.perf_counter()
        response = await stub.Search(
            pb.SearchRequest(query=query.text, page_size=page_size, **fields),  # type: ignore[arg-type]
            metadata=metadata,
        )
        latencies.append((time.perf_counter() - started) * 1000)
        results.append(list(response.hits))
    return results, latencies


def fuse_offline(
    dense: Sequence[Sequence[pb.SearchHit]],
    keyword: Sequence[Sequence[pb.SearchHit]],
    method: Callable[[list[tuple[str, float]], list[tuple[str, float]]], list[tuple[str, float]]],
    depth: int,
) -> list[Ranking]:
    out = []
    for d, k in zip(dense, keyword, strict=True):
        dl = [(hit_key(h), h.citation.score) for h in d[:depth]]
        kl = [(hit_key(h), h.citation.score) for h in k[:depth]]
        out.append([key for key, _ in method(dl, kl)])
    return out


def rrf(
    k: int,
) -> Callable[[list[tuple[str, float]], list[tuple[str, float]]], list[tuple[str, float]]]:
    def method(d: list[tuple[str, float]], s: list[tuple[str, float]]) -> list[tuple[str, float]]:
        return fusing.reciprocal_rank_fusion([[x for x, _ in d], [x for x, _ in s]], str, k)

    return method


def weighted(
    w: float,
) -> Callable[[list[tuple[str, float]], list[tuple[str, float]]], list[tuple[str, float]]]:
    def method(d: list[tuple[str, float]], s: list[tuple[str, float]]) -> list[tuple[str, float]]:
        return fusing.weighted_fusion([d, s], [w, 1.0 - w], str)

    return method


async def measure(
    address: str, redis_url: str, work: Path, collection: Collection, sweep: bool,
    dump: Path | None = None,
) -> list[tuple[str, Score, float]]:  # fmt: skip
    key = await create_api_key(redis_url, TENANT, label="quality bench")
    metadata = auth_metadata(key)
    rows: list[tuple[str, Score, float]] = []
    queries = collection.queries
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RetrievalServiceStub(channel)
        folder = work / "corpus"
        folder.mkdir()
        seconds = await ingest(stub, collection, folder, metadata)
        print(f"ingested {len(collection.documents)} documents in {seconds:.1f} s", file=sys.stderr)
        modes = [
            ("dense", {"mode": pb.SEARCH_MODE_DENSE}),
            ("keyword (BM25)", {"mode": pb.SEARCH_MODE_KEYWORD}),
            ("hybrid (default)", {"mode": pb.SEARCH_MODE_HYBRID}),
            ("hybrid, RRF", {"mode": pb.SEARCH_MODE_HYBRID, "fusion": pb.FUSION_METHOD_RRF}),
            ("hybrid, weighted 0.5/0.5",
             {"mode": pb.SEARCH_MODE_HYBRID, "fusion": pb.FUSION_METHOD_WEIGHTED,
              "dense_weight": 0.5, "keyword_weight": 0.5}),
            ("hybrid + diversify (MMR, lambda 0.7)",
             {"mode": pb.SEARCH_MODE_HYBRID, "diversify": True}),
        ]  # fmt: skip
        for label, fields in modes:
            await rankings(stub, queries[:3], metadata, **fields)  # warm up
            hits, latencies = await rankings(stub, queries, metadata, **fields)
            result = score([[hit_key(h) for h in hs] for hs in hits], queries)
            p50 = statistics.median(latencies)
            rows.append((label, result, p50))
            print(f"  {label}: nDCG@10 {result.ndcg:.3f} recall@10 {result.recall:.3f} "
                  f"p50 {p50:.1f} ms", file=sys.stderr)  # fmt: skip
        if sweep:
            dense, _ = await rankings(stub, queries, metadata, 100, mode=pb.SEARCH_MODE_DENSE)
            keyword, _ = await rankings(stub, queries, metadata, 100, mode=pb.SEARCH_MODE_KEYWORD)
            variants: list[tuple[str, Callable[..., list[tuple[str, float]]], int]] = []
            for depth in (10, 20, 50, 100):
                for k in (1, 10, 60):
                    variants.append((f"offline RRF k={k}, depth {depth}", rrf(k), depth))
                for w in (0.3, 0.5, 0.7):
                    variants.append((f"offline weighted {w}, depth {depth}", weighted(w), depth))
            if dump is not None:
                lists = [
                    {"query": q.text, "kind": q.kind, "relevant": q.relevant,
                     "dense": [(hit_key(h), h.citation.score) for h in d],
                     "keyword": [(hit_key(h), h.citation.score) for h in k]}
                    for q, d, k in zip(queries, dense, keyword, strict=True)
                ]  # fmt: skip
                await asyncio.to_thread(dump.write_text, json.dumps(lists))
            for label, method, depth in variants:
                result = score(fuse_offline(dense, keyword, method, depth), queries)
                rows.append((label, result, float("nan")))
                print(f"  {label}: nDCG@10 {result.ndcg:.3f} recall@10 {result.recall:.3f}",
                      file=sys.stderr)  # fmt: skip
    return rows


def by_kind(collection: Collection, rows: Sequence[tuple[str, Score, float]]) -> str:
    kinds = sorted({q.kind for q in collection.queries})
    lines = ["| mode | " + " | ".join(f"nDCG@10 {k}" for k in kinds) + " |",
             "|---|" + "---|" * len(kinds)]  # fmt: skip
    for label, result, _ in rows[:6]:
        cells = []
        for kind in kinds:
            values = [v for v, q in zip(result.per_query, collection.queries, strict=True)
                      if q.kind == kind]  # fmt: skip
            cells.append(f"{statistics.fmean(values):.3f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(collection: Collection, rows: Sequence[tuple[str, Score, float]]) -> str:
    lines = [
        f"{collection.passage_count} passages in {len(collection.documents)} documents, "
        f"{len(collection.queries)} judged queries",
        "",
        "| mode | nDCG@10 | recall@10 | p50 latency (ms) |",
        "|---|---|---|---|",
    ]
    for label, result, p50 in rows:
        latency = "" if math.isnan(p50) else f"{p50:.1f}"
        lines.append(f"| {label} | {result.ndcg:.3f} | {result.recall:.3f} | {latency} |")
    return "\n".join(lines) + "\n\n" + by_kind(collection, rows)


def run(products: int = 150, queries: int = 150, sweep: bool = False, dump: Path | None = None,
        seed: int = 7) -> str:  # fmt: skip
    collection = generate(products=products, guides=max(3, products * 2 // 15), queries=queries,
                          seed=seed)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="callisto-quality-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis")
        redis.start()
        try:
            env = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
            with running_triton(["embedder"], env=env, log=lambda _: None) as triton:
                service = ServiceProcess(
                    "retrieval",
                    free_port(),
                    env={
                        "CALLISTO_REDIS_URL": redis.url,
                        "CALLISTO_TRITON_URL": str(triton.grpc_url),
                        "CALLISTO_RETRIEVAL_DATA_DIR": str(work / "retrieval"),
                        "CALLISTO_LOG_LEVEL": "WARNING",
                        **env,
                    },
                    log_path=work / "retrieval.log",
                )
                service.start()
                try:
                    service.wait_healthy(timeout=120)
                    rows = asyncio.run(
                        measure(service.address, redis.url, work, collection, sweep, dump)
                    )
                finally:
                    service.stop()
        finally:
            redis.stop()
    return table(collection, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--products", type=int, default=150, help="product manuals (<= 180)")
    parser.add_argument("--queries", type=int, default=150, help="judged queries")
    parser.add_argument("--seed", type=int, default=7, help="seed of the generated collection")
    parser.add_argument("--sweep", action="store_true", help="also fuse offline, other settings")
    parser.add_argument("--dump", type=Path, help="with --sweep: write both sides' lists (JSON)")
    args = parser.parse_args(argv)
    print(run(args.products, args.queries, args.sweep, args.dump, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
