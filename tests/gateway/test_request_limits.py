"""Receive limits per method (issue 12).

Reproduced before: 20 unauthenticated 60 MB requests grew the gateway from 61 MB to 1 GiB,
since every method accepted 64 MiB messages. Now a method takes at most
``max_request_bytes`` (4 MiB) unless ``request_limits`` names it (an import batch:
16 MiB). gRPC refuses anything over the largest limit from the message's length prefix;
the chassis refuses a smaller method's oversized request before parsing it. Peak memory
under the attack is measured by ``bench/abuse.py`` (docs/benchmarks.md), not here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc
from google.protobuf import struct_pb2

from services.common.server import GrpcServer
from services.devlaunch.processes import free_port
from services.gateway.__main__ import build_server
from services.gateway.settings import GatewaySettings
from tests.gateway.conftest import ALICE, DIM, KEYS, StackFactory, vector
from tests.support.rpc import error_info

MIB = 1024 * 1024


@pytest.fixture
async def gateway() -> AsyncIterator[grpc.aio.Channel]:
    nowhere = f"127.0.0.1:{free_port()}"
    settings = GatewaySettings(
        api_keys=KEYS,
        metrics_port=None,
        memory_addr=nowhere,
        retrieval_addr=nowhere,
        generation_addr=nowhere,
    )
    server: GrpcServer = await build_server(settings, port=0)
    port = await server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 64 * MIB)]
    )
    yield channel
    await channel.close()
    await server.stop(0)


def _search(size: int) -> gw_pb.GenerativeSearchRequest:
    return gw_pb.GenerativeSearchRequest(
        collection="Books", generate=gw_pb.Generate(single_prompt="x" * size)
    )


async def test_a_small_method_refuses_a_large_request_unparsed(
    gateway: grpc.aio.Channel,
) -> None:
    stub = gw_grpc.GatewayServiceStub(gateway)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GenerativeSearch(_search(5 * MIB), metadata=ALICE, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "REQUEST_TOO_LARGE"
    assert info.metadata["limit_bytes"] == str(4 * MIB)
    assert "GenerativeSearch accepts at most 4194304" in caught.value.details()
    # The variable that holds the limit, named as every other size refusal names its own
    # (it was named nowhere: an operator had to guess which of the size settings).
    assert info.metadata["setting"] == "GENSEARCH_GATEWAY_MAX_REQUEST_BYTES"
    assert "(GENSEARCH_GATEWAY_MAX_REQUEST_BYTES)" in caught.value.details()


async def test_an_unauthenticated_large_request_learns_nothing_more(
    gateway: grpc.aio.Channel,
) -> None:
    stub = gw_grpc.GatewayServiceStub(gateway)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GenerativeSearch(_search(5 * MIB), timeout=10)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_grpc_refuses_what_no_method_accepts(gateway: grpc.aio.Channel) -> None:
    stub = gw_grpc.GatewayServiceStub(gateway)
    for metadata in (ALICE, ()):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GenerativeSearch(_search(60 * MIB), metadata=metadata, timeout=20)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_an_import_batch_may_be_larger(gateway: grpc.aio.Channel) -> None:
    stub = ret_grpc.RetrievalServiceStub(gateway)
    batch = ret_pb.UpsertObjectsRequest(
        collection="Books", objects=[ret_pb.DataObject(vector=[0.5] * (5 * MIB // 4))]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.UpsertObjects(batch, metadata=ALICE, timeout=10)
    # Accepted and forwarded; nothing listens downstream in this test.
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_reply_over_the_send_limit_is_refused_with_error_info(
    stack_factory: StackFactory,
) -> None:
    """Before, gRPC's own "Sent message larger than max" (RESOURCE_EXHAUSTED without
    ErrorInfo, naming nothing): 65 inline objects with debug prompts made a 128 MB reply
    to a gateway sending at most 64 MiB, after 65 LLM calls."""
    stack = await stack_factory(max_message_bytes=MIB)
    objects = [struct_pb2.Struct(fields={"t": struct_pb2.Value(string_value="y" * 30_000)})] * 20
    generate = gw_pb.Generate(single_prompt="{t}{t}", debug=True)  # ~120 KB per hit, twice
    request = gw_pb.GenerateOnObjectsRequest(
        inline=gw_pb.InlineObjects(objects=objects), generate=generate
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.stub.GenerateOnObjects(request, metadata=ALICE)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "RESPONSE_TOO_LARGE"
    assert info.metadata["limit_bytes"] == str(MIB)
    assert int(info.metadata["size_bytes"]) > MIB
    assert "GENSEARCH_GATEWAY_MAX_MESSAGE_BYTES" in (caught.value.details() or "")
    # The streaming method sends it hit by hit, each event within the limit.
    events = [
        event
        async for event in stack.stub.StreamGenerateOnObjects(
            gw_pb.StreamGenerateOnObjectsRequest(
                inline=gw_pb.InlineObjects(objects=objects), generate=generate
            ),
            metadata=ALICE,
        )
    ]
    assert sum(e.HasField("hit_result") for e in events) == 20
    assert "StreamGenerateOnObjects" in (caught.value.details() or "")


async def test_a_reply_too_large_suggests_only_what_the_method_has(
    stack_factory: StackFactory,
) -> None:
    """RESPONSE_TOO_LARGE told every method's caller to go "without debug, or use the
    streaming method": a retrieval Search has neither, and a StreamGenerativeSearch whose
    hits did not fit the retrieval Search behind it was already the streaming method."""
    stack = await stack_factory(shared={"max_message_bytes": MIB})
    await stack.retrieval.CreateCollection(
        ret_pb.CreateCollectionRequest(
            collection=ret_pb.Collection(
                name="Big",
                properties=[ret_pb.Property(name="t", data_type=ret_pb.DATA_TYPE_TEXT)],
                vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=DIM),
            )
        ),
        metadata=ALICE,
    )
    for i in range(4):
        obj = ret_pb.DataObject(vector=vector(i))
        obj.properties.update({"t": "z" * 400_000})
        await stack.retrieval.UpsertObjects(
            ret_pb.UpsertObjectsRequest(collection="Big", objects=[obj]), metadata=ALICE
        )
    near = ret_pb.NearVector(vector=vector(0))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stack.retrieval.Search(
            ret_pb.SearchRequest(collection="Big", near_vector=near), metadata=ALICE
        )
    assert error_info(caught.value).reason == "RESPONSE_TOO_LARGE"
    details = caught.value.details() or ""
    assert "GENSEARCH_RETRIEVAL_MAX_MESSAGE_BYTES" in details
    assert "debug" not in details and "stream" not in details, details
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in stack.stub.StreamGenerativeSearch(
            gw_pb.StreamGenerativeSearchRequest(
                collection="Big", near_vector=near, generate=gw_pb.Generate(grouped_task="x")
            ),
            metadata=ALICE,
        ):
            pass
    assert error_info(caught.value).reason == "RESPONSE_TOO_LARGE"
    assert "stream" not in (caught.value.details() or ""), caught.value.details()


async def test_a_method_with_its_own_limit_names_request_limits(
    gateway: grpc.aio.Channel,
) -> None:
    """A method whose limit is its entry in REQUEST_LIMITS (CreateInteraction: 8 MiB,
    below ImportObjects' 16 MiB that gRPC enforces) names that setting, not
    MAX_REQUEST_BYTES, when it refuses a larger request."""
    stub = mem_grpc.MemoryServiceStub(gateway)
    request = mem_pb.CreateInteractionRequest(input="x" * (9 * MIB), response="y")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateInteraction(request, metadata=ALICE, timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "REQUEST_TOO_LARGE"
    assert info.metadata["limit_bytes"] == str(8 * MIB)
    assert info.metadata["setting"] == "GENSEARCH_GATEWAY_REQUEST_LIMITS"
    assert "(GENSEARCH_GATEWAY_REQUEST_LIMITS)" in caught.value.details()
