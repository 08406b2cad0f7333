"""Verified citations: sentences, spans and their offsets, dropped markers, uncited
sentences, coverage; unary and streamed Ask; unicode in answers and hits."""

from __future__ import annotations

from typing import Any

import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway import citations
from services.gateway.citations import Span, split_sentences, verify
from tests.gateway.conftest import ALICE, Stack, create_books


def _texts(text: str) -> list[str]:
    return [text[s.start : s.end] for s in split_sentences(text)]


def test_sentences_keep_their_markers() -> None:
    answer = (
        "Dune is set on a desert planet [1]. It has spice. [2] Pi is 3.14 here!\n"
        "- a list item [1, 2]\n\n   \n[3]"
    )
    assert _texts(answer) == [
        "Dune is set on a desert planet [1].",
        "It has spice. [2]",
        "Pi is 3.14 here!",
        "- a list item [1, 2]",
    ]  # a lone marker with no words is not a sentence


HITS = [
    ("id-dune", {"title": "Dune", "body": "A desert planet. The spice melange is mined there."}),
    ("id-emma", {"title": "Emma", "body": "A matchmaker in an English village.", "year": 1815}),
]


def test_spans_offsets_dropped_and_uncited() -> None:
    answer = "The spice melange is mined on Dune [1]. Emma is set in 1815 [2][9]. Nothing here."
    checked = verify(answer, HITS, ["title", "body"], 0.3)
    first, second, third = checked.sentences
    # Sentence offsets in the answer.
    assert answer[first.span.start : first.span.end] == answer.split(" Emma")[0]
    assert first.span == Span(0, 39)
    # [1]: the body's second sentence holds 4 of {spice, melange, mined, dune}: 3/4.
    (support,) = first.citations
    assert (support.number, support.hit_id, support.property) == (1, "id-dune", "body")
    body = HITS[0][1]["body"]
    assert body[support.source.start : support.source.end] == "The spice melange is mined there."
    assert support.text == "The spice melange is mined there."
    assert support.score == pytest.approx(3 / 4) and support.supported
    # [2]: "emma" is the title (1 of {emma, set, 1815}; the year is not a string).
    (emma,) = second.citations
    assert (emma.property, emma.text, emma.source) == ("title", "Emma", Span(0, 4))
    assert emma.score == pytest.approx(1 / 3) and emma.supported
    # [9] points at no hit: dropped, with the marker's offsets.
    (dropped,) = checked.dropped
    assert (dropped.number, dropped.sentence) == (9, 1)
    assert answer[dropped.marker.start : dropped.marker.end] == "[9]"
    # The third sentence cites nothing: flagged, and it lowers the coverage.
    assert not third.cited and not third.supported
    assert checked.coverage == pytest.approx(2 / 3)


def test_brackets_in_code_are_not_citations() -> None:
    answer = "Delete it with `del obj[0]` [1].\n```python\ndel obj[2]\n```\nSee [2]."
    checked = verify(answer, HITS, ["title", "body"], 0.3)
    assert checked.dropped == []
    cited = [[c.number for c in s.citations] for s in checked.sentences]
    assert [1] in cited and [2] in cited and [0] not in cited
    assert sum(len(c) for c in cited) == 2


def test_threshold_and_no_shared_word() -> None:
    answer = "Emma is set in 1815 [2]. Completely unrelated words [1]."
    strict = verify(answer, HITS, ["title", "body"], 0.5)
    assert not strict.sentences[0].citations[0].supported  # 1/3 < 0.5
    unrelated = strict.sentences[1].citations[0]
    assert (unrelated.property, unrelated.source, unrelated.score) == ("", Span(0, 0), 0.0)
    assert not unrelated.supported
    assert strict.coverage == 0.0


def test_only_the_context_fields_are_searched() -> None:
    checked = verify("Dune [1].", HITS, ["body"], 0.3)
    assert not checked.sentences[0].citations[0].supported  # the title was not shown


def test_long_passages_are_searched_in_windows() -> None:
    words = [f"w{i}" for i in range(200)]
    body = " ".join(words)  # one 200-word "sentence"
    checked = verify("About w150 and w151 [1].", [("x", {"body": body})], ["body"], 0.3)
    support = checked.sentences[0].citations[0]
    span = body[support.source.start : support.source.end]
    assert "w150" in span and "w151" in span and len(span.split()) <= 40
    assert support.score == 1.0


def test_unicode_offsets_are_code_points() -> None:
    hits = [("u", {"body": "Ünïcödé 😀 text. Ça marche très bien à Zürich."})]
    answer = "😀😀 Intro sentence. Ça marche à Zürich 🎉 [1]. 日本語です。"
    checked = verify(answer, hits, ["body"], 0.3)
    assert [answer[s.span.start : s.span.end] for s in checked.sentences] == [
        "😀😀 Intro sentence.",
        "Ça marche à Zürich 🎉 [1].",
        "日本語です。",
    ]
    support = checked.sentences[1].citations[0]
    body = hits[0][1]["body"]
    assert body[support.source.start : support.source.end] == "Ça marche très bien à Zürich."
    # Code points, not UTF-8 bytes: the emoji before counts as one.
    assert support.source.start == len("Ünïcödé 😀 text. ")
    assert checked.sentences[1].span.start == len("😀😀 Intro sentence. ")


# -- through the gateway ----------------------------------------------------------------

ANSWER = "A desert planet and spice [1]. Cyberpunk hackers [2]. Unknown [7]. No source here."


def _answering(text: str) -> Any:
    return lambda body: text


# An Ask whose context is the first two books, title and body (ANSWER cites them).
_ASK_BOTH_BOOKS: dict[str, Any] = {
    "collection": "Books",
    "llm_question": "desert planet spice cyberpunk",
    "context_size": 2,
    "context_field_list": ["title", "body"],
}


async def _ask_answered(stack: Stack) -> gw_pb.AskResponse:
    """The unary Ask of _ASK_BOTH_BOOKS, the model answering ANSWER."""
    stack.fake.reply = _answering(ANSWER)
    response: gw_pb.AskResponse = await stack.stub.Ask(
        gw_pb.AskRequest(**_ASK_BOTH_BOOKS), metadata=ALICE
    )
    return response


def _check(response: gw_pb.AskResponse | gw_pb.CitationsEvent, answer: str) -> None:
    assert [(c.number, c.sentence) for c in response.citations] == [(1, 0), (2, 1)]
    dune = response.citations[0]
    assert (dune.property, dune.source_text) == ("body", "A desert planet and the spice melange.")
    assert (dune.source_start, dune.source_end) == (0, 38)
    assert answer[dune.answer_start : dune.answer_end] == "A desert planet and spice [1]."
    assert dune.supported and dune.support == pytest.approx(1.0)
    hacker = response.citations[1]
    assert hacker.source_text == "A hacker in a cyberpunk future."
    assert hacker.support == pytest.approx(0.5) and hacker.supported  # cyberpunk, not hackers
    assert [(s.cited, s.supported) for s in response.sentences] == [
        (True, True),
        (True, True),
        (False, False),
        (False, False),
    ]
    (dropped,) = response.dropped_citations
    assert (dropped.number, dropped.sentence) == (7, 2)
    assert answer[dropped.start : dropped.end] == "[7]"
    assert response.citation_coverage == pytest.approx(0.5)


async def test_unary_ask_returns_verified_citations(stack: Stack) -> None:
    ids = await create_books(stack)
    response = await _ask_answered(stack)
    assert [h.id for h in response.hits] == [ids[0], ids[1]]
    assert response.answer == ANSWER
    _check(response, ANSWER)
    assert [(c.number, c.id) for c in response.citations] == [(1, ids[0]), (2, ids[1])]


async def test_stream_sends_citations_before_the_answer(stack: Stack) -> None:
    ids = await create_books(stack)
    stack.fake.reply = _answering(ANSWER)
    request = gw_pb.StreamAskRequest(**_ASK_BOTH_BOOKS)
    events = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE)]
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "context" and kinds[-2:] == ["citations", "answer"]
    assert set(kinds[1:-2]) == {"delta"}
    assert events[0].context.hits[0].id == ids[0]
    _check(events[-2].citations, ANSWER)
    final = events[-1].answer
    _check(final, ANSWER)
    event = events[-2].citations
    assert list(final.citations) == list(event.citations)
    assert list(final.sentences) == list(event.sentences)


async def test_unicode_answer_and_hits_through_the_gateway(stack: Stack) -> None:
    books = [
        {"title": "Zürich 😀", "body": "Ünïcödé 😀 text. Ça marche très bien à Zürich.", "year": 1,
         "tags": []},
    ]  # fmt: skip
    await create_books(stack, books=books)
    answer = "😀 Ça marche à Zürich [1]."
    stack.fake.reply = _answering(answer)
    events = [
        e
        async for e in stack.stub.StreamAsk(
            gw_pb.StreamAskRequest(
                collection="Books",
                llm_question="Zürich",
                context_field_list=["body"],
                near_vector=ret_pb.NearVector(vector=[1.0, 0.1, 0.1, 0.1]),
            ),
            metadata=ALICE,
        )
    ]
    final = events[-1].answer
    assert final.answer == answer
    (citation,) = final.citations
    body = books[0]["body"]
    assert isinstance(body, str)
    assert body[citation.source_start : citation.source_end] == "Ça marche très bien à Zürich."
    assert citation.source_text == "Ça marche très bien à Zürich."
    assert (citation.answer_start, citation.answer_end) == (0, len(answer))
    assert final.citation_coverage == 1.0


@settings(max_examples=300, deadline=None)
@given(
    answer=st.text(alphabet=st.characters(codec="utf-8"), max_size=200)
    | st.lists(st.sampled_from(["[1]", "[2, 9]", ". ", "\n", "`", "```", "é😀", "word"])).map(
        "".join
    ),
    body=st.text(max_size=200),
)
def test_any_answer_gives_offsets_inside_the_texts(answer: str, body: str) -> None:
    hits = [("a", {"body": body}), ("b", {"body": "word é😀"})]
    checked = verify(answer, hits, ["body"], 0.3)
    assert 0.0 <= checked.coverage <= 1.0
    for sentence in checked.sentences:
        assert 0 <= sentence.span.start < sentence.span.end <= len(answer)
        for c in sentence.citations:
            value = dict(hits)[c.hit_id]["body"]
            assert 0 <= c.source.start <= c.source.end <= len(value)
            assert value[c.source.start : c.source.end] == c.text
    for d in checked.dropped:
        assert answer[d.marker.start : d.marker.end].startswith("[")


def test_decomposed_and_compatibility_forms_support_a_claim() -> None:
    # Stored text in NFD (macOS file names) or with compatibility forms (full-width letters,
    # ligatures); the model answers in NFC. Same words, so full support, and the span keeps
    # its combining marks.
    body = "Le cafe\u0301 de Zu\u0308rich. Un \ufb01lm \uff43\uff41\uff46\u00e9."
    hits = [("u", {"body": body})]
    answer = "Le café de Zürich [1]. Un film café [1]."
    checked = verify(answer, hits, ["body"], 0.9)
    first, second = (s.citations[0] for s in checked.sentences)
    assert first.supported and first.score == pytest.approx(1.0)
    assert body[first.source.start : first.source.end] == "Le cafe\u0301 de Zu\u0308rich."
    assert second.supported and second.score == pytest.approx(1.0)


def test_windows_keep_a_last_words_combining_marks() -> None:
    # A long sentence is cut into windows at word ends: a window ending on a decomposed
    # word ends after its marks, not between a letter and its accent.
    body = " ".join(f"w{i}" for i in range(30)) + " " + " ".join(["cafe\u0301"] * 30) + "."
    hits = [("u", {"body": body})]
    checked = verify("cafe\u0301 w0 w1 [1].", hits, ["body"], 0.3)
    support = checked.sentences[0].citations[0]
    assert support.text.endswith("cafe\u0301")


async def test_an_answer_of_punctuation_runs_is_checked_in_linear_time(stack: Stack) -> None:
    """The sentence splitter tried a run of dots from each dot in turn, each attempt
    reading the unclosed marker after the run: quadratic. An answer (the caller steers
    the model) of 100,000 dots and an unclosed "[1,1,…" (300 KB, within ASK_ANSWER_BYTES)
    held the gateway's event loop, every tenant's calls with it, for minutes; a 1 MB one
    for hours. A run is now tried from its first character only."""
    await create_books(stack)
    k = 100_000
    stack.fake.reply = "The spice." + "." * k + "[" + "1," * k
    answer = await stack.stub.Ask(
        gw_pb.AskRequest(collection="Books", llm_question="spice?", context_size=2),
        metadata=ALICE,
        timeout=30,
    )
    assert answer.answer == stack.fake.reply


def test_a_run_of_end_marks_splits_as_before() -> None:
    assert _texts("One... Two?! Three.\u2026 [1] Four.[2]x five") == [
        "One...",
        "Two?!",
        "Three.\u2026 [1]",
        "Four.[2]x five",
    ]


def test_a_hit_s_spans_are_made_once_per_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every sentence citing a hit split the hit's text into spans and their words anew:
    an answer of 2,000 sentences citing [1] over a 10 KB property took 3 s of the event
    loop, a 1 MB answer minutes. Made once per text: counted, not timed."""
    made: list[str] = []
    spans = citations.candidate_spans

    def counted(text: str) -> list[Span]:
        made.append(text)
        return spans(text)

    monkeypatch.setattr(citations, "candidate_spans", counted)
    body = "The spice melange is mined there. " * 50
    hits = [("id-dune", {"title": "Dune", "body": body}), ("id-emma", {"body": body})]
    answer = "Spice is mined [1]. " * 500 + "Also here [2]. Dune [1, 2]."
    checked = verify(answer, hits, ["title", "body"], 0.3)
    assert len(checked.sentences) == 502
    assert all(s.citations and s.citations[0].supported for s in checked.sentences[:500])
    assert sorted(made) == sorted(["Dune", body])  # each distinct text once


class _Counted(list[Any]):
    """A hit's spans that count the comparisons made with them (each one iterated)."""

    made = 0

    def __iter__(self) -> Any:
        for item in super().__iter__():
            _Counted.made += 1
            yield item


def test_an_answer_s_check_stops_at_max_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Checking cost sentences x the cited hit's spans, on the event loop: a 1 MB answer
    citing a 10 KB property held every tenant's calls for seconds. Past ``max_checks``
    comparisons the rest are left unchecked, flagged apart from unsupported. Counted."""
    spans = citations._word_spans
    monkeypatch.setattr(citations, "_word_spans", lambda v, k: _Counted(spans(v, k)))
    body = "The spice melange is mined there. " * 50  # 50 spans
    hits = [("id-dune", {"body": body}), ("id-emma", {"body": "Emma."})]
    answer = "Spice is mined [1]. " * 1000 + "Emma [2]."
    _Counted.made = 0
    split = -(-len(body) // citations.CHARS_PER_CHECK)  # splitting the body is charged too
    checked = verify(answer, hits, ["body"], 0.3, max_checks=1000 + split)
    assert 950 <= _Counted.made <= 1000
    found = [c for s in checked.sentences for c in s.citations]
    assert [c.unchecked for c in found] == [False] * 20 + [True] * 981
    assert all(c.supported and c.score > 0 for c in found[:20])
    assert not any(c.supported or c.score or c.property for c in found[20:])
    assert checked.coverage == pytest.approx(20 / 1001)  # unchecked count as unsupported
    event = citations.to_event(checked)
    assert [c.unchecked for c in event.citations] == [False, True]
    assert event.sentences[-1].citations[0].unchecked
    _Counted.made = 0
    whole = verify(answer, hits, ["body"], 0.3, max_checks=10**6)
    assert _Counted.made == 1000 * 50 + 1
    assert not any(c.unchecked for s in whole.sentences for c in s.citations)


async def test_the_gateway_flags_citations_past_its_max_checks(
    stack_factory: Any,
) -> None:
    # [1] costs 13 (its 42 characters split: 11; its 2 spans), as does [2]: 20 fits one.
    stack = await stack_factory(max_citation_checks=20)
    await create_books(stack)
    response = await _ask_answered(stack)
    assert [(c.number, c.unchecked, c.supported) for c in response.citations] == [
        (1, False, True),
        (2, True, False),
    ]


def test_splitting_a_huge_cited_text_is_inside_max_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Splitting a cited hit's text into spans happened before the bound was consulted:
    a 680 KB property cost 0.1 s of splitting whatever max_checks allowed. Its characters
    now count against the budget before it is split: a text that does not fit is never
    split, its citation (and every one after it) unchecked. Counted in characters split,
    not timed."""
    split: list[int] = []
    spans = citations.candidate_spans

    def counted(text: str) -> list[Span]:
        split.append(len(text))
        return spans(text)

    monkeypatch.setattr(citations, "candidate_spans", counted)
    huge = "The spice melange is mined there on a desert planet. " * 13_000  # 689 KB
    hits = [("id-dune", {"title": "Dune", "body": "A desert planet."}), ("id-big", {"body": huge})]
    answer = "A desert planet [1]. The spice is mined there [2]. Dune again [1]."
    checked = verify(answer, hits, ["title", "body"], 0.3, max_checks=50_000)
    assert sum(split) <= 50_000 * citations.CHARS_PER_CHECK
    assert len(huge) not in split
    found = [(c.number, c.unchecked) for s in checked.sentences for c in s.citations]
    assert found == [(1, False), (2, True), (1, True)]
    assert checked.sentences[0].citations[0].supported
    # Unbounded, the same text is split and checked as before.
    split.clear()
    whole = verify(answer, hits, ["title", "body"], 0.3)
    assert len(huge) in split
    assert whole.sentences[1].citations[0].supported


@pytest.mark.parametrize("max_checks", [50_000, 20_000])
def test_an_ordinary_answer_checks_the_same_within_the_bound(max_checks: int) -> None:
    """Charging the splitting changes nothing for an ordinary answer: three cited 10 KB
    passages give the same citations as an unbounded check."""
    body = "The spice melange is mined there. A desert planet of sand and worms. " * 150
    hits = [(f"id-{n}", {"title": f"Book {n}", "body": body + str(n)}) for n in range(3)]
    answer = " ".join(f"Spice is mined on the desert planet [{n % 3 + 1}]." for n in range(30))
    bounded = citations.to_event(verify(answer, hits, ["title", "body"], 0.3, max_checks))
    assert bounded == citations.to_event(verify(answer, hits, ["title", "body"], 0.3))
    assert not any(c.unchecked for c in bounded.citations)


# A marker's number past what DroppedCitation.number (int32) holds, and one of more digits
# than Python's int() reads (4300): both point at no hit. The first failed the whole Ask
# (the proto refused the number), the second the check itself (int() raised).
HUGE_MARKERS = (
    "Spice on Dune [1]. Past int32 [99999999999999999999]. Long ["
    + "7" * 5000
    + "]. Zeros ["
    + "0" * 5000
    + "9]."
)


async def test_a_marker_number_past_int32_is_dropped_and_reported(stack: Stack) -> None:
    await create_books(stack)
    stack.fake.reply = _answering(HUGE_MARKERS)
    response = await stack.stub.Ask(gw_pb.AskRequest(**_ASK_BOTH_BOOKS), metadata=ALICE)
    assert response.answer == HUGE_MARKERS
    assert [c.number for c in response.citations] == [1]
    dropped = [(d.number, d.sentence) for d in response.dropped_citations]
    assert dropped == [
        (citations.MAX_MARKER_NUMBER, 1),
        (citations.MAX_MARKER_NUMBER, 2),
        (9, 3),  # leading zeros are no digits: the INTERNAL the review found
    ]
    first, second, _ = response.dropped_citations
    assert HUGE_MARKERS[first.start : first.end] == "[99999999999999999999]"
    assert HUGE_MARKERS[second.start : second.end] == "[" + "7" * 5000 + "]"
    request = gw_pb.StreamAskRequest(**_ASK_BOTH_BOOKS)
    events = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE)]
    assert [e.WhichOneof("event") for e in events][-2:] == ["citations", "answer"]
    assert list(events[-2].citations.dropped_citations) == list(response.dropped_citations)
