"""Which retrieved passages bear on the question, decided by code rather than by the model.

Search always returns its nearest neighbours, relevant or not, and its fused scores only order
hits within one query, so they say nothing about relevance across queries. A passage counts as
relevant when it shares a distinctive term with the question: words of three letters or more,
outside a list of function and question words, compared on their first five letters (so
"sessions" meets "session" and "monitoring" meets "monitors"). A term found in every one of
three or more passages (such as "session" over a conference programme) does not distinguish
any of them and is ignored when the question has other terms. Words that name the kind of thing
asked for ("sessions", "speakers") may be declared generic: they say what to look for, not
about what. Passages are then kept when they match at least half as many terms as the best
one, best first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass

from callisto.api.common.v1 import common_pb2

STEM = 5
MIN_WORD = 3
# Function words and the words questions are asked with: they carry no topic.
STOPWORDS = frozenset(
    """
    a about above after again all also am an and any are around as at be been before being
    below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers him his how i if in into is it its itself
    just me more most my no nor not now of off on once only or other our ours out over own
    same she should so some such than that the their theirs them then there these they this
    those through to too under until up very was we were what when where which while who whom
    why will with would you your yours
    tell talk talks know want wants please give show find need explain describe say says said
    anything something thing things there any many much get got let lets like list
    """.split()
)
_WORD = re.compile(r"[^\W_]+")


def terms(text: str) -> set[str]:
    """The distinctive terms of a text, stemmed."""
    return {
        word[:STEM]
        for word in _WORD.findall(text.lower())
        if len(word) >= MIN_WORD and word not in STOPWORDS
    }


@dataclass(frozen=True)
class Judged:
    citation: common_pb2.Citation
    # Question terms the passage shares.
    matched: frozenset[str]


# The text a passage is judged by: what the answering model will read of it.
TextOf = Callable[[common_pb2.Citation], str]


def passage_text(citation: common_pb2.Citation) -> str:
    return f"{citation.title} {citation.section} {citation.text}"


def _wanted(question: str, generic: Collection[str]) -> set[str]:
    """The question's terms, less `generic` ones (words naming the kind of thing asked for,
    such as "sessions") unless nothing else is asked."""
    wanted = terms(question)
    return wanted - set(generic) or wanted


def relevant(
    question: str,
    citations: Sequence[common_pb2.Citation],
    *,
    text_of: TextOf = passage_text,
    generic: Collection[str] = (),
) -> list[common_pb2.Citation]:
    """The passages that bear on `question`, most matching first (ties keep search order)."""
    wanted = _wanted(question, generic)
    if not wanted or not citations:
        return []
    passages = [terms(text_of(c)) for c in citations]
    if len(passages) >= 3:
        everywhere = set.intersection(*passages) & wanted
        if wanted - everywhere:
            wanted -= everywhere
    judged = [Judged(c, frozenset(wanted & p)) for c, p in zip(citations, passages, strict=True)]
    best = max(len(j.matched) for j in judged)
    if best == 0:
        return []
    floor = max(1, math.ceil(best / 2))
    kept = [j for j in judged if len(j.matched) >= floor]
    kept.sort(key=lambda j: -len(j.matched))  # stable: equal matches keep the search's order
    return [j.citation for j in kept]


def covers(
    question: str,
    passages: Sequence[common_pb2.Citation],
    *,
    text_of: TextOf = passage_text,
    generic: Collection[str] = (),
) -> bool:
    """Whether every distinctive term of the question is in one of the passages."""
    found: set[str] = set()
    for citation in passages:
        found |= terms(text_of(citation))
    return _wanted(question, generic) <= found
