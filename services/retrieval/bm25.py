"""BM25 sparse vectors, made without a model.

We reuse qdrant-edge's ``Bm25`` (the same algorithm as Qdrant's server-side ``Qdrant/bm25``):
word tokenizer, lower-casing, English stop words and Snowball stemming, tokens hashed to
sparse indices. A document's values are the BM25 term-frequency part
``tf·(k+1) / (tf + k·(1 - b + b·len/avg_len))``; a query's values are 1 per unique token.
The IDF part is left to the engine (``Modifier.IDF`` on the sparse vector), which keeps it
exact as documents come and go — computing IDF ourselves would mean rewriting every vector
whenever the corpus changes. The same function feeds both adapters, so keyword scores
agree between them.

Both a document's text and a query are NFKC-normalized first (``normalize.nfkc``; why
NFKC and not case folding too is told there), so one word is one token whatever form it
was typed in: precomposed or decomposed accents, full-width letters, ligatures. NFC text
without compatibility characters keeps exactly the tokens it had before normalization.
"""

from __future__ import annotations

import re
import threading

import qdrant_edge

from services.retrieval.normalize import nfkc
from services.retrieval.store import SparseVector

_local = threading.local()

# The characters of one word that are scored; the rest of a longer run of word characters
# is dropped, in documents and queries alike (so a word past it still finds itself). The
# engine's stemmer takes time quadratic in a word's length: one 200 000-letter word cost
# 1.4 s of CPU, a 4 MB request of one word about ten minutes, for any writer within the
# bytes-written quota. No language has words this long. Not a setting: a document's stored
# vector was made with it, and queries must cut words the same way to match it.
MAX_WORD_CHARS = 128
# Letters and digits, not "_": the engine's tokenizer splits at it, so an underscore-joined
# run is many short words (no stemmer cost), each kept. Cut as one, every word past the
# bound was lost ("a_b_..._sourdough" no longer found by "sourdough"; a run of "_" before a
# word left no word at all).
_WORD = r"[^\W_]"
# Anchored at a word's start: unanchored, every position of a shorter run was tried, each
# scanning on to its end (0.2 s per MB of 127-letter words).
_LONG_WORD = re.compile(rf"(?<!{_WORD})({_WORD}{{{MAX_WORD_CHARS}}}){_WORD}+")


def _words_cut(text: str) -> str:
    """``text`` (NFKC) with every run of letters and digits cut to ``MAX_WORD_CHARS``."""
    return _LONG_WORD.sub(r"\1", text)


def _model() -> qdrant_edge.Bm25:
    # One model per thread: cheap to build, and no shared state between worker threads.
    model = getattr(_local, "model", None)
    if model is None:
        model = _local.model = qdrant_edge.Bm25()
    return model


def document_vector(text: str) -> SparseVector | None:
    """The stored vector of a document's text; None when it has no indexable word."""
    vec = _model().embed_document(_words_cut(nfkc(text)))
    if not vec.indices:
        return None
    return SparseVector(indices=list(vec.indices), values=list(vec.values))


def query_vector(text: str) -> SparseVector | None:
    """The query vector of a keyword search; None when only stop words remain."""
    vec = _model().embed_query(_words_cut(nfkc(text)))
    if not vec.indices:
        return None
    return SparseVector(indices=list(vec.indices), values=list(vec.values))
