"""Request metadata size: refused or accepted the same way every time, end to end.

Reproduced before: gRPC core refuses metadata between its soft limit
(``grpc.max_metadata_size``, 8 KiB by default) and its hard one
(``grpc.absolute_max_metadata_size``, 16 KiB) at random, so a 12 KB
``x-embedding-api-key`` sometimes passed the gateway, sometimes was RESOURCE_EXHAUSTED
there, and sometimes DOWNSTREAM_RESOURCE_EXHAUSTED from retrieval. Every server and the
gateway's channels now set both to ``MAX_METADATA_BYTES`` (docs/operations.md#upper-bounds).
"""

from __future__ import annotations

import grpc
import pytest
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import ALICE, StackFactory

KIB = 1024


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
    stack = await stack_factory()
    metadata = (*ALICE, ("x-embedding-api-key", "k" * size))
    assert await _twenty(stack.retrieval, metadata) == {"OK"}
    # A provider key goes on to generation the same way.
    generation = gen_grpc.GenerationServiceStub(stack.channel)
    metadata = (*ALICE, ("x-fake-api-key", "k" * size))
    assert await _twenty(generation, metadata) == {"OK"}


async def test_a_header_over_the_limit_is_refused_every_time(stack_factory: StackFactory) -> None:
    stack = await stack_factory(max_metadata_bytes=8 * KIB)
    metadata = (*ALICE, ("x-embedding-api-key", "k" * 12_000))
    outcomes = await _twenty(stack.retrieval, metadata)
    assert len(outcomes) == 1, outcomes
    assert next(iter(outcomes)).startswith("RESOURCE_EXHAUSTED"), outcomes
