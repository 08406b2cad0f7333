"""Calls of a tenant whose bytes of replies in flight are at their bound
(services/common/reply_bytes.py): such a call was served in full (the gateway's calls to
retrieval and generation, a write done) only for its reply to be refused; it is refused
before its work now."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.gateway.conftest import (
    ALICE,
    AS_ALICE,
    BOB,
    DIM,
    OWN_CONNECTIONS,
    Stack,
    StackFactory,
    create_books,
    retrieval_calls,
    vector,
)
from tests.support.rpc import error_info

MIB = 1024 * 1024


def _big_books(count: int, size: int) -> list[dict[str, object]]:
    return [
        {"title": f"Big {i}", "body": "b" * size, "year": 2000 + i, "tags": []}
        for i in range(count)
    ]


async def _alices_books(stack: Stack) -> int:
    """Alice's objects in "Books", asked of retrieval itself."""
    counted = await stack.retrieval_direct.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=AS_ALICE, timeout=30
    )
    return counted.count


async def _alice_holds(stack: Stack, check: Callable[[int], bool]) -> None:
    """Polls the bytes of alice's replies the gateway holds until ``check`` them, 60 s at
    most (a hang fails here, not at the suite's timeout)."""
    for _ in range(3000):
        if check(stack.gateway.reply_bytes.held("alice")):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the gateway holds {stack.gateway.reply_bytes.held('alice')} bytes")


def _assert_full(err: grpc.aio.AioRpcError) -> None:
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    info = error_info(err)
    assert info.reason == "RESPONSE_BYTES_IN_FLIGHT"
    setting = "GENSEARCH_GATEWAY_MAX_REPLY_BYTES_IN_FLIGHT_PER_TENANT"
    assert info.metadata["setting"] == setting
    assert info.metadata["limit_bytes"] == str(MIB)
    assert int(info.metadata["held_bytes"]) > MIB
    assert "size_bytes" not in info.metadata  # refused before its reply was built
    assert setting in (err.details() or "")
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    assert status is not None
    assert [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]


async def test_a_tenant_at_its_reply_bound_is_refused_before_the_gateway_calls_on(
    stack_factory: StackFactory,
) -> None:
    # Alice's replies may hold 1 MiB of the gateway at once.
    stack = await stack_factory(max_reply_bytes_in_flight_per_tenant=MIB)
    await create_books(stack, "Big", books=_big_books(4, 2 * MIB))
    await create_books(stack)  # "Books", small
    await create_books(stack, metadata=BOB)
    # A client that does not read: its stream's first event (the hits, 8 MiB) stays in the
    # gateway, counted against alice's bound (a first reply always goes), until it reads.
    reader = grpc.aio.insecure_channel(
        f"127.0.0.1:{stack.gateway.port}",
        options=[*OWN_CONNECTIONS, ("grpc.http2.bdp_probe", 0)],
    )
    try:
        gw_grpc.GatewayServiceStub(reader).StreamGenerativeSearch(  # type: ignore[arg-type]
            gw_pb.StreamGenerativeSearchRequest(
                collection="Big",
                near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
                limit=4,
                generate=gw_pb.Generate(single_prompt="Say {title}"),
            ),
            metadata=ALICE,
            timeout=120,  # held to its deadline, not cut at the send timeout
        )
        await _alice_holds(stack, lambda held: held > MIB)
        books = await _alices_books(stack)
        searches = retrieval_calls("Search")

        # A generative search: refused before the gateway searched (or generated).
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.stub.GenerativeSearch(
                gw_pb.GenerativeSearchRequest(
                    collection="Books",
                    near_vector=ret_pb.NearVector(vector=vector(0)),
                    limit=2,
                    generate=gw_pb.Generate(single_prompt="Say {title}"),
                ),
                metadata=ALICE,
                timeout=30,
            )
        assert retrieval_calls("Search") == searches
        _assert_full(caught.value)

        # A write: refused, and not done behind the refusal (before, the object was stored
        # and its small reply refused).
        props = struct_pb2.Struct()
        props.update({"title": "Refused", "body": "", "year": 1, "tags": []})
        upsert = ret_pb.UpsertObjectsRequest(
            collection="Books", objects=[ret_pb.DataObject(properties=props, vector=vector(1))]
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stack.retrieval.UpsertObjects(upsert, metadata=ALICE, timeout=30)
        assert await _alices_books(stack) == books
        _assert_full(caught.value)

        # Another tenant's calls go through.
        assert (await stack.retrieval.UpsertObjects(upsert, metadata=BOB, timeout=30)).ids
    finally:
        await reader.close()  # the stalled stream ends: its bytes are given back
    await _alice_holds(stack, lambda held: held == 0)
    assert (await stack.retrieval.UpsertObjects(upsert, metadata=ALICE, timeout=30)).ids
    assert await _alices_books(stack) == books + 1
