"""What a careless or hostile gRPC client sends, beyond what the descriptor-driven fuzzing
(test_fuzz_requests.py) draws: hand-made wire bytes that are no protobuf at all, probes of
another tenant's things compared byte for byte with probes of missing ones, and a fallback
chain that repeats its primary sent to the generation service."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import field_mask_pb2, struct_pb2
from grpc_health.v1 import health_pb2
from grpc_status import rpc_status

from services.common.auth import Identity, Role, forwarded_identity
from tests.gateway.conftest import (
    ALICE,
    AS_ALICE,
    BOB,
    TOKEN,
    Stack,
    StackFactory,
    create_books,
    vector,
)
from tests.support.raw_grpc import raw_unary
from tests.support.rpc import error_info, failure_of

AS_BOB = forwarded_identity(Identity("bob", "bob", Role.ADMIN), TOKEN)


def _titled(title: str) -> ret_pb.DataObject:
    props = struct_pb2.Struct()
    props.update({"title": title})
    return ret_pb.DataObject(properties=props, vector=vector(0))


SERVICES = {
    d.full_name: d
    for module in (gw_pb, mem_pb, ret_pb, gen_pb)
    for d in module.DESCRIPTOR.services_by_name.values()
}
# Bytes no message type parses, whatever its fields: a varint cut short, a length past the
# end (or past 2 GiB), the deprecated group wire types, wire type 6 and field number 0.
NEVER_PROTOBUF = {
    "truncated varint": b"\x08\xff",
    "length past the end": b"\x0a\x10ab",
    "huge length": b"\x0a\xff\xff\xff\xff\x0f",
    "start group": b"\x0b",
    "end group": b"\x0c",
    "wire type 6": b"\x0e",
    "all bytes": bytes(range(256)),
}
BAD_UTF8 = b"\xff\xfe"
SURROGATE_AS_UTF8 = b"\xed\xa0\x80"  # CESU-8 of U+D800: no UTF-8 at all


def _length_delimited(field: int, payload: bytes) -> bytes:
    return bytes([field << 3 | 2, len(payload)]) + payload


async def _raw_call(
    channel: grpc.aio.Channel, service: str, method: Any, data: bytes, metadata: Any
) -> grpc.aio.AioRpcError:
    """``data`` sent as the request of ``method`` (with no serializer: as it is)."""
    path = f"/{service}/{method.name}"
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if method.client_streaming:
            await channel.stream_unary(path)(iter([data]), metadata=metadata, timeout=10)
        elif method.server_streaming:
            async for _ in channel.unary_stream(path)(data, metadata=metadata, timeout=10):
                pass
        else:
            await channel.unary_unary(path)(data, metadata=metadata, timeout=10)
    return caught.value


@pytest.mark.slow
async def test_bytes_that_are_no_protobuf_are_invalid_argument_on_every_method(
    stack: Stack,
) -> None:
    """Held: every method of every service, through the gateway and direct, answers bytes
    that are not its request message (or a string field that is not UTF-8, at the top or
    nested) INVALID_ARGUMENT, reason MALFORMED_REQUEST, naming the message type; never
    UNKNOWN quoting protobuf's exception, nor INTERNAL. A string that is not UTF-8 is
    named as the field at fault (before, nothing said which)."""
    await create_books(stack)
    targets = _gateway_and_direct(stack)
    # Condition.property (a string) inside CountObjectsRequest.filter.condition.
    nested = _length_delimited(2, _length_delimited(1, _length_delimited(1, BAD_UTF8)))
    retrieval = ret_pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name
    checked = 0
    for channel, metadata, services in targets:
        for service in (s for s in services if s in SERVICES):
            for method in SERVICES[service].methods:
                sent = dict(NEVER_PROTOBUF)
                # The field a status names, by kind of bytes sent.
                named: dict[str, str] = {}
                first = method.input_type.fields_by_number.get(1)
                if first is not None and first.type == first.TYPE_STRING:
                    sent["invalid UTF-8"] = _length_delimited(1, BAD_UTF8)
                    sent["a surrogate"] = _length_delimited(1, SURROGATE_AS_UTF8)
                    named = {"invalid UTF-8": first.name, "a surrogate": first.name}
                if service == retrieval and method.name == "CountObjects":
                    sent["nested invalid UTF-8"] = nested
                    named["nested invalid UTF-8"] = "filter.condition.property"
                for kind, data in sent.items():
                    err = await _raw_call(channel, service, method, data, metadata)
                    where = f"{service}/{method.name} ({kind})"
                    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (where, err.details())
                    info = error_info(err)
                    assert info.reason == "MALFORMED_REQUEST", (where, info)
                    assert info.metadata["message_type"] == method.input_type.full_name, where
                    assert info.metadata.get("field") == named.get(kind), (where, info)
                    checked += 1
    assert checked > 400


def _status(err: grpc.aio.AioRpcError, name: str, stands_for: str) -> tuple[Any, ...]:
    """What a client sees of a failure, with ``name`` written as ``stands_for``."""
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None, err
    details = tuple(d.SerializeToString().replace(name.encode(), b"X") for d in status.details)
    return err.code(), (err.details() or "").replace(name, "X"), details


async def _same_failure(calls: dict[str, Callable[[str], Any]], theirs: str, missing: str) -> None:
    for label, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as probed:
            await call(theirs)
        with pytest.raises(grpc.aio.AioRpcError) as absent:
            await call(missing)
        assert probed.value.code() == grpc.StatusCode.NOT_FOUND, (label, probed.value.details())
        assert _status(probed.value, theirs, "X") == _status(absent.value, missing, "X"), label


async def test_another_tenants_things_fail_byte_for_byte_like_missing_ones(stack: Stack) -> None:
    """Held: bob probing alice's conversation, turn, collection and objects (through the
    gateway and straight to the services) gets the status a missing one gets, code,
    message, ErrorInfo and BadRequest alike, once the name itself is set aside."""
    alice_ids = await create_books(stack)
    memory = stack.memory
    made = await memory.CreateConversation(mem_pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    turn = await memory.CreateInteraction(
        mem_pb.CreateInteractionRequest(conversation_id=cid, input="q", response="a"),
        metadata=ALICE,
    )
    iid = turn.interaction.interaction_id
    direct = grpc.aio.insecure_channel(f"127.0.0.1:{stack.servers['memory'].port}")
    stack.channels.append(direct)
    name_mask = field_mask_pb2.FieldMask(paths=["name"])
    info_mask = field_mask_pb2.FieldMask(paths=["additional_info"])
    for m, md in ((memory, BOB), (mem_grpc.MemoryServiceStub(direct), AS_BOB)):
        conversation: dict[str, Callable[[str], Any]] = {
            "GetConversation": lambda c, m=m, md=md: m.GetConversation(
                mem_pb.GetConversationRequest(conversation_id=c), metadata=md
            ),
            "UpdateConversation": lambda c, m=m, md=md: m.UpdateConversation(
                mem_pb.UpdateConversationRequest(
                    conversation_id=c, name="n", update_mask=name_mask
                ),
                metadata=md,
            ),
            "DeleteConversation": lambda c, m=m, md=md: m.DeleteConversation(
                mem_pb.DeleteConversationRequest(conversation_id=c), metadata=md
            ),
            "CreateInteraction": lambda c, m=m, md=md: m.CreateInteraction(
                mem_pb.CreateInteractionRequest(conversation_id=c, input="x"), metadata=md
            ),
            "ListInteractions": lambda c, m=m, md=md: m.ListInteractions(
                mem_pb.ListInteractionsRequest(conversation_id=c), metadata=md
            ),
            "UpdateConversationSummary": lambda c, m=m, md=md: m.UpdateConversationSummary(
                mem_pb.UpdateConversationSummaryRequest(
                    conversation_id=c, text="s", through_interaction_id=iid, summarised_turns=1
                ),
                metadata=md,
            ),
            "CheckStorage": lambda c, m=m, md=md: m.CheckStorage(
                mem_pb.CheckStorageRequest(conversation_id=c, bytes=1), metadata=md
            ),
        }
        await _same_failure(conversation, cid, str(uuid.uuid4()))
        interaction: dict[str, Callable[[str], Any]] = {
            "GetInteraction": lambda i, m=m, md=md: m.GetInteraction(
                mem_pb.GetInteractionRequest(interaction_id=i), metadata=md
            ),
            "UpdateInteraction": lambda i, m=m, md=md: m.UpdateInteraction(
                mem_pb.UpdateInteractionRequest(
                    interaction=mem_pb.Interaction(interaction_id=i), update_mask=info_mask
                ),
                metadata=md,
            ),
            "ListInteractionTraces": lambda i, m=m, md=md: m.ListInteractionTraces(
                mem_pb.ListInteractionTracesRequest(interaction_id=i), metadata=md
            ),
        }
        await _same_failure(interaction, iid, str(uuid.uuid4()))
    asking: dict[str, Callable[[str], Any]] = {
        "Ask": lambda c: stack.stub.Ask(
            gw_pb.AskRequest(collection="Books", llm_question="q", conversation_id=c),
            metadata=BOB,
        ),
    }
    await create_books(stack, metadata=BOB)  # bob's own Books: the conversation is at fault
    await _same_failure(asking, cid, str(uuid.uuid4()))
    objects: dict[str, Callable[[str], Any]] = {
        "GetObject": lambda i: stack.retrieval.GetObject(
            ret_pb.GetObjectRequest(collection="Books", id=i), metadata=BOB
        ),
        "GetObject direct": lambda i: stack.retrieval_direct.GetObject(
            ret_pb.GetObjectRequest(collection="Books", id=i), metadata=AS_BOB
        ),
    }
    await _same_failure(objects, alice_ids[0], str(uuid.uuid4()))
    await stack.retrieval.DeleteCollection(
        ret_pb.DeleteCollectionRequest(name="Books"), metadata=BOB
    )
    collections: dict[str, Callable[[str], Any]] = {
        "GetCollection": lambda n: stack.retrieval.GetCollection(
            ret_pb.GetCollectionRequest(name=n), metadata=BOB
        ),
        "CountObjects direct": lambda n: stack.retrieval_direct.CountObjects(
            ret_pb.CountObjectsRequest(collection=n), metadata=AS_BOB
        ),
        "LookupCachedAnswer": lambda n: stack.retrieval_direct.LookupCachedAnswer(
            ret_pb.LookupCachedAnswerRequest(collection=n, question="q", min_similarity=0.9),
            metadata=AS_BOB,
        ),
        "ImportObjects": lambda n: stack.retrieval.ImportObjects(
            iter([ret_pb.ImportObjectsRequest(collection=n, objects=[_titled("t")])]),
            metadata=BOB,
        ),
        "StreamAsk": lambda n: _drained(
            stack.stub.StreamAsk(
                gw_pb.StreamAskRequest(collection=n, llm_question="q"), metadata=BOB
            )
        ),
    }
    await _same_failure(collections, "Books", "Nooks")


async def _drained(stream: Any) -> None:
    async for _ in stream:
        pass


async def test_a_fallback_pair_repeating_an_endpoint_is_refused_by_generation_too(
    stack: Stack,
) -> None:
    """The gateway refuses a generative search's fallback pair that repeats the primary or
    an earlier pair (DUPLICATE_FALLBACK): it re-runs the endpoint that just failed, with all
    its retries, each charged to the tenant. Generate and StreamGenerate, straight to the
    generation service or forwarded by the gateway, took such a chain: a failing endpoint
    was called again, with its retries. Now refused the same way, before any call."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{stack.servers['generation'].port}")
    stack.channels.append(channel)
    hello = [gen_pb.Message(role=gen_pb.ROLE_USER, content="hi")]
    pair = gen_pb.ModelChoice
    chains = [  # (primary provider, primary model, chain, the pair at fault, what it repeats)
        ("fake", "", [pair(provider="FAKE ")], 0, "primary"),
        ("fake", "", [pair(provider="fake", model="fake-model")], 0, "primary"),
        ("", "other", [pair(provider="fake", model="m"), pair(provider="fake", model="m")], 1,
         "fallback[0]"),
    ]  # fmt: skip
    stubs = (
        (gen_grpc.GenerationServiceStub(channel), AS_ALICE),
        (gen_grpc.GenerationServiceStub(stack.channel), ALICE),
    )
    for stub, metadata in stubs:
        for provider, model, chain, at, repeats in chains:
            fields = {"provider": provider, "model": model, "messages": hello, "fallback": chain}
            for call in (
                stub.Generate(gen_pb.GenerateRequest(**fields), metadata=metadata),
                stub.StreamGenerate(gen_pb.StreamGenerateRequest(**fields), metadata=metadata),
            ):
                err = await failure_of(call)
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
                info = error_info(err)
                assert info.reason == "DUPLICATE_FALLBACK", (info, err.details())
                assert info.metadata["field"] == f"fallback[{at}]", info
                assert info.metadata["repeats"] == repeats, info
    assert stack.fake.chat_requests == []


async def _without_request(
    channel: grpc.aio.Channel,
    path: str,
    metadata: Any,
    requests: Any,
    server_streaming: bool,
    timeout: float | None = 10,
) -> grpc.aio.AioRpcError:
    """A call of the method at ``path`` as a client stream of ``requests`` (gRPC sends a
    unary request the same way: headers, one message, half-close), read to its end."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        if server_streaming:
            async for _ in channel.stream_stream(path)(
                requests, metadata=metadata, timeout=timeout
            ):
                pass
        else:
            await channel.stream_unary(path)(requests, metadata=metadata, timeout=timeout)
    return caught.value


HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]


@pytest.mark.slow
async def test_a_unary_call_without_its_request_is_answered(stack: Stack) -> None:
    """A call of a unary-request method (every method but ImportObjects, and health's
    Check, Watch and List) whose client half-closes without sending its request is
    INVALID_ARGUMENT, MALFORMED_REQUEST, naming the message type, through the gateway and
    direct, with a key and without (UNAUTHENTICATED then; health needs none). Before,
    grpc.aio never answered it: no handler ran, and the call stayed open until its
    deadline (here DEADLINE_EXCEEDED, bare), without one for ever, for anyone."""
    targets = _gateway_and_direct(stack)
    checked = 0
    for channel, metadata, services in targets:
        methods = [
            (service, method)
            for service in services
            if service in SERVICES
            for method in SERVICES[service].methods
            if not method.client_streaming
        ] + [(HEALTH.full_name, method) for method in HEALTH.methods]
        for service, method in methods:
            path = f"/{service}/{method.name}"
            keyless = service == HEALTH.full_name
            for sent in (metadata, ()) if not keyless else ((),):
                err = await _without_request(channel, path, sent, iter(()), method.server_streaming)
                where = (path, sent)
                if not sent and not keyless:
                    assert err.code() == grpc.StatusCode.UNAUTHENTICATED, (where, err.details())
                    continue
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (where, err.details())
                info = error_info(err)
                assert info.reason == "MALFORMED_REQUEST", (where, info)
                assert info.metadata["message_type"] == method.input_type.full_name, where
                checked += 1
    assert checked > 60


async def test_a_unary_call_whose_request_never_comes_ends_stream_idle(
    stack_factory: StackFactory,
) -> None:
    """A unary call without a deadline whose client sends headers and then nothing (no
    request, no half-close) is ended after ``stream_idle_timeout``, DEADLINE_EXCEEDED /
    STREAM_IDLE, as a silent client stream is; health's Check too. Before, it stayed open
    for ever."""
    stack = await stack_factory(shared={"stream_idle_timeout": 0.5})

    async def silent() -> Any:
        await asyncio.Event().wait()
        yield b""  # never reached

    calls = [
        (stack.channel, ALICE, "/gensearch.memory.v1.MemoryService/ListConversations", False),
        (stack.channel, ALICE, "/gensearch.gateway.v1.GatewayService/StreamAsk", True),
        (stack.channel, (), f"/{HEALTH.full_name}/Check", False),
    ]
    for channel, metadata, path, server_streaming in calls:
        err = await _without_request(channel, path, metadata, silent(), server_streaming, None)
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (path, err.details())
        info = error_info(err)
        assert info.reason == "STREAM_IDLE", (path, info)
        assert info.metadata["setting"] == "GENSEARCH_GATEWAY_STREAM_IDLE_TIMEOUT", path


async def test_a_unary_request_slower_than_the_idle_timeout_is_served_within_its_deadline(
    stack_factory: StackFactory,
) -> None:
    """A call with a deadline waits for its request until then, as gRPC did before the
    chassis served unary methods as one-message streams: a large request uploaded slowly
    is not idle (found by review: the idle bound refused it)."""
    stack = await stack_factory(shared={"stream_idle_timeout": 0.5})

    async def late() -> Any:
        await asyncio.sleep(1.5)
        yield health_pb2.HealthCheckRequest().SerializeToString()

    reply = await stack.channel.stream_unary(f"/{HEALTH.full_name}/Check")(late(), timeout=10)
    assert health_pb2.HealthCheckResponse.FromString(reply).status == (
        health_pb2.HealthCheckResponse.SERVING
    )


# Keys no gRPC library sends (each validates its headers), an HTTP/2 client of another kind
# or a proxy may: a control character, a non-ASCII letter (UTF-8), a tab, DEL.
# Each with the position of its first such character.
UNSENDABLE_KEYS = {b"sk-\x01abc": 3, "sk-caf\u00e9".encode(): 6, b"sk-a\tb": 4, b"sk-\x7fabc": 3}


async def test_a_caller_key_that_is_no_header_value_is_invalid_argument(stack: Stack) -> None:
    """A caller's provider key holding a character outside printable ASCII is
    INVALID_ARGUMENT, reason MALFORMED_CALLER_KEY, naming the header (never its value),
    through the gateway and straight to generation, and reaches no provider. Before, the
    gateway answered INTERNAL (gRPC refused to send the header on to generation), and
    generation sent it to the provider, whose 400 came back as UNAVAILABLE,
    BAD_UPSTREAM_RESPONSE: "provider 'fake' sent a malformed response"."""
    request = gen_pb.GenerateRequest(
        messages=[gen_pb.Message(role=gen_pb.ROLE_USER, content="hi")]
    ).SerializeToString()
    path = "/gensearch.generation.v1.GenerationService/Generate"
    targets = [(stack.gateway.port, ALICE), (stack.servers["generation"].port, AS_ALICE)]
    for port, metadata in targets:
        for key, position in UNSENDABLE_KEYS.items():
            status = await raw_unary(port, path, [*metadata, ("x-fake-api-key", key)], request)
            where = (port, key)
            assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], (where, status)
            info = status.error_info()
            assert info.reason == "MALFORMED_CALLER_KEY", where
            assert info.metadata["field"] == "x-fake-api-key", where
            assert info.metadata["position"] == str(position), where
            assert "abc" not in status.message and "caf" not in status.message, where
    assert stack.fake.chat_requests == []


async def test_a_base_url_header_that_is_no_header_value_is_invalid_argument(
    stack: Stack,
) -> None:
    """``x-embedding-base-url`` / ``x-rerank-base-url`` holding a character outside
    printable ASCII is INVALID_ARGUMENT, MALFORMED_URL, naming the header, on any gateway
    call that reaches retrieval. Before, the gateway answered INTERNAL to every such call,
    a GetCollection too: it passes the headers on, and gRPC refused to send them."""
    await create_books(stack)
    request = ret_pb.GetCollectionRequest(name="Books").SerializeToString()
    path = "/gensearch.retrieval.v1.RetrievalService/GetCollection"
    for header in ("x-embedding-base-url", "x-rerank-base-url"):
        for url, position in (
            (b"http://127.0.0.1\x01/v1", 16),
            ("http://caf\u00e9.example".encode(), 10),
        ):
            status = await raw_unary(stack.gateway.port, path, [*ALICE, (header, url)], request)
            where = (header, url)
            assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], (where, status)
            info = status.error_info()
            assert info.reason == "MALFORMED_URL", where
            assert info.metadata["field"] == header, where
            assert info.metadata["position"] == str(position), where


def _gateway_and_direct(stack: Stack) -> list[tuple[grpc.aio.Channel, Any, list[str]]]:
    """(channel, metadata, service names) of the gateway as Alice, and of each service
    behind it called directly as the gateway forwards Alice."""
    direct = {
        name: grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        for name, server in stack.servers.items()
    }
    stack.channels.extend(direct.values())
    return [(stack.channel, ALICE, stack.gateway.service_names)] + [
        (channel, AS_ALICE, stack.servers[name].service_names) for name, channel in direct.items()
    ]
