"""Generate, StreamGenerate and ListModels against a fake OpenAI-compatible server."""

from __future__ import annotations

import json

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from tests.generation.conftest import Service, StartService, fake_provider, user
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import bad_request_field, error_info, failure_of


async def test_generate_returns_text_usage_and_finish_reason(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.reply = "Paris is the capital of France"
    reply = await service.stub.Generate(
        pb.GenerateRequest(
            messages=[
                pb.Message(role=pb.ROLE_SYSTEM, content="Answer briefly."),
                user("What is the capital of France?"),
            ]
        ),
        timeout=5,
    )
    assert reply.text == "Paris is the capital of France"
    assert reply.model == "fake-model"
    assert reply.provider == "fake"
    assert reply.finish_reason == "stop"
    assert reply.usage.prompt_tokens == 8  # the fake counts words
    assert reply.usage.completion_tokens == 6
    assert reply.usage.total_tokens == 14
    assert not reply.usage.estimated
    assert not reply.HasField("debug")
    sent = fake.chat_requests[-1].json
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert sent["model"] == "fake-model"
    assert "stream" not in sent
    assert "temperature" not in sent  # unset: the provider's default applies


async def test_parameters_reach_upstream(service: Service, fake: FakeOpenAI) -> None:
    fake.reply = "one two three four five STOP six"
    reply = await service.stub.Generate(
        pb.GenerateRequest(
            messages=[user("count")],
            model="other-model",
            temperature=0.3,
            top_p=0.9,
            max_tokens=3,
            stop=["STOP"],
        ),
        timeout=5,
    )
    assert reply.text == "one two three"
    assert reply.finish_reason == "length"
    sent = fake.chat_requests[-1].json
    assert sent["model"] == "other-model"
    assert sent["temperature"] == 0.3
    assert sent["top_p"] == 0.9
    assert sent["max_tokens"] == 3
    assert sent["stop"] == ["STOP"]


async def test_provider_default_temperature(fake: FakeOpenAI, start_service: StartService) -> None:
    svc = await start_service([fake_provider(fake, temperature=0.0)])
    await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    assert fake.chat_requests[-1].json["temperature"] == 0.0
    await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")], temperature=1.5), timeout=5)
    assert fake.chat_requests[-1].json["temperature"] == 1.5


async def test_debug_returns_the_exact_body_sent(service: Service, fake: FakeOpenAI) -> None:
    reply = await service.stub.Generate(
        pb.GenerateRequest(messages=[user("hello")], debug=True, temperature=0.5), timeout=5
    )
    assert reply.debug.url == f"{fake.base_url}/chat/completions"
    assert reply.debug.attempts == reply.attempts == 1  # deprecated, still filled
    sent = fake.chat_requests[-1]
    assert json.loads(reply.debug.request_body) == sent.json
    assert reply.debug.request_body == json.dumps(
        sent.json, ensure_ascii=False, separators=(",", ":")
    )


async def test_usage_estimated_when_upstream_reports_none(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.include_usage = False
    fake.reply = "x" * 40
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("y" * 80)]), timeout=5)
    assert reply.usage.estimated
    # The shared estimate (services/common/tokens.py): ~3.5 characters a token, rounded up.
    assert reply.usage.prompt_tokens == 23
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == 35

    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("y" * 80)]), timeout=5
        )
    ]
    assert chunks[-1].usage.estimated
    assert chunks[-1].usage.completion_tokens == 12


async def test_stream_generate_deltas_then_final(service: Service, fake: FakeOpenAI) -> None:
    fake.reply = "streaming is fun to watch"
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("go")], debug=True), timeout=5
        )
    ]
    deltas = [c.delta for c in chunks[:-1]]
    assert deltas == ["streaming", " is", " fun", " to", " watch"]
    final = chunks[-1]
    assert final.delta == ""
    assert final.finish_reason == "stop"
    assert final.model == "fake-model"
    assert final.provider == "fake"
    assert final.usage.completion_tokens == 5
    assert not final.usage.estimated
    sent = fake.chat_requests[-1].json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert json.loads(final.debug.request_body) == sent
    assert all(not c.HasField("usage") for c in chunks[:-1])


async def test_stream_with_max_tokens_reports_length(service: Service, fake: FakeOpenAI) -> None:
    fake.reply = "a b c d e f"
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("go")], max_tokens=2), timeout=5
        )
    ]
    assert "".join(c.delta for c in chunks) == "a b"
    assert chunks[-1].finish_reason == "length"


async def test_list_models(
    service: Service, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANYSCALE_APIKEY", "esecret-anyscale-key-123")
    reply = await service.stub.ListModels(pb.ListModelsRequest(), timeout=5)
    assert reply.default_provider == "fake"
    by_name = {p.name: p for p in reply.providers}
    assert {"openai", "anyscale", "vllm", "ollama", "local", "fake"} <= set(by_name)
    anyscale = by_name["anyscale"]
    assert anyscale.default_model == "meta-llama/Llama-2-70b-chat-hf"
    assert anyscale.base_url == "https://api.endpoints.anyscale.com/v1"
    assert anyscale.api_key_env.split(",")[0] == "ANYSCALE_APIKEY"
    assert anyscale.api_key_configured
    assert anyscale.kind == pb.PROVIDER_KIND_OPENAI_COMPATIBLE
    assert by_name["local"].models == ["smollm2-135m-instruct"]
    assert by_name["local"].context_window == 2048
    assert by_name["fake"].base_url == fake.base_url
    assert by_name["fake"].max_concurrency == 8
    assert "esecret-anyscale-key-123" not in str(reply)


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"messages": []}, "messages"),
        ({"messages": [pb.Message(role=pb.ROLE_UNSPECIFIED, content="x")]}, "messages[0].role"),
        ({"messages": [user("a"), pb.Message(role=7, content="x")]}, "messages[1].role"),
        ({"temperature": 2.5}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        (
            {"messages": [user("a"), pb.Message(role=pb.ROLE_USER, content="  ")]},
            "messages[1].content",
        ),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": [""]}, "stop[0]"),
        ({"provider": "nope"}, "provider"),
        # A model name goes upstream and into spans: bounded and printable, whether or
        # not the provider checks a known list (this one does not).
        ({"model": "m" * 257}, "model"),
        ({"model": "fake-model\nX-Injected: 1"}, "model"),
        ({"model": "a\x00b"}, "model"),
        ({"fallback": [pb.ModelChoice(provider="fake", model="a\tb")]}, "fallback[0].model"),
        # Spaces alone are no name: they were stripped into the provider's default model.
        ({"model": "   "}, "model"),
        ({"fallback": [pb.ModelChoice(provider="fake", model=" ")]}, "fallback[0].model"),
        # Nor are they a provider: they were stripped into the default provider (the
        # gateway refuses them, the service answered them).
        ({"provider": "   "}, "provider"),
        ({"provider": "\t"}, "provider"),
    ],
)
async def test_invalid_requests_name_the_field(
    service: Service, fake: FakeOpenAI, request_fields: dict[str, object], field: str
) -> None:
    fields: dict[str, object] = {"messages": [user("hi")], **request_fields}
    for call, message in (
        (service.stub.Generate, pb.GenerateRequest),
        (service.stub.StreamGenerate, pb.StreamGenerateRequest),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            result = call(message(**fields), timeout=5)  # type: ignore[operator]
            if hasattr(result, "__aiter__"):
                async for _ in result:
                    pass
            else:
                await result
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(caught.value).metadata["field"] == field
    assert fake.chat_requests == []


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"messages": [user("hi"), user("MARK")]}, "messages[1].content"),
        ({"messages": [user("hi")], "stop": ["ok", "MARK"]}, "stop[1]"),
        (
            {"messages": [user("hi")], "fallback": [pb.ModelChoice(provider="MARK")]},
            "fallback[0].provider",
        ),
    ],
)
async def test_a_string_that_is_not_utf8_is_named(
    service: Service, fake: FakeOpenAI, request_fields: dict[str, object], field: str
) -> None:
    """A string field whose bytes are not UTF-8 (hand-built wire bytes: no protobuf
    library sends them) was INVALID_ARGUMENT / MALFORMED_REQUEST naming only the message
    type, as protobuf's own error says no more: the client could not tell which of its
    strings to fix. Now the status names the field, reason and message_type unchanged."""
    for method, message in (
        ("Generate", pb.GenerateRequest),
        ("StreamGenerate", pb.StreamGenerateRequest),
    ):
        # "MARK" is four bytes: the same length, so every length prefix still holds.
        data = message(**request_fields).SerializeToString().replace(b"MARK", b"\xffM\xfeK")  # type: ignore[operator]
        path = f"/gensearch.generation.v1.GenerationService/{method}"
        if method == "Generate":
            caught = await failure_of(service.channel.unary_unary(path)(data, timeout=5))
        else:
            caught = await failure_of(service.channel.unary_stream(path)(data, timeout=5))
        assert caught.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.details()
        info = error_info(caught)
        assert info.reason == "MALFORMED_REQUEST"
        assert info.metadata["message_type"] == message.DESCRIPTOR.full_name
        assert info.metadata["field"] == field
        assert bad_request_field(caught) == field
        assert f"{field} is not valid UTF-8" in (caught.details() or "")
    assert fake.chat_requests == []
    reply = await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    assert reply.text == "hi"  # the service still answers


async def test_unknown_model_from_a_fixed_list(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service([fake_provider(fake, models=["fake-model", "fake-large"])])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")], model="gpt-9"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.metadata["field"] == "model"
    assert info.reason == "UNKNOWN_MODEL"
    assert fake.chat_requests == []
    ok = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], model="fake-large"), timeout=5
    )
    assert ok.model == "fake-large"


async def test_unknown_model_upstream_404(service: Service, fake: FakeOpenAI) -> None:
    fake.models = ["fake-model"]
    fake.reject_unknown_models = True
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], model="gpt-9"), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.metadata["field"] == "model"
    assert "gpt-9" in (caught.value.details() or "")
    assert len(fake.chat_requests) == 1  # a 404 is not retried


async def test_context_window_guard(fake: FakeOpenAI, start_service: StartService) -> None:
    svc = await start_service([fake_provider(fake, context_window=100)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(pb.GenerateRequest(messages=[user("w" * 1000)]), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).reason == "CONTEXT_WINDOW_EXCEEDED"
    assert fake.chat_requests == []


@pytest.mark.parametrize("streamed", [False, True])
async def test_max_tokens_beyond_the_context_window_is_refused_before_any_call(
    fake: FakeOpenAI, start_service: StartService, streamed: bool
) -> None:
    """QA: 2147483647 was sent upstream as it was."""
    svc = await start_service([fake_provider(fake, context_window=4096)])
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streamed:
            request = pb.StreamGenerateRequest(messages=[user("hi")], max_tokens=4097)
            async for _ in svc.stub.StreamGenerate(request, timeout=5):
                pass
        else:
            await svc.stub.Generate(
                pb.GenerateRequest(messages=[user("hi")], max_tokens=4097), timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("CONTEXT_WINDOW_EXCEEDED", "max_tokens")
    assert info.metadata["context_window"] == "4096"
    assert fake.chat_requests == []
    # The whole window is still a value a caller may ask for.
    await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")], max_tokens=4096), timeout=5)
    assert fake.chat_requests[-1].json["max_tokens"] == 4096


async def test_max_tokens_above_the_service_limit_is_refused(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """A provider with no declared context window is bounded by MAX_TOKENS_LIMIT."""
    svc = await start_service([fake_provider(fake)], max_tokens_limit=1000)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], max_tokens=1001), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"], info.metadata["max"]) == (
        "OUT_OF_RANGE",
        "max_tokens",
        "1000",
    )
    assert fake.chat_requests == []
    await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")], max_tokens=1000), timeout=5)


async def test_unset_max_tokens_means_provider_default(service: Service, fake: FakeOpenAI) -> None:
    await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    assert "max_tokens" not in fake.chat_requests[-1].json


async def test_provider_default_max_tokens(fake: FakeOpenAI, start_service: StartService) -> None:
    # Like temperature: the provider's max_tokens when the request sets none, the request's
    # own otherwise (a model that rambles is stopped there, not at its context's end).
    svc = await start_service([fake_provider(fake, max_tokens=7)])
    await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    assert fake.chat_requests[-1].json["max_tokens"] == 7
    stream = svc.stub.StreamGenerate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    async for _ in stream:
        pass
    assert fake.chat_requests[-1].json["max_tokens"] == 7
    await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")], max_tokens=30), timeout=5)
    assert fake.chat_requests[-1].json["max_tokens"] == 30


@pytest.mark.parametrize("blank", [" ", "\t\n"])
async def test_a_blank_base_url_is_refused_not_read_as_unset(
    service: Service, fake: FakeOpenAI, blank: str
) -> None:
    # Before: stripped to "" and sent to the operator's endpoint, with the operator's key.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")], base_url=blank))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == "base_url"
    assert not fake.chat_requests


@pytest.mark.parametrize(
    ("setting", "fields", "field"),
    [
        ("max_model_chars", {"model": "m" * 21}, "model"),
        (
            "max_model_chars",
            {"fallback": [pb.ModelChoice(provider="fake", model="m" * 21)]},
            "fallback[0].model",
        ),
        ("max_url_chars", {"base_url": "https://a.example/" + "x" * 3}, "base_url"),
    ],
)
async def test_model_name_and_url_bounds_are_settings_the_refusal_names(
    fake: FakeOpenAI,
    start_service: StartService,
    setting: str,
    fields: dict[str, object],
    field: str,
) -> None:
    """GENSEARCH_GENERATION_MAX_MODEL_CHARS and _MAX_URL_CHARS (were a fixed 256 and
    2048, named by no refusal; a long URL was PERMISSION_DENIED)."""
    service = await start_service([fake_provider(fake)], **{setting: 20})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")], **fields))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == ("FIELD_TOO_LARGE", field)
    assert (info.metadata["max_chars"], info.metadata["setting"]) == (
        "20",
        f"GENSEARCH_GENERATION_{setting.upper()}",
    )
    assert fake.chat_requests == []
