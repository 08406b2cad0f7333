"""Request metadata size: refused or accepted the same way every time, end to end, and
refused by our chassis with an ErrorInfo naming the largest header.

Reproduced before: gRPC core refuses metadata between its soft limit
(``grpc.max_metadata_size``, 8 KiB by default) and its hard one
(``grpc.absolute_max_metadata_size``, 16 KiB) at random, so a 12 KB
``x-embedding-api-key`` sometimes passed the gateway, sometimes was RESOURCE_EXHAUSTED
there, and sometimes DOWNSTREAM_RESOURCE_EXHAUSTED from retrieval. Then both were set to
``MAX_METADATA_BYTES``: deterministic, but gRPC's own refusal, with no ErrorInfo (which
header? which limit?). Now every service counts the headers itself and refuses past the
setting with METADATA_TOO_LARGE; gRPC's limits sit at twice the setting (the memory
bound), past which gRPC still refuses bare (docs/operations.md#limits).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc
from grpc_status import rpc_status

from services.common.settings import DEFAULT_MAX_METADATA_BYTES, DOWNSTREAM_MAX_METADATA_BYTES
from tests.gateway.conftest import ALICE, AS_ALICE, OWN_CONNECTIONS, Stack, StackFactory
from tests.support.rpc import bad_request_field, error_info

KIB = 1024
HEADER = "x-embedding-api-key"
# Caller keys this long are refused on their own (MAX_CALLER_KEY_BYTES, 1 KiB by default,
# tests/common/test_caller_key_registration.py); these tests are about the metadata bound.
LONG_KEYS = {"max_caller_key_bytes": 64 * KIB}
Metadata = tuple[tuple[str, str], ...]
# One cheap unary call of a service, with the given metadata.
Call = Callable[[Metadata], Awaitable[object]]


def _outcome(err: grpc.aio.AioRpcError | None) -> str:
    return "OK" if err is None else f"{err.code().name}: {err.details()}"


async def _twenty(stub: object, metadata: tuple[tuple[str, str], ...]) -> set[str]:
    """The outcomes of 20 calls with ``metadata``: ListCollections on a retrieval stub,
    ListModels on a generation one."""
    outcomes = set()
    for _ in range(20):
        try:
            if isinstance(stub, gen_grpc.GenerationServiceStub):
                await stub.ListModels(gen_pb.ListModelsRequest(), metadata=metadata, timeout=10)
            else:
                await stub.ListCollections(  # type: ignore[attr-defined]
                    ret_pb.ListCollectionsRequest(), metadata=metadata, timeout=10
                )
            outcomes.add(_outcome(None))
        except grpc.aio.AioRpcError as err:
            outcomes.add(_outcome(err))
    return outcomes


@pytest.mark.parametrize("size", [12_000, 15_500])
async def test_a_large_header_is_accepted_every_time_through_the_gateway(
    stack_factory: StackFactory, size: int
) -> None:
    # Within the default 16 KiB, with room for what the gateway adds when it forwards the
    # header to retrieval (its identity headers, the trace context).
    stack = await stack_factory(shared=LONG_KEYS)
    metadata = (*ALICE, ("x-embedding-api-key", "k" * size))
    assert await _twenty(stack.retrieval, metadata) == {"OK"}
    # A provider key goes on to generation the same way.
    generation = gen_grpc.GenerationServiceStub(stack.channel)
    metadata = (*ALICE, ("x-fake-api-key", "k" * size))
    assert await _twenty(generation, metadata) == {"OK"}


async def test_a_header_over_the_limit_is_refused_every_time(stack_factory: StackFactory) -> None:
    stack = await stack_factory(max_metadata_bytes=8 * KIB, shared=LONG_KEYS)
    metadata = (*ALICE, ("x-embedding-api-key", "k" * 12_000))
    outcomes = await _twenty(stack.retrieval, metadata)
    assert len(outcomes) == 1, outcomes
    assert next(iter(outcomes)).startswith("RESOURCE_EXHAUSTED"), outcomes


def _calls(stack: Stack) -> dict[str, tuple[Call, Metadata, int]]:
    """Per service: a cheap call, the caller's own headers, and the service's limit."""
    channel = {
        name: grpc.aio.insecure_channel(f"127.0.0.1:{server.port}", options=OWN_CONNECTIONS)
        for name, server in stack.servers.items()
    }
    stack.channels.extend(channel.values())
    retrieval: ret_grpc.RetrievalServiceAsyncStub = ret_grpc.RetrievalServiceStub(  # type: ignore[assignment]
        channel["retrieval"]
    )
    memory: mem_grpc.MemoryServiceAsyncStub = mem_grpc.MemoryServiceStub(channel["memory"])  # type: ignore[assignment]
    generation: gen_grpc.GenerationServiceAsyncStub = gen_grpc.GenerationServiceStub(  # type: ignore[assignment]
        channel["generation"]
    )
    return {
        "gateway": (
            lambda md: stack.retrieval.ListCollections(
                ret_pb.ListCollectionsRequest(), metadata=md, timeout=10
            ),
            ALICE,
            DEFAULT_MAX_METADATA_BYTES,
        ),
        "retrieval": (
            lambda md: retrieval.ListCollections(
                ret_pb.ListCollectionsRequest(), metadata=md, timeout=10
            ),
            AS_ALICE,
            DOWNSTREAM_MAX_METADATA_BYTES,
        ),
        "memory": (
            lambda md: memory.ListConversations(
                mem_pb.ListConversationsRequest(), metadata=md, timeout=10
            ),
            AS_ALICE,
            DOWNSTREAM_MAX_METADATA_BYTES,
        ),
        "generation": (
            lambda md: generation.ListModels(gen_pb.ListModelsRequest(), metadata=md, timeout=10),
            AS_ALICE,
            DOWNSTREAM_MAX_METADATA_BYTES,
        ),
    }


async def _failure(call: Call, metadata: Metadata) -> grpc.aio.AioRpcError | None:
    try:
        await call(metadata)
    except grpc.aio.AioRpcError as err:
        return err
    return None


async def test_the_limit_passes_and_one_byte_more_is_refused_naming_the_header(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory(shared=LONG_KEYS)
    for service, (call, own, limit) in _calls(stack).items():
        # A header as long as the whole limit is over it: the refusal says by how much, so
        # the value that brings the count (as gRPC counts: name + value + 32 per header)
        # to the limit exactly is known without knowing what the client's gRPC adds.
        err = await _failure(call, (*own, (HEADER, "k" * limit)))
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, service
        info = error_info(err)
        assert info.reason == "METADATA_TOO_LARGE", (service, info)
        over = int(info.metadata["size_bytes"]) - limit
        at_limit = (*own, (HEADER, "k" * (limit - over)))
        one_more = (*own, (HEADER, "k" * (limit - over + 1)))
        for _ in range(10):  # the same outcome every time
            assert await _failure(call, at_limit) is None, service
            err = await _failure(call, one_more)
            assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, service
            info = error_info(err)
            assert info.reason == "METADATA_TOO_LARGE" and info.domain == "gensearch"
            assert dict(info.metadata) == {
                "field": HEADER,
                "limit_bytes": str(limit),
                "size_bytes": str(limit + 1),
                "setting": f"GENSEARCH_{service.upper()}_MAX_METADATA_BYTES",
            }, service
            assert bad_request_field(err) == HEADER
            assert HEADER in (err.details() or ""), err.details()


async def test_past_twice_the_limit_grpc_itself_refuses(stack_factory: StackFactory) -> None:
    """gRPC's own limit, the bound on what a server buffers, is twice the setting: past it
    the refusal is gRPC's, with no ErrorInfo (documented, docs/operations.md#limits)."""
    stack = await stack_factory(shared=LONG_KEYS)
    call, own, limit = _calls(stack)["gateway"]
    err = await _failure(call, (*own, (HEADER, "k" * (2 * limit + 1))))
    assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert rpc_status.from_call(err) is None  # type: ignore[arg-type]
