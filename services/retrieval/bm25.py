"""BM25 sparse vectors, made without a model.

We reuse qdrant-edge's ``Bm25`` (the same algorithm as Qdrant's server-side ``Qdrant/bm25``):
word tokenizer, lower-casing, English stop words and Snowball stemming, tokens hashed to
sparse indices. A document's values are the BM25 term-frequency part
``tf·(k+1) / (tf + k·(1 - b + b·len/avg_len))``; a query's values are 1 per unique token.
The IDF part is left to the engine (``Modifier.IDF`` on the sparse vector), which keeps it
exact as documents come and go — computing IDF ourselves would mean rewriting every vector
whenever the corpus changes. The same function feeds both adapters, so keyword scores
agree between them.

Both a document's text and a query are NFKC-normalized first, so one word is one token
whatever form it was typed in: precomposed "é" (U+00E9) and decomposed "e" + U+0301 (macOS
file names, some keyboards), full-width "ｃａｆé", ligatures ("ﬁ" is "fi"). This is
Elasticsearch's ``icu_normalizer`` without its case folding: the tokenizer already
lower-cases, and full case folding would change the tokens of ordinary NFC text ("straße"
would become "strasse", a final sigma the medial one), so keyword indexes built before
normalization would stop matching their own words. NFKC leaves NFC text without
compatibility characters unchanged, so those indexes give the same tokens as before.
Accents are kept ("cafe" is not "café"), as with ``icu_normalizer`` (folding them away is
``icu_folding``'s job). Only the tokens are normalized: stored properties keep the text
exactly as it was written.
"""

from __future__ import annotations

import threading
import unicodedata

import qdrant_edge

from services.retrieval.store import SparseVector

_local = threading.local()


def _model() -> qdrant_edge.Bm25:
    # One model per thread: cheap to build, and no shared state between worker threads.
    model = getattr(_local, "model", None)
    if model is None:
        model = _local.model = qdrant_edge.Bm25()
    return model


def normalize(text: str) -> str:
    """``text`` in the form its tokens are taken from (NFKC; see the module docstring)."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", text)


def document_vector(text: str) -> SparseVector | None:
    """The stored vector of a document's text; None when it has no indexable word."""
    vec = _model().embed_document(normalize(text))
    if not vec.indices:
        return None
    return SparseVector(indices=list(vec.indices), values=list(vec.values))


def query_vector(text: str) -> SparseVector | None:
    """The query vector of a keyword search; None when only stop words remain."""
    vec = _model().embed_query(normalize(text))
    if not vec.indices:
        return None
    return SparseVector(indices=list(vec.indices), values=list(vec.values))
