"""The code half of SuggestAgents, on answers as the model could give them: the companies a
scenario names, repairs of incomplete answers, answers nothing can be made of, unique names,
tools by role, system prompts, the role-based template. Pure functions, no servers (the RPC
itself is tested in test_suggest_agents.py)."""

from __future__ import annotations

from typing import Any

import pytest

from callisto.api.orchestration.v1 import orchestration_pb2 as pb
from callisto.services.orchestration import suggest
from callisto.services.orchestration.suggest import Companies, Draft, Unusable

SALE = "Tessaline Systems sells edge servers to Marrowick Motors"
KNOWN_TOOLS = ("calculator", "search_documents")


def plan(scenario: str = SALE, count: int = 3, participate: bool = False) -> suggest.Plan:
    return suggest.check_request(
        pb.SuggestAgentsRequest(scenario=scenario, agent_count=count, participate=participate)
    )


def agent(**fields: Any) -> dict[str, Any]:
    base = {
        "display_name": "Ada Quinn",
        "role": "Account executive",
        "company": "Tessaline Systems",
        "side": "seller",
        "system_prompt": "You want Marrowick to buy the servers.",
    }
    base.update(fields)
    return base


def complete() -> dict[str, Any]:
    return {
        "agents": [
            agent(),
            agent(
                display_name="Bo Lind",
                role="Procurement lead",
                company="Marrowick Motors",
                side="buyer",
                system_prompt="You want a fair price.",
            ),
            agent(display_name="Cy Oduya", role="Solutions engineer"),
        ]
    }


@pytest.mark.parametrize(
    ("scenario", "seller", "buyer"),
    [
        (SALE, "Tessaline Systems", "Marrowick Motors"),
        ("HPE selling servers to Toyota", "HPE", "Toyota"),
        (
            "A rep of Tessaline Systems pitches servers to the IT team of Marrowick Motors, "
            "who want a pilot first",
            "Tessaline Systems",
            "Marrowick Motors",
        ),
        (
            "Marrowick Motors buys edge servers from Tessaline Systems",
            "Tessaline Systems",
            "Marrowick Motors",
        ),
        ("a job interview for a data engineer", "", ""),
    ],
)
def test_scenario_companies_come_from_sale_patterns(scenario: str, seller: str, buyer: str) -> None:
    found = suggest.scenario_companies(scenario)
    assert (found.seller, found.buyer) == (seller, buyer)


def test_a_negotiation_between_two_companies_names_both_without_sides() -> None:
    found = suggest.scenario_companies(
        "A merger negotiation between Orbis Bank and Kestrel Insurance"
    )
    assert found == Companies(named=("Orbis Bank", "Kestrel Insurance"))


def test_a_complete_answer_needs_no_repair() -> None:
    drafts, repaired = suggest.repair(complete(), plan())
    assert not repaired
    assert [d.display_name for d in drafts] == ["Ada Quinn", "Bo Lind", "Cy Oduya"]
    assert [d.side for d in drafts] == ["seller", "buyer", "seller"]


def test_company_spelling_is_normalised_to_the_scenarios_without_counting_as_repair() -> None:
    answer = complete()
    answer["agents"][0]["company"] = "TESSALINE systems"
    answer["agents"][1]["company"] = "marrowick motors"
    drafts, repaired = suggest.repair(answer, plan())
    assert not repaired
    assert [d.company for d in drafts[:2]] == ["Tessaline Systems", "Marrowick Motors"]


@pytest.mark.parametrize("field", ["display_name", "role", "company", "system_prompt", "side"])
def test_a_missing_field_is_filled_from_the_template(field: str) -> None:
    answer = complete()
    del answer["agents"][1][field]
    drafts, repaired = suggest.repair(answer, plan())
    assert repaired
    seat = suggest.template(plan())[1]
    expected = seat.body if field == "system_prompt" else getattr(seat, field)
    got = drafts[1].body if field == "system_prompt" else getattr(drafts[1], field)
    assert got == expected


def test_a_blank_prompt_is_repaired() -> None:
    answer = complete()
    answer["agents"][0]["system_prompt"] = "   \n "
    drafts, repaired = suggest.repair(answer, plan())
    assert repaired
    assert drafts[0].body == suggest.template(plan())[0].body


def test_an_unknown_side_is_repaired_from_the_company() -> None:
    answer = complete()
    answer["agents"][1]["side"] = "customer"
    drafts, repaired = suggest.repair(answer, plan())
    assert repaired
    assert drafts[1].side == "buyer"


def test_too_few_agents_are_topped_up_and_too_many_cut() -> None:
    answer = complete()
    short = {"agents": answer["agents"][:2]}
    drafts, repaired = suggest.repair(short, plan(count=4))
    assert repaired
    assert len(drafts) == 4
    assert drafts[3] == suggest.template(plan(count=4))[3]
    drafts, repaired = suggest.repair(answer, plan(count=2))
    assert repaired
    assert [d.display_name for d in drafts] == ["Ada Quinn", "Bo Lind"]


def test_a_company_the_scenario_does_not_name_becomes_its_sides_party() -> None:
    answer = complete()
    answer["agents"][1]["company"] = "Acme Procurement Ltd"
    drafts, repaired = suggest.repair(answer, plan())
    assert repaired
    assert drafts[1].company == "Marrowick Motors"


def test_a_sale_with_nobody_buying_gets_a_buyer() -> None:
    answer = complete()
    for item in answer["agents"]:
        item.update(company="Tessaline Systems", side="seller")
    drafts, repaired = suggest.repair(answer, plan())
    assert repaired
    assert {d.side for d in drafts} == {"seller", "buyer"}
    assert [d.company for d in drafts if d.side == "buyer"] == ["Marrowick Motors"]


def test_with_the_human_buying_all_agents_may_sell() -> None:
    asked = plan(count=3, participate=True)
    answer = {
        "agents": [
            agent(),
            agent(display_name="Cy Oduya", role="Solutions engineer"),
            agent(display_name="Di Park", role="Customer success manager"),
        ]
    }
    drafts, repaired = suggest.repair(answer, asked)
    assert not repaired
    assert [d.side for d in drafts] == ["seller", "seller", "seller"]


@pytest.mark.parametrize(
    "answer",
    [
        None,
        [],
        "agents",
        {"agents": "two"},
        {"agents": []},
        {"agents": [1, "x", None]},
        {"agents": [{"company": "Tessaline Systems", "side": "seller"}]},
        {"agents": [{"display_name": " ", "role": "\n", "system_prompt": ""}]},
    ],
)
def test_an_answer_without_usable_agents_cannot_be_repaired(answer: Any) -> None:
    with pytest.raises(Unusable):
        suggest.repair(answer, plan())


def test_labels_lose_control_characters_and_are_cut() -> None:
    answer = complete()
    answer["agents"][0]["display_name"] = "Ada\x00 \t Quinn\n" + "x" * 300
    drafts, _ = suggest.repair(answer, plan())
    assert drafts[0].display_name.startswith("Ada Quinn x")
    assert len(drafts[0].display_name) <= suggest.prompts.MAX_NAME


def test_repeated_display_names_become_template_names_unique_also_against_the_human() -> None:
    drafts = [
        Draft("Ada Quinn", "Account executive", "Tessaline Systems", "seller", "b"),
        Draft("ada quinn", "Procurement lead", "Marrowick Motors", "buyer", "b"),
        Draft("Priya Shah", "Solutions engineer", "Tessaline Systems", "seller", "b"),
        Draft("You (Marrowick Motors)", "Engineer", "Marrowick Motors", "buyer", "b"),
    ]
    named = suggest.unique_names(drafts, ["You (Marrowick Motors)"])
    # Names are chosen in order: the second takes its seat's template name, so the third,
    # now repeating it, takes the next one free.
    names = [d.display_name for d in named]
    assert names == ["Ada Quinn", "Priya Shah", "Daniel Okafor", "Mei Lin"]


def test_a_name_repeated_past_every_template_name_gets_its_company() -> None:
    drafts = [Draft(name, "r", "Acme", "seller", "b") for name in suggest.PEOPLE]
    drafts.append(Draft("Alex Morgan", "r", "Acme", "seller", "b"))
    names = [d.display_name for d in suggest.unique_names(drafts)]
    assert names == [*suggest.PEOPLE, "Alex Morgan (Acme)"]


def test_tools_follow_the_role() -> None:
    assert suggest.tools_for("Account executive", KNOWN_TOOLS) == ["search_documents"]
    assert suggest.tools_for("Head of Procurement", KNOWN_TOOLS) == [
        "search_documents",
        "calculator",
    ]
    assert suggest.tools_for("Chief Financial Officer", KNOWN_TOOLS) == [
        "search_documents",
        "calculator",
    ]
    assert suggest.tools_for("Finance director", ["search_documents"]) == ["search_documents"]


def test_the_system_prompt_names_agent_role_company_and_scenario() -> None:
    draft = Draft("Ada Quinn", "Account executive", "Tessaline Systems", "seller", "Sell well.")
    prompt = suggest.system_prompt(draft, SALE)
    for part in ("Ada Quinn", "Account executive", "Tessaline Systems", SALE, "Sell well."):
        assert part in prompt


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_the_template_fills_every_seat_with_the_scenarios_companies(count: int) -> None:
    drafts = suggest.template(plan(count=count))
    assert len(drafts) == count
    assert {d.company for d in drafts} == {"Tessaline Systems", "Marrowick Motors"}
    assert len({d.display_name for d in drafts}) == count


def test_the_template_without_named_companies_uses_placeholders() -> None:
    drafts = suggest.template(plan("a job interview for a data engineer", 2))
    assert [d.company for d in drafts] == ["Seller company", "Buyer company"]


@pytest.mark.parametrize("count", [2, 3, 4, 5])
def test_taking_part_adds_the_human_as_buyer_and_keeps_the_agent_count(count: int) -> None:
    asked = plan(count=count, participate=True)
    assert asked.agent_count == count
    assert len(suggest.template(asked)) == count
    assert "Procurement lead" not in [role for _, role in asked.seats]


def test_taking_part_the_human_is_the_buyer_in_the_first_buyer_seat() -> None:
    asked = plan(count=3, participate=True)
    human = asked.human()
    assert human is not None
    assert (human.id, human.display_name, human.company) == (
        "user",
        "You (Marrowick Motors)",
        "Marrowick Motors",
    )
    assert [role for _, role in asked.seats] == [
        "Account executive",
        "Engineering manager",
        "Solutions engineer",
    ]


@pytest.mark.parametrize("given", ["Marrowick", "marrowick motors inc.", "Marrowick Motors GmbH"])
def test_a_company_holding_or_held_in_a_named_one_is_that_one(given: str) -> None:
    answer = complete()
    answer["agents"][1]["company"] = given
    drafts, repaired = suggest.repair(answer, plan())
    assert not repaired
    assert drafts[1].company == "Marrowick Motors"


def test_moving_an_agent_to_the_missing_side_keeps_the_other_side_filled() -> None:
    answer = {
        "agents": [
            agent(company="Marrowick Motors", side="buyer"),
            agent(display_name="Bo Lind", company="Brightline Advisory", side="other"),
        ]
    }
    drafts, repaired = suggest.repair(answer, plan(count=2))
    assert repaired
    assert [d.side for d in drafts] == ["seller", "buyer"]
    assert [d.company for d in drafts] == ["Tessaline Systems", "Marrowick Motors"]
    # Filling the seller's seat emptied the buyer's side: both seats are the template's.
    assert [d.display_name for d in drafts] == ["Alex Morgan", "Priya Shah"]
