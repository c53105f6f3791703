"""Workflow benchmark: approval pause -> resume, checkpoint cost per step, parallel efficiency.

Starts its own mesh on free ports (bench/orchestration_mesh.py: Redis, tritonserver with
toy_llm and the embedder, persistence, generation, retrieval, orchestration, Envoy), creates
one agent on toy_llm and runs workflows (CONVERSATION_MODE_WORKFLOW, given plans) through the
SDK and Envoy. Every step's answer is capped at `--step-tokens` (CALLISTO_WORKFLOW_STEP_MAX_TOKENS)
and toy_llm sleeps `--token-delay-ms` before each token (`x-callisto-model-extras`):

  (a) One workflow, a chain of `--approvals` (50) steps that each require approval. Each
      approval is approved with SubmitInput the moment its `awaiting_input` arrives on the
      RunConversation stream; latency from just before the SubmitInput call to the arrival of
      that step's `succeeded` StepUpdate (target < 100 ms p99) and to the next step's
      `running`. Baseline: GetApproval round trips over the same path (client -> Envoy ->
      orchestration -> persistence), after the run.
  (b) One workflow of `--checkpoint-steps` (40) independent steps: the run's checkpoint
      writes (UpdateSession calls persistence served during the run, per step) times the
      latency of an UpdateSession with etag of a state as large as the run's (its session read
      back, written to a scratch session directly at persistence, as orchestration does),
      against the step's own duration (its StepResult).
  (c) `--dag-runs` (3) runs of a 20-step DAG (5 layers x 4 steps, each on two steps of the
      layer before, max_parallel_steps 4): wall time from the first step's `running` to the
      last step's `succeeded` against the critical path (the longest dependency chain by each
      step's own duration); efficiency = critical path / wall (1.0 = perfect); the serial sum
      for comparison.

    .venv/bin/python bench/workflow_bench.py [--quick] [--approvals 50] [--checkpoint-steps 40]
        [--dag-runs 3] [--token-delay-ms 10] [--step-tokens 24]

Exits non-zero when a section fails (a run that errs or does not complete), not for slow
figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf import duration_pb2
from orchestration_mesh import BenchMesh, fill_defaults, workdir
from orchestration_report import Results, ms, p50, p99, ratio, say, table, verdict

import callisto
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.api.persistence.v1 import persistence_pb2
from callisto.orchestration import workflow_start
from callisto.services.orchestration.run_state import session_id

EXTRAS = "x-callisto-model-extras"
# The scratch session's kind: not a run's, so no orchestration process ever takes it over.
SCRATCH_KIND = "bench.checkpoint"
# The bench's plans run at most this many steps at once (and the process allows more).
PARALLEL = 4
DAG_LAYERS, DAG_WIDTH = 5, 4


class RunFailed(RuntimeError):
    """A workflow run ended with an error, did not complete, or its stream failed."""


@dataclass
class Arrival:
    """One event with the moment it reached the client (`time.perf_counter()`)."""

    at: float
    event: pb.ConversationEvent

    @property
    def kind(self) -> str:
        return self.event.WhichOneof("kind") or ""

    def is_step(self, state: str, step_id: str | None = None) -> bool:
        step = self.event.step
        return (
            self.kind == "step"
            and step.state == state
            and (step_id is None or step.step_id == step_id)
        )


class Feed:
    """A workflow run's RunConversation stream, read in the background: every event is stamped
    as it arrives, so a caller busy with an RPC misses no arrival time."""

    def __init__(self, client: callisto.Client, start: pb.StartConversation, delay_ms: float):
        metadata = ((EXTRAS, json.dumps({"delay_ms": delay_ms})),)
        self._stream = client.orchestration.run(start, metadata=metadata)
        self.seen: list[Arrival] = []
        self.conversation = ""
        self.started = 0.0
        self._queue: asyncio.Queue[Arrival | None] = asyncio.Queue()
        self._reader: asyncio.Task[None] | None = None
        self.failure: BaseException | None = None

    async def __aenter__(self) -> Feed:
        self.started = time.perf_counter()
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *_: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        await self._stream.aclose()

    async def _read(self) -> None:
        try:
            async for event in self._stream:
                arrival = Arrival(time.perf_counter(), event)
                self.conversation = self.conversation or event.conversation
                self.seen.append(arrival)
                self._queue.put_nowait(arrival)
        except Exception as error:  # the section reports it
            self.failure = error
        finally:
            self._queue.put_nowait(None)

    async def next(self, within: float) -> Arrival:
        """The next event; RunFailed when the stream ended or failed before one came."""
        try:
            arrival = await asyncio.wait_for(self._queue.get(), within)
        except TimeoutError:
            raise RunFailed(f"no event within {within:.0f} s") from None
        if arrival is None:
            raise RunFailed(f"the stream ended early: {self.failure or 'no done'}")
        if arrival.kind == "error":
            raise RunFailed(f"error event: {arrival.event.error.message}")
        return arrival

    async def done(self, within: float) -> pb.Done:
        """Reads to the terminal `done`; RunFailed unless the run completed."""
        while True:
            arrival = await self.next(within)
            if arrival.kind == "done":
                return completed(arrival.event.done)

    def check_states(self, plan: pb.WorkflowPlan) -> None:
        """RunFailed unless every step's StepUpdates went running -> (awaiting_approval, when
        it requires one) -> succeeded, once each."""
        for spec in plan.steps:
            expected = ["running", *(["awaiting_approval"] if spec.requires_approval else [])]
            expected.append("succeeded")
            got = [
                a.event.step.state
                for a in self.seen
                if a.kind == "step" and a.event.step.step_id == spec.id
            ]
            if got != expected:
                raise RunFailed(f"step {spec.id} went {got}, not {expected}")

    def at(
        self, kind: str, state: str = "", step_id: str | None = None, last: bool = False
    ) -> float:
        """When the first (or last) event of `kind` (a StepUpdate in `state`, of `step_id`)
        arrived."""
        order = reversed(self.seen) if last else iter(self.seen)
        for arrival in order:
            if arrival.kind == kind and (kind != "step" or arrival.is_step(state, step_id)):
                return arrival.at
        raise RunFailed(f"no {kind} {state} {step_id or ''} event")


def completed(done: pb.Done) -> pb.Done:
    if done.reason != "completed":
        raise RunFailed(f"done({done.reason}): {done.detail}")
    return done


def seconds(duration: duration_pb2.Duration) -> float:
    return duration.ToNanoseconds() / 1e9


def step_of(
    step_id: str,
    agent: str,
    instruction: str,
    depends_on: Sequence[str] = (),
    *,
    requires_approval: bool = False,
) -> pb.WorkflowStep:
    return pb.WorkflowStep(
        id=step_id,
        agent=agent,
        instruction=instruction,
        depends_on=list(depends_on),
        requires_approval=requires_approval,
    )


def dag_plan(agent: str) -> pb.WorkflowPlan:
    """5 layers of 4 steps; step j of a layer builds on steps j and j+1 of the layer before."""
    steps = []
    for layer in range(DAG_LAYERS):
        for j in range(DAG_WIDTH):
            before = [f"l{layer - 1}s{j}", f"l{layer - 1}s{(j + 1) % DAG_WIDTH}"] if layer else []
            steps.append(
                step_of(
                    f"l{layer}s{j}",
                    agent,
                    f"Review part {j + 1} of the supplier offer, round {layer + 1}",
                    before,
                )
            )
    return pb.WorkflowPlan(steps=steps)


def critical_path(plan: pb.WorkflowPlan, durations: dict[str, float]) -> float:
    """The longest dependency chain, each step weighed by its own duration (steps in
    dependency order, as the plans here list them)."""
    finish: dict[str, float] = {}
    for spec in plan.steps:
        finish[spec.id] = durations[spec.id] + max((finish[d] for d in spec.depends_on), default=0)
    return max(finish.values())


@dataclass
class DagRun:
    wall_s: float  # first step's `running` -> last step's `succeeded`, at the client
    total_s: float  # RunConversation call -> `done`
    critical_s: float
    serial_s: float
    # Last dependency's `succeeded` -> the dependent's `running`, at the client (ms).
    handoffs: list[float] = field(default_factory=list)


class Bench:
    def __init__(self, mesh: BenchMesh, args: argparse.Namespace) -> None:
        self.mesh = mesh
        self.args = args
        self.results = Results()
        self.failures: list[str] = []

    async def run(self) -> None:
        mesh, key = self.mesh, self.mesh.key
        async with (
            await callisto.Client.connect(mesh.gateway.grpc_target, api_key=key) as gateway,
            await callisto.Client.connect(mesh.persistence.address, api_key=key) as persistence,
        ):
            # Straight at persistence, as orchestration writes its checkpoints.
            self.gateway, self.persistence = gateway, persistence.persistence
            created = await gateway.orchestration.create_agent(
                agent_id=f"wf-bench-{uuid.uuid4().hex[:8]}",
                display_name="Workflow bench analyst",
                system_prompt="Do the step you are given, briefly.",
                role="analyst",
            )
            self.agent = str(created.name)
            # One unmeasured run first: connections, caches, the first Triton requests.
            warm = pb.WorkflowPlan(
                steps=[
                    step_of("warm-a", self.agent, "Say hello", requires_approval=True),
                    step_of("warm-b", self.agent, "Say goodbye", ["warm-a"]),
                ]
            )
            await self._approved_chain(warm)
            sections: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("(a) approvals", self.approvals),
                ("(b) checkpoints", self.checkpoints),
                ("(c) parallel DAG", self.dag),
            ]
            for name, section in sections:
                if name[1] not in self.args.only:
                    continue
                started = time.monotonic()
                say(f"{name} …")
                try:
                    await section()
                except Exception as error:  # one broken section must not hide the others
                    problem = f"FAILED: {type(error).__name__}: {error}"[:160]
                    self.failures.append(f"{name}: {problem}")
                    self.results.row(name, "", problem, "", "", "MISSED")
                say(f"{name} took {time.monotonic() - started:.0f} s")

    def _start(self, plan: pb.WorkflowPlan, title: str) -> pb.StartConversation:
        return workflow_start(plan=plan, max_parallel_steps=PARALLEL, title=title, tags=["bench"])

    # --- (a) ---------------------------------------------------------------------------

    async def _approved_chain(
        self, plan: pb.WorkflowPlan
    ) -> tuple[list[float], list[float], list[float], list[str]]:
        """Runs `plan`, approving each approval as soon as it is asked: (SubmitInput ->
        `succeeded`, SubmitInput -> next step's `running`, SubmitInput round trip) in ms, and
        the approvals' names."""
        args = self.args
        orchestration = self.gateway.orchestration
        after = {d: s.id for s in plan.steps for d in s.depends_on}
        to_succeeded: list[float] = []
        to_running: list[float] = []
        submits: list[float] = []
        names: list[str] = []
        asked: dict[str, float] = {}  # step -> when its SubmitInput was called
        waiting: dict[str, float] = {}  # dependent step -> when its dependency's was called
        async with Feed(
            self.gateway, self._start(plan, "bench approvals"), args.token_delay_ms
        ) as feed:
            while True:
                arrival = await feed.next(args.run_timeout)
                event = arrival.event
                if arrival.kind == "awaiting_input" and event.awaiting_input.approval_id:
                    step_id = event.step_id
                    names.append(event.awaiting_input.approval)
                    answer = pb.Approval(
                        approval_id=event.awaiting_input.approval_id,
                        decision=pb.APPROVAL_DECISION_APPROVE,
                        reviewer="bench",
                    )
                    called = time.perf_counter()
                    await orchestration.submit_approval(feed.conversation, answer)
                    submits.append((time.perf_counter() - called) * 1000)
                    asked[step_id] = called
                    if step_id in after:
                        waiting[after[step_id]] = called
                elif arrival.kind == "step":
                    step = event.step
                    if step.state == "succeeded" and step.step_id in asked:
                        to_succeeded.append((arrival.at - asked.pop(step.step_id)) * 1000)
                    elif step.state == "running" and step.step_id in waiting:
                        to_running.append((arrival.at - waiting.pop(step.step_id)) * 1000)
                elif arrival.kind == "done":
                    completed(event.done)
                    break
            feed.check_states(plan)
        return to_succeeded, to_running, submits, names

    async def approvals(self) -> None:
        args = self.args
        n = args.approvals
        plan = pb.WorkflowPlan(
            steps=[
                step_of(
                    f"gate{i:02d}",
                    self.agent,
                    f"Draft decision {i + 1} on the supplier offer",
                    [f"gate{i - 1:02d}"] if i else [],
                    requires_approval=True,
                )
                for i in range(n)
            ]
        )
        to_succeeded, to_running, submits, names = await self._approved_chain(plan)
        if len(to_succeeded) != n:
            raise RunFailed(f"{len(to_succeeded)} of {n} approvals resumed their step")
        # Baseline: unary round trips over the same path, two per approval.
        base: list[float] = []
        for name in [*names, *names]:
            called = time.perf_counter()
            await self.gateway.orchestration.get_approval(name)
            base.append((time.perf_counter() - called) * 1000)
        self.results.row(
            f"(a) approval pause -> resume: SubmitInput -> step's `succeeded` ({n} approvals, "
            "chain, via Envoy)",
            f"GetApproval via Envoy {ms(base)}",
            ms(to_succeeded),
            ratio(p99(to_succeeded), p99(base)) + " p99",
            "< 100 ms p99",
            verdict(p99(to_succeeded) < 100),
        )
        self.results.row(
            f"(a)   SubmitInput -> dependent step's `running` ({len(to_running)} steps)",
            "",
            ms(to_running),
            ratio(p99(to_running), p99(base)) + " p99",
            "(reported)",
            "",
        )
        self.results.row(
            "(a)   of which: the SubmitInput call's own round trip",
            "",
            ms(submits),
            ratio(p99(submits), p99(base)) + " p99",
            "(info)",
            "",
        )

    # --- (b) ---------------------------------------------------------------------------

    async def checkpoints(self) -> None:
        args = self.args
        n = args.checkpoint_steps
        plan = pb.WorkflowPlan(
            steps=[
                step_of(f"s{i:02d}", self.agent, f"Summarise clause {i + 1} of the contract")
                for i in range(n)
            ]
        )
        metrics = self.mesh.persistence_metrics
        before = await metrics.read(settled=True)
        async with Feed(
            self.gateway, self._start(plan, "bench checkpoints"), args.token_delay_ms
        ) as feed:
            done = await feed.done(args.run_timeout)
        feed.check_states(plan)
        served = (await metrics.read(settled=True)).minus(before)
        updates = sum(1 for a in feed.seen if a.kind == "step")
        durations = [seconds(r.duration) * 1000 for r in done.steps]
        writes = served.count("UpdateSession")
        creates = served.count("CreateSession")
        # The run's checkpoint at its end (the largest it was), written again and again with
        # its etag over a scratch session, straight at persistence as orchestration does.
        run_session = await self.persistence.get_session(session_id(feed.conversation))
        size = len(run_session.state.SerializeToString())
        scratch = await self.persistence.create_session(
            persistence_pb2.Session(kind=SCRATCH_KIND, state=run_session.state)
        )
        latencies: list[float] = []
        try:
            for _ in range(args.checkpoint_writes):
                called = time.perf_counter()
                scratch = await self.persistence.update_session(
                    persistence_pb2.Session(
                        name=scratch.name,
                        kind=SCRATCH_KIND,
                        state=run_session.state,
                        etag=scratch.etag,
                    ),
                    ["state"],
                    retry=True,
                )
                latencies.append((time.perf_counter() - called) * 1000)
        finally:
            await self.persistence.delete_session(scratch.name)
        per_step = writes / n
        cost = per_step * p50(latencies)
        self.results.row(
            f"(b) checkpoint time per step ({n} independent steps, {args.step_tokens} tokens "
            f"at {args.token_delay_ms:g} ms)",
            f"step duration {ms(durations)}",
            f"{per_step:.2f} writes x {p50(latencies):.1f} ms = {cost:.1f} ms",
            f"{100 * cost / p50(durations):.1f} % of p50 step",
            "(reported)",
            "",
        )
        self.results.row(
            f"(b)   UpdateSession with etag, direct, state of {size / 1024:.1f} KiB "
            f"({len(latencies)} writes)",
            "",
            ms(latencies),
            "",
            "(info)",
            "",
        )
        self.results.row(
            "(b)   persistence serving the run's UpdateSession calls, per step",
            "",
            f"{writes} calls, {1000 * served.seconds_of('UpdateSession') / n:.1f} ms per step",
            f"{100 * served.seconds_of('UpdateSession') * 1000 / n / p50(durations):.1f} % "
            "of p50 step",
            "(info)",
            "",
        )
        self.results.notes.append(
            f"(b) {updates} StepUpdates for {n} steps ({updates / n:.1f} per step); persistence "
            f"served {writes} UpdateSession and {creates} CreateSession calls during the run, "
            f"{served.count('CreateEvent')} CreateEvent, {served.count('CreateMessage')} "
            f"CreateMessage, {served.count('GetSession')} GetSession; the run took "
            f"{feed.seen[-1].at - feed.started:.2f} s."
        )

    # --- (c) ---------------------------------------------------------------------------

    async def dag(self) -> None:
        args = self.args
        plan = dag_plan(self.agent)
        specs = {s.id: s for s in plan.steps}
        runs: list[DagRun] = []
        for i in range(args.dag_runs):
            async with Feed(
                self.gateway, self._start(plan, f"bench dag {i}"), args.token_delay_ms
            ) as feed:
                done = await feed.done(args.run_timeout)
            feed.check_states(plan)
            durations = {r.step_id: seconds(r.duration) for r in done.steps}
            first_running = feed.at("step", "running")
            last_succeeded = feed.at("step", "succeeded", last=True)
            done_at = feed.at("done", last=True)
            handoffs = []
            for spec in plan.steps:
                if not spec.depends_on:
                    continue
                ready = max(feed.at("step", "succeeded", d) for d in spec.depends_on)
                running = feed.at("step", "running", spec.id)
                handoffs.append((running - ready) * 1000)
            runs.append(
                DagRun(
                    wall_s=last_succeeded - first_running,
                    total_s=done_at - feed.started,
                    critical_s=critical_path(plan, durations),
                    serial_s=sum(durations.values()),
                    handoffs=handoffs,
                )
            )
            assert set(durations) == set(specs)
        best = sorted(runs, key=lambda r: r.critical_s / r.wall_s)[len(runs) // 2]
        efficiencies = ", ".join(f"{r.critical_s / r.wall_s:.2f}" for r in runs)
        self.results.row(
            f"(c) 20-step DAG ({DAG_LAYERS} layers x {DAG_WIDTH}, 2 deps each, "
            f"max_parallel_steps {PARALLEL}): wall vs critical path, median of {len(runs)}",
            f"critical path {best.critical_s:.2f} s",
            f"wall {best.wall_s:.2f} s (call -> done {best.total_s:.2f} s)",
            f"efficiency {best.critical_s / best.wall_s:.2f} (runs: {efficiencies})",
            "1.0 = perfect (reported)",
            "",
        )
        self.results.row(
            "(c)   serial sum of the step durations",
            "",
            f"{best.serial_s:.2f} s",
            f"speedup {best.serial_s / best.wall_s:.2f}x (at most "
            f"{best.serial_s / best.critical_s:.2f}x)",
            "(info)",
            "",
        )
        handoffs = [h for r in runs for h in r.handoffs]
        self.results.row(
            "(c)   hand-off: last dependency's `succeeded` -> dependent's `running`",
            "",
            ms(handoffs),
            "",
            "(info)",
            "",
        )


async def measure(mesh: BenchMesh, args: argparse.Namespace) -> Bench:
    bench = Bench(mesh, args)
    await bench.run()
    return bench


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--approvals", type=int, help="(a) approval steps in the chain [50]")
    parser.add_argument("--checkpoint-steps", type=int, help="(b) steps of the run [40]")
    parser.add_argument("--checkpoint-writes", type=int, help="(b) timed UpdateSessions [200]")
    parser.add_argument("--dag-runs", type=int, help="(c) runs of the 20-step DAG [3]")
    parser.add_argument("--step-tokens", type=int, default=24, help="tokens per step answer")
    parser.add_argument(
        "--token-delay-ms", type=float, default=10.0, help="toy_llm sleep before each token"
    )
    parser.add_argument("--run-timeout", type=float, default=120.0, help="seconds per event")
    parser.add_argument("--keep", type=Path, help="keep logs and data in this folder")
    parser.add_argument("--only", default="abc", help="sections to run, by letter [abc]")
    args = parser.parse_args()
    quick = args.quick
    defaults = {
        "approvals": 8 if quick else 50,
        "checkpoint_steps": 8 if quick else 40,
        "checkpoint_writes": 20 if quick else 200,
        "dag_runs": 1 if quick else 3,
    }
    fill_defaults(args, defaults)
    return args


def main() -> None:
    args = parse_args()
    with ExitStack() as stack:
        folder = workdir(stack, args.keep, "wf-bench-")
        started = time.monotonic()
        mesh = BenchMesh(
            folder,
            stack,
            with_llm=False,
            orchestration_env={
                "CALLISTO_ORCHESTRATION_FORWARD_MODEL_EXTRAS": "1",
                "CALLISTO_WORKFLOW_STEP_MAX_TOKENS": str(args.step_tokens),
                # Room for every step the plans may run at once.
                "CALLISTO_WORKFLOW_MAX_CONCURRENT_STEPS": "32",
            },
        )
        say(f"mesh started in {time.monotonic() - started:.1f} s")
        bench = asyncio.run(measure(mesh, args))
        print()
        print(table("Workflows on toy_llm vs the same run's baselines", bench.results.rows))
        for note in bench.results.notes:
            print(f"- {note}")
        # Shared 2-core machines: other work skews every number; say how busy it was.
        print(f"\nload average (1, 5, 15 min) at the end: {os.getloadavg()}")
    if bench.failures:
        print("\n".join(bench.failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
