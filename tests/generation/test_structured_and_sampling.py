"""Sampling parameters, JSON-schema output, per-request base URLs and known models on the
generation service alone, against the loopback fake."""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb
from google.protobuf import json_format, struct_pb2

from services.generation.settings import ANYSCALE_MODELS
from tests.generation.conftest import FAKE_KEY_ENV, Service, StartService, fake_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.rpc import error_info

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"title": {"type": "string"}, "year": {"type": "integer"}},
    "required": ["title", "year"],
    "additionalProperties": False,
}


def struct(value: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(value)
    return s


def fmt(schema: dict[str, Any] | None = None, **fields: Any) -> pb.ResponseFormat:
    return pb.ResponseFormat(json_schema=struct(schema or SCHEMA), **fields)


async def drain(call: Any) -> list[Any]:
    return [event async for event in call]


async def test_every_sampling_parameter_reaches_upstream_as_sent(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.reply = '{"title": "Dune", "year": 1965}'
    fields: dict[str, Any] = {
        "messages": [user("hi")],
        "top_p": 0.5,
        "stop": ["END", "###"],
        "frequency_penalty": -1.5,
        "presence_penalty": 0.25,
        "seed": 42,
        "response_format": fmt(name="book", strict=True),
    }
    await service.stub.Generate(pb.GenerateRequest(**fields), timeout=5)
    await drain(service.stub.StreamGenerate(pb.StreamGenerateRequest(**fields), timeout=5))
    for request in fake.chat_requests:
        sent = request.json
        assert sent["top_p"] == 0.5
        assert sent["stop"] == ["END", "###"]
        assert sent["frequency_penalty"] == -1.5
        assert sent["presence_penalty"] == 0.25
        assert sent["seed"] == 42
        assert sent["response_format"] == {
            "type": "json_schema",
            "json_schema": {"name": "book", "schema": SCHEMA, "strict": True},
        }


async def test_unset_parameters_are_not_sent(service: Service, fake: FakeOpenAI) -> None:
    await service.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    sent = fake.chat_requests[-1].json
    for name in ("top_p", "stop", "frequency_penalty", "presence_penalty", "seed"):
        assert name not in sent
    assert "response_format" not in sent
    # Zero is a value, not "unset": proto3 optional keeps them apart.
    await service.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], seed=0, frequency_penalty=0.0), timeout=5
    )
    sent = fake.chat_requests[-1].json
    assert sent["seed"] == 0 and sent["frequency_penalty"] == 0.0


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"frequency_penalty": 2.5}, "frequency_penalty"),
        ({"presence_penalty": -3.0}, "presence_penalty"),
        ({"presence_penalty": float("inf")}, "presence_penalty"),
        ({"stop": ["x" * 300]}, "stop[0]"),
        ({"response_format": pb.ResponseFormat()}, "response_format.json_schema"),
        ({"response_format": fmt({"type": "array"})}, "response_format.json_schema"),
        (
            {"response_format": fmt({"type": "object", "properties": {"a": {"type": 5}}})},
            "response_format.json_schema",
        ),
        (
            {"response_format": fmt({"type": "object", "properties": {"a": {"$ref": "http://x"}}})},
            "response_format.json_schema",
        ),
        ({"response_format": fmt(name="no spaces")}, "response_format.name"),
        # A Struct holds NaN and infinity, JSON does not: json_format raised ValueError,
        # INTERNAL 'internal error'.
        (
            {
                "response_format": fmt(
                    {"type": "object", "properties": {"x": {"maximum": float("nan")}}}
                )
            },
            "response_format.json_schema.properties.x.maximum",
        ),
        (
            {"response_format": fmt({"type": "object", "enum": [{"a": float("-inf")}]})},
            "response_format.json_schema.enum[0].a",
        ),
        # A reference to nothing was found only when validating the answer: two upstream
        # calls, then FAILED_PRECONDITION / INVALID_OUTPUT, as if the model were at fault.
        (
            {
                "response_format": fmt(
                    {"type": "object", "properties": {"a": {"$ref": "#/$defs/b"}}}
                )
            },
            "response_format.json_schema",
        ),
        (
            {"response_format": fmt({"type": "object", "items": {"$dynamicRef": "#nowhere"}})},
            "response_format.json_schema",
        ),
    ],
)
async def test_bad_values_are_refused_naming_the_field(
    service: Service, fake: FakeOpenAI, fields: dict[str, Any], field: str
) -> None:
    for call, message in (
        (service.stub.Generate, pb.GenerateRequest),
        (service.stub.StreamGenerate, pb.StreamGenerateRequest),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            result = call(message(messages=[user("hi")], **fields), timeout=5)
            if hasattr(result, "__aiter__"):
                await drain(result)
            else:
                await result
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error_info(caught.value).metadata["field"] == field
    assert fake.chat_requests == []


async def test_a_too_deep_schema_is_refused(fake: FakeOpenAI, start_service: StartService) -> None:
    svc = await start_service([fake_provider(fake)], max_schema_depth=4)
    deep: dict[str, Any] = {"type": "object"}
    for _ in range(5):
        deep = {"type": "object", "properties": {"a": deep}}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], response_format=fmt(deep)), timeout=5
        )
    assert error_info(caught.value).metadata["field"] == "response_format.json_schema"


async def test_a_valid_answer_comes_back_as_a_struct(service: Service, fake: FakeOpenAI) -> None:
    fake.reply = '```json\n{"title": "Dune", "year": 1965}\n```'
    reply = await service.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], response_format=fmt()), timeout=5
    )
    assert json_format.MessageToDict(reply.structured) == {"title": "Dune", "year": 1965}
    assert reply.text.startswith("```json")
    assert not reply.corrected
    assert len(fake.chat_requests) == 1


async def test_an_answer_escaping_half_a_surrogate_pair_gets_a_replacement_character(
    service: Service, fake: FakeOpenAI
) -> None:
    # The model's own JSON escapes a lone half ("\ud83d", in a value and in a key):
    # json.loads keeps it, no Struct can carry it, and the call failed INTERNAL.
    text = '{"title": "Dune \\ud83d", "\\udc00year": 1965, "ok": "\\ud83d\\ude00"}'
    fake.reply = text
    schema = {"type": "object", "required": ["title"]}
    reply = await service.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], response_format=fmt(schema)), timeout=5
    )
    expected = {"title": "Dune \ufffd", "\ufffdyear": 1965, "ok": "\U0001f600"}
    assert json_format.MessageToDict(reply.structured) == expected
    assert reply.text == text and not reply.corrected
    chunks = [
        c
        async for c in service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")], response_format=fmt(schema)),
            timeout=5,
        )
    ]
    assert json_format.MessageToDict(chunks[-1].structured) == expected
    assert len(fake.chat_requests) == 2


async def test_an_invalid_answer_gets_one_corrective_retry(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.enqueue(
        Behaviour.ok(text='{"title": "Dune", "year": "nineteen"}'),
        Behaviour.ok(text='{"title": "Dune", "year": 1965}'),
    )
    reply = await service.stub.Generate(
        pb.GenerateRequest(messages=[user("extract")], response_format=fmt()), timeout=5
    )
    assert json_format.MessageToDict(reply.structured) == {"title": "Dune", "year": 1965}
    assert reply.corrected
    first, second = fake.chat_requests
    sent = second.json["messages"]
    assert sent[0] == {"role": "user", "content": "extract"}
    assert sent[1] == {"role": "assistant", "content": '{"title": "Dune", "year": "nineteen"}'}
    assert sent[2]["role"] == "user" and "at year" in sent[2]["content"]
    assert second.json["response_format"] == first.json["response_format"]
    # The caller pays for both calls.
    assert reply.usage.completion_tokens == 4 + 4


async def test_invalid_twice_is_invalid_output(service: Service, fake: FakeOpenAI) -> None:
    fake.reply = "not json at all"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], response_format=fmt()), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "INVALID_OUTPUT"
    assert len(fake.chat_requests) == 2  # one corrective retry, no more


@pytest.mark.parametrize("streamed", [False, True])
async def test_an_answer_cut_at_max_tokens_says_so(
    service: Service, fake: FakeOpenAI, streamed: bool
) -> None:
    """JSON cut short by max_tokens (finish_reason "length") is INVALID_OUTPUT whose
    message says why and what to change: "the answer is not JSON (Unterminated string…)"
    alone sent a user (the bundled model, a small max_tokens) looking at the schema."""
    fake.reply = '{"title": "Dune", "year": 1965}'
    fields: dict[str, Any] = dict(messages=[user("hi")], response_format=fmt(), max_tokens=2)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if streamed:
            await drain(service.stub.StreamGenerate(pb.StreamGenerateRequest(**fields), timeout=5))
        else:
            await service.stub.Generate(pb.GenerateRequest(**fields), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(caught.value)
    assert (info.reason, info.metadata["finish_reason"]) == ("INVALID_OUTPUT", "length")
    assert "cut at max_tokens" in (caught.value.details() or "")
    assert len(fake.chat_requests) == 2


async def test_an_invalid_answer_not_cut_names_no_max_tokens(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.reply = "not json at all"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], response_format=fmt()), timeout=5
        )
    assert "max_tokens" not in (caught.value.details() or "")
    assert "finish_reason" not in error_info(caught.value).metadata


async def test_a_pattern_python_cannot_compile_is_invalid_argument(
    service: Service, fake: FakeOpenAI
) -> None:
    schema = {"type": "object", "properties": {"t": {"type": "string", "pattern": "a{4294967296}"}}}
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], response_format=fmt(schema)), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == "response_format.json_schema"
    assert fake.chat_requests == []


@pytest.mark.parametrize(
    ("schema", "answer"),
    [
        ({"type": "object"}, '{"a": ' + "[" * 5000 + "]" * 5000 + "}"),
        ({"type": "object"}, '{"a": ' * 40 + "1" + "}" * 40),
    ],
)
async def test_a_too_deep_answer_is_invalid_output(
    service: Service, fake: FakeOpenAI, schema: dict[str, Any], answer: str
) -> None:
    # Before: RecursionError or a Struct protobuf cannot decode, so INTERNAL.
    fake.reply = answer
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], response_format=fmt(schema)), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "INVALID_OUTPUT"


async def test_endless_refs_are_invalid_argument_before_any_call(
    service: Service, fake: FakeOpenAI
) -> None:
    # Before: INVALID_OUTPUT (FAILED_PRECONDITION) after two upstream calls, the answer and
    # its corrective retry, as if the model were at fault.
    schema = {
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/x"}},
        "$defs": {"x": {"$ref": "#/$defs/x"}},
    }
    fake.reply = '{"a": 1}'
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], response_format=fmt(schema)), timeout=5
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert info.reason == "INVALID_SCHEMA"
    assert info.metadata["field"] == "response_format.json_schema"
    assert fake.chat_requests == []


async def test_an_integer_too_long_for_python_is_a_number_out_of_range(
    service: Service, fake: FakeOpenAI
) -> None:
    # json.loads refused it with Python's own advice ('use sys.set_int_max_str_digits() to
    # increase the limit'), told the caller and, in the corrective retry, the model.
    fake.reply = '{"n": 1' + "0" * 5000 + "}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], response_format=fmt({"type": "object"})),
            timeout=5,
        )
    assert error_info(caught.value).reason == "INVALID_OUTPUT"
    assert "out of the range of a double" in caught.value.details()
    corrective = fake.chat_requests[1].json["messages"][-1]["content"]
    assert "sys." not in caught.value.details() and "sys." not in corrective


async def test_a_pattern_regex_would_write_out_is_invalid_argument_before_any_call(
    service: Service, fake: FakeOpenAI
) -> None:
    # regex compiles x{10000000} by writing it out: 2.8 GB of the service's memory, kept.
    schema = {"type": "object", "properties": {"t": {"type": "string", "pattern": "x{10000000}"}}}
    fake.reply = json.dumps({"t": "x"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], response_format=fmt(schema)), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == (
        "INVALID_SCHEMA",
        "response_format.json_schema",
    )
    assert fake.chat_requests == []


async def test_a_pattern_that_backtracks_on_the_answer_is_invalid_output_at_its_budget(
    service: Service, fake: FakeOpenAI
) -> None:
    # Python's re takes seconds on this (minutes with a few more "a"s), holding the GIL:
    # every other call of the service would wait. Now: the 0.1 s budget, then invalid.
    schema = {"type": "object", "properties": {"t": {"type": "string", "pattern": "^(a|a)+$"}}}
    fake.reply = json.dumps({"t": "a" * 26 + "!"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], response_format=fmt(schema)), timeout=10
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_info(caught.value).reason == "INVALID_OUTPUT"
    assert "took longer than allowed" in (caught.value.details() or "")
    assert len(fake.chat_requests) == 2  # the corrective retry, as for any invalid answer


async def test_stream_with_schema_restarts_for_the_correction(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.enqueue(
        Behaviour.ok(text='{"title": 1}'), Behaviour.ok(text='{"title": "Dune", "year": 1}')
    )
    events = await drain(
        service.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")], response_format=fmt()), timeout=5
        )
    )
    restart = next(i for i, e in enumerate(events) if e.restart)
    assert "".join(e.delta for e in events[:restart]) == '{"title": 1}'
    assert "".join(e.delta for e in events[restart:]) == '{"title": "Dune", "year": 1}'
    final = events[-1]
    assert json_format.MessageToDict(final.structured) == {"title": "Dune", "year": 1}
    assert final.corrected


async def test_stream_invalid_twice_ends_with_invalid_output(
    service: Service, fake: FakeOpenAI
) -> None:
    fake.reply = "[1, 2]"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await drain(
            service.stub.StreamGenerate(
                pb.StreamGenerateRequest(messages=[user("hi")], response_format=fmt()),
                timeout=5,
            )
        )
    assert error_info(caught.value).reason == "INVALID_OUTPUT"


# -- per-request base URL -------------------------------------------------------------------
OPERATOR_KEY = "sk-operator-secret-123"
CALLER_KEY = "sk-caller-own-456"


async def test_base_url_on_the_allowlist_gets_only_the_callers_key(
    fake: FakeOpenAI, start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAKE_KEY_ENV, OPERATOR_KEY)
    async with FakeOpenAI() as theirs:
        svc = await start_service([fake_provider(fake)], allowed_hosts="http://127.0.0.1")
        theirs.reply = "from the caller's endpoint"
        request = pb.GenerateRequest(messages=[user("hi")], base_url=theirs.base_url)
        reply = await svc.stub.Generate(request, timeout=5)
        assert reply.text == "from the caller's endpoint"
        assert "Authorization" not in theirs.chat_requests[-1].headers
        await svc.stub.Generate(request, timeout=5, metadata=(("x-fake-api-key", CALLER_KEY),))
        assert theirs.chat_requests[-1].headers["Authorization"] == f"Bearer {CALLER_KEY}"
        # Any model: the provider's list describes the operator's endpoint, not this one.
        await drain(
            svc.stub.StreamGenerate(
                pb.StreamGenerateRequest(
                    messages=[user("hi")], base_url=theirs.base_url, model="their-model"
                ),
                timeout=5,
            )
        )
        assert theirs.chat_requests[-1].json["model"] == "their-model"
        for r in theirs.requests:
            assert OPERATOR_KEY not in json.dumps(r.headers)
    assert fake.chat_requests == []
    # The operator's own URL still gets the operator's key.
    await svc.stub.Generate(pb.GenerateRequest(messages=[user("hi")]), timeout=5)
    assert fake.chat_requests[-1].headers["Authorization"] == f"Bearer {OPERATOR_KEY}"


@pytest.mark.parametrize(
    "url",
    [
        "HTTP://127.0.0.1:{port}/v1",
        "http://127.0.0.1.:{port}/v1",  # an address with a trailing dot
        "http://127.0.0.1:0{port}/v1",  # a port with a leading zero
        "http://LocalHost.:{port}/v1/",
    ],
)
async def test_a_base_url_is_called_as_the_allowlist_read_it(
    fake: FakeOpenAI, start_service: StartService, url: str
) -> None:
    """Spellings the allowlist reads as an allowed host and port while the HTTP client
    reads them otherwise: the caller's own spelling was sent, which the client refused on
    each attempt, and the call ended UNAVAILABLE / UPSTREAM_CONNECTION_FAILED after every
    retry (each counted in upstream_calls, charged by the gateway). Now the URL called is
    the one checked."""
    svc = await start_service(
        [fake_provider(fake)], allowed_hosts="http://127.0.0.1,http://localhost"
    )
    base_url = url.format(port=fake.port)
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], base_url=base_url, debug=True), timeout=5
    )
    assert reply.text == "hi"
    assert (reply.attempts, reply.upstream_calls) == (1, 1)
    host = "localhost" if "ocal" in url else "127.0.0.1"
    assert reply.debug.url == f"http://{host}:{fake.port}/v1/chat/completions"
    chunks = [
        c
        async for c in svc.stub.StreamGenerate(
            pb.StreamGenerateRequest(messages=[user("hi")], base_url=base_url), timeout=5
        )
    ]
    assert chunks[-1].finish_reason == "stop"
    assert len(fake.chat_requests) == 2


@pytest.mark.parametrize("path", ["/v1\x7f", "/v1/\x7fchat", "/v1/\u200b"])
async def test_a_base_url_holding_an_unprintable_character_is_refused_naming_it(
    fake: FakeOpenAI, start_service: StartService, path: str
) -> None:
    """DEL (and other characters no URL holds) in a base_url's path passed the allowlist,
    then the HTTP client refused the URL with an exception of its own: INTERNAL."""
    svc = await start_service([fake_provider(fake)], allowed_hosts="http://127.0.0.1")
    base_url = f"http://127.0.0.1:{fake.port}{path}"
    for refusal in await _refused_by_both_calls(svc, base_url):
        assert "not a plain URL" in (refusal.details() or "")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("allowed", "url"),
    [
        ("", "http://127.0.0.1:{port}/v1"),  # nothing allowed by default
        ("http://10.0.0.0/8", "http://127.0.0.1:{port}/v1"),
        ("127.0.0.1", "http://127.0.0.1:{port}/v1"),  # https only without http://
        ("*", "http://169.254.169.254/v1"),
        ("http://localhost", "http://localhost:{port}/v1"),  # refused at connect time
    ],
)
async def test_base_url_off_the_allowlist_is_refused_before_any_byte(
    fake: FakeOpenAI, start_service: StartService, allowed: str, url: str
) -> None:
    svc = await start_service([fake_provider(fake)], allowed_hosts=allowed, retry_max_attempts=3)
    base_url = url.format(port=fake.port)
    for refusal in await _refused_by_both_calls(svc, base_url):
        info = error_info(refusal)
        # Nothing was sent, so nothing is counted (a refusal at connect time said 1 call,
        # which the gateway charges to the tenant's quota).
        assert info.metadata.get("upstream_calls", "0") == "0"
        assert info.metadata.get("attempts", "0") == "0"
    assert fake.requests == []


async def _refused_by_both_calls(svc: Any, base_url: str) -> list[grpc.aio.AioRpcError]:
    """Generate's and StreamGenerate's refusals of ``base_url``: PERMISSION_DENIED,
    URL_NOT_ALLOWED naming base_url."""
    refusals = []
    for call, message in (
        (svc.stub.Generate, pb.GenerateRequest),
        (svc.stub.StreamGenerate, pb.StreamGenerateRequest),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            result = call(message(messages=[user("hi")], base_url=base_url), timeout=5)
            if hasattr(result, "__aiter__"):
                await drain(result)
            else:
                await result
        assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(caught.value)
        assert (info.reason, info.metadata["field"]) == ("URL_NOT_ALLOWED", "base_url")
        refusals.append(caught.value)
    return refusals


# -- known models ---------------------------------------------------------------------------
async def test_list_models_shows_the_anyscale_models(service: Service) -> None:
    reply = await service.stub.ListModels(pb.ListModelsRequest(), timeout=5)
    anyscale = next(p for p in reply.providers if p.name == "anyscale")
    assert list(anyscale.models) == list(ANYSCALE_MODELS)
    assert anyscale.models[0] == "meta-llama/Llama-2-70b-chat-hf" == anyscale.default_model
    assert anyscale.models_checked
    openai = next(p for p in reply.providers if p.name == "openai")
    assert "gpt-4o-mini" in openai.models and not openai.models_checked


async def test_a_model_outside_the_list_is_refused_before_any_call(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    svc = await start_service(
        [fake_provider(fake), {"name": "anyscale", "base_url": fake.base_url}]
    )
    key = (("x-anyscale-api-key", "k"),)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await svc.stub.Generate(
            pb.GenerateRequest(messages=[user("hi")], provider="anyscale", model="gpt-4"),
            timeout=5,
            metadata=key,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_info(caught.value).metadata["field"] == "model"
    assert fake.chat_requests == []
    reply = await svc.stub.Generate(
        pb.GenerateRequest(
            messages=[user("hi")], provider="anyscale", model="HuggingFaceH4/zephyr-7b-beta"
        ),
        timeout=5,
        metadata=key,
    )
    assert reply.model == "HuggingFaceH4/zephyr-7b-beta"


async def test_the_operator_can_turn_the_model_check_off(
    fake: FakeOpenAI, start_service: StartService, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GENSEARCH_GENERATION_ANYSCALE_CHECK_MODELS", "false")
    svc = await start_service(
        [fake_provider(fake), {"name": "anyscale", "base_url": fake.base_url}]
    )
    reply = await svc.stub.Generate(
        pb.GenerateRequest(messages=[user("hi")], provider="anyscale", model="brand-new-model"),
        timeout=5,
        metadata=(("x-anyscale-api-key", "k"),),
    )
    assert reply.model == "brand-new-model"
    models = await svc.stub.ListModels(pb.ListModelsRequest(), timeout=5)
    assert not next(p for p in models.providers if p.name == "anyscale").models_checked


@pytest.mark.parametrize("status", [301, 302, 307, 308])
async def test_a_redirect_from_a_callers_base_url_is_not_followed_and_names_it(
    fake: FakeOpenAI, start_service: StartService, monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    """An allowed endpoint redirecting to a host off the allowlist: neither the prompt nor
    a key goes there, and the refusal names the request's ``base_url``."""
    monkeypatch.setenv(FAKE_KEY_ENV, OPERATOR_KEY)
    async with FakeOpenAI() as theirs, FakeOpenAI(host="127.0.0.2") as elsewhere:
        svc = await start_service([fake_provider(fake)], allowed_hosts="http://127.0.0.1")
        for call, message in (
            (svc.stub.Generate, pb.GenerateRequest),
            (svc.stub.StreamGenerate, pb.StreamGenerateRequest),
        ):
            theirs.enqueue(
                Behaviour.error(
                    status, headers={"Location": f"{elsewhere.base_url}/chat/completions"}
                )
            )
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                result = call(
                    message(messages=[user("hi")], base_url=theirs.base_url),
                    timeout=5,
                    metadata=(("x-fake-api-key", CALLER_KEY),),
                )
                if hasattr(result, "__aiter__"):
                    await drain(result)
                else:
                    await result
            assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            info = error_info(caught.value)
            assert (info.reason, info.metadata["field"]) == ("UPSTREAM_REDIRECT", "base_url")
            assert "base_url" in (caught.value.details() or "")
        assert elsewhere.requests == []
        assert len(theirs.chat_requests) == 2
    assert fake.requests == []


async def test_a_schema_far_past_its_bound_is_refused_before_it_is_read(
    service: Service, fake: FakeOpenAI
) -> None:
    # A 3 MB schema (within the request's bound) was read whole into Python before its
    # size was checked: 1.4 s of the event loop, every other call stalled, for each such
    # request. Now its serialized size refuses it first, so nothing in it is read: the
    # infinity at its end, which reading it finds, is not what the refusal names.
    schema = struct({"type": "object", "enum": [{"a": i} for i in range(150_000)]})
    schema.fields["enum"].list_value.values.add().number_value = float("inf")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await service.stub.Generate(
            pb.GenerateRequest(
                messages=[user("hi")], response_format=pb.ResponseFormat(json_schema=schema)
            ),
            timeout=30,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info = error_info(caught.value)
    assert (info.reason, info.metadata["field"]) == (
        "INVALID_SCHEMA",
        "response_format.json_schema",
    )
    assert info.metadata["setting"] == "GENSEARCH_GENERATION_MAX_SCHEMA_CHARS"
    assert fake.chat_requests == []
