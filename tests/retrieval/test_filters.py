from __future__ import annotations

import pytest

from callisto.services.retrieval.errors import InvalidArgument, InvalidFilter
from callisto.services.retrieval.filters import (
    ENTITY_FIELDS,
    Condition,
    build_expression,
    escape_string,
    validate_id,
)


def test_strings_are_escaped_inside_double_quotes() -> None:
    assert escape_string('a"b\\c\nd\te\r') == '"a\\"b\\\\c\\nd\\te\\r"'


def test_other_control_characters_are_rejected() -> None:
    with pytest.raises(InvalidFilter):
        escape_string("a\x00b")


def test_expression_always_starts_with_tenant() -> None:
    expr = build_expression(
        "acme",
        [
            Condition("tags", "contains_any", ["a", "b"]),
            Condition("attributes.year", "ge", 2024),
            Condition("attributes.draft", "eq", False),
            Condition("page", "in", [1, 2]),
        ],
    )
    assert expr == (
        'tenant == "acme" and (array_contains_any(tags, ["a", "b"])) and '
        '(attributes["year"] >= 2024) and (attributes["draft"] == false) and (page in [1, 2])'
    )


def test_unknown_field_is_rejected() -> None:
    with pytest.raises(InvalidFilter) as info:
        build_expression("acme", [Condition("tenant", "eq", "other")])
    assert info.value.field == "tenant"
    with pytest.raises(InvalidFilter):
        build_expression("acme", [Condition("entity_type", "eq", "x")])
    build_expression("acme", [Condition("entity_type", "eq", "x")], ENTITY_FIELDS)


@pytest.mark.parametrize(
    "condition",
    [
        Condition("page", "eq", "1"),
        Condition("page", "eq", True),
        Condition("title", "eq", 3),
        Condition("tags", "eq", "x"),
        Condition("tags", "contains_any", "x"),
        Condition("attributes.a b", "eq", 1),
        Condition("attributes.x", "gt", float("nan")),
        Condition("title", "contains", "x"),
    ],
)
def test_mistyped_values_and_operators_are_rejected(condition: Condition) -> None:
    with pytest.raises(InvalidFilter):
        build_expression("acme", [condition])


@pytest.mark.parametrize("bad", ['a" or tenant == "other', "", "-x", "a b", "x" * 129, "é"])
def test_ids_are_validated(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_id(bad, "document_id")
