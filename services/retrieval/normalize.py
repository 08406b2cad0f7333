"""Unicode normalization of text for matching words: NFKC.

One word typed in different forms — precomposed "é" (U+00E9) or decomposed "e" + U+0301
(macOS file names), full-width letters, ligatures ("ﬁ") — is one word after NFKC. Both
sides of a word match are normalized: the keyword (BM25) tokens of objects and queries
(``bm25``), and TEXT_MATCH, whose property values are matched through a normalized copy
(``NORMALIZED`` in the payload) kept only for values NFKC changes. Stored properties are
never rewritten: clients get back exactly what they wrote. Equality stays exact.

Why NFKC and not NFKC + case folding (Elasticsearch's ``icu_normalizer`` default,
``nfkc_cf``): both tokenizers already lower-case, and full case folding would change the
words of ordinary NFC text ("straße" → "strasse", a final sigma to the medial one), so
keyword indexes built before normalization would stop matching their own words. NFKC is
the identity on NFC text without compatibility characters, so for that text — nearly all
text — tokens are exactly what they were. Accents are kept ("cafe" is not "café"), as with
``icu_normalizer``; removing them is ``icu_folding``'s job, which we do not do.
"""

from __future__ import annotations

import unicodedata

# Payload key of the NFKC copies of text property values that NFKC changes:
# {"n": {<property>: normalized text or list of texts}}. Never returned to clients.
NORMALIZED = "n"


def nfkc(text: str) -> str:
    """``text`` in NFKC (the same object when it already is)."""
    if unicodedata.is_normalized("NFKC", text):
        return text
    return unicodedata.normalize("NFKC", text)


# A copy longer than this many times its value is not kept. NFKC rarely lengthens real
# text much (a ligature "ﬃ" is 3 letters, "½" is 3 characters), but a few characters expand up to
# 18-fold (U+FDFA, 11-fold in UTF-8 bytes): without a bound, an object of them would store
# a payload ten times the size of the request that wrote it.
MAX_GROWTH = 3


def normalized_copy(value: str | list[str]) -> str | list[str] | None:
    """The NFKC copy of a text (or text array) property value; None when NFKC keeps it, or
    when the copy would be more than ``MAX_GROWTH`` times as long (then TEXT_MATCH sees only
    the value as written)."""
    if isinstance(value, str):
        folded = nfkc(value)
        if folded == value or len(folded) > MAX_GROWTH * len(value):
            return None
        return folded
    items = [nfkc(item) if isinstance(item, str) else item for item in value]
    if items == value:
        return None
    if sum(map(len, items)) > MAX_GROWTH * sum(map(len, value)):
        return None
    return items
