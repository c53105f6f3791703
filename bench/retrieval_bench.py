"""Retrieval benchmark: what the service adds on top of its backends, each baseline measured in
the same run on the same machine, data and collection.

1. Ingestion throughput (chunks/s): the service's IngestDocuments (parse, chunk, embed, write to
   Milvus) vs the Triton embedder alone on the same chunk texts. Target: service >= 80 %.
2. Search latency (ms, p50/p99): dense and keyword search through the service (gRPC) and through
   Envoy vs the same backend calls made directly (Triton embed + pymilvus search, same filter,
   same output fields, same collection). Target: <= 3 ms added at p50.
3. Recall@10 of the service's dense (HNSW) search vs exact brute-force cosine over the real
   embeddings stored for the sample corpus. Target: >= 0.95.
4. Search under ingestion: dense search p50 through the service alone and while another tenant
   bulk-ingests generated documents, same run, as a ratio. Target: <= 1.5x.
5. Flat ingestion: `--stream-docs` (10,000) generated short documents (one chunk each) in one
   IngestDocuments stream; documents/s of the first and the last thousand, and of the whole run
   against the embedder's batched throughput on the same texts. Targets: last >= 90 % of first,
   whole run >= 50 % of the embedder.

Everything runs on free ports (Redis, Triton with the embedder, a Milvus Lite server, the
retrieval service, Envoy) and is stopped at the end.
Run: `.venv/bin/python bench/retrieval_bench.py` (`--stream-docs 2000 --load-docs 500` for a
quicker run while developing); `--quality` measures retrieval quality instead (nDCG@10 and
recall@10 of dense, keyword and hybrid search, bench/retrieval_quality.py).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from callisto.api.retrieval.v1 import retrieval_pb2 as pb
from callisto.api.retrieval.v1 import retrieval_pb2_grpc as pb_grpc
from callisto.client import auth_metadata
from callisto.deploy import samples_dir
from callisto.ingest.folder import FileSpec, ingest_specs
from callisto.mesh.gateway import EnvoyGateway
from callisto.mesh.processes import ManagedProcess, RedisServer, ServiceProcess, free_port
from callisto.mesh.samples import COMPANY_TENANTS, company_specs, ingest_samples
from callisto.mesh.triton import running_triton
from callisto.services.common.auth import create_api_key
from callisto.services.retrieval.chunking import ChunkOptions, chunk_document
from callisto.services.retrieval.embedder import TritonEmbedder
from callisto.services.retrieval.filters import build_expression
from callisto.services.retrieval.parsing import parse_document

SERVICE = "callisto.retrieval.v1.RetrievalService"
BENCH_TENANT = "bench-ingest"
LOAD_TENANT = "bench-load"
STREAM_TENANT = "bench-stream"
WORDS = (
    "harbour crane ferry cargo invoice pallet warehouse contract delivery customs tariff vessel "
    "berth container schedule pilot tug freight manifest dock quay crew engine route voyage "
    "storage insurance claim audit permit inspection fuel tide anchor signal beacon channel"
).split()
QUERIES = [
    "What is the list price of the Tessa Edge E410 with 64 GB of memory?",
    "How long do customers have to return non-faulty hardware?",
    "What is the initial response target for a P1 incident under TessaCare Platinum?",
    "Who must approve a total discount of 25% on an order?",
    "What does a 60-month Strata S5 subscription cost per node per month?",
    "How quickly does Corvane notify customers of a security incident?",
    "What is the proposal deadline for RFP MMW-RFP-2026-014?",
    "How many edge nodes are planned for production line GYR-L05?",
    "Who is the CEO?",
    "payment terms net 60",
    "operating temperature range of the edge server",
    "data residency EU only",
]
CHUNK_OUTPUT = [
    "id", "document_id", "title", "source_uri", "mime_type", "tags", "attributes",
    "chunk_index", "start_offset", "end_offset", "page", "section", "text",
]  # fmt: skip


def generated_texts(count: int, seed: int) -> list[str]:
    """Short distinct documents of about 300 characters (one chunk each)."""
    rng = random.Random(seed)
    return [
        f"Note {i}. " + " ".join(rng.choice(WORDS) for _ in range(40)) + "." for i in range(count)
    ]


async def text_requests(
    texts: Sequence[str], prefix: str
) -> AsyncIterator[pb.IngestDocumentsRequest]:
    for i, text in enumerate(texts):
        yield pb.IngestDocumentsRequest(
            header=pb.DocumentHeader(
                document_id=f"{prefix}{i:06d}", title=f"Note {i}", mime_type="text/plain"
            )
        )
        yield pb.IngestDocumentsRequest(data=text.encode())
        yield pb.IngestDocumentsRequest(end=pb.DocumentEnd())


async def stream_ingest(
    stub: Any, texts: Sequence[str], prefix: str, metadata: Any
) -> tuple[float, list[float]]:
    """Ingest ``texts`` in one stream; the start time and each document result's arrival."""
    started = time.perf_counter()
    arrivals: list[float] = []
    async for response in stub.IngestDocuments(text_requests(texts, prefix), metadata=metadata):
        kind = response.WhichOneof("event")
        if kind == "document":
            assert response.document.outcome != pb.DOCUMENT_OUTCOME_FAILED, response
            arrivals.append(time.perf_counter())
        elif kind == "error":
            raise RuntimeError(f"ingest stream failed: {response.error}")
    assert len(arrivals) == len(texts), (len(arrivals), len(texts))
    return started, arrivals


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


async def create_key(redis_url: str, tenant: str) -> str:
    return await create_api_key(redis_url, tenant, label="bench")


def corpus(copies: int, folder: Path) -> list[FileSpec]:
    """`copies` copies of every sample company document, each with its own document id."""
    specs: list[FileSpec] = []
    for tenant in COMPANY_TENANTS:
        for spec in company_specs(samples_dir() / "tenants" / tenant):
            for copy in range(copies):
                target = folder / f"{copy}-{tenant}-{spec.path.name}"
                shutil.copyfile(spec.path, target)
                specs.append(
                    FileSpec(
                        path=target,
                        document_id=f"c{copy}-{tenant}-{spec.document_id}",
                        mime_type=spec.mime_type,
                        title=spec.title,
                        source_uri=f"bench://{copy}/{spec.source_uri}",
                        tags=spec.tags,
                    )
                )
    return specs


def chunk_texts(specs: Sequence[FileSpec]) -> list[str]:
    options = ChunkOptions(1000, 150)
    texts: list[str] = []
    for spec in specs:
        parsed = parse_document(spec.path.read_bytes(), spec.mime_type, spec.path.name)
        texts.extend(c.text for c in chunk_document(parsed, options))
    return texts


async def timed(call: Callable[[], Awaitable[Any]], runs: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        await call()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


class Bench:
    def __init__(
        self,
        work: Path,
        copies: int,
        runs: int,
        stream_docs: int = 10_000,
        load_docs: int = 2000,
        ingestion_only: bool = False,
    ) -> None:
        self.ingestion_only = ingestion_only
        self.work = work
        self.copies = copies
        self.runs = runs
        self.stream_docs = stream_docs
        self.load_docs = load_docs
        self.rows: list[tuple[str, str, str, str, str]] = []

    def row(self, what: str, baseline: str, value: str, diff: str, target: str) -> None:
        self.rows.append((what, baseline, value, diff, target))
        print(f"  {what}: baseline {baseline}, value {value} ({diff}; target {target})",
              file=sys.stderr)  # fmt: skip

    async def run(self, triton_url: str, milvus_uri: str, redis: RedisServer) -> None:
        service = ServiceProcess(
            "retrieval",
            free_port(),
            env={
                "CALLISTO_REDIS_URL": redis.url,
                "CALLISTO_TRITON_URL": triton_url,
                "CALLISTO_MILVUS_URI": milvus_uri,
                "CALLISTO_RETRIEVAL_DATA_DIR": str(self.work / "retrieval"),
                "CALLISTO_LOG_LEVEL": "WARNING",
                "OMP_WAIT_POLICY": "PASSIVE",
                "OMP_NUM_THREADS": "1",
            },
            log_path=self.work / "retrieval.log",
        )
        service.start()
        gateway: EnvoyGateway | None = None
        try:
            service.wait_healthy(timeout=120)
            gateway = EnvoyGateway.on_free_ports(
                {SERVICE: ("127.0.0.1", service.port)},
                self.work / "gateway",
                rate_limit_tokens=1_000_000,
            )
            await gateway.start_async()
            await self.measure(service, gateway, triton_url, milvus_uri, redis)
        finally:
            if gateway is not None:
                await gateway.stop_async()
            service.stop()

    async def measure(
        self,
        service: ServiceProcess,
        gateway: EnvoyGateway,
        triton_url: str,
        milvus_uri: str,
        redis: RedisServer,
    ) -> None:
        from pymilvus import MilvusClient

        embedder = TritonEmbedder(triton_url, max_concurrency=4, timeout_s=600)
        tenants = (*COMPANY_TENANTS, BENCH_TENANT, LOAD_TENANT, STREAM_TENANT)
        keys = {t: await create_key(redis.url, t) for t in tenants}
        files = self.work / "corpus"
        files.mkdir()
        specs = await asyncio.to_thread(corpus, self.copies, files)
        texts = await asyncio.to_thread(chunk_texts, specs)
        await embedder.embed(texts[:64])  # warm the model

        async def embed_all() -> float:
            """The embedder's best raw throughput: the fastest of several request sizes, all
            sent at once (the client bounds concurrency), since padding makes big batches of
            mixed-length chunks slower than small ones on a CPU."""
            rates = []
            for size in (8, 16, 32, 64):
                started = time.perf_counter()
                await asyncio.gather(
                    *(embedder.embed(texts[i : i + size]) for i in range(0, len(texts), size))
                )
                rates.append(len(texts) / (time.perf_counter() - started))
            return max(rates)

        if self.ingestion_only:
            async with grpc.aio.insecure_channel(service.address) as channel:
                stub = pb_grpc.RetrievalServiceStub(channel)
                assert not (await ingest_samples(service.address, keys)).failed
                md = auth_metadata(keys["tessaline-systems"])
                await self.loaded_sections(stub, md, keys, embedder)
            await embedder.close()
            return

        # 1. ingestion throughput; the baseline runs before and after (the machine is shared).
        raw_before = await embed_all()
        async with grpc.aio.insecure_channel(service.address) as channel:
            stub = pb_grpc.RetrievalServiceStub(channel)
            metadata = auth_metadata(keys[BENCH_TENANT])
            started = time.perf_counter()
            report = await ingest_specs(stub, specs, metadata)
            service_rate = report.chunks_stored / (time.perf_counter() - started)
            assert not report.failed and report.chunks_stored == len(texts), report
            raw_rate = (raw_before + await embed_all()) / 2
            self.row(
                f"ingestion, {len(specs)} docs / {len(texts)} chunks (chunks/s)",
                f"{raw_rate:.0f} (embedder alone)",
                f"{service_rate:.0f}",
                f"{service_rate / raw_rate:.0%}",
                ">= 80%",
            )

            samples = await ingest_samples(service.address, keys)
            assert not samples.failed

            # 2. search latency (sample tenant "tessaline-systems")
            tenant = "tessaline-systems"
            tenant_md = auth_metadata(keys[tenant])
            client = MilvusClient(uri=milvus_uri)
            expr = build_expression(tenant)
            counter = iter(range(10**9))

            def next_query() -> str:
                return QUERIES[next(counter) % len(QUERIES)]

            async def via(target_stub: Any, mode: pb.SearchMode.ValueType) -> None:
                await target_stub.Search(
                    pb.SearchRequest(query=next_query(), mode=mode, page_size=10),
                    metadata=tenant_md,
                )

            pool = ThreadPoolExecutor(1)
            loop = asyncio.get_running_loop()

            def milvus_search(data: Any, field: str, params: dict[str, Any]) -> Any:
                return client.search(
                    "callisto_chunks", data=data, anns_field=field, filter=expr, limit=10,
                    output_fields=CHUNK_OUTPUT, search_params=params,
                )  # fmt: skip

            async def direct(mode: pb.SearchMode.ValueType) -> None:
                query = next_query()
                if mode == pb.SEARCH_MODE_DENSE:
                    vector = (await embedder.embed([query]))[0].tolist()
                    params = {"metric_type": "COSINE", "params": {"ef": 256}}
                    await loop.run_in_executor(pool, milvus_search, [vector], "dense", params)
                else:
                    params = {"metric_type": "BM25"}
                    await loop.run_in_executor(pool, milvus_search, [query], "sparse", params)

            async with grpc.aio.insecure_channel(gateway.grpc_target) as gateway_channel:
                gateway_stub = pb_grpc.RetrievalServiceStub(gateway_channel)
                for mode, label in ((pb.SEARCH_MODE_DENSE, "dense"),
                                    (pb.SEARCH_MODE_KEYWORD, "keyword")):  # fmt: skip
                    base = await timed(partial(direct, mode), self.runs)
                    svc = await timed(partial(via, stub, mode), self.runs)
                    env = await timed(partial(via, gateway_stub, mode), self.runs)
                    b50, b99 = percentile(base, 50), percentile(base, 99)
                    direct_label = (
                        "Triton + pymilvus direct" if mode == pb.SEARCH_MODE_DENSE
                        else "pymilvus direct"
                    )  # fmt: skip
                    for where, values in (("service", svc), ("service via Envoy", env)):
                        p50, p99 = percentile(values, 50), percentile(values, 99)
                        self.row(
                            f"{label} search p50/p99 (ms), {where}",
                            f"{b50:.2f}/{b99:.2f} ({direct_label})",
                            f"{p50:.2f}/{p99:.2f}",
                            f"{p50 - b50:+.2f} ms at p50",
                            "<= +3 ms at p50",
                        )

            # 3. recall@10 of dense search vs exact search on the stored embeddings
            recalls: list[float] = []
            for tenant in COMPANY_TENANTS:
                rows = await loop.run_in_executor(
                    pool,
                    partial(
                        client.query, "callisto_chunks", filter=build_expression(tenant),
                        output_fields=["id", "dense", "text"], limit=16384,
                    ),
                )  # fmt: skip
                ids = [str(r["id"]) for r in rows]
                matrix = np.asarray([r["dense"] for r in rows], dtype=np.float32)
                # The questions plus one query per chunk (its first 80 characters).
                queries = [*QUERIES, *(str(r["text"])[:80] for r in rows)]
                vectors = await embedder.embed(queries)
                md = auth_metadata(keys[tenant])
                for query, vector in zip(queries, vectors, strict=True):
                    exact_order = np.argsort(-(matrix @ vector))[:10]
                    exact = {ids[i] for i in exact_order}
                    response = await stub.Search(
                        pb.SearchRequest(query=query, mode=pb.SEARCH_MODE_DENSE, page_size=10),
                        metadata=md,
                    )
                    found = {h.citation.chunk_id for h in response.hits}
                    recalls.append(len(found & exact) / len(exact))
            self.row(
                f"recall@10, dense (HNSW) vs exact, {len(recalls)} queries",
                "1.00 (brute force)",
                f"{statistics.fmean(recalls):.3f}",
                f"min {min(recalls):.2f}",
                ">= 0.95",
            )
            client.close()
            pool.shutdown()

            await self.loaded_sections(stub, tenant_md, keys, embedder)
        await embedder.close()

    async def loaded_sections(
        self, stub: Any, search_md: Any, keys: dict[str, str], embedder: TritonEmbedder
    ) -> None:
        # 4. search latency while another tenant bulk-ingests
        if self.load_docs:
            await self.search_under_ingest(stub, search_md, keys)
        # 5. ingestion speed over one long stream, against the embedder alone
        if self.stream_docs:
            await self.flat_ingestion(stub, keys, embedder)

    async def search_under_ingest(self, stub: Any, search_md: Any, keys: dict[str, str]) -> None:
        counter = iter(range(10**9))

        async def dense() -> None:
            query = QUERIES[next(counter) % len(QUERIES)]
            await stub.Search(
                pb.SearchRequest(query=query, mode=pb.SEARCH_MODE_DENSE, page_size=10),
                metadata=search_md,
            )

        idle = await timed(dense, self.runs)
        load_md = auth_metadata(keys[LOAD_TENANT])
        load = asyncio.create_task(
            stream_ingest(stub, generated_texts(self.load_docs, seed=2), "l", load_md)
        )
        await asyncio.sleep(1.0)  # let the bulk stream get going
        busy: list[float] = []
        while not load.done():
            busy += await timed(dense, 1, warmup=0)
        started, arrivals = await load
        rate = len(arrivals) / (arrivals[-1] - started)
        print(f"  load: {len(arrivals)} docs at {rate:.1f}/s; searches (ms): "
              f"{[round(b) for b in busy]}", file=sys.stderr)  # fmt: skip
        assert len(busy) >= 5, f"the bulk ingest ended after {len(busy)} searches"
        p50_idle, p50_busy = percentile(idle, 50), percentile(busy, 50)
        self.row(
            f"dense search p50 (ms) during another tenant's ingest ({rate:.1f} docs/s), "
            f"{len(busy)} searches",
            f"{p50_idle:.2f} (no ingest)",
            f"{p50_busy:.2f}",
            f"{p50_busy / p50_idle:.2f}x",
            "<= 1.5x",
        )

    async def flat_ingestion(
        self, stub: Any, keys: dict[str, str], embedder: TritonEmbedder
    ) -> None:
        texts = generated_texts(self.stream_docs, seed=1)

        sample = texts[:2000]  # the same texts' first 2,000 keep the baseline short

        async def embedder_rate() -> float:
            started = time.perf_counter()
            await asyncio.gather(
                *(embedder.embed(sample[i : i + 64]) for i in range(0, len(sample), 64))
            )
            return len(sample) / (time.perf_counter() - started)

        before = await embedder_rate()
        md = auth_metadata(keys[STREAM_TENANT])
        started, arrivals = await stream_ingest(stub, texts, "s", md)
        raw = (before + await embedder_rate()) / 2
        window = min(1000, len(texts) // 2)
        first = window / (arrivals[window - 1] - started)
        last = window / (arrivals[-1] - arrivals[-window - 1])
        whole = len(texts) / (arrivals[-1] - started)
        label = f"{len(texts)} one-chunk docs in one stream (docs/s)"
        self.row(
            f"ingestion, last vs first {window} of {label}",
            f"{first:.1f} (first {window})",
            f"{last:.1f} (last {window})",
            f"{last / first:.0%}",
            ">= 90%",
        )
        self.row(
            f"ingestion, whole run of {label}",
            f"{raw:.1f} (embedder alone, batches of 64)",
            f"{whole:.1f}",
            f"{whole / raw:.0%}",
            ">= 50%",
        )

    def table(self) -> str:
        header = ("what", "baseline (same run)", "value", "ratio / difference", "target")
        widths = [max(len(r[i]) for r in [header, *self.rows]) for i in range(5)]
        lines = [
            "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        for row in self.rows:
            lines.append(
                "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
            )
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--copies", type=int, default=1, help="copies of the sample corpus")
    parser.add_argument("--runs", type=int, default=100, help="searches per latency measurement")
    parser.add_argument(
        "--quality", action="store_true", help="nDCG@10 / recall@10 per mode instead"
    )
    parser.add_argument(
        "--stream-docs", type=int, default=10_000, help="documents of the flat-ingestion stream"
    )
    parser.add_argument(
        "--load-docs", type=int, default=2000, help="documents ingested while searches are timed"
    )
    parser.add_argument(
        "--ingestion-only",
        action="store_true",
        help="only sections 4 and 5 (search under ingestion, flat ingestion)",
    )
    args = parser.parse_args(argv)
    if args.quality:
        from retrieval_quality import run as quality  # bench/ is sys.path[0] for this script

        print(quality())
        return 0
    with tempfile.TemporaryDirectory(prefix="callisto-bench-") as tmp:
        work = Path(tmp)
        redis = RedisServer(work / "redis")
        redis.start()
        milvus_port = free_port()
        milvus = ManagedProcess(
            "milvus-lite",
            [str(Path(sys.executable).parent / "milvus-lite"), "server", "--data-dir",
             str(work / "milvus"), "--host", "127.0.0.1", "--port", str(milvus_port)],
            log_path=work / "milvus.log",
        )  # fmt: skip
        milvus.start()
        bench = Bench(
            work, args.copies, args.runs, args.stream_docs, args.load_docs, args.ingestion_only
        )
        try:
            env = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
            with running_triton(["embedder"], env=env, log=lambda _: None) as triton:
                _wait_port(milvus_port, milvus)
                asyncio.run(bench.run(str(triton.grpc_url), f"http://127.0.0.1:{milvus_port}",
                                      redis))  # fmt: skip
        finally:
            milvus.stop()
            redis.stop()
    print(bench.table())
    return 0


def _wait_port(port: int, process: ManagedProcess, timeout: float = 60.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        process.check_alive()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"milvus-lite server did not listen on {port}: {process.log_tail()}")


if __name__ == "__main__":
    sys.exit(main())
