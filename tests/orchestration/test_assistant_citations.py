"""The assistant loop's pure parts, without a mesh: the streaming marker filter (whatever the
token boundaries), numbering and de-duplicating sources, the relevance rule, and the schemas
of the structured steps as the generation service's own validator judges them."""

from __future__ import annotations

import pytest

from callisto.api.common.v1 import common_pb2
from callisto.services.common.validation import Violations
from callisto.services.generation.structured import check_schema
from callisto.services.orchestration import prompts
from callisto.services.orchestration.assistant import Heading
from callisto.services.orchestration.citations import MarkerFilter, number, strip_markers, unique
from callisto.services.orchestration.relevance import covers, relevant
from callisto.services.orchestration.settings import OrchestrationSettings
from callisto.services.orchestration.tools.builtin import build_registry

ANSWER = "Cold chain [1] is covered [9], by Wiktor [2, 7]. See [x] and arr[3; [0]. Done [1][2] [3"
FILTERED = "Cold chain [1] is covered, by Wiktor [2]. See [x] and arr[3;. Done [1][2]"


def stream(text: str, cuts: list[int], valid: set[int]) -> tuple[list[str], list[int]]:
    markers = MarkerFilter(valid)
    pieces, cited = [], []
    for start, end in zip([0, *cuts], [*cuts, len(text)], strict=True):
        shown, new = markers.feed(text[start:end])
        pieces.append(shown)
        cited += new
    shown, new = markers.finish()
    return [*pieces, shown], cited + new


def test_markers_naming_no_source_are_dropped_with_the_space_before_them() -> None:
    assert strip_markers(ANSWER, {1, 2, 3}) == (FILTERED, [1, 2])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 8])
def test_the_stream_shows_the_same_text_whatever_the_token_boundaries(size: int) -> None:
    pieces, cited = stream(ANSWER, list(range(size, len(ANSWER), size)), {1, 2, 3})
    assert "".join(pieces) == FILTERED
    assert cited == [1, 2]


def test_text_from_a_bracket_is_held_back_until_the_marker_resolves() -> None:
    markers = MarkerFilter({1})
    assert markers.feed("The fee ") == ("The fee", [])
    assert markers.feed("[") == ("", [])
    assert markers.feed("1") == ("", [])
    assert markers.feed("] applies") == (" [1] applies", [1])
    assert markers.feed(" [4") == ("", [])
    assert markers.feed("2].") == (".", [])
    # A bracket that cannot become a marker is let through at once.
    assert markers.feed(" [see") == (" [see", [])
    assert markers.finish() == ("", [])


def test_a_marker_cut_off_by_the_end_of_the_answer_is_dropped() -> None:
    markers = MarkerFilter({1})
    assert markers.feed("up to [1") == ("up to", [])
    assert markers.finish() == ("", [])
    markers = MarkerFilter({1})
    assert markers.feed("see [x") == ("see [x", [])
    assert markers.finish() == ("", [])


def citation(document: str, text: str, title: str = "") -> common_pb2.Citation:
    return common_pb2.Citation(document_id=document, title=title or document, text=text)


def test_sources_are_numbered_once_each_in_the_order_found() -> None:
    a, b = citation("a", "alpha"), citation("b", "beta")
    numbered = number(unique([a, b, a, citation("a", "alpha")]))
    assert [(c.document_id, c.marker) for c in numbered] == [("a", 1), ("b", 2)]
    assert a.marker == 0  # the retrieved passages themselves are left as they were


def test_a_passage_is_relevant_when_it_shares_a_distinctive_term_with_the_question() -> None:
    cold = citation("s19", "Monitoring shipments; speakers: Wiktor", "Cold-Chain Visibility")
    speaker = citation("p9", "He speaks on cold-chain visibility", "Wiktor Zabłocki")
    other = citation("s6", "Indexing sessions for search", "Multi-Faceted Search")
    question = "Which sessions talk about cold-chain monitoring, and who speaks?"
    # Most matching first; the passage that matches only "sessions" is left out.
    assert [c.document_id for c in relevant(question, [other, speaker, cold])] == ["s19", "p9"]
    assert relevant("How tall is the Eiffel Tower?", [cold, speaker, other]) == []
    assert relevant("What is it about?", [cold]) == []  # no distinctive term at all


def test_a_term_every_passage_has_does_not_make_them_relevant() -> None:
    passages = [citation(f"s{i}", f"A session on topic {i}") for i in range(3)]
    assert relevant("Is there a session on knitting?", passages) == []
    # Unless it is all the question asks about.
    assert len(relevant("Which sessions are there?", passages)) == 3


def test_coverage_asks_for_every_distinctive_term() -> None:
    cold = citation("s19", "Cold-chain monitoring of shipments; speakers: Wiktor")
    assert covers("Who speaks on cold-chain monitoring?", [cold])
    assert not covers("Who speaks on cold-chain monitoring over lunch?", [cold])


def test_the_step_schemas_are_ones_the_model_server_enforces() -> None:
    specs = build_registry(OrchestrationSettings()).specs()
    schemas = {
        "route": prompts.route_schema(specs, max_calls=3),
        "reflect": prompts.REFLECT_SCHEMA,
        "plan": prompts.plan_schema(specs, min_calls=1, max_calls=3),
    }
    for name, schema in schemas.items():
        violations = Violations()
        check_schema(schema, name, violations)
        violations.raise_if_any()  # InvalidArgument names each violation


def test_planned_arguments_keep_only_what_the_grammar_enforces() -> None:
    calculator = build_registry(OrchestrationSettings()).get("calculator")
    expression = prompts.argument_schema(calculator.parameters)["properties"]["expression"]
    # The pattern is left to the registry's validation after generation (hence repairs).
    assert expression == {"type": "string", "minLength": 1, "maxLength": 120}


def heading_dropped(chunks: list[str]) -> str:
    heading = Heading("[1] Cold-Chain Visibility")
    return "".join(heading.feed(chunk) for chunk in chunks) + heading.finish()


def test_a_sentence_opening_with_its_sources_heading_streams_without_it() -> None:
    copied = ["[1] Cold", "-Chain Visibility (sess", "ion): The talk", " covers loggers."]
    assert heading_dropped(copied) == "The talk covers loggers."
    assert heading_dropped(["The talk [1]", " covers loggers."]) == "The talk [1] covers loggers."
    assert heading_dropped(["[2] Other"]) == "[2] Other"
    # A heading cut short by the end of the answer was all the model said: it is kept.
    assert heading_dropped(["[1] Cold"]) == "[1] Cold"
