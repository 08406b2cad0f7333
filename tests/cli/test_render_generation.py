"""How a hit's own generation error is printed (no stack needed)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from gensearch.client import types as t

from services.cli.render import describe_generation, stream_search


def test_a_hit_without_an_llm_key_says_how_the_cli_sends_one() -> None:
    # Before: "error: UNAUTHENTICATED: provider 'openai' needs an API key: send metadata
    # 'x-openai-api-key' or set …", with no word of --llm-key.
    gen = t.GenerationResult(
        error=t.GenerationError(
            code=16,
            status="UNAUTHENTICATED",
            message="provider 'openai' needs an API key: send metadata 'x-openai-api-key' "
            "or set OPENAI_APIKEY or OPENAI_API_KEY",
            reason="MISSING_PROVIDER_API_KEY",
        )
    )
    line = describe_generation(gen)
    assert line.startswith("error: UNAUTHENTICATED: provider 'openai' needs an API key")
    assert line.endswith("; with gensearch: --llm-key openai=KEY")


def test_other_errors_are_printed_as_they_come() -> None:
    gen = t.GenerationResult(
        error=t.GenerationError(code=4, status="DEADLINE_EXCEEDED", message="too slow")
    )
    assert describe_generation(gen) == "error: DEADLINE_EXCEEDED: too slow"


async def _events(*events: t.SearchEvent) -> AsyncIterator[t.SearchEvent]:
    for event in events:
        yield event


def test_one_streamed_hit_is_singular(capsys: pytest.CaptureFixture[str]) -> None:
    # Before: "1 hits:".
    hit = t.Hit(id="h1", properties={"title": "Dune"}, score=1.0)
    asyncio.run(stream_search(_events(t.HitsEvent([hit]), t.DoneEvent()), per_hit=False))
    assert capsys.readouterr().out.startswith("1 hit:\n[1] Dune")
    asyncio.run(stream_search(_events(t.HitsEvent([hit, hit]), t.DoneEvent()), per_hit=False))
    assert capsys.readouterr().out.startswith("2 hits:\n")


def test_a_restarted_grouped_stream_shows_only_the_retry(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Before: the deltas of the answer the schema refused were printed, then the retry's
    # right after them, as one text ('not json{"a": 1}').
    hit = t.Hit(id="h1", properties={"title": "Dune"}, score=1.0)
    done = t.GenerationResult(result='{"a": 1}', structured={"a": 1})
    held = _events(
        t.TokenEvent(grouped=True, delta="not json"),
        t.TokenEvent(grouped=True, delta='{"a": 1}', restart=True),
        t.HitsEvent([hit]),
        t.GroupedEvent(done),
        t.DoneEvent(),
    )
    asyncio.run(stream_search(held, per_hit=False))
    out = capsys.readouterr().out
    assert "not json" not in out and '{"a": 1}' in out

    live = _events(
        t.HitsEvent([hit]),
        t.TokenEvent(grouped=True, delta="not json"),
        t.TokenEvent(grouped=True, delta='{"a": 1}', restart=True),
        t.GroupedEvent(done),
        t.DoneEvent(),
    )
    asyncio.run(stream_search(live, per_hit=False))
    out = capsys.readouterr().out
    assert out.index("not json") < out.index("(discarded") < out.index('{"a": 1}')
