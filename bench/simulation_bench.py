"""Simulation benchmark: many multi-agent simulations at once, memory over many in a row, cancel.

Starts its own mesh on free ports (bench/orchestration_mesh.py: Redis, tritonserver with
toy_llm, the embedder and the sentiment model, persistence, generation, retrieval, two
orchestration processes, two Envoy gateways) and runs simulations (CONVERSATION_MODE_SIMULATION,
three inline agents of two companies on toy_llm, `--turns` turns each) through the SDK:

  (a) `--concurrency` (50) simulations at once through Envoy, their agents' answers paced at
      `--token-delay-ms` a token by the timing tap in front of generation
      (bench/orchestration_tap.py) and capped at `--turn-tokens`: errors (target 0), every
      client's events against the conversation's log in persistence (target: all gap-free,
      each ending in `done`), and token lag: from the moment generation hands a token on (at
      the tap) to its arrival at the Converse client. Baseline: as many Generate streams at
      once through the same Envoy and tap, same pacing and length.
  (b) `--sequential` (100) simulations one after another on the other orchestration process:
      its resident memory after `--warmup` runs, halfway and at the end (a leak grows with the
      runs; warm-up allocations do not). Baseline: the generation process's memory over the
      same runs (it served every turn's generation).
  (c) `--cancels` (50) cancels: a paced simulation is cancelled on its Converse stream once
      its first token arrived; time to the terminal `done` (target <= 100 ms p99) and its
      reason. Baseline: cancelling a generation on a Chat stream through Envoy, to its end.

    .venv/bin/python bench/simulation_bench.py [--quick] [--concurrency 50] [--sequential 100]
        [--cancels 50]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from orchestration_mesh import BenchMesh, cpu_seconds, fill_defaults, rss_mib, workdir
from orchestration_report import Results, ms, p50, p99, ratio, say, table, verdict
from orchestration_runs import Seen, Watch, chat_cancel_ms, line_up, log_gaps, token_lags
from orchestration_tap import GenerationTap, Pacing, TappedCall

import callisto
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.orchestration import simulation_start

TOY_MODEL = "models/toy_llm"
SCENARIO = (
    "Tessaline Systems sells rugged edge servers to Marrowick Motors for its assembly plants; "
    "Marrowick wants a pilot at one plant before a fleet order."
)
# Agent turns are plain generations; the scenario's marker tells the tap's calls apart.
MARKER = "[bench-{kind}-{i:04d}]"


def agents() -> list[pb.Agent]:
    """Three agents of two companies, as SuggestAgents would return them (no tools: the
    benchmark measures the simulation loop, not retrieval)."""
    return [
        pb.Agent(
            display_name="Ines Calloway",
            role="account executive",
            company="Tessaline Systems",
            system_prompt="You sell Tessaline edge servers. Answer the buyer's concerns briefly.",
            model=TOY_MODEL,
        ),
        pb.Agent(
            display_name="Dario Brenn",
            role="plant IT manager",
            company="Marrowick Motors",
            system_prompt="You run IT at a Marrowick plant. Ask about uptime, cost and support.",
            model=TOY_MODEL,
        ),
        pb.Agent(
            display_name="Ruth Okafor",
            role="procurement lead",
            company="Marrowick Motors",
            system_prompt="You buy for Marrowick. Push on price and pilot terms.",
            model=TOY_MODEL,
        ),
    ]


def marked(kind: str, i: int) -> str:
    return MARKER.format(kind=kind, i=i)


def start_of(mark: str, turns: int, turn_tokens: int) -> pb.StartConversation:
    return simulation_start(
        f"{mark} {SCENARIO}",
        inline_agents=agents(),
        max_turns=turns,
        max_turn_tokens=turn_tokens,
        title=f"bench {mark}",
        tags=["bench"],
    )


@dataclass
class Outcome:
    """One simulation as its client saw it."""

    mark: str
    watch: Watch
    problem: str  # "" when it ended in `done` with the expected reason
    reason: str
    wall_ms: float

    def tokens(self) -> list[Seen]:
        return [s for s in self.watch.seen if s.kind == "token"]

    @property
    def turns(self) -> int:
        return sum(1 for s in self.watch.seen if s.kind == "turn_ended")


@dataclass
class Lags:
    """Token lags (ms) of the streamed turns, split at the moment the log stamped them."""

    total: list[float] = field(default_factory=list)
    to_log: list[float] = field(default_factory=list)
    from_log: list[float] = field(default_factory=list)
    unmatched: int = 0  # generated deltas with no counterpart in the streamed turns
    unplaced: int = 0  # generations whose prompt names no (or more than one) simulation


class Bench:
    def __init__(self, mesh: BenchMesh, tap: GenerationTap, args: argparse.Namespace) -> None:
        self.mesh = mesh
        self.tap = tap
        self.args = args
        self.results = Results()

    async def run(self) -> None:
        mesh = self.mesh
        key = mesh.key
        assert mesh.tapped_gateway is not None
        async with (
            await callisto.Client.connect(mesh.gateway.grpc_target, api_key=key) as gateway,
            await callisto.Client.connect(mesh.tapped_gateway.grpc_target, api_key=key) as tapped,
        ):
            self.gateway, self.tapped = gateway, tapped
            sections: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("(a) concurrency", self.concurrency),
                ("(b) memory", self.memory),
                ("(c) cancel", self.cancel),
            ]
            for name, section in sections:
                if name[1] not in self.args.only:
                    continue
                started = time.monotonic()
                say(f"{name} …")
                try:
                    await section()
                except Exception as error:  # one broken section must not hide the others
                    self.results.row(
                        name, "", f"FAILED: {type(error).__name__}: {error}"[:160], "", "", "MISSED"
                    )
                say(f"{name} took {time.monotonic() - started:.0f} s")

    async def simulate(self, client: callisto.Client, mark: str) -> Outcome:
        """Runs one simulation to its terminal event; what went wrong is noted, not raised."""
        args = self.args
        started = time.perf_counter()
        async with Watch.of(client, start_of(mark, args.turns, args.turn_tokens)) as watch:
            try:
                done = await watch.terminal(args.run_timeout)
            except Exception as error:  # counted; its events are still checked
                wall = (time.perf_counter() - started) * 1000
                return Outcome(mark, watch, str(error)[:120] or type(error).__name__, "", wall)
        reason = done.event.done.reason
        problem = "" if reason == "max_turns" else f"done({reason})"
        return Outcome(mark, watch, problem, reason, (done.at - started) * 1000)

    # --- (a) ---------------------------------------------------------------------------

    async def concurrency(self) -> None:
        args = self.args
        n = args.concurrency
        pid = self.mesh.tapped.pid if self.mesh.tapped else 0
        # One unmeasured simulation first: connections, caches, the first Triton requests.
        self.tap.pacing = Pacing(args.token_delay_ms, args.turn_tokens)
        try:
            await self.simulate(self.tapped, marked("warm", 0))
            self.tap.clear()
            rss_before = rss_mib(pid)
            codes_before = await self.mesh.persistence_metrics.codes()
            busy = self._processes()
            cpu_before = {name: cpu_seconds(p) for name, p in busy.items()}
            served_before = await self.mesh.persistence_metrics.read()
            started = time.perf_counter()
            outcomes = await asyncio.gather(
                *(self.simulate(self.tapped, marked("sim", i)) for i in range(n))
            )
            wall = time.perf_counter() - started
            cpu = {name: cpu_seconds(p) - cpu_before[name] for name, p in busy.items()}
            served = (await self.mesh.persistence_metrics.read(settled=True)).minus(served_before)
            rss_after = rss_mib(pid)
            calls = list(self.tap.calls)
            self.tap.clear()
            base_lags, base_wall = await self._generate_baseline(n)
            self.tap.clear()
        finally:
            self.tap.pacing = None
        # A client closing its stream cancels the run's subscription: not a failure.
        codes = {
            k: round(v - codes_before.get(k, 0.0))
            for k, v in (await self.mesh.persistence_metrics.codes()).items()
            if k[1] not in ("OK", "CANCELLED") and round(v - codes_before.get(k, 0.0))
        }
        errors = [o.problem for o in outcomes if o.problem]
        limit = asyncio.Semaphore(16)

        async def check(outcome: Outcome) -> bool:
            async with limit:
                ids = [s.event.event_id for s in outcome.watch.seen]
                sequence = await log_gaps(self.gateway, outcome.watch.conversation, ids)
            ended = bool(outcome.watch.seen) and outcome.watch.seen[-1].kind == "done"
            return sequence.gap_free and ended

        checked = await asyncio.gather(*(check(o) for o in outcomes if o.watch.seen))
        sound = sum(checked)
        lags = self._lags(outcomes, calls)
        turns = sum(o.turns for o in outcomes)
        self.results.row(
            f"(a) {n} concurrent simulations ({args.turns} turns, 3 agents): errors",
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
        self.results.row(
            "(a)   events gap-free vs the log in persistence, ending in `done`",
            "",
            f"{sound} / {n}",
            "",
            f"{n} / {n}",
            verdict(sound == n),
        )
        self.results.row(
            f"(a)   token lag, generation -> Converse client via Envoy ({len(lags.total)} "
            f"tokens, {args.token_delay_ms:g} ms/token)",
            f"{n} Generate streams via Envoy {ms(base_lags)}",
            ms(lags.total),
            ratio(p99(lags.total), p99(base_lags)) + " p99",
            "(reported)",
            "",
        )
        self.results.row(
            "(a)   of which: generation -> appended to the log / log -> client",
            "",
            f"{ms(lags.to_log)} / {ms(lags.from_log)}",
            "",
            "(info)",
            "",
        )
        self.results.row(
            f"(a)   wall time for all {n}",
            f"{n} Generate streams at once: {base_wall:.2f} s",
            f"{wall:.2f} s ({turns / wall:.1f} turns/s); per simulation "
            f"{ms([o.wall_ms for o in outcomes if not o.problem])}",
            ratio(wall, base_wall),
            "(info)",
            "",
        )
        self.results.row(
            "(a)   tapped orchestration RSS",
            f"before {rss_before:.0f} MiB",
            f"after {rss_after:.0f} MiB",
            ratio(rss_after, rss_before),
            "(reported)",
            "",
        )
        self.results.notes.append(
            f"(a) CPU used during the {wall:.1f} s of the concurrent simulations (2 cores "
            "shared with everything else on the machine): "
            + ", ".join(
                f"{name} {used:.1f} s ({100 * used / wall:.0f} %)" for name, used in cpu.items()
            )
            + "."
        )
        writes = {
            method: (served.count(method), served.seconds_of(method))
            for method in ("CreateEvent", "CreateMessage", "UpdateSession")
        }
        self.results.notes.append(
            "(a) persistence serving those writes, calls and mean ms: "
            + ", ".join(
                f"{method} {count} at {1000 * seconds / max(count, 1):.1f}"
                for method, (count, seconds) in writes.items()
            )
            + "."
        )
        reasons = collections.Counter(o.reason or "none" for o in outcomes)
        self.results.notes.append(
            f"(a) {turns} turns streamed; `done` reasons {dict(reasons)}; {len(calls)} generations "
            f"seen by the tap, {lags.unplaced} not told apart by their prompt's marker, "
            f"{lags.unmatched} "
            "deltas without a counterpart in the streamed turns (left out)."
        )
        if errors:
            self.results.notes.append(
                f"(a) errors by kind: {collections.Counter(errors).most_common()}."
            )
        if codes:
            refused = {f"{m.rsplit('/', 1)[-1]} {c}": k for (m, c), k in codes.items()}
            self.results.notes.append(
                f"(a) persistence's answers other than OK (and CANCELLED subscriptions), by "
                f"method and status: {refused} (ABORTED: a checkpoint's compare-and-set lost to "
                "a concurrent write, which the run merges and writes again)."
            )

    def _processes(self) -> dict[str, int]:
        """The mesh processes a concurrent run keeps busy, by name, with their pids."""
        mesh = self.mesh
        found = {
            "orchestration": mesh.tapped.pid if mesh.tapped else 0,
            "persistence": mesh.persistence.pid,
            "generation": mesh.generation.pid,
            "redis": mesh.redis.pid,
            "tritonserver": mesh.triton.pid,
            "envoy": (mesh.tapped_gateway.pid if mesh.tapped_gateway else None) or 0,
            "this benchmark (clients and tap)": os.getpid(),
        }
        return {name: pid for name, pid in found.items() if pid}

    def _lags(self, outcomes: Sequence[Outcome], calls: Sequence[TappedCall]) -> Lags:
        """Token lags of every agent turn: each plain generation the tap saw, lined up with the
        tokens of the simulation whose marker its prompt carries."""
        by_mark = {o.mark: o.tokens() for o in outcomes}
        lags = Lags()
        # When the log stamped each token event (persistence's wall clock, moved onto
        # perf_counter): the lag before it is the run's, after it delivery's.
        offset = time.time() - time.perf_counter()
        for call in calls:
            if not call.plain or not call.deltas:
                continue
            marks = [m for m in by_mark if m in call.prompt]
            if len(marks) != 1:
                lags.unplaced += 1
                continue
            tokens = [s for s in by_mark[marks[0]] if s.at >= call.started]
            received = [(s.at, s.event.token.text) for s in tokens]
            logged = [s.event.create_time.ToNanoseconds() / 1e9 - offset for s in tokens]
            pairs, lost = line_up(call.deltas, received)
            lags.total += [(received[k][0] - at) * 1000 for at, k in pairs]
            lags.to_log += [(logged[k] - at) * 1000 for at, k in pairs]
            lags.from_log += [(received[k][0] - logged[k]) * 1000 for _, k in pairs]
            lags.unmatched += lost
        return lags

    async def _generate_baseline(self, n: int) -> tuple[list[float], float]:
        """`n` Generate streams at once through the tapped Envoy: lags tap -> client, wall s."""
        args = self.args

        async def one(i: int) -> tuple[str, list[tuple[float, str]]]:
            mark = marked("base", i)
            got: list[tuple[float, str]] = []
            generation = self.tapped.generation.generate(
                f"{mark} {SCENARIO}", model=TOY_MODEL, max_tokens=args.turn_tokens
            )
            async for item in generation:
                if isinstance(item, generation_pb2.TokenDelta):
                    got.append((time.perf_counter(), item.text))
            return mark, got

        started = time.perf_counter()
        streams = await asyncio.gather(*(one(i) for i in range(n)))
        wall = time.perf_counter() - started
        lags: list[float] = []
        for mark, got in streams:
            call = next(c for c in self.tap.calls if mark in c.prompt)
            lags += token_lags(call.deltas, got)[0]
        return lags, wall

    # --- (b) ---------------------------------------------------------------------------

    async def memory(self) -> None:
        args = self.args
        pid = self.mesh.orchestration.pid
        generation_pid = self.mesh.generation.pid
        for i in range(args.warmup):
            await self.simulate(self.gateway, marked("warm-seq", i))
        before, base_before = rss_mib(pid), rss_mib(generation_pid)
        half = base_half = 0.0
        problems: list[str] = []
        walls: list[float] = []
        for i in range(args.sequential):
            outcome = await self.simulate(self.gateway, marked("seq", i))
            walls.append(outcome.wall_ms)
            if outcome.problem:
                problems.append(outcome.problem)
            if i + 1 == args.sequential // 2:
                half, base_half = rss_mib(pid), rss_mib(generation_pid)
        after, base_after = rss_mib(pid), rss_mib(generation_pid)
        growth, second_half = after - before, after - half
        # Noise: what the allocator keeps moving on an idle-ish process (1 MiB), or 2 % of it.
        noise = max(1.0, 0.02 * before)
        self.results.row(
            f"(b) orchestration RSS over {args.sequential} sequential simulations",
            f"generation process {base_before:.0f} -> {base_half:.0f} -> {base_after:.0f} MiB "
            f"({base_after - base_before:+.1f})",
            f"{before:.0f} -> {half:.0f} -> {after:.0f} MiB ({growth:+.1f}; second half "
            f"{second_half:+.1f})",
            ratio(after, before),
            f"second half <= +{noise:.1f} MiB",
            # Runs that all failed allocate nothing worth judging.
            verdict(second_half <= noise if len(problems) < args.sequential else None),
        )
        self.results.row(
            "(b)   errors; per simulation",
            "",
            f"{len(problems)}; {ms(walls)}",
            "",
            "0",
            verdict(not problems),
        )
        if problems:
            self.results.notes.append(
                f"(b) errors by kind: {collections.Counter(problems).most_common()}"
            )

    # --- (c) ---------------------------------------------------------------------------

    async def cancel(self) -> None:
        args = self.args
        # Long paced turns, so every cancel lands while an agent speaks.
        self.tap.pacing = Pacing(args.token_delay_ms, 400)
        latencies: list[float] = []
        reasons: list[str] = []
        base: list[float] = []
        try:
            for i in range(1 + args.cancels):  # the first one unmeasured
                start = start_of(marked("cancel", i), args.turns, 400)
                async with Watch.of(self.tapped, start) as watch:
                    await watch.until(lambda s: s.kind == "token", args.run_timeout)
                    asked = time.perf_counter()
                    await watch.session.cancel("benchmark")
                    done = await watch.terminal(args.run_timeout)
                cancelled_ms = await chat_cancel_ms(
                    self.tapped, f"{marked('chat', i)} {SCENARIO}", TOY_MODEL, 400
                )
                if i:
                    latencies.append((done.at - asked) * 1000)
                    reasons.append(done.event.done.reason)
                    base.append(cancelled_ms)
        finally:
            self.tap.pacing = None
        cancelled = sum(r == "cancelled" for r in reasons)
        self.results.row(
            f"(c) cancel -> terminal event, Converse via Envoy ({len(latencies)} simulations)",
            f"Chat cancel via Envoy {ms(base)}",
            ms(latencies),
            ratio(p99(latencies), p99(base)) + " p99",
            "<= 100 ms p99",
            verdict(p99(latencies) <= 100),
        )
        self.results.row(
            "(c)   ended done(cancelled)",
            "",
            f"{cancelled} / {len(reasons)}; p50 {p50(latencies):.1f} ms",
            "",
            "all",
            verdict(cancelled == len(reasons)),
        )


async def measure(mesh: BenchMesh, args: argparse.Namespace) -> Results:
    tap = GenerationTap(mesh.generation.address)
    await tap.start()
    try:
        mesh.start_tapped(tap.port)
        bench = Bench(mesh, tap, args)
        await bench.run()
        return bench.results
    finally:
        await tap.stop()


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--concurrency", type=int, help="(a) simulations at once [50]")
    parser.add_argument("--sequential", type=int, help="(b) simulations one after another [100]")
    parser.add_argument("--cancels", type=int, help="(c) cancelled simulations [50]")
    parser.add_argument("--warmup", type=int, help="(b) unmeasured runs first [5]")
    parser.add_argument("--turns", type=int, default=6, help="agent turns per simulation")
    parser.add_argument("--turn-tokens", type=int, default=24, help="tokens per agent turn")
    parser.add_argument(
        "--token-delay-ms", type=float, default=10.0, help="(a, c) toy_llm pace per token"
    )
    parser.add_argument("--run-timeout", type=float, default=300.0, help="seconds per run")
    parser.add_argument("--keep", type=Path, help="keep logs and data in this folder")
    parser.add_argument("--only", default="abc", help="sections to run, by letter [abc]")
    args = parser.parse_args()
    quick = args.quick
    defaults = {
        "concurrency": 8 if quick else 50,
        "sequential": 10 if quick else 100,
        "cancels": 5 if quick else 50,
        "warmup": 2 if quick else 5,
    }
    fill_defaults(args, defaults)
    return args


def main() -> None:
    args = parse_args()
    with ExitStack() as stack:
        folder = workdir(stack, args.keep, "sim-bench-")
        started = time.monotonic()
        mesh = BenchMesh(folder, stack, with_llm=False, with_sentiment=True)
        say(f"mesh started in {time.monotonic() - started:.1f} s")
        results = asyncio.run(measure(mesh, args))
        print()
        print(table("Simulations on toy_llm vs the same run's baselines", results.rows))
        for note in results.notes:
            print(f"- {note}")
        # Shared 2-core machines: other work skews every number; say how busy it was.
        print(f"\nload average (1, 5, 15 min) at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
