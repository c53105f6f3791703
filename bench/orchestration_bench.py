"""Orchestration benchmark: what the assistant loop adds on top of the calls it makes.

Starts its own mesh on free ports (bench/orchestration_mesh.py: Redis, tritonserver with
toy_llm and the embedder (+ the real SmolLM2 `llm`), persistence, generation, retrieval, two
orchestration processes, two Envoy gateways), loads the conference sample (65 sessions,
speakers and exhibitors) into tenant `conference-demo`, creates the conference assistant
(`callisto.mesh.samples.conference_agent`) and measures, in one run, through the SDK:

  (a) overhead of an assistant turn: wall time to the answer's `turn_ended` minus the time
      generation and retrieval spent serving the turn's calls (their Prometheus
      `callisto_rpc_duration_seconds`, read before and after each turn; turns run one at a
      time). Baseline: the same number of generations (structured, then a streamed answer of
      the turn's completion tokens) and the same searches its tool calls made, called directly.
      Target <= 15 ms p50.
  (b) token lag: from the moment generation hands a token on (seen by a tap in front of the
      generation service, bench/orchestration_tap.py) to its arrival at a Converse client
      through Envoy; toy_llm paced at `--token-delay-ms`. Baseline: a Generate stream through
      the same Envoy and tap. Target <= 25 ms p99.
  (c) cancel to terminal event: `cancel` on Converse once the answer streams, to `done`.
      Baseline: cancelling a generation on a Chat stream through Envoy, to its CANCELLED
      result. Target <= 100 ms p99.
  (d) `--concurrent` (200) assistant conversations at once on toy_llm through Envoy: errors
      (target 0), every client's event sequence against the conversation's log in persistence
      (target: all gap-free), orchestration RSS. Baseline: the same calls made directly, as
      many at once.
  (e) the real SmolLM2 answering "Which sessions talk about cold-chain monitoring, and who
      speaks?" as the conference assistant, end to end through Envoy: p50 wall time (the
      product's target is under 10 s). Skipped with `--skip-llm` (and by `--quick` unless
      `--llm`).

Why Prometheus for (a): the generation and retrieval services time every call they serve
whatever the caller, so the figure does not rest on the orchestration's own accounting; the
events' `turn_ended.generation_ms` and `tool_call.duration_ms` are printed next to it as a
cross-check. Searches a plan runs concurrently are summed, so if anything the overhead is
understated.

    .venv/bin/python bench/orchestration_bench.py [--quick] [--skip-llm]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import difflib
import json
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.protobuf import json_format, struct_pb2
from orchestration_mesh import BenchMesh, Served, fill_defaults, rss_mib, workdir
from orchestration_report import Results, ms, p50, p99, ratio, say, table, verdict
from orchestration_runs import (
    AnsweredTurn,
    Sequence_,
    Watch,
    chat_cancel_ms,
    line_up,
    log_gaps,
    token_lags,
)
from orchestration_tap import GenerationTap, Pacing, TappedCall

import callisto
from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.generation import Generation
from callisto.mesh.samples import conference_agent
from callisto.orchestration import agent_name

QUESTION = "Which sessions talk about cold-chain monitoring, and who speaks?"
FOLLOW_UP = "Which of them is on the second day?"
TOY_MODEL = "models/toy_llm"
LLM_MODEL = "models/llm"
# A stand-in for the loop's structured calls in the direct baseline (toy_llm answers with the
# minimal instance of a schema: the user's text cut to maxLength, then `false`).
BASELINE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "maxLength": 48},
        "needs_knowledge": {"type": "boolean"},
    },
    "required": ["intent", "needs_knowledge"],
}
SEARCH_TOOLS = ("search_documents", "search_entities")


@dataclass
class TurnSample:
    """One assistant turn through orchestration (a)."""

    wall_ms: float
    to_done_ms: float
    generation: Served
    retrieval: Served
    turn: AnsweredTurn
    conversation: str
    # Persistence calls made up to `done` (not part of "inside": the run's own bookkeeping).
    persistence: Served
    # perf_counter() when the question was sent.
    started: float

    @property
    def first_token_ms(self) -> float | None:
        at = self.turn.first_token_at
        return None if at is None else (at - self.started) * 1000

    @property
    def inside_ms(self) -> float:
        return self.generation.total_ms + self.retrieval.total_ms

    @property
    def overhead_ms(self) -> float:
        return self.wall_ms - self.inside_ms

    @property
    def reported_inside_ms(self) -> float:
        """What the run's own events say it spent in generation and tools."""
        return self.turn.turn_ended.generation_ms + self.turn.tool_ms

    @property
    def generations(self) -> int:
        return self.generation.count("Generate") + self.generation.count("Chat")

    @property
    def searches(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (call.tool, json_format.MessageToDict(call.arguments))
            for call in self.turn.tool_calls
            if call.tool in SEARCH_TOOLS and not call.cached and not call.error
        ]

    @property
    def answer_tokens(self) -> int:
        """Tokens the turn's generations completed (its text may hold the loop's own, such as
        an entity listing, which costs no generation)."""
        usage = self.turn.turn_ended.usage.completion_tokens
        return max(1, usage or len(self.turn.turn_ended.text.split()))


@dataclass
class DirectSample:
    wall_ms: float
    inside_ms: float

    @property
    def outside_ms(self) -> float:
        return self.wall_ms - self.inside_ms


class Bench:
    def __init__(self, mesh: BenchMesh, tap: GenerationTap, args: argparse.Namespace) -> None:
        self.mesh = mesh
        self.tap = tap
        self.args = args
        self.results = Results()
        self.toy_agent = ""
        self.llm_agent = ""
        self.turn_samples: list[TurnSample] = []

    def row(self, *cells: str) -> None:
        self.results.row(*cells)

    async def run(self) -> None:
        key = self.mesh.key
        mesh = self.mesh
        assert mesh.tapped_gateway is not None
        async with (
            await callisto.Client.connect(mesh.orchestration.address, api_key=key) as orch,
            await callisto.Client.connect(mesh.generation.address, api_key=key) as generation,
            await callisto.Client.connect(mesh.retrieval.address, api_key=key) as retrieval,
            await callisto.Client.connect(mesh.gateway.grpc_target, api_key=key) as gateway,
            await callisto.Client.connect(mesh.tapped_gateway.grpc_target, api_key=key) as tapped,
        ):
            self.orch, self.generation, self.retrieval = orch, generation, retrieval
            self.gateway, self.tapped = gateway, tapped
            toy = conference_agent()
            toy.model = TOY_MODEL
            self.toy_agent = agent_name((await gateway.orchestration.create_agent(toy)).name)
            sections: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("(a) overhead", self.overhead),
                ("(d) concurrency", self.concurrency),
                ("(b) token lag", self.token_lag),
                ("(c) cancel", self.cancel),
            ]
            if self.args.llm_questions > 0:
                sections.append(("(e) SmolLM2", self.llm))
            for name, section in sections:
                if name[1] not in self.args.only:
                    continue
                started = time.monotonic()
                say(f"{name} …")
                try:
                    await section()
                except Exception as error:  # one broken section must not hide the others
                    self.row(name, "", f"FAILED: {type(error).__name__}: {error}"[:160], "", "",
                             "MISSED")  # fmt: skip
                say(f"{name} took {time.monotonic() - started:.0f} s")

    # --- (a) ---------------------------------------------------------------------------

    async def _reads(self) -> tuple[Served, Served]:
        return (
            await self.mesh.generation_metrics.read(settled=True),
            await self.mesh.retrieval_metrics.read(settled=True),
        )

    async def orchestrated_turn(
        self, client: callisto.Client, agent: str, prompt: str, conversation: str = ""
    ) -> TurnSample:
        timeout = self.args.turn_timeout
        persistence = self.mesh.persistence_metrics
        generation0, retrieval0 = await self._reads()
        persistence0 = await persistence.read(settled=True)
        started = time.perf_counter()
        async with Watch.start(client, agent, prompt, conversation=conversation) as watch:
            turn = await watch.answer(timeout)
            done = await watch.terminal(timeout)
            name = watch.conversation
        generation1, retrieval1 = await self._reads()
        # Settled would wait out the stream the Converse watch keeps open on the log.
        persistence1 = await persistence.read()
        return TurnSample(
            wall_ms=(turn.ended.at - started) * 1000,
            to_done_ms=(done.at - started) * 1000,
            generation=generation1.minus(generation0),
            retrieval=retrieval1.minus(retrieval0),
            turn=turn,
            conversation=name,
            persistence=persistence1.minus(persistence0),
            started=started,
        )

    async def direct_turn(self, like: TurnSample, prompt: str) -> DirectSample:
        """The calls `like` made (as counted at the services), made straight to generation
        and retrieval: structured generations, the searches, then the streamed answer."""
        generation0, retrieval0 = await self._reads()
        started = time.perf_counter()
        await self.direct_calls(like.generations, like.searches, like.answer_tokens, prompt)
        wall = (time.perf_counter() - started) * 1000
        generation1, retrieval1 = await self._reads()
        inside = generation1.minus(generation0).total_ms + retrieval1.minus(retrieval0).total_ms
        return DirectSample(wall, inside)

    async def direct_calls(
        self,
        generations: int,
        searches: Sequence[tuple[str, dict[str, Any]]],
        answer_tokens: int,
        prompt: str,
    ) -> None:
        client = self.generation
        schema = struct_pb2.Struct()
        schema.update(BASELINE_SCHEMA)
        for _ in range(max(0, generations - 1)):
            request = generation_pb2.GenerateRequest(
                model=TOY_MODEL,
                messages=[generation_pb2.ChatMessage(role=common_pb2.ROLE_USER, content=prompt)],
                parameters=generation_pb2.SamplingParameters(max_tokens=256),
                response_format=generation_pb2.ResponseFormat(json_schema=schema, name="plan"),
            )
            await Generation(
                client.generation.stub, request, None, 60, client.retry_policy
            ).complete()

        async def search(tool: str, arguments: dict[str, Any]) -> None:
            query = str(arguments.get("query") or prompt)
            if tool == "search_entities":
                kind = arguments.get("entity_type")
                await self.retrieval.retrieval.search_entities(
                    query, entity_types=[str(kind)] if kind else (), page_size=5
                )
            else:
                await self.retrieval.retrieval.search(query, page_size=5)

        await asyncio.gather(*(search(tool, arguments) for tool, arguments in searches))
        if generations:
            await client.generation.generate(
                prompt, model=TOY_MODEL, max_tokens=answer_tokens
            ).complete()

    async def overhead(self) -> None:
        args = self.args
        first: list[TurnSample] = []
        follow: list[TurnSample] = []
        direct_first: list[DirectSample] = []
        direct_follow: list[DirectSample] = []
        for i in range(args.warmup + args.turns):
            # A question of its own each time, as users ask: the tool cache would otherwise
            # answer every search after the first.
            question, follow_up = f"{QUESTION} ({i})", f"{FOLLOW_UP} ({i})"
            opened = await self.orchestrated_turn(self.orch, self.toy_agent, question)
            again = await self.orchestrated_turn(
                self.orch, self.toy_agent, follow_up, conversation=opened.conversation
            )
            base_first = await self.direct_turn(opened, question)
            base_follow = await self.direct_turn(again, follow_up)
            if i >= args.warmup:
                first.append(opened)
                follow.append(again)
                direct_first.append(base_first)
                direct_follow.append(base_follow)
        self.turn_samples = first
        sample = first[-1]
        self.results.notes.append(
            f"(a) a turn made {sample.generations} generation call(s) "
            f"({sample.generation.total_ms:.1f} ms serving) and "
            f"{sum(sample.retrieval.count(m) for m in ('Search', 'SearchEntities'))} "
            f"search(es) ({sample.retrieval.total_ms:.1f} ms serving); tool calls: "
            f"{[c.tool for c in sample.turn.tool_calls] or 'none'}; answer "
            f"{sample.answer_tokens} completion tokens; turn to `done` p50 "
            f"{p50([s.to_done_ms for s in first]):.1f} ms."
        )
        by_method = {
            method.rsplit("/", 1)[-1]: round(count)
            for method, count in sorted(sample.persistence.calls.items(), key=lambda kv: -kv[1])
            if round(count)
        }
        self.results.notes.append(
            f"(a) persistence calls of that turn by method: {by_method} "
            f"({sample.persistence.total_ms:.1f} ms serving)."
        )
        for label, samples, direct in (
            ("new conversation", first, direct_first),
            ("follow-up turn", follow, direct_follow),
        ):
            overheads = [s.overhead_ms for s in samples]
            walls = [s.wall_ms for s in samples]
            direct_walls = [d.wall_ms for d in direct]
            self.row(
                f"(a) turn overhead, {label} ({len(samples)} turns)",
                f"direct calls: outside services {ms([d.outside_ms for d in direct])}",
                ms(overheads),
                ratio(p50(walls), p50(direct_walls)) + " wall",
                "<= 15 ms p50",
                verdict(p50(overheads) <= 15),
            )
            self.row(
                f"(a)   wall time to turn_ended, {label}",
                f"direct calls {ms(direct_walls)}",
                ms(walls),
                ratio(p50(walls), p50(direct_walls)),
                "(info)",
                "",
            )
            calls = [sum(s.persistence.calls.values()) for s in samples]
            serving = [s.persistence.total_ms for s in samples]
            self.row(
                f"(a)   persistence calls per turn (to done, streams left out), {label}",
                "",
                f"p50 {p50(calls):.0f} calls, {p50(serving):.1f} ms serving",
                "",
                "(info)",
                "",
            )
            self.row(
                f"(a)   cross-check: wall minus the events' generation_ms + tool ms, {label}",
                "",
                ms([s.wall_ms - s.reported_inside_ms for s in samples]),
                "",
                "(info)",
                "",
            )

    # --- (d) ---------------------------------------------------------------------------

    async def concurrency(self) -> None:
        args = self.args
        pid = self.mesh.orchestration.pid
        rss_before = rss_mib(pid)
        peak = rss_before
        sampling = True

        async def sample_rss() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss_mib(pid))
                await asyncio.sleep(0.1)

        async def conversation(i: int) -> tuple[Watch, float, str]:
            """The watch, ms to the terminal event, and what went wrong ("" when nothing)."""
            started = time.perf_counter()
            prompt = f"{QUESTION} ({i})"
            async with Watch.start(self.gateway, self.toy_agent, prompt) as watch:
                try:
                    done = await watch.terminal(args.concurrent_timeout)
                except Exception as error:  # counted, and its events still checked
                    return watch, (time.perf_counter() - started) * 1000, str(error)[:120]
            return watch, (done.at - started) * 1000, _answer_problem(watch)

        n = args.concurrent
        codes_before = await self.mesh.persistence_metrics.codes()
        sampler = asyncio.create_task(sample_rss())
        started = time.perf_counter()
        outcomes = await asyncio.gather(*(conversation(i) for i in range(args.concurrent)))
        wall = time.perf_counter() - started
        sampling = False
        await sampler
        rss_after = rss_mib(pid)
        codes = {
            k: round(v - codes_before.get(k, 0.0))
            for k, v in (await self.mesh.persistence_metrics.codes()).items()
            if k[1] != "OK" and round(v - codes_before.get(k, 0.0))
        }
        errors = [problem for _, _, problem in outcomes if problem]
        finished = [(watch, latency) for watch, latency, problem in outcomes if not problem]
        limit = asyncio.Semaphore(16)

        async def check(watch: Watch) -> Sequence_:
            async with limit:
                ids = [s.event.event_id for s in watch.seen]
                return await log_gaps(self.gateway, watch.conversation, ids)

        # A conversation that failed before its first event has no sequence to check.
        sequences = await asyncio.gather(*(check(w) for w, _, _ in outcomes if w.seen))
        eventless = n - len(sequences)
        gap_free = sum(s.gap_free for s in sequences)
        not_echoed = {len(s.before_first) for s in sequences}
        self.results.notes.append(
            f"(d) each client's events (up to its terminal `done` or `error`) were compared with "
            f"the conversation's log from its first event on; before it, the log holds "
            f"{sorted(not_echoed)} run event(s) per conversation that Converse does not send "
            "(the prompt's own message.created)."
        )
        if errors:
            kinds = collections.Counter(errors).most_common()
            refused = {f"{m.rsplit('/', 1)[-1]} {c}": n for (m, c), n in codes.items()}
            self.results.notes.append(
                f"(d) errors by kind: {kinds}; persistence's answers other than OK, by method "
                f"and status: {refused}."
            )
        broken = [s for s in sequences if not s.gap_free]
        if broken:
            self.results.notes.append(f"(d) first broken sequence: {broken[0]}")
        latencies = [latency for _, latency in finished]
        # The same calls, as many at once, straight to the services.
        like = self.turn_samples[-1] if self.turn_samples else None
        direct_wall = float("nan")
        if like is not None:
            started = time.perf_counter()
            await asyncio.gather(
                *(
                    self.direct_calls(
                        like.generations, like.searches, like.answer_tokens, f"{QUESTION} ({i})"
                    )
                    for i in range(args.concurrent)
                )
            )
            direct_wall = time.perf_counter() - started
        self.row(
            f"(d) {n} concurrent conversations: errors",
            "",
            f"{len(errors)}"
            + (
                f" (most: {collections.Counter(errors).most_common(1)[0][0][:70]})"
                if errors
                else ""
            ),
            "",
            "0",
            verdict(not errors),
        )
        self.row(
            "(d)   event sequences gap-free (vs the log in persistence)",
            "",
            f"{gap_free} / {n}" + (f" ({eventless} failed before any event)" if eventless else ""),
            "",
            f"{n} / {n}",
            verdict(gap_free == n),
        )
        self.row(
            f"(d)   wall time for all {n}",
            f"direct calls, {n} at once: {direct_wall:.2f} s",
            f"{wall:.2f} s ({len(finished) / wall:.1f} turns/s); per conversation {ms(latencies)}",
            ratio(wall, direct_wall),
            "(info)",
            "",
        )
        self.row(
            "(d)   orchestration RSS",
            f"before {rss_before:.0f} MiB",
            f"peak {peak:.0f} MiB, after {rss_after:.0f} MiB",
            ratio(peak, rss_before),
            "(reported)",
            "",
        )

    # --- (b) ---------------------------------------------------------------------------

    def _answer_call(self, received_text: str) -> TappedCall | None:
        """Of the generations the tap saw, the one the streamed answer came from."""
        best: TappedCall | None = None
        best_score = 0
        for call in self.tap.calls:
            text = call.text
            if not text:
                continue
            matcher = difflib.SequenceMatcher(None, text, received_text, autojunk=False)
            score = sum(block.size for block in matcher.get_matching_blocks())
            if score > best_score:
                best, best_score = call, score
        return best

    async def token_lag(self) -> None:
        args = self.args
        self.tap.pacing = Pacing(args.token_delay_ms, args.lag_tokens)
        lags: list[float] = []
        first_lags: list[float] = []
        unmatched = 0
        base_lags: list[float] = []
        base_first: list[float] = []
        to_log: list[float] = []
        from_log: list[float] = []
        timeout = args.turn_timeout + args.lag_tokens * args.token_delay_ms / 1000
        try:
            for i in range(args.warmup + args.lag_turns):
                self.tap.clear()
                async with Watch.start(self.tapped, self.toy_agent, QUESTION) as watch:
                    turn = await watch.answer(timeout)
                    await watch.terminal(timeout)
                call = self._answer_call("".join(s.event.token.text for s in turn.tokens))
                if call is None:
                    raise RuntimeError("the tap saw no generation the answer came from")
                # Text streamed before the answer's generation began is the loop's own (an
                # entity listing ahead of the model's sentence): it cannot come from it.
                tokens = [s for s in turn.tokens if s.at >= call.started]
                received = [(s.at, s.event.token.text) for s in tokens]
                pairs, lost = line_up(call.deltas, received)
                sample = [(received[k][0] - at) * 1000 for at, k in pairs]
                # When the log stamped each token event (persistence's wall clock, moved
                # onto perf_counter): the lag before it is the run's, after it delivery's.
                offset = time.time() - time.perf_counter()
                logged = [s.event.create_time.ToNanoseconds() / 1e9 - offset for s in tokens]
                self.tap.clear()
                generation = self.tapped.generation.generate(
                    QUESTION, model=TOY_MODEL, max_tokens=args.lag_tokens
                )
                got: list[tuple[float, str]] = []
                async for item in generation:
                    if isinstance(item, generation_pb2.TokenDelta):
                        got.append((time.perf_counter(), item.text))
                base, _ = token_lags(self.tap.calls[-1].deltas, got)
                if i >= args.warmup:
                    lags += sample
                    to_log += [(logged[k] - at) * 1000 for at, k in pairs]
                    from_log += [(received[k][0] - logged[k]) * 1000 for _, k in pairs]
                    unmatched += lost
                    first_lags += sample[:1]
                    base_lags += base
                    base_first += base[:1]
        finally:
            self.tap.pacing = None
        self.row(
            f"(b) token lag, generation -> Converse client via Envoy ({len(lags)} tokens, "
            f"{args.lag_turns} turns, {args.token_delay_ms:g} ms/token, coalescing "
            f"{'default' if args.coalesce_ms is None else f'{args.coalesce_ms:g} ms'})",
            f"Generate via Envoy {ms(base_lags)}",
            ms(lags),
            ratio(p99(lags), p99(base_lags)) + " p99",
            "<= 25 ms p99",
            verdict(p99(lags) <= 25),
        )
        self.row(
            "(b)   of which: generation -> appended to the log / log -> client",
            "",
            f"{ms(to_log)} / {ms(from_log)}",
            "",
            "(info)",
            "",
        )
        self.row(
            "(b)   first token of the answer only",
            f"Generate via Envoy {ms(base_first)}",
            ms(first_lags),
            ratio(p99(first_lags), p99(base_first)) + " p99",
            "(info)",
            "",
        )
        if unmatched:
            self.results.notes.append(
                f"(b) {unmatched} generated deltas had no counterpart in the streamed answer "
                "(text the run dropped) and were left out."
            )

    # --- (c) ---------------------------------------------------------------------------

    async def cancel(self) -> None:
        args = self.args
        self.tap.pacing = Pacing(args.token_delay_ms, args.cancel_tokens)
        latencies: list[float] = []
        reasons: list[str] = []
        base: list[float] = []
        tags: list[str] = []
        timeout = args.turn_timeout
        try:
            for i in range(args.warmup + args.cancels):
                self.tap.clear()
                async with Watch.start(self.tapped, self.toy_agent, QUESTION) as watch:
                    await watch.until(lambda s: s.kind == "token", timeout)
                    asked = time.perf_counter()
                    await watch.session.cancel("benchmark")
                    done = await watch.terminal(timeout)
                if i >= args.warmup:
                    latencies.append((done.at - asked) * 1000)
                    reasons.append(done.event.done.reason)
                    tags += [c.tag for c in self.tap.calls if c.plain and c.tag]
                cancelled_ms = await chat_cancel_ms(
                    self.tapped, QUESTION, TOY_MODEL, args.cancel_tokens
                )
                if i >= args.warmup:
                    base.append(cancelled_ms)
        finally:
            self.tap.pacing = None
        cancelled = sum(r == "cancelled" for r in reasons)
        self.row(
            f"(c) cancel -> terminal event, Converse via Envoy ({len(latencies)} runs)",
            f"Chat cancel via Envoy {ms(base)}",
            ms(latencies),
            ratio(p99(latencies), p99(base)) + " p99",
            "<= 100 ms p99",
            verdict(p99(latencies) <= 100),
        )
        produced = await asyncio.to_thread(_toy_produced, self.mesh.toy_events, tags)
        stopped = sum(1 for n in produced.values() if n < args.cancel_tokens)
        self.row(
            "(c)   runs ended done(cancelled); answers stopped inside Triton",
            "",
            f"{cancelled} / {len(reasons)}; {stopped} / {len(tags)} generations stopped early "
            f"(most produced {max(produced.values(), default=0)} of {args.cancel_tokens})",
            "",
            "all",
            verdict(cancelled == len(reasons) and stopped == len(tags)),
        )

    # --- (e) ---------------------------------------------------------------------------

    async def llm(self) -> None:
        args = self.args
        agent = conference_agent()
        agent.model = LLM_MODEL
        self.llm_agent = agent_name((await self.gateway.orchestration.create_agent(agent)).name)
        samples: list[TurnSample] = []
        first_tokens: list[float] = []
        for i in range(1 + args.llm_questions):  # the first warms llama.cpp's caches
            sample = await self.orchestrated_turn(self.gateway, self.llm_agent, QUESTION)
            if i == 0:
                say(f"  warm-up answer: {sample.wall_ms / 1000:.1f} s")
                continue
            samples.append(sample)
            if sample.first_token_ms is not None:
                first_tokens.append(sample.first_token_ms / 1000)
        walls = [s.wall_ms / 1000 for s in samples]
        inside = [s.generation.total_ms / 1000 for s in samples]
        self.row(
            f"(e) SmolLM2 conference question end to end via Envoy ({len(samples)} runs)",
            f"inside generation p50 {p50(inside):.1f} s",
            f"p50 {p50(walls):.1f} s (min {min(walls):.1f}, max {max(walls):.1f})",
            ratio(p50(walls), p50(inside)),
            "< 10 s p50",
            verdict(p50(walls) < 10),
        )
        self.row(
            "(e)   question sent -> first answer token",
            "",
            f"p50 {p50(first_tokens):.1f} s",
            "",
            "(info)",
            "",
        )
        last = samples[-1]
        titles = [c.title for c in last.turn.turn_ended.citations]
        self.results.notes.append(
            f"(e) last answer ({last.generations} generations, tools "
            f"{[(c.tool, json_format.MessageToDict(c.arguments)) for c in last.turn.tool_calls]}"
            f"): {last.turn.turn_ended.text[:400]!r}; cited: {titles}"
        )


def most_common(values: Sequence[str]) -> str:
    return collections.Counter(values).most_common(1)[0][0]


def _answer_problem(watch: Watch) -> str:
    """Why a finished conversation does not count as answered ("" when it does)."""
    reason = watch.session.done.reason if watch.session.done else "?"
    agents = {
        s.event.turn_started.speaker
        for s in watch.seen
        if s.kind == "turn_started" and s.event.turn_started.agent
    }
    answered = any(
        s.kind == "turn_ended" and s.event.turn_ended.speaker in agents and s.event.turn_ended.text
        for s in watch.seen
    )
    if not answered:
        return "no answer"
    return "" if reason == "completed" else f"done({reason})"


def _toy_produced(path: Path, tags: Sequence[str]) -> dict[str, int]:
    """Tokens toy_llm produced per tagged request (it reports each when it ends)."""
    wanted = set(tags)
    produced: dict[str, int] = {}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text().splitlines():
                entry = json.loads(line)
                if entry.get("tag") in wanted:
                    produced[entry["tag"]] = int(entry["produced"])
        if len(produced) == len(wanted):
            break
        time.sleep(0.1)
    return produced


async def measure(mesh: BenchMesh, args: argparse.Namespace) -> Results:
    tap = GenerationTap(mesh.generation.address)
    await tap.start()
    try:
        extra = {}
        if args.coalesce_ms is not None:
            extra["CALLISTO_ORCHESTRATION_TOKEN_COALESCE_MS"] = f"{args.coalesce_ms:g}"
        mesh.start_tapped(tap.port, extra)
        started = time.monotonic()
        entities = await mesh.ingest_conference()
        say(f"conference sample: {entities} entities ({time.monotonic() - started:.1f} s)")
        bench = Bench(mesh, tap, args)
        await bench.run()
        return bench.results
    finally:
        await tap.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, no SmolLM2")
    parser.add_argument("--llm", action="store_true", help="with --quick: still run (e)")
    parser.add_argument("--skip-llm", action="store_true", help="leave out (e)")
    parser.add_argument("--turns", type=int, help="(a) measured turns of each kind [40]")
    parser.add_argument("--warmup", type=int, help="unmeasured rounds before each section [3]")
    parser.add_argument("--lag-turns", type=int, help="(b) answers streamed [20]")
    parser.add_argument("--lag-tokens", type=int, default=60, help="(b) tokens per answer")
    parser.add_argument(
        "--token-delay-ms", type=float, default=20.0, help="(b, c) toy_llm pace per token"
    )
    parser.add_argument(
        "--coalesce-ms",
        type=float,
        help="(b, c) CALLISTO_ORCHESTRATION_TOKEN_COALESCE_MS of the tapped orchestration "
        "(default: the service's own)",
    )
    parser.add_argument("--cancels", type=int, help="(c) cancelled runs [30]")
    parser.add_argument("--cancel-tokens", type=int, default=400, help="(c) answer length cap")
    parser.add_argument("--concurrent", type=int, help="(d) conversations at once [200]")
    parser.add_argument("--llm-questions", type=int, help="(e) measured answers [3]")
    parser.add_argument("--turn-timeout", type=float, default=120.0, help="seconds per turn")
    parser.add_argument("--concurrent-timeout", type=float, default=300.0)
    parser.add_argument("--keep", type=Path, help="keep logs and data in this folder")
    parser.add_argument(
        "--only", default="abcde", help="sections to run, by letter (e.g. `bc`) [abcde]"
    )
    args = parser.parse_args()
    quick = args.quick
    defaults = {
        "turns": 6 if quick else 40,
        "warmup": 1 if quick else 3,
        "lag_turns": 4 if quick else 20,
        "cancels": 5 if quick else 30,
        "concurrent": 50 if quick else 200,
        "llm_questions": 1 if quick else 3,
    }
    fill_defaults(args, defaults)
    if args.skip_llm or (quick and not args.llm) or "e" not in args.only:
        args.llm_questions = 0
    return args


def main() -> None:
    args = parse_args()
    with ExitStack() as stack:
        folder = workdir(stack, args.keep, "orch-bench-")
        started = time.monotonic()
        mesh = BenchMesh(folder, stack, with_llm=args.llm_questions > 0)
        say(f"mesh started in {time.monotonic() - started:.1f} s")
        results = asyncio.run(measure(mesh, args))
        print()
        print(
            table(
                "Orchestration vs the same calls made directly (toy_llm unless noted, same run)",
                results.rows,
            )
        )
        for note in results.notes:
            print(f"- {note}")
        # Shared 2-core machines: other work skews every number; say how busy it was.
        print(f"\nload average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
