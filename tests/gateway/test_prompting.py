"""Ask prompts: history order, rewriting, the context-window guard (citations: test_citations)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from gensearch.generation.v1 import generation_service_pb2 as gen_pb

from services.common.errors import InvalidArgument
from services.gateway.conversation import (
    Turn,
    clean_rewrite,
    history_messages,
    recent_turns,
    rewrite_messages,
)
from services.gateway.prompting import ContextHit, context_window_for, fit_prompt

NEWEST_FIRST = [Turn(f"q{i}", f"a{i}") for i in (5, 4, 3, 2, 1)]


def test_history_is_most_recent_turns_in_chronological_order() -> None:
    turns = recent_turns(NEWEST_FIRST, 3)
    assert [t.question for t in turns] == ["q3", "q4", "q5"]
    messages = history_messages(turns)
    assert [m.role for m in messages] == [gen_pb.ROLE_USER, gen_pb.ROLE_ASSISTANT] * 3
    assert [m.content for m in messages] == ["q3", "a3", "q4", "a4", "q5", "a5"]
    assert recent_turns(NEWEST_FIRST, 0) == []


def test_rewrite_prompt_holds_transcript_and_question() -> None:
    messages = rewrite_messages(recent_turns(NEWEST_FIRST, 2), "and the second one?")
    assert messages[0].role == gen_pb.ROLE_SYSTEM
    text = messages[1].content
    assert text.index("User: q4") < text.index("User: q5") < text.index("and the second one?")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"dune sequel author"', "dune sequel author"),
        ("\n  Query: dune sequel\nbecause...", "dune sequel"),
        ("   ", "fallback"),
    ],
)
def test_clean_rewrite(raw: str, expected: str) -> None:
    assert clean_rewrite(raw, "fallback") == expected


def _hits(n: int) -> list[ContextHit]:
    return [ContextHit(f"id{i}", {"title": f"T{i}", "body": "word " * 50}) for i in range(n)]


def test_prompt_layout() -> None:
    prompt = fit_prompt(
        system_prompt="SYS",
        turns=[Turn("old q", "old a")],
        hits=_hits(2),
        context_fields=["title"],
        user_instructions="Be brief.",
        question="What?",
        context_window=8192,
        answer_tokens=256,
    )
    roles = [m.role for m in prompt.messages]
    assert roles == [gen_pb.ROLE_SYSTEM, gen_pb.ROLE_USER, gen_pb.ROLE_ASSISTANT, gen_pb.ROLE_USER]
    last = prompt.messages[-1].content
    assert last.index("[1]\ntitle: T0") < last.index("[2]\ntitle: T1") < last.index("Be brief.")
    assert last.endswith("Question: What?")
    assert "body" not in last
    assert (prompt.trimmed_turns, prompt.trimmed_hits) == (0, 0)


def test_guard_trims_oldest_history_first_then_lowest_hits() -> None:
    turns = [Turn(f"question {i} " * 20, f"answer {i} " * 20) for i in range(6)]
    common = dict(
        system_prompt="SYS",
        context_fields=["title", "body"],
        user_instructions="",
        question="What?",
        answer_tokens=100,
    )
    full = fit_prompt(turns=turns, hits=_hits(5), context_window=100_000, **common)  # type: ignore[arg-type]
    assert full.trimmed_turns == 0
    # A window that fits the hits and two turns: four oldest turns go, no hit does.
    hits_only = fit_prompt(turns=[], hits=_hits(5), context_window=100_000, **common)  # type: ignore[arg-type]
    per_turn = (full.estimated_tokens - hits_only.estimated_tokens) // 6
    window = hits_only.estimated_tokens + 100 + 2 * per_turn + 5
    prompt = fit_prompt(turns=turns, hits=_hits(5), context_window=window, **common)  # type: ignore[arg-type]
    assert (prompt.trimmed_turns, prompt.trimmed_hits) == (4, 0)
    history = [m.content for m in prompt.messages[1:-1]]
    assert history[0].startswith("question 4") and history[2].startswith("question 5")
    # Smaller still: all history goes, then hits from the bottom.
    small = fit_prompt(
        turns=turns,
        hits=_hits(5),
        context_window=hits_only.estimated_tokens,
        **common,  # type: ignore[arg-type]
    )
    assert small.trimmed_turns == 6 and 0 < small.trimmed_hits < 5
    last = small.messages[-1].content
    assert "title: T0" in last and "title: T4" not in last
    assert small.estimated_tokens <= hits_only.estimated_tokens - 100


def test_guard_refuses_a_question_that_cannot_fit() -> None:
    with pytest.raises(InvalidArgument) as err:
        fit_prompt(
            system_prompt="SYS",
            turns=[],
            hits=[],
            context_fields=[],
            user_instructions="",
            question="long " * 1000,
            context_window=512,
            answer_tokens=128,
        )
    assert err.value.field == "llm_question"
    assert err.value.reason == "PROMPT_TOO_LONG"
    metadata = err.value.metadata
    assert (metadata["context_window"], metadata["answer_tokens"]) == ("512", "128")
    assert int(metadata["tokens"]) > 512 - 128


def test_guard_past_the_rendered_limit_says_the_limit_as_a_hit_would() -> None:
    # A hit's prompt past GENSEARCH_GATEWAY_MAX_RENDERED_PROMPT_CHARS says max_chars and
    # setting in its ErrorInfo metadata; an Ask's question past it said neither.
    with pytest.raises(InvalidArgument) as err:
        fit_prompt(
            system_prompt="SYS",
            turns=[],
            hits=[],
            context_fields=[],
            user_instructions="",
            question="long " * 100,
            context_window=100_000,
            answer_tokens=128,
            max_chars=200,
        )
    assert (err.value.field, err.value.reason) == ("llm_question", "PROMPT_TOO_LONG")
    assert err.value.metadata == {
        "field": "llm_question",
        "max_chars": "200",
        "setting": "GENSEARCH_GATEWAY_MAX_RENDERED_PROMPT_CHARS",
    }


def test_context_window_by_model_name() -> None:
    windows = {"smollm2": 2048, "gpt-4o": 128_000, "gpt-4o-mini": 64_000}
    assert context_window_for("SmolLM2-135M-Instruct", windows, 8192) == 2048
    assert context_window_for("gpt-4o-mini-2024", windows, 8192) == 64_000
    assert context_window_for("llama3", windows, 8192) == 8192


class CountedNames(list[str]):
    """A selection of context fields that counts how often it is read whole."""

    reads = 0

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return super().__iter__()


def test_an_ask_prompt_reads_its_context_fields_once_not_once_a_hit() -> None:
    """The context fields (up to a schema's 10,000 names) were made into a selection once
    for every hit of every piece the prompt counts and builds: hits x names. Now once a
    piece (fit_prompt, the question message)."""
    fields = CountedNames(["title", "body", *(f"unused{i}" for i in range(100))])
    prompt = fit_prompt(
        system_prompt="SYS",
        turns=[],
        hits=_hits(40),
        context_fields=fields,
        user_instructions="",
        question="What?",
        context_window=100_000,
        answer_tokens=256,
        max_chars=1_000_000,
    )
    assert prompt.hits_used == 40
    assert fields.reads <= 3, fields.reads
