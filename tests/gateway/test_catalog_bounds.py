"""The gateway's collection cache is bounded per tenant, least recently used first: one
tenant reading many collections (or as many users) never empties another tenant's entries.
It was emptied whole once it held more than 1,024 entries, whoever filled it.

On the whole stack (real retrieval over real gRPC): whether the gateway still kept a
collection shows as a GetCollection call retrieval started, or none, for a search of it.
A cap of two entries per tenant (COLLECTION_CACHE_ENTRIES_PER_TENANT) keeps it small."""

from __future__ import annotations

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from tests.gateway.conftest import (
    ALICE,
    BOB,
    BOOKS,
    DIM,
    Stack,
    StackFactory,
    create_books,
    retrieval_calls,
)

CAP = 2


async def kept_stack(stack_factory: StackFactory) -> Stack:
    # A TTL far longer than the test: an entry goes only when the cap pushes it out.
    return await stack_factory(collection_cache_ttl=600, collection_cache_entries_per_tenant=CAP)


async def reads(stack: Stack, name: str, metadata: tuple[tuple[str, str], ...]) -> float:
    """GetCollection calls retrieval started for one generative search of ``name``: 0 when
    the gateway still kept the collection, 1 when it had to read it."""
    before = retrieval_calls("GetCollection")
    await stack.stub.GenerativeSearch(
        gw_pb.GenerativeSearchRequest(
            collection=name,
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=1,
            generate=gw_pb.Generate(single_prompt="{title}"),
        ),
        metadata=metadata,
    )
    return retrieval_calls("GetCollection") - before


async def test_one_tenants_churn_leaves_another_tenants_entries(
    stack_factory: StackFactory,
) -> None:
    stack = await kept_stack(stack_factory)
    await create_books(stack, "Books", books=BOOKS[:1], metadata=ALICE)
    churn = [f"C{i}" for i in range(CAP + 1)]  # one more than bob's tenant may keep
    for name in churn:
        await create_books(stack, name, books=BOOKS[:1], metadata=BOB)
    assert await reads(stack, "Books", ALICE) == 1
    for name in churn:
        assert await reads(stack, name, BOB) == 1
    assert await reads(stack, "Books", ALICE) == 0  # still kept: bob's churn left it
    # Bob's own newest entry stayed, his oldest went.
    assert await reads(stack, churn[-1], BOB) == 0
    assert await reads(stack, churn[0], BOB) == 1


async def test_a_tenants_recently_used_entry_outlives_its_older_ones(
    stack_factory: StackFactory,
) -> None:
    stack = await kept_stack(stack_factory)
    for name in ("A", "B", "C"):
        await create_books(stack, name, books=BOOKS[:1], metadata=ALICE)
    assert await reads(stack, "A", ALICE) == 1
    assert await reads(stack, "B", ALICE) == 1
    assert await reads(stack, "A", ALICE) == 0  # A used last: B is the oldest now
    assert await reads(stack, "C", ALICE) == 1  # B goes
    assert await reads(stack, "A", ALICE) == 0
    assert await reads(stack, "B", ALICE) == 1
