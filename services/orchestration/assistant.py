"""The assistant loop (CONVERSATION_MODE_ASSISTANT): understand → plan → execute → reflect →
respond with numbered, verified citations.

Each step is a small function of the turn's state (`TurnState`); `answer_turn` drives them:
rounds of plan → execute → reflect (the first round understands and plans in one generation, see
`understand_and_plan`) until the evidence suffices, the tools run out or
`max_iterations` is reached, then one streamed answer. The structured steps are
JSON-Schema-constrained generations (see `prompts`); what must not be left to a small model is
decided by code: which passages bear on the question (`relevance`), which markers of the answer
point at a source (`citations`), and the answer when nothing relevant was found or a source was
unavailable.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from callisto.api.common.v1 import common_pb2
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.errors import CallistoError
from callisto.services.orchestration import citations, prompts, relevance
from callisto.services.orchestration.backends import Backends
from callisto.services.orchestration.citations import source_key
from callisto.services.orchestration.model_json import answer_json, to_struct
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools.registry import (
    CIRCUIT_OPEN,
    ToolContext,
    ToolOutcome,
    ToolRegistry,
    ToolSpec,
)
from callisto.services.orchestration.turns import ModelCaller, RunSink, TurnAnswer, TurnInput

log = logging.getLogger("callisto.orchestration.assistant")

# Tools whose results are passages to cite; the fallback plan calls the agent's first one.
RETRIEVAL_TOOLS = ("search_entities", "search_documents")
MODEL, REPAIRED, FALLBACK = "model", "repaired", "fallback"
# Characters of the user's words the fallback searches with.
FALLBACK_QUERY = 300
# The kinds of entity search_entities returns, as terms (see TurnState.generic).
ENTITY_KIND_TERMS = frozenset(relevance.terms("sessions speakers speaks exhibitors"))
# Where a small model starts writing a prompt of its own instead of answering.
ANSWER_STOPS = ("\nQuestion:", "\nSources:")
# Characters of each passage the reflect step reads (it judges, it does not answer).
REFLECT_PASSAGE = 160


@dataclass(frozen=True)
class LoopOptions:
    """The assistant loop's section of `OrchestrationSettings`."""

    default_model: str = "models/llm"
    max_sources: int = 4
    passage_chars: int = 160
    answer_max_tokens: int = 160
    brief_max_tokens: int = 48
    step_max_tokens: int = 160
    max_calls: int = 2
    history_messages: int = 4
    question_chars: int = 1500
    temperature: float = 0.0
    answer_temperature: float = 0.0
    answer_seed: int = 1
    answer_persona: bool = False

    @classmethod
    def from_settings(cls, settings: OrchestrationSettings) -> LoopOptions:
        return cls(
            default_model=settings.default_model,
            max_sources=settings.assistant_max_sources,
            passage_chars=settings.assistant_passage_chars,
            answer_max_tokens=settings.assistant_answer_max_tokens,
            brief_max_tokens=settings.assistant_brief_max_tokens,
            step_max_tokens=settings.assistant_step_max_tokens,
            max_calls=settings.assistant_max_calls,
            history_messages=settings.assistant_history_messages,
            question_chars=settings.assistant_question_chars,
            temperature=settings.assistant_temperature,
            answer_temperature=settings.assistant_answer_temperature,
            answer_seed=settings.assistant_answer_seed,
            answer_persona=settings.assistant_answer_persona,
        )


@functools.cache
def environment_options() -> LoopOptions:
    """The options of this process's environment (read once)."""
    return LoopOptions.from_settings(OrchestrationSettings.from_env())


@dataclass
class Understanding:
    intent: str
    entities: list[str]
    needs_knowledge: bool


@dataclass
class PlannedCalls:
    calls: list[tuple[str, dict[str, Any]]]
    # MODEL, REPAIRED or FALLBACK.
    source: str


@dataclass
class TurnState:
    """One turn's inputs and what its steps gathered so far."""

    turn: TurnInput
    sink: RunSink
    llm: ModelCaller
    tools: ToolRegistry
    backends: Backends
    options: LoopOptions
    # The agent's tools that the registry has, retrieval tools first.
    specs: list[ToolSpec]
    outcomes: list[ToolOutcome] = field(default_factory=list)
    # Every passage retrieved this turn, without repeats, in the order found.
    passages: list[common_pb2.Citation] = field(default_factory=list)
    unavailable: list[str] = field(default_factory=list)
    usage: common_pb2.TokenUsage = field(default_factory=common_pb2.TokenUsage)
    generation_ms: float = 0.0
    model: str = ""
    # Entities the understand step found (see `topic`).
    entities: list[str] = field(default_factory=list)

    @property
    def question(self) -> str:
        """The human turn as the prompts carry it: cut to `question_chars`, so a long but valid
        turn still fits the model's context with the sources around it."""
        return _cut(self.turn.user_text.strip(), self.options.question_chars)

    @property
    def topic(self) -> str:
        """What passages must be about: the question, and the entities understood from it and
        the conversation (a follow-up such as "who speaks there?" names none itself)."""
        return " ".join([self.question, *self.entities])

    @property
    def model_name(self) -> str:
        return self.turn.agent.model or self.options.default_model

    def usable(self) -> list[ToolSpec]:
        """The agent's tools that did not fail this turn (none is tried again after its
        retries were spent)."""
        return [spec for spec in self.specs if spec.name not in self.unavailable]

    def has_retrieval(self) -> bool:
        return any(spec.name in RETRIEVAL_TOOLS for spec in self.specs)

    def history(self) -> list[generation_pb2.ChatMessage]:
        count = self.options.history_messages
        recent: list[generation_pb2.ChatMessage] = []
        for earlier in self.turn.history[-count:] if count > 0 else []:
            message = generation_pb2.ChatMessage()
            message.CopyFrom(earlier)
            message.content = _cut(message.content, self.options.question_chars)
            recent.append(message)
        return recent

    def account(self, result: generation_pb2.GenerationResult) -> None:
        self.usage.prompt_tokens += result.usage.prompt_tokens
        self.usage.completion_tokens += result.usage.completion_tokens
        self.usage.total_tokens += result.usage.total_tokens
        self.generation_ms += result.duration_ms
        self.model = result.model or self.model

    def record(self, outcomes: Sequence[ToolOutcome]) -> None:
        self.outcomes.extend(outcomes)
        for outcome in outcomes:
            if outcome.ok and outcome.result is not None:
                self.passages = citations.unique([*self.passages, *outcome.result.citations])
            elif is_unavailable(outcome) and outcome.tool not in self.unavailable:
                self.unavailable.append(outcome.tool)

    def entities_found(self) -> dict[tuple[str, str, str, str], dict[str, Any]]:
        """The data of each entity search_entities found, by its passage: the result's
        entities and citations come from the same hits, in the same order."""
        found: dict[tuple[str, str, str, str], dict[str, Any]] = {}
        for outcome in self.outcomes:
            if outcome.tool != "search_entities" or outcome.result is None:
                continue
            data = outcome.result.data
            entities = data.get("entities") if isinstance(data, dict) else None
            if not isinstance(entities, list) or len(entities) != len(outcome.result.citations):
                continue
            for entity, citation in zip(entities, outcome.result.citations, strict=True):
                if isinstance(entity, dict):
                    found[source_key(citation)] = {
                        **entity,
                        "type": str(entity.get("type") or citation.section),
                    }
        return found

    def entity_descriptions(self) -> dict[tuple[str, str, str, str], tuple[str, str]]:
        """(kind, description) of each entity found that has a description, by its passage."""
        return {
            key: (str(entity["type"]), str(entity["description"]))
            for key, entity in self.entities_found().items()
            if entity.get("description")
        }

    def relevant(self) -> list[common_pb2.Citation]:
        return relevance.relevant(
            self.topic, self.passages, text_of=self.readable(), generic=self.generic()
        )

    def covered(self, passages: Sequence[common_pb2.Citation]) -> bool:
        return relevance.covers(
            self.question, passages, text_of=self.readable(), generic=self.generic()
        )

    def readable(self) -> relevance.TextOf:
        """A passage as the answering model reads it (an entity by its description)."""
        described = self.entity_descriptions()

        def text_of(citation: common_pb2.Citation) -> str:
            entity = described.get(source_key(citation))
            if entity is None:
                return relevance.passage_text(citation)
            return f"{citation.title} {entity[1]}"

        return text_of

    def generic(self) -> frozenset[str]:
        """Over the conference programme, "sessions" and "speakers" say what is asked for."""
        searched = any(o.tool == "search_entities" and o.ok for o in self.outcomes)
        return ENTITY_KIND_TERMS if searched else frozenset()

    def data_results(self) -> list[ToolOutcome]:
        """Calls that answered with data rather than passages (calculator, time, …), and
        calls the tool refused (the model may say why)."""
        return [
            o
            for o in self.outcomes
            if o.tool not in RETRIEVAL_TOOLS
            and not is_unavailable(o)
            and not (o.result is not None and o.result.citations)
        ]


def is_unavailable(outcome: ToolOutcome) -> bool:
    """Whether the call failed for the tool's sake (down, timing out, breaker open) rather than
    because the tool refused these arguments."""
    if outcome.ok:
        return False
    error = outcome.error
    return error == CIRCUIT_OPEN or error.startswith(
        (f"{outcome.tool} unavailable", f"{outcome.tool} failed")
    )


def agent_tools(agent: pb.Agent, tools: ToolRegistry) -> list[ToolSpec]:
    """The agent's tools the registry knows, retrieval tools first, else in the agent's order."""
    known = set(tools.names())
    names = [name for name in dict.fromkeys(agent.tools) if name in known]
    names.sort(key=lambda name: name not in RETRIEVAL_TOOLS)
    return [tools.get(name) for name in names]


async def _structured(
    state: TurnState, name: str, schema: dict[str, Any], messages: list[generation_pb2.ChatMessage]
) -> tuple[Any, str]:
    """(parsed answer, the model's text) of one schema-constrained generation; (None, "") when
    the call failed (the step then decides without it). BudgetExhausted and cancellation
    propagate."""
    options = state.options
    request = generation_pb2.GenerateRequest(
        model=state.model_name,
        messages=messages,
        parameters=generation_pb2.SamplingParameters(
            max_tokens=options.step_max_tokens, temperature=options.temperature
        ),
        response_format=generation_pb2.ResponseFormat(json_schema=to_struct(schema), name=name),
    )
    try:
        result = await state.llm.generate(request)
    except CallistoError as error:
        log.warning("assistant %s step failed: %s", name, error)
        return None, ""
    state.account(result)
    return answer_json(result), result.text.strip()


# --- the steps ----------------------------------------------------------------------------


def understood(state: TurnState, value: Any) -> Understanding:
    """The understanding a first-round answer carries (a safe one when it carries none: look it
    up when the agent can)."""
    if not isinstance(value, dict):
        return Understanding("", [], needs_knowledge=state.has_retrieval())
    entities = value.get("entities")
    return Understanding(
        intent=str(value.get("intent", ""))[: prompts.MAX_INTENT].strip(),
        entities=[str(e).strip() for e in entities if str(e).strip()]
        if isinstance(entities, list)
        else [],
        needs_knowledge=value.get("needs_knowledge") != prompts.NO,
    )


def plan_problems(state: TurnState, value: Any, *, min_calls: int) -> list[str]:
    """What is wrong with a plan the model wrote (empty when it is valid)."""
    calls = value.get("calls") if isinstance(value, dict) else None
    if not isinstance(calls, list):
        return ["the answer has no list of calls"]
    if len(calls) < min_calls:
        return [f"it must make at least {min_calls} call"]
    allowed = {spec.name for spec in state.usable()}
    problems: list[str] = []
    for index, call in enumerate(calls):
        tool = call.get("tool") if isinstance(call, dict) else None
        arguments = call.get("arguments") if isinstance(call, dict) else None
        if tool not in allowed:
            problems.append(f"calls[{index}]: {tool!r} is not one of your tools")
            continue
        violations = state.tools.validate(str(tool), arguments)
        problems.extend(f"calls[{index}] {tool}: {v.field} {v.description}" for v in violations)
        if not violations and tool in RETRIEVAL_TOOLS and not grounded(state, arguments):
            problems.append(
                f"calls[{index}] {tool}: arguments.query must use the key words of the question"
            )
    return problems


def grounded(state: TurnState, arguments: Any) -> bool:
    """Whether a search looks for what was asked: its query shares a term with the question
    (a small model otherwise searches for its instructions' words)."""
    query = arguments.get("query") if isinstance(arguments, dict) else None
    wanted = relevance.terms(state.topic)
    return not wanted or bool(relevance.terms(str(query or "")) & wanted)


def _calls(value: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(str(call["tool"]), dict(call["arguments"])) for call in value["calls"]]


def fallback(state: TurnState) -> PlannedCalls:
    """A retrieval with the user's words, by the agent's first retrieval tool still usable;
    no call when it has none."""
    for spec in state.usable():
        if spec.name in RETRIEVAL_TOOLS:
            arguments: dict[str, Any] = {"query": state.question[:FALLBACK_QUERY]}
            if not state.tools.validate(spec.name, arguments):
                return PlannedCalls([(spec.name, arguments)], FALLBACK)
    return PlannedCalls([], FALLBACK)


async def _planned(
    state: TurnState,
    schema: dict[str, Any],
    messages: list[generation_pb2.ChatMessage],
    *,
    min_calls: int,
    first_round: bool = False,
) -> tuple[PlannedCalls, Any]:
    """The model's plan, once repaired when invalid, else the fallback; with the answer the
    plan came from (None when the model gave none that parsed)."""
    value, written = await _structured(state, "plan", schema, messages)
    problems = _problems(state, value, min_calls=min_calls, first_round=first_round)
    if not problems:
        return PlannedCalls(_calls(value), MODEL), value
    log.info("assistant plan invalid, repairing: %s", "; ".join(problems))
    repair = [
        *messages,
        prompts.assistant(written or json.dumps(value, ensure_ascii=False)),
        prompts.repair_message(state.question, problems),
    ]
    repaired, _ = await _structured(state, "plan", schema, repair)
    problems = _problems(state, repaired, min_calls=min_calls, first_round=first_round)
    if not problems:
        return PlannedCalls(_calls(repaired), REPAIRED), repaired
    log.info("assistant repaired plan invalid, falling back: %s", "; ".join(problems))
    return fallback(state), value if isinstance(value, dict) else repaired


def _problems(state: TurnState, value: Any, *, min_calls: int, first_round: bool) -> list[str]:
    if first_round:
        # A search is grounded in the entities understood too (a follow-up names none itself).
        state.entities = understood(state, value).entities
    if first_round and isinstance(value, dict) and value.get("needs_knowledge") == prompts.NO:
        # Nothing to look up: the schema's required call is kept only when it is no search.
        calls = value.get("calls")
        if isinstance(calls, list):
            value["calls"] = [
                c for c in calls if not (isinstance(c, dict) and c.get("tool") in RETRIEVAL_TOOLS)
            ]
        min_calls = 0
    return plan_problems(state, value, min_calls=min_calls)


async def understand_and_plan(state: TurnState) -> tuple[Understanding, PlannedCalls]:
    """The first round's understand and plan steps, as ONE constrained generation: its schema
    has the understanding's fields (intent, entities, needs_knowledge) before the calls, so the
    model states what it understood and then plans from it. Both steps of the issue happen, for
    one prompt evaluation instead of two (the small CPU model spends most of a step reading its
    prompt); the `plan` event carries both."""
    specs = state.usable()
    schema = prompts.route_schema(specs, max_calls=state.options.max_calls)
    messages = prompts.route_messages(specs=specs, question=state.question, history=state.history())
    planned, value = await _planned(state, schema, messages, min_calls=1, first_round=True)
    return understood(state, value), planned


async def plan(
    state: TurnState, understanding: Understanding, earlier: Sequence[str], missing: str
) -> PlannedCalls:
    """A later round's tool calls, from what the first understood and what earlier rounds
    found: the model's plan, once repaired when invalid, else the fallback."""
    specs = state.usable()
    min_calls = 1 if understanding.needs_knowledge else 0
    schema = prompts.plan_schema(specs, min_calls=min_calls, max_calls=state.options.max_calls)
    messages = prompts.plan_messages(
        specs=specs,
        question=state.question,
        intent=understanding.intent,
        entities=understanding.entities,
        needs_knowledge=understanding.needs_knowledge,
        earlier=earlier,
        missing=missing,
    )
    planned, _ = await _planned(state, schema, messages, min_calls=min_calls)
    return planned


async def execute(state: TurnState, iteration: int, planned: PlannedCalls) -> list[ToolOutcome]:
    """Runs the round's calls concurrently; each call's `tool_call` event goes out as it ends."""
    turn = state.turn
    emitting = asyncio.Lock()
    prefix = turn.call_key or f"{turn.conversation}/turns/{turn.turn}"

    async def call(index: int, tool: str, arguments: dict[str, Any]) -> ToolOutcome:
        context = ToolContext(
            tenant=turn.tenant,
            conversation=turn.conversation,
            agent=turn.agent,
            backends=state.backends,
            idempotency_key=f"{prefix}/{iteration}.{index}",
        )
        call_id = f"{turn.turn}.{iteration}.{index}"
        outcome = await state.tools.call(tool, arguments, context, call_id=call_id)
        async with emitting:
            await state.sink.emit(pb.ConversationEvent(tool_call=outcome.event()))
        return outcome

    async with asyncio.TaskGroup() as group:
        tasks = [
            group.create_task(call(index, tool, arguments))
            for index, (tool, arguments) in enumerate(planned.calls, start=1)
        ]
    outcomes = [task.result() for task in tasks]
    state.record(outcomes)
    return outcomes


def _evidence_lines(state: TurnState) -> list[str]:
    lines = [
        prompts.source_line(c, REFLECT_PASSAGE)
        for c in citations.number(state.relevant()[: state.options.max_sources])
    ]
    lines += [
        prompts.tool_line(o.tool, o.arguments, o.result.data if o.result else o.error, 200)
        for o in state.data_results()
    ]
    return lines


async def reflect(
    state: TurnState,
    understanding: Understanding,
    outcomes: Sequence[ToolOutcome],
    *,
    last: bool,
) -> pb.Reflection:
    """Whether the evidence so far suffices. Decided by code where it is plain: nothing was
    planned (nothing to wait for), nothing relevant came back when knowledge is needed (not
    sufficient), or no round is left (the answer uses what there is); else by the model."""
    relevant = state.relevant()
    if not outcomes:
        return pb.Reflection(sufficient=True)
    if understanding.needs_knowledge and not relevant and not state.data_results():
        failed = [o.tool for o in outcomes if is_unavailable(o)]
        missing = (
            f"{', '.join(dict.fromkeys(failed))} unavailable"
            if failed and len(failed) == len(outcomes)
            else "no relevant passages"
        )
        return pb.Reflection(sufficient=False, missing=missing)
    if last:
        return pb.Reflection(sufficient=True)
    if relevant and state.covered(relevant):
        # Every term of the question is in a relevant passage: nothing obvious is missing.
        return pb.Reflection(sufficient=True)
    value, _ = await _structured(
        state,
        "reflect",
        prompts.REFLECT_SCHEMA,
        prompts.reflect_messages(state.question, _evidence_lines(state)),
    )
    if not isinstance(value, dict) or value.get("sufficient") != prompts.NO:
        return pb.Reflection(sufficient=True)
    missing = str(value.get("missing", "")).strip()[: prompts.MAX_MISSING]
    return pb.Reflection(sufficient=False, missing=missing)


def _summary(outcome: ToolOutcome) -> str:
    called = json.dumps(outcome.arguments, ensure_ascii=False, separators=(",", ":"))
    if outcome.ok and outcome.result is not None:
        return f"{outcome.tool} {called}: {outcome.result.summary}"
    return f"{outcome.tool} {called}: failed ({outcome.error})"


class _AnswerStream:
    """The answer as it streams: markers filtered, each source's `citation` event emitted the
    first time the answer cites it, before the text that cites it."""

    def __init__(self, state: TurnState, sources: Sequence[common_pb2.Citation]) -> None:
        self._state = state
        self.sources = list(sources)
        self.markers = citations.MarkerFilter(range(1, len(self.sources) + 1))
        self.parts: list[str] = []

    async def feed(self, text: str) -> None:
        await self._show(*self.markers.feed(text))

    async def finish(self) -> None:
        await self._show(*self.markers.finish())

    async def append(self, text: str) -> None:
        """Text the loop adds after the model's answer (sources line, unavailable note)."""
        await self.feed(text)
        await self.finish()

    async def _show(self, text: str, cited: list[int]) -> None:
        for marker in cited:
            await self._state.sink.emit(pb.ConversationEvent(citation=self.sources[marker - 1]))
        if not self.parts:
            text = text.lstrip()  # an answer may open with blank space or a dropped marker
        if text:
            self.parts.append(text)
            await self._state.sink.token(self._state.turn.speaker, text)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def cited(self) -> list[common_pb2.Citation]:
        return [self.sources[n - 1] for n in sorted(self.markers.cited)]


class Heading:
    """Drops a copy of `heading` (and its "(kind):") that opens a text, as the text streams."""

    _KIND = re.compile(r"\s*(\([^()]*\))?\s*:?\s*")

    def __init__(self, heading: str) -> None:
        self._heading = heading
        self._held = ""
        self._decided = not heading

    def feed(self, text: str) -> str:
        if self._decided:
            return text
        self._held += text
        opening = self._held.lstrip()
        if opening.startswith(self._heading):
            rest = opening[len(self._heading) :]
            kind = self._KIND.match(rest)
            if kind is None or kind.end() == len(rest) or ("(" in rest and ")" not in rest):
                return ""  # the "(kind):" may still be coming
            return self._release(rest[kind.end() :])
        if self._heading.startswith(opening):
            return ""
        return self._release(self._held)

    def finish(self) -> str:
        """What is still held: a heading cut short is kept (it was the whole answer)."""
        if self._decided:
            return ""
        opening = self._held.lstrip()
        if opening.startswith(self._heading):
            return self._release("")
        return self._release(self._held)

    def _release(self, text: str) -> str:
        self._decided, self._held = True, ""
        return text


async def _list_entities(
    stream: _AnswerStream, found: dict[tuple[str, str, str, str], dict[str, Any]]
) -> bool:
    """Streams one line per source that is an entity (in the sources' order); whether any."""
    entities = [(c, found[source_key(c)]) for c in stream.sources if source_key(c) in found]
    if not entities:
        return False
    markers = {c.title: c.marker for c, _ in entities}
    lines = []
    for citation, entity in entities:
        attributes = entity.get("attributes")
        lines.append(
            prompts.fact_line(
                citation.marker,
                citation.title,
                str(entity["type"]),
                attributes if isinstance(attributes, dict) else {},
                markers=markers,
            )
        )
    await stream.append("\n".join(lines))
    return True


async def respond(
    state: TurnState, understanding: Understanding
) -> tuple[str, list[common_pb2.Citation]]:
    """The streamed answer, grounded in the relevant passages given as numbered sources; the
    "found nothing" answer when knowledge was needed and nothing relevant came back."""
    sources = citations.number(state.relevant()[: state.options.max_sources])
    data = state.data_results()
    stream = _AnswerStream(state, sources)
    if not sources and not data and understanding.needs_knowledge and state.has_retrieval():
        searched = [
            spec.name
            for spec in state.specs
            if spec.name in RETRIEVAL_TOOLS
            and spec.name not in state.unavailable
            and any(o.tool == spec.name and o.ok for o in state.outcomes)
        ]
        await stream.append(prompts.nothing_found(searched, state.unavailable))
        return stream.text, []
    options = state.options
    agent = state.turn.agent
    described = state.entity_descriptions()
    # Entities are listed by code, their facts as stored (a small model otherwise renames
    # them); the model then adds a sentence, which takes it a fraction of a free answer's time.
    listed = await _list_entities(stream, state.entities_found())
    messages = prompts.respond_messages(
        persona=agent.system_prompt
        if options.answer_persona
        else prompts.persona(agent.role, agent.company),
        question=state.question,
        history=state.history(),
        sources=[
            prompts.source_line(c, options.passage_chars, described=described.get(source_key(c)))
            for c in (sources[:1] if listed else sources)
        ],
        results=[
            prompts.tool_line(o.tool, o.arguments, o.result.data if o.result else o.error, 400)
            for o in data
        ],
        brief=listed,
    )
    request = generation_pb2.GenerateRequest(
        model=state.model_name,
        messages=messages,
        parameters=generation_pb2.SamplingParameters(
            max_tokens=options.brief_max_tokens if listed else options.answer_max_tokens,
            temperature=options.answer_temperature,
            seed=options.answer_seed,
            # A small model goes on to invent the next question.
            stop=list(ANSWER_STOPS),
        ),
    )
    streamed = False
    # The listed answer's sentence: the model tends to open it with the source's heading,
    # which the list already shows; held back while it may still be that heading.
    heading = Heading(f"[{sources[0].marker}] {sources[0].title}" if listed else "")

    async def on_text(text: str) -> None:
        nonlocal streamed
        if listed:
            text = heading.feed(text)
            if not streamed:
                # A paragraph after the list (none when the model writes nothing).
                text = text.lstrip()
                if not text:
                    return
                text = "\n\n" + text
        streamed = True
        await stream.feed(text)

    result = await state.llm.generate(request, on_text=on_text)
    state.account(result)
    if not streamed and result.text:
        await on_text(result.text)
    if listed:
        await on_text(heading.finish())
    await stream.finish()
    if len(stream.markers.cited) < len(sources):
        # The answer was written from every source given; list them where the model did not
        # number them all (a small model often cites none).
        await stream.append("\n\nSources: " + ", ".join(f"[{c.marker}]" for c in sources))
    if not stream.text:
        await stream.append("I have no answer to that.")
    if state.unavailable:
        await stream.append("\n\n" + prompts.unavailable_note(state.unavailable))
    return stream.text, stream.cited()


async def answer_turn(
    turn: TurnInput,
    sink: RunSink,
    llm: ModelCaller,
    tools: ToolRegistry,
    backends: Backends,
    *,
    options: LoopOptions | None = None,
) -> TurnAnswer:
    """Answers one human turn, emitting plan, tool_call, reflection, citation and token events
    through `sink`; the caller stores the answer (which emits `turn_ended`)."""
    state = TurnState(
        turn=turn,
        sink=sink,
        llm=llm,
        tools=tools,
        backends=backends,
        options=options or environment_options(),
        specs=agent_tools(turn.agent, tools),
    )
    # Without tools nothing could be looked up or called: no plan depends on an understanding.
    understanding = Understanding("", [], needs_knowledge=False)
    earlier: list[str] = []
    missing = ""
    rounds = max(1, turn.max_iterations)
    for iteration in range(1, rounds + 1):
        if not state.usable():
            break
        if iteration == 1:
            understanding, planned = await understand_and_plan(state)
            state.entities = understanding.entities
        else:
            planned = await plan(state, understanding, earlier, missing)
        await sink.emit(
            pb.ConversationEvent(
                plan=pb.Plan(
                    iteration=iteration,
                    intent=understanding.intent,
                    entities=understanding.entities,
                    needs_knowledge=understanding.needs_knowledge,
                    calls=[
                        pb.PlannedCall(tool=tool, arguments=to_struct(arguments))
                        for tool, arguments in planned.calls
                    ],
                    source=planned.source,
                )
            )
        )
        outcomes = await execute(state, iteration, planned)
        last = iteration == rounds or not state.usable()
        reflection = await reflect(state, understanding, outcomes, last=last)
        reflection.iteration = iteration
        await sink.emit(pb.ConversationEvent(reflection=reflection))
        if reflection.sufficient:
            break
        earlier.extend(_summary(o) for o in outcomes)
        missing = reflection.missing
    text, cited = await respond(state, understanding)
    return TurnAnswer(
        text=text,
        citations=cited,
        usage=state.usage,
        generation_ms=state.generation_ms,
        model=state.model or state.model_name,
        tool_calls=state.outcomes,
        unavailable=list(state.unavailable),
    )


def _cut(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, at a space when one is near the end."""
    if len(text) <= limit:
        return text
    cut = text[:limit]
    space = cut.rfind(" ")
    return cut[:space] if space > limit * 3 // 4 else cut
