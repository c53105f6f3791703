"""The termination rules of a simulation, each alone and combined (the first listed reason wins),
keyword matching (whole words and phrases, any case), the simulation's checkpoint state
surviving its trip through a protobuf Struct, the speaking order, and an agent turn's prompt,
stop strings and heading filter."""

from __future__ import annotations

from google.protobuf import struct_pb2

from callisto.api.common.v1 import common_pb2
from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.orchestration.run_state import RunState
from callisto.services.orchestration.simulation_state import (
    Human,
    Limits,
    Simulation,
    Speaker,
    slug,
)
from callisto.services.orchestration.simulation_turns import (
    AgentTurnInput,
    Line,
    SpeakerHeading,
    messages,
    stops,
)
from callisto.services.orchestration.termination import (
    MaxTurns,
    Progress,
    SentimentBounds,
    StopKeywords,
    TokenLimit,
    WallTimeout,
    keyword_hits,
    policy,
)


def test_stop_keywords_end_a_turn_that_hits_one() -> None:
    rule = StopKeywords(("deal",))
    assert rule.check(Progress(keyword_hits=["deal"])) == "keyword"
    assert rule.check(Progress()) is None
    assert StopKeywords(()).check(Progress(keyword_hits=["deal"])) is None


def test_keywords_match_whole_words_and_phrases_in_any_case() -> None:
    keywords = ["deal", "signed contract", "50%"]
    assert keyword_hits("We have a DEAL, then.", keywords) == ["deal"]
    assert keyword_hits("an ideal dealer", keywords) == []
    assert keyword_hits("the Signed\n contract is here", keywords) == ["signed contract"]
    assert keyword_hits("a 50% discount and a deal", keywords) == ["deal", "50%"]
    assert keyword_hits("anything", ["  "]) == []


def test_sentiment_bounds_end_below_the_minimum_or_at_the_maximum() -> None:
    rule = SentimentBounds(-0.5, 0.9)
    assert rule.check(Progress(sentiment=-0.51)) == "sentiment"
    assert rule.check(Progress(sentiment=-0.5)) is None
    assert rule.check(Progress(sentiment=0.9)) == "sentiment"
    assert rule.check(Progress(sentiment=0.89)) is None
    assert rule.check(Progress(sentiment=None)) is None
    assert SentimentBounds().check(Progress(sentiment=-1.0)) is None


def test_max_turns_counts_agent_turns() -> None:
    assert MaxTurns(3).check(Progress(agent_turns=2)) is None
    assert MaxTurns(3).check(Progress(agent_turns=3)) == "max_turns"


def test_the_wall_timeout_and_the_token_limit() -> None:
    assert WallTimeout(2.0).check(Progress(elapsed_s=2.0)) == "timeout"
    assert WallTimeout(2.0).check(Progress(elapsed_s=1.9)) is None
    assert WallTimeout(None).check(Progress(elapsed_s=1e9)) is None
    assert TokenLimit(100).check(Progress(tokens=100)) == "budget"
    assert TokenLimit(100).check(Progress(tokens=99)) is None
    assert TokenLimit(0).check(Progress(tokens=10**9)) is None


def test_the_policy_checks_keyword_sentiment_turns_timeout_budget_in_that_order() -> None:
    rules = policy(
        max_turns=2,
        stop_keywords=["deal"],
        min_sentiment=-0.5,
        max_sentiment=None,
        timeout_s=10.0,
        max_total_tokens=50,
    )
    everything = Progress(
        keyword_hits=["deal"], sentiment=-0.9, agent_turns=2, elapsed_s=11.0, tokens=60
    )
    assert rules.check(everything) == "keyword"
    assert rules.check(Progress(sentiment=-0.9, agent_turns=2, elapsed_s=11, tokens=60)) == (
        "sentiment"
    )
    assert rules.check(Progress(agent_turns=2, elapsed_s=11, tokens=60)) == "max_turns"
    assert rules.check(Progress(elapsed_s=11, tokens=60)) == "timeout"
    assert rules.check(Progress(tokens=60)) == "budget"
    assert rules.check(Progress()) is None


def test_a_simulation_state_survives_the_checkpoint_struct() -> None:
    simulation = Simulation(
        scenario="sell servers",
        agents=[
            Speaker("tessa", "agents/tessa@r1", pb.Agent(display_name="Tessa", tools=["x"])),
            Speaker("ivy", "", pb.Agent(display_name="Ivy", company="Marrowick")),
        ],
        human=Human("user", "Pat", "buyer", "Marrowick"),
        limits=Limits(max_turns=6, stop_keywords=["deal"], min_sentiment=-0.25, timeout_s=30.0),
        model_selects=True,
        human_timeout_s=5.0,
        end_on_human_timeout=True,
        max_turn_tokens=32,
        started_at=1_700_000_000.5,
        agent_turns=3,
        next_agent=1,
        since_human=2,
        awaiting_turn=4,
        awaiting_deadline=1_700_000_010.25,
        awaiting_event=17,
        end_requested=True,
    )
    state = RunState(
        run_id="r",
        tenant="t",
        conversation="conversations/c",
        mode=pb.CONVERSATION_MODE_SIMULATION,
        agent="",
        speaker="",
        human="user",
        max_iterations=0,
        max_total_tokens=0,
        simulation=simulation.to_json(),
    )
    carried = struct_pb2.Struct()
    carried.ParseFromString(state.to_struct().SerializeToString())
    again = Simulation.from_json(RunState.from_struct(carried).simulation)
    assert again == simulation
    assert again.limits.max_sentiment is None


def test_the_human_speaks_after_every_round_of_agents() -> None:
    simulation = Simulation(
        scenario="s",
        agents=[Speaker("a", "", pb.Agent()), Speaker("b", "", pb.Agent())],
        human=Human("user"),
        limits=Limits(),
    )
    order = []
    for _ in range(6):
        speaker = simulation.next_speaker()
        order.append(speaker)
        simulation.advance_after(speaker)
    assert order == ["a", "b", "user", "a", "b", "user"]
    assert simulation.agent_turns == 4


def test_participant_ids_of_inline_agents_are_unique_slugs() -> None:
    taken = {"tessa"}
    assert slug("Tessa", taken) == "tessa-2"
    assert slug("Tessa", taken) == "tessa-3"
    assert slug("Émile Dubois!", taken) == "emile-dubois"
    assert slug("???", taken) == "agent"


def _heading(names: list[str], pieces: list[str]) -> str:
    heading = SpeakerHeading(names)
    return "".join(heading.feed(piece) for piece in pieces) + heading.finish()


def test_a_speakers_heading_is_dropped_from_the_start_of_a_line_only() -> None:
    names = ["Tessa", "Marco"]
    assert _heading(names, ["Tes", "sa: (smiling) Ah, hi"]) == "(smiling) Ah, hi"
    assert _heading(names, ["Marco (Marrowick):", " Hi"]) == "Hi"
    assert _heading(names, ["Tessaline ", "Systems rocks"]) == "Tessaline Systems rocks"
    assert _heading(names, ["Tessa and I agree: yes"]) == "Tessa and I agree: yes"
    assert _heading(names, ["Hello", " Tessa: there"]) == "Hello Tessa: there"
    assert _heading(names, ["Tessa"]) == "Tessa"


def _turn(history: list[Line], speaker: int = 1) -> AgentTurnInput:
    simulation = Simulation(
        scenario="Tessaline sells servers to Marrowick",
        agents=[
            Speaker("tessa", "", pb.Agent(display_name="Tessa", company="Tessaline")),
            Speaker("marco", "", pb.Agent(display_name="Marco", company="Marrowick")),
        ],
        human=Human("pat", "Pat"),
        limits=Limits(),
    )
    return AgentTurnInput(
        tenant="t",
        conversation="conversations/c",
        simulation=simulation,
        speaker=simulation.agents[speaker],
        turn=len(history) + 1,
        history=history,
        history_turns=2,
        turn_chars=20,
        sources=3,
        max_tokens=32,
        temperature=0.7,
    )


def test_an_agent_turns_prompt_ends_with_a_user_message_of_the_latest_turns() -> None:
    history = [
        Line("tessa", "first line"),
        Line("marco", "my own earlier line"),
        Line("tessa", "a very long line that goes on and on"),
    ]
    chat = messages(_turn(history), [])
    assert chat[0].role == common_pb2.ROLE_SYSTEM and "You are Marco" in chat[0].content
    assert [(m.role, m.content) for m in chat[1:]] == [
        (common_pb2.ROLE_ASSISTANT, "my own earlier line"),
        (common_pb2.ROLE_USER, "Tessa (Tessaline): a very long line"),
    ]
    opening = messages(_turn([], speaker=0), [])
    assert opening[-1].role == common_pb2.ROLE_USER
    assert "Marrowick" in opening[-1].content
    # A line ends at a blank line or where another speaker's (or a second own) line would begin.
    assert stops(_turn(history)) == ["\n\n", "\nTessa:", "\nPat:", "\nMarco:"]
