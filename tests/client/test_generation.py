"""GenerationService through the client (``client.generate.models``, ``.complete`` and
``client.generate_stream.complete``), on the real stack with the loopback fake LLM (which
echoes the last user message)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from gensearch.client import AsyncGensearch, Gensearch, errors, types

from services.generation.settings import ANYSCALE_MODELS, LOCAL_MODEL
from tests.cli.conftest import RunningStack


@pytest.fixture
async def client(running_stack: RunningStack) -> AsyncIterator[AsyncGensearch]:
    async with AsyncGensearch(running_stack.address, timeout=60) as c:
        yield c


async def test_models_are_typed_values(client: AsyncGensearch) -> None:
    models = await client.generate.models()
    assert isinstance(models, types.Models) and models.default_provider == "local"
    anyscale = models.provider("AnyScale")
    assert isinstance(anyscale, types.Provider)
    assert anyscale.models == list(ANYSCALE_MODELS) and len(anyscale.models) == 6
    assert anyscale.default_model == ANYSCALE_MODELS[0] and anyscale.models_checked
    assert anyscale.kind == "openai_compatible" and anyscale.context_window == 4096
    assert models.provider().name == "local" and models.provider().default_model == LOCAL_MODEL
    assert {"openai", "anyscale", "local"} <= {p.name for p in models}
    assert models.raw.default_provider == "local"
    assert models.max_tokens_limit == 1_000_000  # the generation service's default
    assert not anyscale.base_url and not anyscale.api_key_env  # the operator's own
    with pytest.raises(KeyError):
        models.provider("nobody")


async def test_complete_a_prompt_or_messages(
    client: AsyncGensearch, running_stack: RunningStack
) -> None:
    done = await client.generate.complete("Say hello", max_tokens=1, debug=True)
    assert isinstance(done, types.Completion)
    assert (str(done), done.finish_reason, done.provider) == ("Say", "length", "local")
    assert done.model == LOCAL_MODEL and done.upstream_calls == 1 and done.attempts == 1
    assert done.usage and done.usage.completion_tokens == 1
    assert done.debug and json.loads(done.debug.request_body)["max_tokens"] == 1

    chat = [
        {"role": "user", "content": "first question"},
        types.ChatMessage("assistant", "first answer"),
        {"role": "user", "content": "second question"},
    ]
    done = await client.generate.complete(chat, system="Be brief.", temperature=0.5)
    assert done.text == "second question"
    sent = running_stack.fake.chat_requests[-1].json
    assert [m["role"] for m in sent["messages"]] == ["system", "user", "assistant", "user"]
    assert sent["messages"][0]["content"] == "Be brief." and sent["temperature"] == 0.5

    with pytest.raises(errors.UnknownModelError) as caught:
        await client.generate.complete("hi", model="no-such-model")
    assert caught.value.field == "model"
    with pytest.raises(errors.UrlNotAllowedError) as caught:
        await client.generate.complete("hi", base_url="http://169.254.169.254/v1")
    assert caught.value.field == "base_url"


async def test_complete_streamed(client: AsyncGensearch) -> None:
    events = [e async for e in client.generate_stream.complete("one two three")]
    deltas = [e for e in events if isinstance(e, types.CompletionDelta)]
    assert "".join(d.delta for d in deltas) == "one two three" and len(deltas) > 1
    last = events[-1]
    assert isinstance(last, types.CompletionEvent)
    assert last.completion.text == "one two three"
    assert last.completion.finish_reason == "stop" and last.completion.upstream_calls == 1


def test_blocking(running_stack: RunningStack) -> None:
    with Gensearch(running_stack.address) as client:
        assert client.generate.models().provider("anyscale").models == list(ANYSCALE_MODELS)
        assert client.generate.complete("blocking call").text == "blocking call"
        events = list(client.generate_stream.complete("streamed too"))
        assert events[-1].completion.text == "streamed too"
