"""A downstream failure reaches the gateway's caller with its own code, message, reason
and field, whichever path the call took: the forwarded APIs, Ask, GenerativeSearch, and
each hit's generation call. The failing service is a real gRPC server on loopback that
answers every call with the status a test scripts (the way our services answer: a
``google.rpc.Status`` with an ErrorInfo)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tests.gateway.conftest import ALICE, StackFactory, create_books
from tests.gateway.test_generative_search import _near
from tests.support.rpc import error_info

CODES = [
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.PERMISSION_DENIED,
]


@dataclass
class Scripted:
    """A server that fails every call (unary or server-streaming) with ``status``."""

    address: str
    status: grpc.Status | None = None
    calls: int = 0

    def fail_with(self, code: grpc.StatusCode, reason: str, field: str) -> None:
        info = any_pb2.Any()
        info.Pack(
            error_details_pb2.ErrorInfo(
                reason=reason, domain="gensearch", metadata={"field": field}
            )
        )
        proto = status_pb2.Status(
            code=code.value[0], message=f"{field}: scripted {code.name}", details=[info]
        )
        self.status = rpc_status.to_status(proto)

    def fail_bare(self, code: grpc.StatusCode, text: str) -> None:
        """A status without ErrorInfo, as a channel, a proxy or another server makes."""
        self.status = _BareStatus(code, text)


class _BareStatus(grpc.Status):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = ()


class _FailEverything(grpc.GenericRpcHandler):
    def __init__(self, script: Scripted) -> None:
        self._script = script

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        async def fail(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._script.calls += 1
            assert self._script.status is not None
            await context.abort_with_status(self._script.status)

        async def fail_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
            await fail(request, context)
            yield b""  # never reached: makes this a server-streaming handler

        if details.method.endswith("/StreamGenerate"):  # type: ignore[attr-defined]
            return grpc.unary_stream_rpc_method_handler(fail_stream)
        return grpc.unary_unary_rpc_method_handler(fail)


@pytest.fixture
async def scripted() -> AsyncIterator[Scripted]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    script = Scripted(f"127.0.0.1:{port}")
    server.add_generic_rpc_handlers((_FailEverything(script),))
    await server.start()
    yield script
    await server.stop(0)


async def _assert_passed_through(
    calls: dict[str, Awaitable[Any]], code: grpc.StatusCode, field: str
) -> None:
    """Each call fails with the scripted status: code, message, reason and field."""
    for path, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        err = caught.value
        assert err.code() == code, path
        assert err.details() == f"{field}: scripted {code.name}", path
        info = error_info(err)
        assert (info.reason, info.domain) == (f"SCRIPTED_{code.name}", "gensearch"), path
        assert info.metadata["field"] == field, path


@pytest.mark.parametrize("code", CODES, ids=lambda c: c.name)
async def test_memory_errors_pass_through(
    stack_factory: StackFactory, scripted: Scripted, code: grpc.StatusCode
) -> None:
    stack = await stack_factory(generation=False, memory_addr=scripted.address)
    await create_books(stack)
    scripted.fail_with(code, f"SCRIPTED_{code.name}", "conversation_id")
    calls = {
        "forwarded": stack.memory.GetConversation(
            mem_pb.GetConversationRequest(conversation_id="c1"), metadata=ALICE, timeout=10
        ),
        "Ask": stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="q?", conversation_id="c1"),
            metadata=ALICE,
            timeout=10,
        ),
    }
    await _assert_passed_through(calls, code, "conversation_id")
    assert scripted.calls >= 2


@pytest.mark.parametrize("code", CODES, ids=lambda c: c.name)
async def test_retrieval_errors_pass_through(
    stack_factory: StackFactory, scripted: Scripted, code: grpc.StatusCode
) -> None:
    stack = await stack_factory(generation=False, retrieval_addr=scripted.address)
    scripted.fail_with(code, f"SCRIPTED_{code.name}", "collection")
    search = ret_pb.SearchRequest(collection="Books", keyword=ret_pb.Keyword(text="x"))
    calls = {
        "forwarded": stack.retrieval.Search(search, metadata=ALICE, timeout=10),
        "GenerativeSearch": stack.stub.GenerativeSearch(
            _near(single_prompt="{title}"), metadata=ALICE, timeout=10
        ),
        "StreamGenerativeSearch": _drain(
            stack.stub.StreamGenerativeSearch(
                gw_pb.StreamGenerativeSearchRequest(
                    collection="Books", keyword=ret_pb.Keyword(text="x")
                ),
                metadata=ALICE,
                timeout=10,
            )
        ),
    }
    await _assert_passed_through(calls, code, "collection")


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass


@pytest.mark.parametrize("code", CODES, ids=lambda c: c.name)
async def test_generation_errors_stay_on_their_hit(
    stack_factory: StackFactory, scripted: Scripted, code: grpc.StatusCode
) -> None:
    stack = await stack_factory(generation=False, generation_addr=scripted.address)
    await create_books(stack)
    scripted.fail_with(code, f"SCRIPTED_{code.name}", "messages")
    for stream_tokens in (False, True):
        request = _near(limit=2, single_prompt="{title}", grouped_task="Compare")
        if stream_tokens:
            events = stack.stub.StreamGenerativeSearch(
                gw_pb.StreamGenerativeSearchRequest(
                    collection=request.collection,
                    near_vector=request.near_vector,
                    limit=2,
                    generate=gw_pb.Generate(
                        single_prompt="{title}", grouped_task="Compare", stream_tokens=True
                    ),
                ),
                metadata=ALICE,
                timeout=10,
            )
            results = [e.hit_result.generation async for e in events if e.HasField("hit_result")]
        else:
            response = await stack.stub.GenerativeSearch(request, metadata=ALICE, timeout=10)
            results = [h.generation for h in response.hits] + [response.grouped]
        assert len(results) >= 2
        for result in results:
            assert (result.error.code, result.error.status) == (code.value[0], code.name)
            assert result.error.reason == f"SCRIPTED_{code.name}"
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                # A refusal of the messages the gateway rendered names the caller's field
                # they came from: the caller never sent "messages".
                assert result.error.metadata["field"] in (
                    "generate.single_prompt",
                    "generate.grouped_task",
                )
                assert result.error.message == (
                    f"the prompt rendered from {result.error.metadata['field']} is "
                    f"refused: scripted {code.name}"
                )
            else:
                assert result.error.message == f"messages: scripted {code.name}"


# A status that came without our ErrorInfo: its code as the gateway's caller gets it, and
# the DOWNSTREAM_* reason. Its text ("... 10.0.0.7:50051 ...") is never relayed.
BARE = {
    grpc.StatusCode.UNAVAILABLE: (grpc.StatusCode.UNAVAILABLE, "DOWNSTREAM_UNAVAILABLE"),
    grpc.StatusCode.UNKNOWN: (grpc.StatusCode.UNAVAILABLE, "DOWNSTREAM_UNAVAILABLE"),
    grpc.StatusCode.DEADLINE_EXCEEDED: (
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "DOWNSTREAM_TIMEOUT",
    ),
    # The call cut under the gateway (a replica stopping): retryable, not the caller's
    # cancellation (it was CANCELLED, which clients' retry policies do not retry).
    grpc.StatusCode.CANCELLED: (grpc.StatusCode.UNAVAILABLE, "DOWNSTREAM_CANCELLED"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "DOWNSTREAM_RESOURCE_EXHAUSTED",
    ),
    grpc.StatusCode.INTERNAL: (grpc.StatusCode.INTERNAL, "DOWNSTREAM_ERROR"),
    grpc.StatusCode.UNIMPLEMENTED: (grpc.StatusCode.INTERNAL, "DOWNSTREAM_ERROR"),
    grpc.StatusCode.PERMISSION_DENIED: (grpc.StatusCode.INTERNAL, "DOWNSTREAM_ERROR"),
}
INTERNAL_ADDRESS = "10.0.0.7:50051"


def _assert_clean(err: grpc.aio.AioRpcError, code: grpc.StatusCode, service: str) -> None:
    expected_code, reason = BARE[code]
    assert err.code() == expected_code
    assert INTERNAL_ADDRESS not in err.details() and "upstream" not in err.details()
    assert err.details().startswith(f"the {service} service "), err.details()
    info = error_info(err)
    assert (info.reason, info.domain) == (reason, "gensearch")
    assert info.metadata["service"] == service
    assert "field" not in info.metadata


@pytest.mark.parametrize("code", list(BARE), ids=lambda c: c.name)
async def test_a_status_without_error_info_is_never_relayed(
    stack_factory: StackFactory, scripted: Scripted, code: grpc.StatusCode
) -> None:
    """QA: only UNAVAILABLE, UNKNOWN and DEADLINE_EXCEEDED were replaced; any other code
    relayed the channel's or a proxy's own text, internal addresses included."""
    stack = await stack_factory(generation=False, memory_addr=scripted.address)
    await create_books(stack)
    scripted.fail_bare(code, f"upstream connect error: {INTERNAL_ADDRESS}: reset")
    calls = {
        "forwarded": stack.memory.GetConversation(
            mem_pb.GetConversationRequest(conversation_id="c1"), metadata=ALICE, timeout=10
        ),
        "Ask": stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="q?", conversation_id="c1"),
            metadata=ALICE,
            timeout=10,
        ),
    }
    for call in calls.values():
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        _assert_clean(caught.value, code, "memory")


async def test_an_error_info_of_another_domain_is_not_relayed(
    stack_factory: StackFactory, scripted: Scripted
) -> None:
    # Something that is not one of our services (a proxy) with its own rich status.
    stack = await stack_factory(generation=False, retrieval_addr=scripted.address)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="RBAC_DENIED", domain="envoy.example"))
    proto = status_pb2.Status(
        code=grpc.StatusCode.PERMISSION_DENIED.value[0],
        message=f"RBAC: access denied for {INTERNAL_ADDRESS}",
        details=[info],
    )
    scripted.status = rpc_status.to_status(proto)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.retrieval.Search(
            ret_pb.SearchRequest(collection="Books", keyword=ret_pb.Keyword(text="x")),
            metadata=ALICE,
            timeout=10,
        )
    _assert_clean(caught.value, grpc.StatusCode.PERMISSION_DENIED, "retrieval")


@pytest.mark.parametrize("details", ["other code", "other message", "garbage"])
async def test_a_details_trailer_that_does_not_match_its_status_is_not_relayed(
    stack_factory: StackFactory, scripted: Scripted, details: str
) -> None:
    """QA: a proxy that rewrites the status but not grpc-status-details-bin (or sends one
    that does not parse) made grpc_status raise in the gateway: a bare INTERNAL."""
    stack = await stack_factory(generation=False, retrieval_addr=scripted.address)
    text = f"upstream connect error: {INTERNAL_ADDRESS}: reset"
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason="SCRIPTED", domain="gensearch"))
    proto = status_pb2.Status(
        code=grpc.StatusCode.UNAVAILABLE.value[0], message=text, details=[info]
    )
    if details == "other code":
        proto.code = grpc.StatusCode.INTERNAL.value[0]
    elif details == "other message":
        proto.message = "something else"
    raw = b"\xff\xff\x01" if details == "garbage" else proto.SerializeToString()
    status = _BareStatus(grpc.StatusCode.UNAVAILABLE, text)
    status.trailing_metadata = (("grpc-status-details-bin", raw),)
    scripted.status = status
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.retrieval.Search(
            ret_pb.SearchRequest(collection="Books", keyword=ret_pb.Keyword(text="x")),
            metadata=ALICE,
            timeout=10,
        )
    _assert_clean(caught.value, grpc.StatusCode.UNAVAILABLE, "retrieval")


async def test_a_service_nobody_listens_for_is_named(stack_factory: StackFactory) -> None:
    # The channel's own UNAVAILABLE ("failed to connect to all addresses; last error: ...
    # ipv4:127.0.0.1:<port>: Connection refused"): the service in the message and metadata.
    stack = await stack_factory(generation=False, downstream_connect_wait=0)
    generation: Any = gen_grpc.GenerationServiceStub(stack.channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await generation.ListModels(gen_pb.ListModelsRequest(), metadata=ALICE, timeout=10)
    _assert_clean(caught.value, grpc.StatusCode.UNAVAILABLE, "generation")
    assert "127.0.0.1" not in caught.value.details()


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "RESPONSE_BYTES_IN_FLIGHT"),
        # Any code may say when to retry: an ABORTED relayed lost its RetryInfo before.
        (grpc.StatusCode.ABORTED, "REQUEST_ID_IN_USE"),
    ],
)
async def test_a_refusal_to_retry_later_keeps_its_retry_info_through_the_gateway(
    stack_factory: StackFactory, scripted: Scripted, code: grpc.StatusCode, reason: str
) -> None:
    """A downstream refusal with an ErrorInfo and a RetryInfo (retrieval's
    RESPONSE_BYTES_IN_FLIGHT, say) reaches the gateway's caller with its RetryInfo;
    before, the gateway dropped it and the caller could not tell when to try again."""
    stack = await stack_factory(generation=False, retrieval_addr=scripted.address)
    info, retry = any_pb2.Any(), any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="gensearch"))
    retry.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=500_000_000)))
    proto = status_pb2.Status(
        code=code.value[0],
        message="the caller's tenant has replies in flight",
        details=[info, retry],
    )
    scripted.status = rpc_status.to_status(proto)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.retrieval.Search(
            ret_pb.SearchRequest(collection="Books", keyword=ret_pb.Keyword(text="x")),
            metadata=ALICE,
            timeout=10,
        )
    err = caught.value
    assert err.code() == code
    assert error_info(err).reason == reason
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    delays = []
    for detail in status.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            detail.Unpack(retry)
            delays.append(retry.retry_delay.ToNanoseconds() / 1e9)
    assert delays == [0.5]
