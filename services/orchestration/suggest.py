"""SuggestAgents: two to five agents for a scenario, from one structured-output generation,
repaired or retried when the answer is unusable, else from a role-based template.

The path, reported as `source`:
- "model": the first answer was complete as it came;
- "repaired": the first answer parsed but lacked something the code could mend (too few or
  too many agents, a blank name, role, company or prompt, an unknown side, a company the
  scenario does not name, a sale with nobody on one side);
- "retried": a later answer was usable (as it came or repaired); the model is told what was
  wrong with the one before (cut off, not JSON, no usable agents);
- "fallback": after `suggest_retries` more attempts (or a generation error that another attempt
  cannot change) the agents come from the template, so the user always gets a usable set.

Whatever the path, the code, not the model, decides what the model cannot be trusted with:
companies are normalised to the names the scenario gives ("X sells/pitches … to Y", "Y buys …
from X", "between X and Y"; matched case-insensitively), display names are unique, tools come
from the role (every agent gets `search_documents`, which searches only its own company's
documents, because each company in a simulation has documents of its own; finance, pricing
and procurement roles also get `calculator`), and the system prompt names the agent, its role,
its company and the scenario around the model's own instructions. Suggested agents are not
stored: they pass the checks CreateAgent applies and run as a simulation's inline agents.

With `participate` the response adds a human for the buying company (the contract: "adds a
human participant … the agents are the other parties"): `agent_count` agents still, the human
in the first buyer seat, so the buyer side has one agent fewer than the same cast without the
human, and the set always starts a simulation (which takes 2-5 agents, the human on top).
"""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from typing import Any

from google.protobuf import json_format
from prometheus_client import Counter

from callisto import errors as sdk
from callisto.api.generation.v1 import generation_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.generation import GenerationClient
from callisto.services.common.validation import Violations
from callisto.services.orchestration import suggest_prompts as prompts
from callisto.services.orchestration.agents import MAX_DISPLAY_NAME, MAX_LABEL
from callisto.services.orchestration.budget import PriceTable, RunModelCaller, TokenBudget
from callisto.services.orchestration.model_json import to_struct
from callisto.services.orchestration.prompts import user
from callisto.services.orchestration.settings import OrchestrationSettings

log = logging.getLogger("callisto.orchestration.suggest")

MAX_SCENARIO = 2000
MIN_AGENTS, MAX_AGENTS, DEFAULT_AGENTS = 2, 5, 3
HUMAN_ID = "user"
SEARCH_TOOL = "search_documents"
CALCULATOR_TOOL = "calculator"
# Word stems of roles that work with figures and get the calculator too.
FIGURE_ROLES = ("financ", "cfo", "pricing", "procure", "purchas", "controller", "treasur")
# The template's seats, in order: the first `agent_count` are used; with `participate` the
# human takes the first buyer seat, and the agents the next `agent_count` (the human does not
# count as an agent, as a simulation does not count it either).
SEATS = (
    ("seller", "Account executive"),
    ("buyer", "Procurement lead"),
    ("buyer", "Engineering manager"),
    ("seller", "Solutions engineer"),
    ("buyer", "Finance director"),
    ("seller", "Customer success manager"),
)
HUMAN_SEAT = 1
PEOPLE = ("Alex Morgan", "Priya Shah", "Daniel Okafor", "Mei Lin", "Sofia Alvarez")
SELLER_COMPANY, BUYER_COMPANY = "Seller company", "Buyer company"
MAX_SCENARIO_COMPANY = 80

SUGGESTIONS = Counter(
    "callisto_orchestration_suggestions_total",
    "SuggestAgents answers by the path that produced them (model, repaired, retried, fallback).",
    ["source"],
)

# --- companies the scenario names ---------------------------------------------------------

_SELLS = re.compile(
    r"\b(?:sells?|selling|pitch(?:es|ing)?|offers?|offering|markets?|marketing|presents?|"
    r"presenting|proposes?|proposing|demos?|demoing)\b",
    re.IGNORECASE,
)
_BUYS = re.compile(
    r"\b(?:buys?|buying|purchases?|purchasing|procures?|procuring|sources?|sourcing)\b",
    re.IGNORECASE,
)
_TO = re.compile(r"\bto\b", re.IGNORECASE)
_FROM = re.compile(r"\bfrom\b", re.IGNORECASE)
_BETWEEN = re.compile(r"\bbetween\b(.+?)\band\b(.+)", re.IGNORECASE | re.DOTALL)
# A run of capitalised words (or ones starting with a digit), joined by spaces and the odd
# lower-case particle: "Marrowick Motors", "HPE", "Bank of Lisbon".
_NAME = re.compile(
    r"[A-Z0-9][\w&'.-]*(?:[ \t]+(?:(?:of|de|du|la|von|van)[ \t]+)?[A-Z0-9][\w&'.-]*)*"
)
_NOT_NAMES = frozenset(
    "a an the our we i you they their his her its this that these in on at for with to from "
    "and or but as by if when while scenario agents it hr ceo cfo cto cio coo vp".split()
)


@dataclass(frozen=True)
class Companies:
    """The companies a scenario names: who sells and who buys when it says so, and all of
    them (seller and buyer first)."""

    seller: str = ""
    buyer: str = ""
    named: tuple[str, ...] = ()

    def of_side(self, side: str) -> str:
        return self.seller if side == "seller" else self.buyer if side == "buyer" else ""

    def seat_company(self, side: str) -> str:
        """The company of a template seat on `side`."""
        if side == "seller":
            return self.seller or (self.named[0] if self.named else SELLER_COMPANY)
        return self.buyer or (self.named[1] if len(self.named) > 1 else BUYER_COMPANY)


def scenario_companies(scenario: str) -> Companies:
    """Companies by pattern: "X sells/selling/pitches … to Y", "Y buys … from X",
    "… between X and Y"; names are runs of capitalised words."""
    text = scenario[:MAX_SCENARIO]
    seller = buyer = ""
    others: list[str] = []
    sells = _SELLS.search(text)
    if sells is not None:
        to = _TO.search(text, sells.end())
        if to is not None:
            seller = _last_name(text[: sells.start()])
            buyer = _first_name(text[to.end() :])
    if not (seller and buyer):
        buys = _BUYS.search(text)
        if buys is not None:
            source = _FROM.search(text, buys.end())
            if source is not None:
                buyer = buyer or _last_name(text[: buys.start()])
                seller = seller or _first_name(text[source.end() :])
    between = _BETWEEN.search(text)
    if between is not None:
        others += [_last_name(between.group(1)), _first_name(between.group(2))]
    named = tuple(dict.fromkeys(n for n in (seller, buyer, *others) if n))
    return Companies(seller=seller, buyer=buyer, named=named)


def _names(fragment: str) -> list[str]:
    found = []
    for match in _NAME.finditer(fragment):
        words = match.group(0).rstrip(".'-").split()
        while words and words[0].lower() in _NOT_NAMES:
            words.pop(0)
        name = " ".join(words)[:MAX_SCENARIO_COMPANY].strip()
        if name and name.lower() not in _NOT_NAMES:
            found.append(name)
    return found


def _last_name(fragment: str) -> str:
    names = _names(fragment)
    return names[-1] if names else ""


def _first_name(fragment: str) -> str:
    # Up to the end of the clause: "to Marrowick Motors, whose …" names Marrowick Motors.
    clause = re.split(r"[,;:.!?()\n]", fragment, maxsplit=1)[0]
    names = _names(clause)
    return names[0] if names else ""


# --- what a suggestion is made of ----------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What was asked and what the scenario says: the seats to fill, the companies."""

    scenario: str
    # Agents asked for (the human, when taking part, comes on top).
    agents: int
    participate: bool
    companies: Companies

    @property
    def seats(self) -> list[tuple[str, str]]:
        """(side, role) of the agents' seats: the template's first ones, without the
        human's."""
        seats = list(SEATS[: self.agents + self.participate])
        if self.participate:
            del seats[HUMAN_SEAT]
        return seats

    @property
    def agent_count(self) -> int:
        return len(self.seats)

    def human(self) -> pb.HumanParticipant | None:
        if not self.participate:
            return None
        company = self.companies.seat_company("buyer")
        return pb.HumanParticipant(
            id=HUMAN_ID,
            display_name=_label(f"You ({company})", MAX_DISPLAY_NAME),
            role=SEATS[HUMAN_SEAT][1],
            company=company,
        )

    def cast(self) -> list[tuple[str, str]]:
        """(side, company) of each seat when the scenario says who sells and who buys: the
        prompt asks for that cast (the small model otherwise puts everyone on one side)."""
        if not (self.companies.seller and self.companies.buyer):
            return []
        return [(side, self.companies.of_side(side)) for side, _ in self.seats]

    def human_text(self) -> str:
        """How the prompt describes the human's part."""
        human = self.human()
        return f"the {human.role.lower()} of {human.company}" if human is not None else ""


@dataclass(frozen=True)
class Draft:
    """One agent before it is built: the model's fields (or the template's), cleaned."""

    display_name: str
    role: str
    company: str
    side: str
    body: str


class Unusable(Exception):
    """An answer nothing can be made of; the message tells the model what was wrong."""


def _label(value: Any, limit: int = MAX_LABEL) -> str:
    """One line of text: whitespace collapsed, control characters dropped, cut to `limit`."""
    text = value if isinstance(value, str) else ""
    text = "".join(c for c in " ".join(text.split()) if unicodedata.category(c) != "Cc")
    return text[:limit].strip()


def _body(value: Any) -> str:
    text = value if isinstance(value, str) else ""
    return " ".join(text.split())[: prompts.MAX_PROMPT * 2]


def template_body(side: str, company: str, companies: Companies) -> str:
    if side == "seller":
        customer = companies.buyer or "the customer"
        return (
            f"You want {customer} to choose {company}'s offer: learn what they need, answer "
            f"with facts from {company}'s documents, and work towards an agreement."
        )
    if side == "buyer":
        return (
            f"You need the right solution at a fair price for {company}: ask about fit, price, "
            "support and terms, and do not commit until they are clear."
        )
    return "You follow the negotiation from your own position and say what matters to you."


def template(plan: Plan) -> list[Draft]:
    """The role-based set: one agent per seat, companies from the scenario or placeholders."""
    drafts = []
    for index, (side, role) in enumerate(plan.seats):
        company = plan.companies.seat_company(side)
        drafts.append(
            Draft(
                display_name=PEOPLE[index],
                role=role,
                company=company,
                side=side,
                body=template_body(side, company, plan.companies),
            )
        )
    return drafts


def repair(value: Any, plan: Plan) -> tuple[list[Draft], bool]:
    """The agents of a parsed answer, and whether anything had to be mended; Unusable when
    there is nothing to mend (not an object of agents, or none with a name, role or prompt)."""
    items = value.get("agents") if isinstance(value, dict) else None
    if not isinstance(items, list):
        raise Unusable("Your answer was not an object with a list of agents.")
    usable = [
        item
        for item in items
        if isinstance(item, dict)
        and any(_label(item.get(k)) for k in ("display_name", "role", "system_prompt"))
    ]
    if not usable:
        raise Unusable("Your answer held no usable agents.")
    repaired = len(usable) != len(items) or len(usable) != plan.agent_count
    seats = template(plan)
    drafts: list[Draft] = []
    for index, seat in enumerate(seats):
        if index >= len(usable):
            drafts.append(seat)
            continue
        draft, mended = _mend(usable[index], seat, plan)
        drafts.append(draft)
        repaired = repaired or mended
    drafts, mended = _both_sides(drafts, seats, plan)
    return drafts, repaired or mended


def _mend(item: dict[str, Any], seat: Draft, plan: Plan) -> tuple[Draft, bool]:
    mended = False
    side = item.get("side")
    if side not in prompts.SIDES:
        side, mended = seat.side, True
    company, changed = _company(_label(item.get("company")), str(side), plan)
    mended = mended or changed
    # In a sale the company decides the side.
    decided = {plan.companies.seller: "seller", plan.companies.buyer: "buyer"}.get(company)
    if company and decided is not None:
        mended, side = mended or decided != side, decided
    fields = {
        "display_name": _label(item.get("display_name"), prompts.MAX_NAME),
        "role": _label(item.get("role"), prompts.MAX_ROLE),
        "body": _body(item.get("system_prompt")),
    }
    for name, text in fields.items():
        if not text:
            fields[name] = getattr(seat, name)
            mended = True
    if not company:
        company, mended = seat.company, True
    draft = Draft(company=company, side=str(side), **fields)
    return draft, mended


def _company(given: str, side: str, plan: Plan) -> tuple[str, bool]:
    """(company, whether it was replaced): a company the scenario names in the scenario's
    spelling; else, when the scenario names its parties, the one of the agent's side."""
    companies = plan.companies
    for named in companies.named:
        if given.casefold() == named.casefold():
            return named, False
    for named in companies.named:
        # "Marrowick" or "Marrowick Motors Inc." is Marrowick Motors.
        if given and (_within(given, named) or _within(named, given)):
            return named, False
    if given and len(given.split()) <= 6:
        found = re.search(rf"(?<!\w){re.escape(given)}(?!\w)", plan.scenario, re.IGNORECASE)
        if found is not None:
            return _label(found.group(0)), False
    if companies.named:
        party = companies.of_side(side)
        if party:
            return party, True
        if not given:
            return companies.seat_company(side), True
    # A party the scenario does not name (a consultant, a regulator) keeps its company.
    return given, False


def _within(part: str, whole: str) -> bool:
    """Whether `part` is a run of whole words of `whole`, case-insensitively."""
    return re.search(rf"(?<!\w){re.escape(part)}(?!\w)", whole, re.IGNORECASE) is not None


def _both_sides(
    drafts: list[Draft], seats: Sequence[Draft], plan: Plan
) -> tuple[list[Draft], bool]:
    """A sale needs someone on each side (the human is the buyer when taking part): the first
    seat of a missing side gets the template's agent."""
    companies = plan.companies
    if not (companies.seller and companies.buyer):
        return drafts, False
    needed = {"seller"} if plan.participate else {"seller", "buyer"}
    mended = False
    # Twice: moving an agent to the missing side may empty the side it came from.
    for side in [*sorted(needed)] * 2:
        if any(d.side == side for d in drafts):
            continue
        for index, seat in enumerate(seats):
            if seat.side == side and drafts[index].side != seat.side:
                # Another person, on the other side: the seat's own.
                drafts[index] = seat
                mended = True
                break
    return drafts, mended


# --- building the agents --------------------------------------------------------------------


def system_prompt(draft: Draft, scenario: str) -> str:
    """The agent's system prompt: who it is, the scenario, its own instructions."""
    return (
        f"You are {draft.display_name}, {draft.role} at {draft.company}.\n"
        f"Scenario: {scenario}\n"
        f"{draft.body}\n"
        f"Speak only as {draft.display_name}, for {draft.company}, in one to three sentences "
        "per turn."
    )


def tools_for(role: str, known: Collection[str]) -> list[str]:
    """Tools by role: `search_documents` for everyone (it searches only the agent's own
    company's documents), `calculator` too for roles that work with figures."""
    tools = [SEARCH_TOOL]
    words = re.findall(r"\w+", role.casefold())
    if any(word.startswith(stem) for word in words for stem in FIGURE_ROLES):
        tools.append(CALCULATOR_TOOL)
    return [tool for tool in tools if tool in known]


def unique_names(drafts: Sequence[Draft], taken: Collection[str] = ()) -> list[Draft]:
    """The drafts with display names made unique (case-insensitively, also against `taken`):
    a repeated name (the small model tends to give everyone the same one) becomes the
    template's name of that seat, else another template name, else gets its company."""
    seen = {name.casefold() for name in taken}
    result = []
    for index, draft in enumerate(drafts):
        name = draft.display_name
        people = [*PEOPLE[index:], *PEOPLE[:index]]
        candidates = [name, *people, _label(f"{name} ({draft.company})", MAX_DISPLAY_NAME)]
        candidates += [_label(f"{name} {n}", MAX_DISPLAY_NAME) for n in range(2, 2 + len(drafts))]
        chosen = next(c for c in candidates if c.casefold() not in seen)
        seen.add(chosen.casefold())
        result.append(replace(draft, display_name=chosen))
    return result


def build_agents(
    drafts: Sequence[Draft], plan: Plan, *, model: str, known_tools: Collection[str]
) -> list[pb.Agent]:
    human = plan.human()
    named = unique_names(drafts, [human.display_name] if human is not None else [])
    return [
        pb.Agent(
            display_name=draft.display_name,
            role=draft.role,
            company=draft.company,
            system_prompt=system_prompt(draft, plan.scenario),
            tools=tools_for(draft.role, known_tools),
            model=model,
        )
        for draft in named
    ]


# --- the RPC ----------------------------------------------------------------------------------

AgentCheck = Callable[[Violations, pb.Agent, str], None]


def check_request(request: pb.SuggestAgentsRequest) -> Plan:
    """The plan of a valid request; INVALID_ARGUMENT with every bad field otherwise."""
    v = Violations()
    scenario = request.scenario
    if not scenario.strip():
        v.add("scenario", "is required")
    elif len(scenario) > MAX_SCENARIO:
        v.add("scenario", f"must be at most {MAX_SCENARIO} characters")
    elif any(unicodedata.category(c) == "Cc" and c not in "\n\r\t" for c in scenario):
        v.add("scenario", "must not contain control characters")
    count = request.agent_count or DEFAULT_AGENTS
    if not MIN_AGENTS <= count <= MAX_AGENTS:
        v.add("agent_count", f"must be {MIN_AGENTS}-{MAX_AGENTS}, or 0 for {DEFAULT_AGENTS}")
    v.raise_if_any()
    scenario = scenario.strip()
    return Plan(
        scenario=scenario,
        agents=count,
        participate=request.participate,
        companies=scenario_companies(scenario),
    )


@dataclass(frozen=True)
class _Attempt:
    """The result of one model call: agents, or what the next attempt is told."""

    agents: list[pb.Agent] | None
    repaired: bool = False
    feedback: str = ""
    final: bool = False


class AgentSuggester:
    """Makes the suggestions of SuggestAgents for the tenant of the current call."""

    def __init__(
        self,
        settings: OrchestrationSettings,
        generation: GenerationClient,
        check: AgentCheck,
        known_tools: Callable[[], Collection[str]],
    ) -> None:
        self.settings = settings
        self._generation = generation
        self._check = check
        self._known_tools = known_tools
        self._prices = PriceTable.parse(settings.model_prices)

    async def suggest(
        self,
        request: pb.SuggestAgentsRequest,
        *,
        tenant: str,
        model_extras: str = "",
        within_s: float | None = None,
    ) -> pb.SuggestAgentsResponse:
        """Agents for the request's scenario; model attempts stop after `within_s` seconds
        (the settings' bound when None) and the template answers instead."""
        plan = check_request(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.settings.suggest_timeout_s if within_s is None else within_s)
        caller = RunModelCaller(
            self._generation,
            self._prices,
            TokenBudget(0),
            tenant=tenant,
            agent="suggest",
            model_extras=model_extras,
        )
        base = prompts.messages(plan.scenario, plan.agent_count, plan.human_text(), plan.cast())
        attempts, feedback = 0, ""
        for attempt in range(1 + max(0, self.settings.suggest_retries)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            attempts += 1
            messages = list(base)
            if feedback:
                messages.append(user(prompts.retry_text(feedback, plan.agent_count)))
            try:
                async with asyncio.timeout(remaining):
                    outcome = await self._attempt(caller, plan, messages, seed=attempt)
            except TimeoutError:
                # Cancelled inside Triton; the caller gets the template while it still waits.
                log.warning("agent suggestion ran out of time after %d model calls", attempts)
                break
            if outcome.agents is not None:
                source = "retried" if attempt else "repaired" if outcome.repaired else "model"
                return self._answer(outcome.agents, plan, source, attempts)
            feedback = outcome.feedback
            if outcome.final:
                break
        agents = build_agents(
            template(plan), plan, model=self._model, known_tools=self._known_tools()
        )
        self._require_valid(agents)
        return self._answer(agents, plan, "fallback", attempts)

    @property
    def _model(self) -> str:
        return self.settings.default_model

    async def _attempt(
        self,
        caller: RunModelCaller,
        plan: Plan,
        messages: list[generation_pb2.ChatMessage],
        *,
        seed: int,
    ) -> _Attempt:
        request = generation_pb2.GenerateRequest(
            model=self._model,
            messages=messages,
            parameters=generation_pb2.SamplingParameters(
                max_tokens=self.settings.suggest_max_tokens,
                temperature=self.settings.suggest_temperature,
                seed=seed,
            ),
            response_format=generation_pb2.ResponseFormat(
                json_schema=to_struct(prompts.schema(plan.agent_count)), name="agents"
            ),
        )
        try:
            result = await caller.generate(request)
        except (
            sdk.InvalidArgument,
            sdk.NotFound,
            sdk.PermissionDenied,
            sdk.DeadlineExceeded,
        ) as error:
            # Another attempt would be refused the same way, or would not finish in time.
            log.warning("agent suggestion cannot use the model: %s", error)
            return _Attempt(None, final=True)
        except sdk.FailedPrecondition as error:
            log.info("agent suggestion attempt failed: %s", error)
            if error.reason == "OUTPUT_TRUNCATED":
                return _Attempt(None, feedback="Your answer was cut off before it ended.")
            return _Attempt(None)
        except sdk.CallistoError as error:
            log.info("agent suggestion attempt failed: %s", error)
            if error.reason == "MODEL_OUTPUT_INVALID":
                return _Attempt(None, feedback="Your answer was not valid JSON of the schema.")
            return _Attempt(None)
        value = json_format.MessageToDict(result.parsed) if result.HasField("parsed") else None
        try:
            drafts, repaired = repair(value, plan)
        except Unusable as error:
            log.info("agent suggestion answer unusable: %s", error)
            return _Attempt(None, feedback=str(error))
        agents = build_agents(drafts, plan, model=self._model, known_tools=self._known_tools())
        problems = self._problems(agents)
        if problems:
            log.warning("suggested agents fail validation: %s", problems)
            return _Attempt(None, feedback="Your answer's agents were not usable.")
        return _Attempt(agents, repaired=repaired)

    def _problems(self, agents: Sequence[pb.Agent]) -> str:
        found = []
        for index, agent in enumerate(agents):
            v = Violations()
            self._check(v, agent, f"agents[{index}]")
            if v:
                found.append(str(index))
        return ", ".join(found)

    def _require_valid(self, agents: Sequence[pb.Agent]) -> None:
        problems = self._problems(agents)
        if problems:
            raise RuntimeError(f"template agents {problems} fail CreateAgent's checks")

    def _answer(
        self, agents: list[pb.Agent], plan: Plan, source: str, attempts: int
    ) -> pb.SuggestAgentsResponse:
        SUGGESTIONS.labels(source).inc()
        response = pb.SuggestAgentsResponse(agents=agents, source=source, attempts=attempts)
        human = plan.human()
        if human is not None:
            response.human.CopyFrom(human)
        return response
