"""Language analysis for keyword (BM25) search: lowercase words, drop stop words, stem.

Milvus Lite 3.2.2 only tokenizes (``standard`` or ``jieba``, plus explicit stop-word lists): it
rejects ``{"type": "english"}`` and ignores a ``stemmer`` filter, so "monitoring" would never match
"monitor". The service therefore analyses text itself, with the Snowball stemmers, and stores the
analysed words in the ``keywords`` field that feeds Milvus's BM25 function (whose own analyzer then
only splits on whitespace). Queries go through the same analyzer, and a Milvus server ranks exactly
like Milvus Lite.

The analyzer is chosen per collection when the collection is created (a language name such as
``english``, ``french``, ``german``, or ``none`` for lowercase words only) and is recorded in the
collection's properties (``callisto.text_analyzer``), so reopening a collection keeps the analyzer
its rows were written with, whatever the current setting says.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import snowballstemmer

from callisto.services.retrieval.errors import InvalidArgument

NO_STEMMING = "none"
# Collection property that records the analyzer a collection was created with.
PROPERTY = "callisto.text_analyzer"
# Milvus's "_english_" list (Lucene's English stop set).
ENGLISH_STOP_WORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then "
    "there these they this to was will with".split()
)
_STOP_WORDS: dict[str, frozenset[str]] = {
    "english": ENGLISH_STOP_WORDS,
    "porter": ENGLISH_STOP_WORDS,
}
_WORD = re.compile(r"\w+", re.UNICODE)


def languages() -> tuple[str, ...]:
    """Analyzer names accepted by :class:`TextAnalyzer`."""
    return (NO_STEMMING, *snowballstemmer.algorithms())


class TextAnalyzer:
    """Turns text into the space-separated analysed words BM25 indexes."""

    def __init__(self, language: str = "english") -> None:
        language = language.strip().lower()
        if language not in languages():
            raise InvalidArgument(
                "text_analyzer", f"unknown analyzer {language!r}; one of {', '.join(languages())}"
            )
        self.language = language
        self.stop_words = _STOP_WORDS.get(language, frozenset())
        stem: Callable[[str], str]
        if language == NO_STEMMING:
            stem = str
        else:
            # Stemmer objects are not thread-safe: the store analyses on its one worker thread.
            # The cache makes repeated words nearly free.
            stemmer = snowballstemmer.stemmer(language)
            stem = functools.lru_cache(maxsize=65536)(stemmer.stemWord)
        self._stem = stem

    def analyse(self, text: str) -> str:
        words = _WORD.findall(text.lower())
        return " ".join(self._stem(w) for w in words if w not in self.stop_words)
