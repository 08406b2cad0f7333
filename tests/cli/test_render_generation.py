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
