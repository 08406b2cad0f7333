"""Verified citations: which sentence of an answer cites which hit, and where in that hit
the sentence finds its support.

- The answer is split into sentences (``split_sentences``): a sentence ends at ``.``,
  ``!``, ``?`` or an ellipsis followed by whitespace or the end, at the CJK full stop,
  exclamation and question marks (no space needed), or at a line break; citation
  markers right after the end (``... spice. [1]``) belong to the sentence before them.
  Abbreviations ("e.g. x") may split a sentence; harmless here.
- Each ``[n]`` (also ``[1, 3]``) in a sentence is mapped to hit n of the prompt; numbers
  that point at no hit in the prompt are dropped and reported with their offsets. Inside
  code (backtick spans, fenced blocks) brackets are indexes, not citations.
- Support: for each cited hit, the candidate spans are the sentences of its string-valued
  context properties (those the model was shown), long ones cut into windows of
  ``WINDOW_WORDS`` words; the span sharing the largest share of the answer sentence's
  content words wins (ties: the earlier property in context order, then the earlier span).
  ``support`` is that share; a citation is *supported* when it is at least the threshold
  (setting ``citation_min_support``) and at least one word is shared. With no word shared
  there is no span (empty property, offsets 0). CJK text without spaces counts a whole
  run of ideographs as one word, so its support is coarse. Words are compared in Unicode
  NFKC (``condense.words``): a source stored with decomposed accents, full-width letters or
  ligatures supports an answer written in NFC; offsets stay those of the texts as given.
- ``coverage``: supported sentences / sentences (sentences with at least one word).
- Cost: checking a citation compares its sentence with each candidate span of the hit,
  so an answer costs sentences x spans, and splitting a hit's texts into spans (once per
  text per answer) costs their length; ``max_checks`` bounds both: one check per
  comparison, one per ``CHARS_PER_CHECK`` characters split, charged before splitting.
  The first citation (in answer order) whose texts or spans do not fit in what is left,
  and every one after it, is left *unchecked* (``unchecked``: no span, support 0, not supported),
  which is not "unsupported": the check stopped before it. Coverage counts them as
  unsupported.

Offsets are Unicode code points (Python ``str`` indices) into the answer and into the
property's string value, half-open ``[start, end)``.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb

from services.gateway.condense import content_words

WINDOW_WORDS = 40
# Characters of a cited text split into spans per check of ``max_checks``: splitting costs
# about 0.2 us a character, a comparison up to 1.2 us (measured), so 4 errs on the safe side.
CHARS_PER_CHECK = 4

# A marker's numbers ("1", "1, 3"), and the marker: "[1]", "[1, 3]".
_NUMBERS = r"\s*\d+\s*(?:[,;]\s*\d+\s*)*"
_MARKER = rf"\[{_NUMBERS}\]"
_CITATION = re.compile(rf"\[({_NUMBERS})\]")
_NUMBER = re.compile(r"\d+")
# The number a dropped marker reports when its own is larger: DroppedCitation.number is an
# int32, and a model may write "[99999999999999999999]" (its offsets still locate it).
MAX_MARKER_NUMBER = 2**31 - 1
# Digits read as a number: more is past any hit (and int() refuses over 4300 digits).
_MAX_MARKER_DIGITS = 10
# The end of a sentence: terminal punctuation (with closing quotes/brackets) followed by
# whitespace or the end of the text, or a line break. A run of marks is tried from its
# first one only (the lookbehinds): tried from each mark in turn, each attempt reading
# the rest of the run and an unclosed marker after it, a 300 KB answer of dots took
# minutes on the event loop. A later start fails wherever the first does (same text
# after the run), so the sentences are the same.
_END = re.compile(
    rf"(?<![.!?\u2026])[.!?\u2026]+[\"'\u201d\u2019)]*(?:{_MARKER})*(?=\s|$)"
    rf"|(?<![\u3002\uff01\uff1f])[\u3002\uff01\uff1f]+(?:{_MARKER})*|\n"
)
# Markers (and the spaces before them) that directly follow a sentence's end.
_TRAILING_MARKERS = re.compile(rf"(?:[ \t]*{_MARKER})+[.!?]?")
_WORD = re.compile(r"[^\W_]+")
# Code in an answer (fenced blocks, also unclosed at the end, and inline spans): an index
# like ``obj[0]`` there is not a citation.
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.S)


@dataclass(frozen=True)
class Span:
    start: int
    end: int


@dataclass
class Support:
    number: int
    hit_id: str
    property: str = ""
    source: Span = Span(0, 0)
    text: str = ""
    score: float = 0.0
    supported: bool = False
    unchecked: bool = False


@dataclass
class Sentence:
    span: Span
    citations: list[Support] = field(default_factory=list)

    @property
    def cited(self) -> bool:
        return bool(self.citations)

    @property
    def supported(self) -> bool:
        return any(c.supported for c in self.citations)


@dataclass(frozen=True)
class Dropped:
    number: int
    sentence: int
    marker: Span


@dataclass
class Verified:
    sentences: list[Sentence]
    dropped: list[Dropped]

    @property
    def coverage(self) -> float:
        if not self.sentences:
            return 0.0
        return sum(s.supported for s in self.sentences) / len(self.sentences)

    def by_hit(self) -> list[tuple[int, Support]]:
        """One citation per cited hit number, in order of first use: the strongest support
        any sentence found for it, with that sentence's index."""
        best: dict[int, tuple[int, Support]] = {}
        for index, sentence in enumerate(self.sentences):
            for support in sentence.citations:
                held = best.get(support.number)
                if held is None or support.score > held[1].score:
                    best[support.number] = (index, support)
        order: dict[int, None] = {}
        for sentence in self.sentences:
            for support in sentence.citations:
                order.setdefault(support.number)
        return [best[n] for n in order]


def split_sentences(text: str) -> list[Span]:
    """Sentence spans (trimmed of surrounding whitespace), only those with a word in them."""
    spans: list[Span] = []
    start = 0
    for match in _END.finditer(text):
        if match.start() < start:  # inside markers already given to the sentence before
            continue
        end = match.end()
        if match.group() != "\n":
            trailing = _TRAILING_MARKERS.match(text, end)
            if trailing:
                end = trailing.end()
        spans.append(Span(start, end))
        start = end
    spans.append(Span(start, len(text)))
    out = []
    for span in spans:
        piece = text[span.start : span.end]
        stripped = piece.strip()
        if not stripped or not _WORD.search(_CITATION.sub("", stripped)):
            continue
        lead = len(piece) - len(piece.lstrip())
        out.append(Span(span.start + lead, span.start + lead + len(stripped)))
    return out


def candidate_spans(text: str) -> list[Span]:
    """The property's sentences, long ones as overlapping windows of WINDOW_WORDS words."""
    out: list[Span] = []
    for sentence in split_sentences(text):
        found = list(_WORD.finditer(text, sentence.start, sentence.end))
        if len(found) <= WINDOW_WORDS:
            out.append(sentence)
            continue
        step = WINDOW_WORDS // 2
        for first in range(0, len(found) - step, step):
            last = min(first + WINDOW_WORDS, len(found)) - 1
            out.append(Span(found[first].start(), _past_marks(text, found[last].end())))
    return out


def _past_marks(text: str, end: int) -> int:
    """``end`` moved past the combining marks that follow it: a decomposed accent
    ("e" + U+0301) is no word character, but it belongs to the word before it."""
    while end < len(text) and unicodedata.category(text[end]).startswith("M"):
        end += 1
    return end


# A property's candidate spans with their content words, by the property's text.
WordSpans = dict[str, list[tuple[Span, frozenset[str]]]]


def _word_spans(value: str, known: WordSpans) -> list[tuple[Span, frozenset[str]]]:
    """``value``'s candidate spans and their words, made once per answer: every sentence
    citing a hit made them anew, and an answer of thousands of sentences citing [1] cost
    sentences x the hit's length, seconds on the event loop for a 34 KB answer."""
    spans = known.get(value)
    if spans is None:
        spans = known[value] = [
            (span, frozenset(content_words(value[span.start : span.end])))
            for span in candidate_spans(value)
        ]
    return spans


def _candidates(
    properties: Mapping[str, Any], fields: Sequence[str], known: WordSpans
) -> list[tuple[str, list[tuple[Span, frozenset[str]]]]]:
    """The string-valued ``fields`` of a hit with their candidate spans, in field order."""
    out = []
    for name in fields:
        value = properties.get(name)
        if isinstance(value, str) and value.strip():
            out.append((name, _word_spans(value, known)))
    return out


def _split_cost(properties: Mapping[str, Any], fields: Sequence[str], known: WordSpans) -> int:
    """What splitting the texts of ``fields`` not split yet this answer costs, in checks:
    one per CHARS_PER_CHECK characters (each distinct text once)."""
    new = {
        value
        for name in fields
        if isinstance(value := properties.get(name), str) and value not in known
    }
    return sum(-(-len(value) // CHARS_PER_CHECK) for value in new)


def _charge(left: int, cost: int) -> int:
    """``left`` less ``cost``; -1 (stays below: this citation and all after it are left
    unchecked) when it does not fit."""
    return left - cost if 0 <= cost <= left else -1


def best_support(
    claim: set[str],
    candidates: Sequence[tuple[str, Sequence[tuple[Span, frozenset[str]]]]],
) -> tuple[str, Span, float]:
    """The property and span (of ``_candidates``) sharing the largest share of ``claim``'s
    words."""
    best: tuple[str, Span, float] = ("", Span(0, 0), -1.0)
    for name, spans in candidates:
        for span, words in spans:
            shared = claim & words
            score = len(shared) / len(claim) if claim else 0.0
            if score > best[2]:
                best = (name, span, score)
    return best


def verify(
    answer: str,
    hits: Sequence[tuple[str, Mapping[str, Any]]],
    fields: Sequence[str],
    threshold: float,
    max_checks: int | None = None,
) -> Verified:
    """``hits`` are the (id, properties) of the hits in the prompt, numbered from 1;
    ``fields`` the properties the model was shown (all string ones when empty);
    ``max_checks``: the most sentence-span comparisons (None: no bound)."""
    sentences: list[Sentence] = []
    dropped: list[Dropped] = []
    # Code spans, in order and apart: a marker's is found by bisection, not a scan (one
    # per marker made thousands of markers among thousands of spans quadratic).
    code = [m.span() for m in _CODE.finditer(answer)]
    code_starts = [start for start, _ in code]
    known: WordSpans = {}
    left = max_checks
    for index, span in enumerate(split_sentences(answer)):
        text = answer[span.start : span.end]
        sentence = Sentence(span)
        claim = set(content_words(_CITATION.sub(" ", text)))
        seen: set[int] = set()
        for marker in _CITATION.finditer(answer, span.start, span.end):
            inside = bisect.bisect_right(code_starts, marker.start()) - 1
            if inside >= 0 and marker.start() < code[inside][1]:
                continue
            for raw in _NUMBER.finditer(marker.group(1)):
                number = _marker_number(raw.group())
                if not 1 <= number <= len(hits):
                    dropped.append(Dropped(number, index, Span(marker.start(), marker.end())))
                    continue
                if number in seen:
                    continue
                seen.add(number)
                hit_id, properties = hits[number - 1]
                names = list(fields) or sorted(properties)
                candidates = []
                if left is not None:
                    # Splitting is charged before it is done: a text past the budget is
                    # never split (a 680 KB property took 0.1 s, whatever the bound).
                    left = _charge(left, _split_cost(properties, names, known))
                if left is None or left >= 0:
                    candidates = _candidates(properties, names, known)
                if left is not None:
                    left = _charge(left, sum(len(spans) for _, spans in candidates))
                    if left < 0:
                        sentence.citations.append(Support(number, hit_id, unchecked=True))
                        continue
                name, source, score = best_support(claim, candidates)
                support = Support(number, hit_id)
                if name and score > 0:
                    value = properties[name]
                    support = Support(
                        number,
                        hit_id,
                        name,
                        source,
                        value[source.start : source.end],
                        score,
                        score >= threshold,
                    )
                sentence.citations.append(support)
        sentences.append(sentence)
    return Verified(sentences, dropped)


def _marker_number(digits: str) -> int:
    """A marker's number, at most MAX_MARKER_NUMBER (a larger one points at no hit)."""
    significant = digits.lstrip("0")
    if len(significant) > _MAX_MARKER_DIGITS:
        return MAX_MARKER_NUMBER
    # The significant digits only: int() refuses a text past 4300 digits, leading zeros
    # counted (ValueError: the Ask failed INTERNAL).
    return min(int(significant or "0"), MAX_MARKER_NUMBER)


# -- the wire form ------------------------------------------------------------------------


def _citation(sentence: int, span: Span, support: Support) -> gw_pb.Citation:
    return gw_pb.Citation(
        number=support.number,
        id=support.hit_id,
        sentence=sentence,
        answer_start=span.start,
        answer_end=span.end,
        property=support.property,
        source_start=support.source.start,
        source_end=support.source.end,
        source_text=support.text,
        support=support.score,
        supported=support.supported,
        unchecked=support.unchecked,
    )


def to_event(verified: Verified) -> gw_pb.CitationsEvent:
    """The check as sent: ``citations`` one per cited hit (first use order, strongest
    support), ``sentences`` each with its own, dropped markers, coverage."""
    sentences = [
        gw_pb.AnswerSentence(
            start=s.span.start,
            end=s.span.end,
            citations=[_citation(i, s.span, c) for c in s.citations],
            cited=s.cited,
            supported=s.supported,
        )
        for i, s in enumerate(verified.sentences)
    ]
    return gw_pb.CitationsEvent(
        citations=[
            _citation(i, verified.sentences[i].span, support) for i, support in verified.by_hit()
        ],
        sentences=sentences,
        citation_coverage=verified.coverage,
        dropped_citations=[
            gw_pb.DroppedCitation(
                number=d.number, sentence=d.sentence, start=d.marker.start, end=d.marker.end
            )
            for d in verified.dropped
        ],
    )
