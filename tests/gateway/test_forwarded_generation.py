"""GenerationService on the gateway's address: ListModels forwarded as a read, Generate
and StreamGenerate through the gateway's metered generation client, with the caller's
identity, deadline and provider keys; statuses (a refused base_url, an outage) come back
as the generation service gives them. The charging itself is in test_llm_call_charges."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.generation.settings import ANYSCALE_MODELS
from tests.gateway.conftest import ALICE, AS_ALICE, KEYS, OWN_CONNECTIONS, Stack, StackFactory
from tests.support.fake_openai import FakeOpenAI
from tests.support.rpc import error_info, failure_of
from tests.support.waiting import until

GENERATION_SERVICE = "gensearch.generation.v1.GenerationService"
CAROL = (("authorization", "Bearer key-carol-789"),)  # a reader of the tenant acme


def _hello(**fields: object) -> gen_pb.GenerateRequest:
    return gen_pb.GenerateRequest(
        messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="hello there")],
        **fields,  # type: ignore[arg-type]
    )


def _stream(**fields: object) -> gen_pb.StreamGenerateRequest:
    return gen_pb.StreamGenerateRequest(
        messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="hello there")],
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
async def fake2() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as server:
        yield server


class Both:
    """The generation API through the gateway and, to compare, directly."""

    def __init__(self, stack: Stack) -> None:
        self.gateway = gen_grpc.GenerationServiceStub(stack.channel)
        direct = grpc.aio.insecure_channel(
            f"127.0.0.1:{stack.servers['generation'].port}", options=OWN_CONNECTIONS
        )
        stack.channels.append(direct)
        self.direct = gen_grpc.GenerationServiceStub(direct)


async def test_list_models_through_the_gateway(stack: Stack) -> None:
    both = Both(stack)
    reply = await both.gateway.ListModels(gen_pb.ListModelsRequest(), metadata=ALICE, timeout=5)
    anyscale = next(p for p in reply.providers if p.name == "anyscale")
    assert list(anyscale.models) == list(ANYSCALE_MODELS) and len(anyscale.models) == 6
    assert anyscale.default_model == "meta-llama/Llama-2-70b-chat-hf" and anyscale.models_checked
    assert reply.default_provider == "fake"
    # What the generation service says, but where the operator's endpoints are and which
    # variables hold their keys.
    direct = await both.direct.ListModels(gen_pb.ListModelsRequest(), metadata=AS_ALICE, timeout=5)
    assert any(p.base_url for p in direct.providers)
    assert any(p.api_key_env for p in direct.providers)
    assert not any(p.base_url or p.api_key_env for p in reply.providers)
    for provider in direct.providers:
        provider.ClearField("base_url")
        provider.ClearField("api_key_env")
    assert reply == direct
    # Health and reflection name the service like the gateway's other ones.
    health = health_pb2_grpc.HealthStub(stack.channel)
    status = await health.Check(health_pb2.HealthCheckRequest(service=GENERATION_SERVICE))
    assert status.status == health_pb2.HealthCheckResponse.SERVING
    assert GENERATION_SERVICE in stack.gateway.service_names


async def test_generate_and_stream_through_the_gateway(stack: Stack) -> None:
    both = Both(stack)
    reply = await both.gateway.Generate(_hello(max_tokens=1), metadata=ALICE, timeout=10)
    assert (reply.text, reply.finish_reason) == ("hello", "length")
    assert (reply.provider, reply.model, reply.upstream_calls) == ("fake", "fake-model", 1)
    sent = stack.fake.chat_requests[-1].json
    assert sent["messages"] == [{"role": "user", "content": "hello there"}]
    assert sent["max_tokens"] == 1

    chunks = [c async for c in both.gateway.StreamGenerate(_stream(), metadata=ALICE, timeout=10)]
    assert "".join(c.delta for c in chunks) == "hello there"
    last = chunks[-1]
    assert (last.delta, last.finish_reason, last.upstream_calls) == ("", "stop", 1)
    assert len(stack.fake.chat_requests) == 2


async def test_callers_and_roles_as_the_generation_service_sees_them(
    stack_factory: StackFactory,
) -> None:
    # The generation service asks for no role beyond being a caller: a reader of another
    # tenant is served as alice is; without a key the gateway refuses the call itself.
    stack = await stack_factory(api_keys=f"{KEYS},carol@acme/reader:key-carol-789")
    both = Both(stack)
    for who in (ALICE, CAROL):
        assert (await both.gateway.Generate(_hello(), metadata=who, timeout=10)).text
        assert (await both.gateway.ListModels(gen_pb.ListModelsRequest(), metadata=who)).providers
    wrong = (("authorization", "Bearer no"),)
    for call in (
        both.gateway.Generate(_hello(), timeout=5),
        both.gateway.ListModels(gen_pb.ListModelsRequest(), timeout=5),
        both.gateway.Generate(_hello(), metadata=wrong, timeout=5),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call  # type: ignore[misc]
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert len(stack.fake.chat_requests) == 2


async def test_a_callers_base_url_outside_the_allowlist_is_refused(
    stack_factory: StackFactory, fake2: FakeOpenAI
) -> None:
    stack = await stack_factory(
        generation_settings={"allowed_hosts": f"http://127.0.0.1:{fake2.port}"}
    )
    both = Both(stack)
    fake2.reply = "theirs"
    key = ("x-fake-api-key", "sk-callers-own-key")
    allowed = await both.gateway.Generate(
        _hello(base_url=fake2.base_url), metadata=(*ALICE, key), timeout=10
    )
    assert allowed.text == "theirs"
    # The caller's own key reached the caller's endpoint, through the generation service.
    assert fake2.chat_requests[-1].headers["Authorization"] == "Bearer sk-callers-own-key"
    for call in (
        both.gateway.Generate(_hello(base_url=stack.fake.base_url), metadata=ALICE, timeout=5),
        both.gateway.StreamGenerate(_stream(base_url=stack.fake.base_url), metadata=ALICE),
    ):
        failed = await failure_of(call)
        assert failed.code() == grpc.StatusCode.PERMISSION_DENIED
        info = error_info(failed)
        assert (info.reason, info.metadata["field"]) == ("URL_NOT_ALLOWED", "base_url")
    assert stack.fake.chat_requests == []


async def test_the_callers_deadline_and_an_outage_come_through(stack: Stack) -> None:
    both = Both(stack)
    stack.fake.latency = 5.0
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await both.gateway.Generate(_hello(), metadata=ALICE, timeout=1)
    assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    # The deadline cut the LLM call too: the fake saw its client hang up before the 5 s
    # answer, where a call the deadline did not reach would have been answered.
    async def ended() -> bool:  # the fake's request ends either way within its 5 s
        requests = stack.fake.chat_requests
        return bool(requests) and requests[0].finished_at is not None

    await until(ended, "saw the LLM request end")
    [request] = stack.fake.chat_requests
    assert request.client_disconnected and request.finished_at is not None
    await stack.stop_service("generation")
    for call in (
        both.gateway.ListModels(gen_pb.ListModelsRequest(), metadata=ALICE, timeout=5),
        both.gateway.Generate(_hello(), metadata=ALICE, timeout=5),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call  # type: ignore[misc]
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert error_info(caught.value).reason == "DOWNSTREAM_UNAVAILABLE"


async def test_debug_does_not_name_the_operators_endpoint(
    stack_factory: StackFactory, fake2: FakeOpenAI
) -> None:
    # ListModels hides where the operator's endpoints live; a debug answer must not tell
    # it either (it named http://<internal host>:<port>/v1/chat/completions to any reader).
    stack = await stack_factory(
        generation_settings={"allowed_hosts": f"http://127.0.0.1:{fake2.port}"}
    )
    both = Both(stack)
    direct = await both.direct.Generate(_hello(debug=True), metadata=AS_ALICE, timeout=10)
    assert direct.debug.url == f"{stack.fake.base_url}/chat/completions"

    reply = await both.gateway.Generate(_hello(debug=True), metadata=ALICE, timeout=10)
    assert reply.text and reply.debug.request_body and reply.debug.url == ""
    chunks = [
        c
        async for c in both.gateway.StreamGenerate(_stream(debug=True), metadata=ALICE, timeout=10)
    ]
    assert chunks[-1].debug.request_body and chunks[-1].debug.url == ""
    assert not any(str(stack.fake.port) in str(c) for c in chunks)

    # The caller's own endpoint is the caller's to see.
    own = await both.gateway.Generate(
        _hello(debug=True, base_url=fake2.base_url), metadata=ALICE, timeout=10
    )
    assert own.debug.url == f"{fake2.base_url}/chat/completions"


async def test_debug_names_the_callers_own_endpoint_however_it_was_spelled(
    stack_factory: StackFactory, fake2: FakeOpenAI
) -> None:
    """Generation calls a caller's base_url as the allowlist read it (lower case, the port
    written, no trailing slash): the gateway compared debug.url with the caller's own
    spelling and hid the caller's own endpoint from them."""
    stack = await stack_factory(
        generation_settings={"allowed_hosts": f"http://127.0.0.1:{fake2.port}"}
    )
    both = Both(stack)
    spelled = f"HTTP://127.0.0.1.:{fake2.port}/v1/"
    own = await both.gateway.Generate(
        _hello(debug=True, base_url=spelled), metadata=ALICE, timeout=10
    )
    assert own.debug.url == f"{fake2.base_url}/chat/completions"
