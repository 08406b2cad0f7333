"""The memory service while a Redis Cluster moves a user's slot to another node (what
``redis-cli --cluster reshard`` does): its calls keep being served, and what it acknowledged
is on the new node afterwards."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY
from redis.crc import key_slot

from services.common.auth import DEFAULT_TENANT, Identity, Role, forwarded_identity
from services.common.errors import InvalidArgument, NotFound, ResourceExhausted, Unavailable
from services.common.redis_client import connect
from services.memory import keys
from services.memory.__main__ import build_server
from services.memory.store import (
    ConversationRecord,
    ConversationUpdate,
    MemoryStore,
    Owner,
    Retention,
)
from tests.memory.conftest import INTERNAL_TOKEN, cluster_client, make_settings
from tests.memory.helpers import conversation_with_turns, rpc_error, usage_bytes
from tests.memory.test_cluster import _hash_tag
from tests.support.redis_cluster import LocalCluster, Node
from tests.support.rpc import error_info

BACKENDS = ("cluster",)
USER = "mover"
WHO = forwarded_identity(Identity(USER, DEFAULT_TENANT, Role.READER), INTERNAL_TOKEN)
WRITERS = 4
RETENTION_BATCH = 500  # services/memory/lua/retention.lua
OWNER = Owner(DEFAULT_TENANT, USER)


def _move(own_cluster: LocalCluster) -> tuple[int, Node, Node]:
    """The test user's slot, the node holding it and another to move it to."""
    slot = key_slot(_hash_tag(USER).encode())
    source = next(node for node in own_cluster.nodes if node.owns(slot))
    target = next(node for node in own_cluster.nodes if node is not source)
    return slot, source, target


async def _move_slot(
    own_cluster: LocalCluster,
    *,
    batch: int,
    between: Callable[[], Awaitable[None]],
    first: Sequence[str],
) -> Node:
    """Moves the test user's slot to another node (``LocalCluster.migrate_slot``: ``first``
    moved first, ``between`` awaited after each batch); returns the node it is on now."""
    slot, source, target = _move(own_cluster)
    await own_cluster.migrate_slot(slot, source, target, batch=batch, between=between, first=first)
    return target


async def _retrying(call: object, attempts: int = 1000) -> object:
    """A caller's retry of UNAVAILABLE (the documented answer while a slot moves), with
    the same request, so a write that ran is not made twice (its request_id)."""
    make = call  # a zero-argument coroutine function
    for _ in range(attempts):
        try:
            return await make()  # type: ignore[operator]
        except grpc.aio.AioRpcError as err:
            if err.code() != grpc.StatusCode.UNAVAILABLE:
                raise
            await asyncio.sleep(0.02)
    raise AssertionError("still UNAVAILABLE")


@pytest.mark.slow
async def test_a_slot_moved_under_traffic_loses_nothing(own_cluster: LocalCluster) -> None:
    server = await build_server(make_settings(own_cluster.url, redis_cluster=True), port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            # Keys enough that the move takes many steps.
            cid, _ = await conversation_with_turns(stub, "pre", 40, WHO)
            acknowledged = {f"pre{n}" for n in range(40)}
            # A conversation nobody writes to while the slot moves: every read of it is
            # whole or UNAVAILABLE, never a page with turns missing.
            sid, iids = await conversation_with_turns(stub, "s", 20, WHO)
            whole = [f"s{n}" for n in reversed(range(20))]
            unavailable = 0
            reads = 0
            moving = True

            async def reader() -> None:
                nonlocal unavailable, reads
                while moving:
                    try:
                        page = await stub.ListInteractions(
                            pb.ListInteractionsRequest(conversation_id=sid, page_size=100),
                            metadata=WHO,
                        )
                    except grpc.aio.AioRpcError as err:
                        assert err.code() == grpc.StatusCode.UNAVAILABLE, (
                            err.code(),
                            err.details(),
                        )
                        unavailable += 1
                        await asyncio.sleep(0.01)
                        continue
                    assert [i.input for i in page.interactions] == whole
                    reads += 1
                    n = reads % len(iids)
                    try:
                        got = await stub.GetInteraction(
                            pb.GetInteractionRequest(interaction_id=iids[n]), metadata=WHO
                        )
                        assert got.interaction.input == f"s{n}"
                        conv = await stub.GetConversation(
                            pb.GetConversationRequest(conversation_id=sid), metadata=WHO
                        )
                        assert conv.conversation.interaction_count == len(iids)
                    except grpc.aio.AioRpcError as err:
                        assert err.code() == grpc.StatusCode.UNAVAILABLE, (
                            err.code(),
                            err.details(),
                        )
                        unavailable += 1

            async def writer(w: int) -> None:
                nonlocal unavailable
                n = 0
                while moving:
                    text = f"w{w}-{n}"
                    request = pb.CreateInteractionRequest(
                        conversation_id=cid, input=text, request_id=text
                    )

                    async def create(request: pb.CreateInteractionRequest = request) -> object:
                        return await stub.CreateInteraction(request, metadata=WHO)

                    async def read() -> object:
                        return await stub.ListInteractions(
                            pb.ListInteractionsRequest(conversation_id=cid, page_size=5),
                            metadata=WHO,
                        )

                    for step in (create, read):
                        try:
                            await step()
                        except grpc.aio.AioRpcError as err:
                            assert err.code() == grpc.StatusCode.UNAVAILABLE, (
                                err.code(),
                                err.details(),
                            )
                            unavailable += 1
                            await _retrying(step)
                    acknowledged.add(text)
                    n += 1

            writers = [asyncio.create_task(writer(w)) for w in range(WRITERS)]
            writers.append(asyncio.create_task(reader()))
            slot, source, target = _move(own_cluster)
            try:
                moved = await own_cluster.migrate_slot(
                    slot, source, target, between=lambda: asyncio.sleep(0.01)
                )
            finally:
                moving = False
                await asyncio.gather(*writers)
            assert moved > 60
            assert reads > 0

            listed: list[str] = []
            token = ""
            while True:
                page = await stub.ListInteractions(
                    pb.ListInteractionsRequest(
                        conversation_id=cid, page_size=100, page_token=token
                    ),
                    metadata=WHO,
                )
                listed += [i.input for i in page.interactions]
                token = page.next_page_token
                if not token:
                    break
            assert sorted(listed) == sorted(acknowledged)  # nothing lost, nothing twice
            async with target.client() as client:
                assert await client.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) > 40
            print(f"moved {moved} keys; {unavailable} UNAVAILABLE retried; {reads} reads")
    finally:
        await server.stop(0)


@pytest.mark.slow
async def test_a_conversation_deleted_while_its_slot_moves_leaves_nothing(
    own_cluster: LocalCluster,
) -> None:
    """The delete is tried at every step of the move (UNAVAILABLE while the conversation's
    keys are split between the nodes, and retried), first when the conversation's own keys
    have moved and its turns not yet: it deletes everything or nothing."""
    server = await build_server(make_settings(own_cluster.url, redis_cluster=True), port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            cid, _ = await conversation_with_turns(stub, "d", 30, WHO)
            slot, source, target = _move(own_cluster)
            tag = f"gensearch:{_hash_tag(USER)}"
            deleted = []
            tries = 0

            async def delete() -> object:
                return await stub.DeleteConversation(
                    pb.DeleteConversationRequest(conversation_id=cid), metadata=WHO
                )

            async def delete_once() -> None:
                nonlocal tries
                if deleted:
                    return
                tries += 1
                try:
                    deleted.append(await delete())
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE, (err.code(), err.details())

            await own_cluster.migrate_slot(
                slot,
                source,
                target,
                batch=100,
                between=delete_once,
                first=[f"{tag}:convs", f"{tag}:conv:{cid}", f"{tag}:conv:{cid}:ints"],
            )
            assert tries > 0  # tried mid-move
            if not deleted:
                await _retrying(delete)
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await stub.GetConversation(
                    pb.GetConversationRequest(conversation_id=cid), metadata=WHO
                )
            assert gone.value.code() == grpc.StatusCode.NOT_FOUND
            async with target.client() as client:
                left = [
                    key.decode()
                    async for key in client.scan_iter(match=f"*{_hash_tag(USER)}*", count=1000)
                ]
            # The user's conversation list and usage may stay; nothing of the conversation.
            assert [key for key in left if ":int:" in key or ":req:" in key or cid in key] == []
    finally:
        await server.stop(0)


@pytest.mark.slow
async def test_reads_that_derive_turn_keys_mid_move_are_whole_or_unavailable(
    own_cluster: LocalCluster,
    make_store: Callable[..., MemoryStore],
) -> None:
    """The scripts that read turns by ids or walk a list (get_interactions,
    interactions_exist, list_conversations, check_storage's accounting) at every step of
    a move, first with the conversation's keys moved and its turns not: each answers the
    whole truth or UNAVAILABLE (retryable), never INTERNAL nor a turn missing."""
    store = make_store()
    cid = (await store.create_conversation(OWNER, "r")).conversation_id
    iids = [
        (
            await store.create_interaction(OWNER, cid, pb.Interaction(input=f"r{n}"), f"r{n}")
        ).interaction_id
        for n in range(10)
    ]
    answers: dict[str, int] = {"whole": 0, "unavailable": 0}

    async def read_all() -> None:
        reads = {
            "get": store.get_interactions(OWNER, iids),
            "exist": store.interactions_exist(OWNER, iids),
            "list": store.list_conversations(OWNER, 10, None),
            "usage": store.check_storage(OWNER, cid, 0),
        }
        for name, read in reads.items():
            try:
                got = await read
            except Unavailable:
                answers["unavailable"] += 1
                continue
            if name == "get":
                assert [i.input if i else None for i in got] == [f"r{n}" for n in range(10)]
            elif name == "exist":
                assert got == [True] * 10
            elif name == "list":
                assert [(c.conversation_id, c.interaction_count) for c in got.items] == [(cid, 10)]
            else:
                assert got.conversations == 1
            answers["whole"] += 1

    tag = store.tag(OWNER)
    await _move_slot(
        own_cluster,
        batch=3,
        between=read_all,
        first=[f"{tag}:convs", f"{tag}:conv:{cid}", f"{tag}:conv:{cid}:ints"],
    )
    await read_all()
    assert answers["whole"] > 4  # at least the reads after the move
    print(answers)


@pytest.mark.slow
async def test_a_ttl_changed_while_its_slot_moves_leaves_no_turn_expiring_first(
    own_cluster: LocalCluster,
    make_store: Callable[..., MemoryStore],
) -> None:
    """A ttl change tried at every step of a move, first with the conversation's keys
    moved and its turns not: the walk of the turns' expiry declares every turn it sets
    (retention_step.lua), so Redis refuses it while they are split (UNAVAILABLE, retried)
    rather than it renewing none and ending. Before, it ended there: the turns kept their
    old expiry, an hour before their conversation's new one."""
    store = make_store()
    made = await store.create_conversation(OWNER, "t", Retention(ttl_ms=3_600_000))
    cid = made.conversation_id
    iids = [
        (await store.create_interaction(OWNER, cid, pb.Interaction(input="t"), "")).interaction_id
        for _ in range(5)
    ]
    tag = store.tag(OWNER)
    changed = []
    refused = 0

    async def change_once() -> None:
        nonlocal refused
        if not changed:
            try:
                await store.update_conversation(OWNER, cid, ConversationUpdate(ttl_ms=7_200_000))
                changed.append(True)
            except Unavailable:
                refused += 1

    target = await _move_slot(
        own_cluster,
        batch=100,
        between=change_once,
        first=[f"{tag}:convs", f"{tag}:conv:{cid}", f"{tag}:conv:{cid}:ints", f"{tag}:usage"],
    )
    if not changed:
        await store.update_conversation(OWNER, cid, ConversationUpdate(ttl_ms=7_200_000))
    async with target.client() as client:
        conv = await client.execute_command("PEXPIRETIME", f"{tag}:conv:{cid}")
        turns = [await client.execute_command("PEXPIRETIME", f"{tag}:int:{iid}") for iid in iids]
        assert await client.hget(f"{tag}:conv:{cid}", "walk_after") is None
    assert conv > 0
    assert all(t >= conv for t in turns), (conv, turns)
    assert refused > 0  # tried with the turns still on the old node


@pytest.mark.slow
async def test_a_walk_refused_midway_by_a_move_keeps_every_turn_after_its_conversation(
    own_cluster: LocalCluster,
    make_store: Callable[..., MemoryStore],
) -> None:
    """A ttl change whose walk takes two batches, the slot moved up to the middle of the
    second: the first batch is walked on the new node, the second refused (UNAVAILABLE)
    with the walk's state at the end of the first. Then every turn, walked or not, on
    either node, expires no earlier than its conversation; the update retried after the
    move finishes the walk."""
    store = make_store()
    reader = cluster_client(own_cluster)
    longer = ConversationUpdate(ttl_ms=7_200_000)
    try:
        made = await store.create_conversation(OWNER, "w", Retention(ttl_ms=3_600_000))
        cid = made.conversation_id
        for _ in range(RETENTION_BATCH + 200):
            await store.create_interaction(OWNER, cid, pb.Interaction(input="w"), "")
        tag = store.tag(OWNER)
        conv_key = f"{tag}:conv:{cid}"
        iids = sorted(m.decode() for m in await reader.zrange(f"{conv_key}:ints", 0, -1))

        async def expiries() -> tuple[int, list[int]]:
            # The cluster client follows ASK: each key where it is now.
            conv = await reader.pexpiretime(conv_key)
            return conv, [await reader.pexpiretime(f"{tag}:int:{iid}") for iid in iids]

        midway: list[tuple[int, list[int], bytes | None]] = []

        async def change_midway() -> None:
            if not midway:
                with pytest.raises(Unavailable):
                    await store.update_conversation(OWNER, cid, longer)
                conv, turns = await expiries()
                midway.append((conv, turns, await reader.hget(conv_key, "walk_after")))

        moved_turns = [f"{tag}:int:{iid}" for iid in iids[: RETENTION_BATCH + 100]]
        await _move_slot(
            own_cluster,
            batch=1000,
            between=change_midway,
            first=[f"{tag}:convs", conv_key, f"{conv_key}:ints", f"{tag}:usage", *moved_turns],
        )
        conv, turns, walk_after = midway[0]
        assert walk_after == iids[RETENTION_BATCH - 1].encode()  # the first batch, no more
        assert len(set(turns[:RETENTION_BATCH])) == 1  # walked: the new target
        assert 0 < conv <= min(turns), (conv, min(turns))
        assert max(turns) > min(turns)  # the second batch kept its old expiry

        updated = await store.update_conversation(OWNER, cid, longer)
        conv, turns = await expiries()
        assert conv == updated.expire_ms
        assert len(set(turns)) == 1 and turns[0] >= conv + 3_600_000, (conv, set(turns))
        assert await reader.hget(conv_key, "walk_after") is None
    finally:
        await reader.aclose()


@pytest.mark.slow
@pytest.mark.parametrize("by", ["turn", "max_turns", "summary"])
async def test_turns_evicted_while_their_slot_moves_leave_no_key_behind(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore], by: str
) -> None:
    """Eviction (max_turns) tried at every step of a move, first with the conversation's
    keys and the owner's usage moved and its turns not: by a turn added at max_turns, by
    UpdateConversation lowering max_turns, by a summary covering the oldest turns. The
    evicting script declares every turn key (and request_id key) it deletes, so Redis
    refuses it while they are split (UNAVAILABLE, retried). Before, it ran on the new node,
    dropped the turns from the list and left their keys (and request_id keys) behind for
    good, their bytes counted as the bare overhead."""
    store = make_store()
    # Summaries off: the oldest turns go at once (else only past the grace).
    retention = Retention(max_turns=4, summary_disabled=True) if by == "turn" else None
    cid = (await store.create_conversation(OWNER, "e", retention)).conversation_id
    iids = [
        (
            await store.create_interaction(
                OWNER, cid, pb.Interaction(input=f"e{n}" * 50), f"e{n}", b"t" * n
            )
        ).interaction_id
        for n in range(4)
    ]
    if by == "summary":
        await store.update_conversation(OWNER, cid, ConversationUpdate(max_turns=2))
        # No summary yet: within the grace, nothing evicted until one covers them.
        assert (await store.get_conversation(OWNER, cid)).interaction_count == 4
    tag = store.tag(OWNER)
    done: list[object] = []
    refused = 0

    async def evict() -> object:
        if by == "turn":
            return await store.create_interaction(OWNER, cid, pb.Interaction(input="new"), "new")
        if by == "max_turns":
            return await store.update_conversation(
                OWNER, cid, ConversationUpdate(max_turns=2, summary_disabled=True)
            )
        return await store.update_summary(
            OWNER, cid, expected_through="", through=iids[1], text="s", turns=2,
            prompt_tokens=1, completion_tokens=1,
        )  # fmt: skip

    async def evict_once() -> None:
        nonlocal refused
        if not done:
            try:
                done.append(await evict())
            except Unavailable:
                refused += 1

    conv = f"{tag}:conv:{cid}"
    slot, source, target = _move(own_cluster)
    await own_cluster.migrate_slot(
        slot,
        source,
        target,
        batch=2,
        between=evict_once,
        first=[f"{tag}:convs", conv, f"{conv}:ints", f"{tag}:usage"],
    )
    if not done:
        await evict()
    evicted = iids[:1] if by == "turn" else iids[:2]
    async with source.client() as old, target.client() as new:
        assert await old.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
        left = [m.decode() for m in await new.zrange(f"{conv}:ints", 0, -1)]
        assert [iid for iid in iids if iid in left] == iids[len(evicted) :]
        for iid in evicted:
            n = iids.index(iid)
            assert await new.exists(f"{tag}:int:{iid}", f"{tag}:req:e{n}") == 0, iid
        assert await new.exists(*(f"{tag}:int:{iid}" for iid in left)) == len(left)
        field, total, measured = await usage_bytes(new, tag, cid)
        assert field == total == measured
    print(by, {"refused": refused})


async def _usage_intact(node: Node, tag: str, cids: list[str]) -> None:
    """Every conversation of ``cids`` in the owner's list and counted, as measured from its
    keys, and the total the sum of them (lua/usage.lua)."""
    async with node.client() as client:
        listed = [m.decode()[16:] for m in await client.zrange(f"{tag}:convs", 0, -1)]
        assert sorted(listed) == sorted(cids)
        fields = []
        for cid in cids:
            field, total, measured = await usage_bytes(client, tag, cid)
            assert field == measured, (cid, field, measured)
            fields.append(field)
        assert total == sum(fields)


@pytest.mark.slow
async def test_the_conversation_list_read_mid_move_keeps_every_conversation(
    own_cluster: LocalCluster,
    make_store: Callable[..., MemoryStore],
) -> None:
    """ListConversations at every step of a move, first with the owner's list and usage
    moved and the conversations' hashes not: each answer is the whole list or UNAVAILABLE.
    Before, run on the new node it took the hashes not moved yet for expired ones and
    dropped the live conversations from the list and the accounting, for good."""
    store = make_store()
    cids = [(await store.create_conversation(OWNER, f"l{n}")).conversation_id for n in range(3)]
    tag = store.tag(OWNER)
    answers = {"whole": 0, "unavailable": 0}

    async def list_all() -> None:
        try:
            page = await store.list_conversations(OWNER, 10, None)
        except Unavailable:
            answers["unavailable"] += 1
            return
        assert [c.conversation_id for c in page.items] == cids[::-1]
        answers["whole"] += 1

    target = await _move_slot(
        own_cluster, batch=100, between=list_all, first=[f"{tag}:convs", f"{tag}:usage"]
    )
    await list_all()
    assert answers["unavailable"] > 0  # tried with the hashes on the old node
    assert answers["whole"] > 1
    await _usage_intact(target, tag, cids)


@pytest.mark.slow
@pytest.mark.parametrize("full", ["conversations", "bytes"])
async def test_a_storage_check_at_the_limit_mid_move_keeps_every_conversation(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore], full: str
) -> None:
    """CheckStorage for a new conversation, the owner at its conversation (or byte) limit,
    at every step of a move, first with the owner's list and usage moved and the
    conversations' hashes not: the reconcile it starts (a conversation may have expired)
    declares every hash it reads (reconcile.lua), so Redis refuses it while they are split
    (UNAVAILABLE) and the check says full once the move is done. Before, the reconcile ran
    on the new node, took the hashes not moved yet for expired, dropped every
    conversation from the list and the accounting, and answered that the turn fits."""
    store = make_store(max_conversations_per_owner=3, max_bytes_per_owner=3000)
    # At the limit: three conversations, or two and a turn that would fit only without
    # them (2 x 258 bytes counted; 2200 + 512 of overhead more fit 3000 only alone).
    count, ask = (3, 0) if full == "conversations" else (2, 2200)
    cids = [(await store.create_conversation(OWNER, f"c{n}")).conversation_id for n in range(count)]
    tag = store.tag(OWNER)
    answers = {"full": 0, "unavailable": 0}

    async def check() -> None:
        try:
            await store.check_storage(OWNER, "", ask)
        except Unavailable:
            answers["unavailable"] += 1
            return
        except ResourceExhausted as err:
            reason = "OWNER_CONVERSATIONS_FULL" if full == "conversations" else "OWNER_STORAGE_FULL"
            assert err.reason == reason
            answers["full"] += 1
            return
        raise AssertionError("a turn past the limit fits")

    target = await _move_slot(
        own_cluster, batch=100, between=check, first=[f"{tag}:convs", f"{tag}:usage"]
    )
    await check()
    assert answers["unavailable"] > 0  # tried with the hashes on the old node
    assert answers["full"] > 0
    await _usage_intact(target, tag, cids)


@pytest.mark.slow
@pytest.mark.parametrize("first", ["list", "turns"])
async def test_a_write_at_the_limit_mid_move_drops_no_turn(
    own_cluster: LocalCluster, first: str
) -> None:
    """CheckStorage for a turn of a conversation at the owner's byte limit, at every step
    of a move, first with the conversation's keys moved and its turns not, or the turns
    only: the look for gone turns it makes at the limit (lua/usage.lua's gone_turns) finds
    a turn not moved yet missing, and the drop it asks for declares every turn
    (drop_missing.lua), which Redis refuses while they are split: UNAVAILABLE, or full,
    never a turn dropped nor its bytes given back."""
    store = MemoryStore(
        connect(own_cluster.url, cluster=True, socket_timeout=5, connect_timeout=2),
        max_bytes_per_owner=6000,
    )
    owner = Owner(DEFAULT_TENANT, USER)
    try:
        cid = (await store.create_conversation(owner, "f")).conversation_id
        iids = [
            (
                await store.create_interaction(
                    owner, cid, pb.Interaction(input="x" * 1000), f"f{n}"
                )
            ).interaction_id
            for n in range(4)
        ]
        tag = store.tag(owner)
        answers = {"full": 0, "unavailable": 0}

        async def check() -> None:
            try:
                await store.check_storage(owner, cid, 1000)
            except Unavailable:
                answers["unavailable"] += 1
                return
            except ResourceExhausted as err:
                assert err.reason == "OWNER_STORAGE_FULL"
                answers["full"] += 1
                return
            raise AssertionError("a turn past the limit fits")

        if first == "list":
            moved = [f"{tag}:convs", f"{tag}:usage", f"{tag}:conv:{cid}", f"{tag}:conv:{cid}:ints"]
        else:
            moved = [f"{tag}:int:{iid}" for iid in iids]
        slot, source, target = _move(own_cluster)
        await own_cluster.migrate_slot(slot, source, target, batch=2, between=check, first=moved)
        await check()
        assert answers["unavailable"] > 0  # tried with the turns split from their list
        assert answers["full"] > 0
        async with target.client() as client:
            listed = [m.decode() for m in await client.zrange(f"{tag}:conv:{cid}:ints", 0, -1)]
            assert listed == iids
        await _usage_intact(target, tag, [cid])
    finally:
        await store.close()


@pytest.mark.slow
async def test_a_conversation_measured_mid_move_counts_every_turn(
    own_cluster: LocalCluster,
    make_store: Callable[..., MemoryStore],
) -> None:
    """A conversation stored before the accounting (no field in the owner's usage hash),
    checked at every step of a move, first with its own keys and the usage moved and its
    turns not: it is measured with every turn declared (measure.lua), so Redis refuses the
    measure while they are split (UNAVAILABLE), and afterwards it counts every turn's
    bytes. Before, measured on the new node, the turns not moved yet counted only their
    overhead, for good."""
    store = make_store()
    cid = (await store.create_conversation(OWNER, "m")).conversation_id
    for n in range(5):
        await store.create_interaction(
            OWNER, cid, pb.Interaction(input=f"m{n}" * 100), f"m{n}", b"t" * 50
        )
    tag = store.tag(OWNER)
    # As stored by an older version: the conversation not counted (the hash kept).
    async with cluster_client(own_cluster) as admin:
        await admin.hdel(f"{tag}:usage", cid)
        await admin.hset(f"{tag}:usage", "total", 0)
    answers = {"whole": 0, "unavailable": 0}

    async def check() -> None:
        try:
            usage = await store.check_storage(OWNER, cid, 0)
        except Unavailable:
            answers["unavailable"] += 1
            return
        assert usage.used_bytes > 5 * 300
        answers["whole"] += 1

    conv = f"{tag}:conv:{cid}"
    target = await _move_slot(
        own_cluster,
        batch=100,
        between=check,
        first=[f"{tag}:convs", conv, f"{conv}:ints", f"{tag}:usage"],
    )
    await check()
    await _usage_intact(target, tag, [cid])
    assert answers["unavailable"] > 0  # tried with the turns on the old node


@pytest.mark.slow
@pytest.mark.parametrize("first", ["turns", "request_ids"])
async def test_reads_of_a_turn_mid_move_never_say_it_is_gone(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore], first: str
) -> None:
    """The reads of a turn that derive a key from it (GetInteraction, the traces,
    UpdateInteraction, the search index's hits and sweep: its conversation hash;
    CheckStorage's request_id look-up and claim: the turn, then its conversation hash) at
    every step of a move, first with the turns (and their request_id keys) moved and the
    conversation not, or the request_id keys only: each answers the turn or UNAVAILABLE.
    Before, run on the new node they took the keys not moved yet for gone: NOT_FOUND,
    "not stored" (and a claim that let the request be answered again), a search hit left
    out and its index entry removed."""
    store = make_store()
    cid = (await store.create_conversation(OWNER, "g")).conversation_id
    iids = [
        (
            await store.create_interaction(
                OWNER, cid, pb.Interaction(input=f"g{n}"), f"g{n}", b"traces"
            )
        ).interaction_id
        for n in range(3)
    ]
    tag = store.tag(OWNER)
    answers = {"whole": 0, "unavailable": 0}

    async def read_all() -> None:
        try:
            assert [i.input if i else None for i in await store.get_interactions(OWNER, iids)] == [
                f"g{n}" for n in range(3)
            ]
            assert await store.interactions_exist(OWNER, iids) == [True] * 3
            answers["whole"] += 1
        except Unavailable:
            answers["unavailable"] += 1
        for n, iid in enumerate(iids):
            reads: dict[str, Any] = {
                "get": store.get_interaction_data(OWNER, iid),
                "traces": store.get_interaction_traces(OWNER, iid),
                "update": store.update_interaction(OWNER, iid, lambda i: None),
                "stored": store.stored_request(OWNER, f"g{n}"),
                "claim": store.claim_request(OWNER, f"g{n}", "token", 30),
            }
            for name, read in reads.items():
                try:
                    got = await read
                except Unavailable:
                    answers["unavailable"] += 1
                    continue
                if name == "get":
                    assert pb.Interaction.FromString(got).input == f"g{n}"
                elif name == "traces":
                    assert got == b"traces"
                elif name in ("update", "stored", "claim"):
                    assert isinstance(got, pb.Interaction), (name, got)
                    assert got.interaction_id == iid
                answers["whole"] += 1

    moved = [f"{tag}:req:g{n}" for n in range(3)]
    if first == "turns":
        moved += [f"{tag}:int:{iid}" for iid in iids]
    await _move_slot(own_cluster, batch=100, between=read_all, first=moved)
    await read_all()
    assert answers["unavailable"] > 0  # tried with the keys split
    assert answers["whole"] >= 15


@pytest.mark.slow
async def test_a_conversation_list_page_read_as_the_move_ends_keeps_every_conversation(
    own_cluster: LocalCluster,
    make_store: Callable[..., MemoryStore],
) -> None:
    """ListConversations with the owner's list moved and the conversations' hashes not.
    Before, the page script read the hashes undeclared, found them missing on the new node
    and left them out of the page; with a reconcile of those hashes run once the move was
    done (finding every one present, dropping none), the page was answered without the
    live conversations, its cursor past them (the store then read such a page again).
    Now the page script declares every hash it reads (lua/list_conversations.lua), so
    Redis refuses it while they are split: UNAVAILABLE, nothing left out, nothing asked of
    reconcile; once the move is done the page is whole."""
    store = make_store()
    cids = [(await store.create_conversation(OWNER, f"e{n}")).conversation_id for n in range(3)]
    tag = store.tag(OWNER)
    answers: list[str] = []

    async def list_once() -> None:
        if answers:
            return
        try:
            page = await store.list_conversations(OWNER, 10, None)
        except Unavailable:
            answers.append("unavailable")
            return
        answers.append("whole")
        assert [c.conversation_id for c in page.items] == cids[::-1]

    target = await _move_slot(
        own_cluster, batch=100, between=list_once, first=[f"{tag}:convs", f"{tag}:usage"]
    )
    assert answers == ["unavailable"]  # read with the hashes split from the list
    page = await store.list_conversations(OWNER, 10, None)
    assert [c.conversation_id for c in page.items] == cids[::-1]
    assert page.next_cursor is None
    await _usage_intact(target, tag, cids)


@pytest.mark.slow
@pytest.mark.parametrize("first", ["list", "turns"])
async def test_turns_listed_mid_move_are_never_dropped(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore], first: str
) -> None:
    """ListInteractions at every step of a move, first with the conversation's keys (its
    hash, its list of turns, the owner's usage) moved and its turns not, or the turns
    only: each page (and GetConversation's and ListConversations' count) is whole or
    UNAVAILABLE (retryable), and afterwards every turn is still listed and counted. A
    listed turn with no key is dropped only by a run that declares every turn
    (lua/drop_missing.lua), which Redis refuses while they are split: a turn not moved
    yet is never taken for one gone for good."""
    store = make_store()
    cid = (await store.create_conversation(OWNER, "l")).conversation_id
    iids = [
        (
            await store.create_interaction(OWNER, cid, pb.Interaction(input=f"l{n}"), f"l{n}")
        ).interaction_id
        for n in range(6)
    ]
    tag = store.tag(OWNER)
    answers = {"whole": 0, "unavailable": 0}

    async def list_all() -> None:
        # The page, then the reads of the count, which check the turns' keys too (a
        # window, here every turn: lua/read.lua's missing_turn): a turn not moved yet is
        # counted, never dropped.
        reads: list[Any] = [
            store.list_interactions(OWNER, cid, 10, None, 1 << 20),
            store.get_conversation(OWNER, cid),
            store.list_conversations(OWNER, 10, None),
        ]
        for read in reads:
            try:
                got = await read
            except Unavailable:
                answers["unavailable"] += 1
                continue
            if isinstance(got, ConversationRecord):
                assert got.interaction_count == 6
            elif got.items and isinstance(got.items[0], ConversationRecord):
                assert [c.interaction_count for c in got.items] == [6]
            else:
                inputs = [pb.Interaction.FromString(data).input for data in got.items]
                assert inputs == [f"l{n}" for n in reversed(range(6))]
            answers["whole"] += 1

    if first == "list":
        moved = [f"{tag}:convs", f"{tag}:usage", f"{tag}:conv:{cid}", f"{tag}:conv:{cid}:ints"]
    else:
        moved = [f"{tag}:int:{iid}" for iid in iids]
    target = await _move_slot(own_cluster, batch=2, between=list_all, first=moved)
    await list_all()
    assert answers["unavailable"] > 0  # tried with the turns split from their list
    async with target.client() as client:
        listed = [m.decode() for m in await client.zrange(f"{tag}:conv:{cid}:ints", 0, -1)]
        assert listed == iids
        assert await client.hget(f"{tag}:conv:{cid}", "interaction_count") == b"6"
    await _usage_intact(target, tag, [cid])


@pytest.mark.slow
@pytest.mark.parametrize("hash_gone", [False, True])
async def test_answers_mid_move_that_need_no_missing_key_are_given(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore], hash_gone: bool
) -> None:
    """With every key of the owner on the slot's new node and the move not ended yet
    (MIGRATING, IMPORTING: the client follows ASK): CheckStorage of a conversation without
    turns, and writes at the byte limit whose look for gone turns meets a conversation
    without turns (CheckStorage, UpdateInteraction), answer what they answer once the move
    is done: it fits, or OWNER_STORAGE_FULL. Before, their scripts declared the list of
    the conversation without turns, a key that does not exist: Redis refused them
    (TRYAGAIN: UNAVAILABLE) for as long as the move lasted. ``hash_gone``: the owner's
    list also names a conversation whose hash is gone (evicted, deleted by hand) and no
    walk is due: the look at the other conversations declares only the hashes the store
    finds (lua/read.lua's declare_present); before, it declared that one too, and the
    writes at the limit answered UNAVAILABLE for the whole move."""
    # 4 turns of ~1,350 bytes and 2 conversations of ~260 fit, not one more (with a gone
    # conversation, still counted: its ~260 more).
    limit = 6700 if hash_gone else 6400
    store = make_store(max_bytes_per_owner=limit)
    tag = store.tag(OWNER)
    if hash_gone:
        gone = (await store.create_conversation(OWNER, "g")).conversation_id
        reader = cluster_client(own_cluster)
        await reader.delete(f"{tag}:conv:{gone}")
        await reader.hset(f"{tag}:usage", "next_expiry", str(1 << 50))
        await reader.aclose()
    empty = (await store.create_conversation(OWNER, "e")).conversation_id
    full = (await store.create_conversation(OWNER, "f")).conversation_id
    iids = [
        (
            await store.create_interaction(OWNER, full, pb.Interaction(input="x" * 1000), f"f{n}")
        ).interaction_id
        for n in range(4)
    ]

    def grow(turn: pb.Interaction) -> None:
        turn.additional_info.update({"big": "x" * limit})

    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "check empty": lambda: store.check_storage(OWNER, empty, 10),
        "check empty at the limit": lambda: store.check_storage(OWNER, empty, 1000),
        "check at the limit": lambda: store.check_storage(OWNER, full, 1000),
        "update at the limit": lambda: store.update_interaction(OWNER, iids[0], grow),
    }

    async def answers() -> dict[str, str]:
        out = {}
        for name, call in calls.items():
            try:
                got = await call()
                out[name] = f"fits {got.conversations}" if hasattr(got, "conversations") else "?"
            except (Unavailable, ResourceExhausted) as err:
                out[name] = f"{type(err).__name__} {err.reason}"
        return out

    mid_move: list[dict[str, str]] = []

    async def during() -> None:
        mid_move.append(await answers())

    slot, source, target = _move(own_cluster)
    async with source.client() as client:
        owned = await client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
    assert len(owned) > 6  # the lists, hashes, turns, usage, request ids
    await own_cluster.migrate_slot(
        slot, source, target, batch=100, between=during, first=[k.decode() for k in owned]
    )
    after = await answers()
    assert after == {
        "check empty": f"fits {3 if hash_gone else 2}",
        "check empty at the limit": "ResourceExhausted OWNER_STORAGE_FULL",
        "check at the limit": "ResourceExhausted OWNER_STORAGE_FULL",
        "update at the limit": "ResourceExhausted OWNER_STORAGE_FULL",
    }
    assert mid_move == [after]
    if not hash_gone:
        await _usage_intact(target, tag, [empty, full])


def _slot_refusals() -> float:
    """The memory store's Redis calls a cluster refused so far (a slot move's TRYAGAIN among
    them: ``gensearch_redis_errors_total{store="memory",kind="cluster"}``)."""
    labels = {"store": "memory", "kind": "cluster"}
    return REGISTRY.get_sample_value("gensearch_redis_errors_total", labels) or 0.0


async def _until_refused(since: float, count: int) -> None:
    """Until the store met ``count`` refusals more than ``since``: the calls just made
    reached the slot mid-move (not a bound on how long they take)."""
    for _ in range(2000):
        if _slot_refusals() >= since + count:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the calls never met the move")


async def _memory_server(own_cluster: LocalCluster, **overrides: Any) -> Any:
    server = await build_server(
        make_settings(own_cluster.url, redis_cluster=True, **overrides), port=0
    )
    await server.start()
    return server


@pytest.mark.slow
@pytest.mark.parametrize("held", ["split", "all moved"])
async def test_writes_creating_a_key_mid_move_are_stored_once_the_move_ends(
    own_cluster: LocalCluster, held: str
) -> None:
    """CreateInteraction (a new turn key beside its conversation) and CreateConversation (a
    new hash) sent while a slot move is held, its keys split between the nodes or all on
    the new one before the move ends: Redis refuses their scripts (TRYAGAIN) for the whole
    move, as a declared key that does not exist yet may be one not moved yet. They wait
    for the move's end within their deadline and are stored once, on the new node. Before,
    they answered UNAVAILABLE at once."""
    server = await _memory_server(own_cluster)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            cid, _ = await conversation_with_turns(stub, "h", 3, WHO)
            tag = f"gensearch:{_hash_tag(USER)}"
            calls: dict[str, asyncio.Future[Any]] = {}

            async def hold() -> None:
                if calls:
                    return
                before = _slot_refusals()
                turn = pb.CreateInteractionRequest(
                    conversation_id=cid, input="mid", request_id="mid"
                )
                calls["turn"] = asyncio.ensure_future(
                    stub.CreateInteraction(turn, metadata=WHO, timeout=60)
                )
                made = pb.CreateConversationRequest(name="mid")
                calls["conversation"] = asyncio.ensure_future(
                    stub.CreateConversation(made, metadata=WHO, timeout=60)
                )
                await _until_refused(before, 2)

            first = [f"{tag}:conv:{cid}"] if held == "split" else []
            slot, source, target = _move(own_cluster)
            await own_cluster.migrate_slot(
                slot, source, target, batch=1000, between=hold, first=first
            )
            turn = (await calls["turn"]).interaction
            new = (await calls["conversation"]).conversation
            page = await stub.ListInteractions(
                pb.ListInteractionsRequest(conversation_id=cid, page_size=10), metadata=WHO
            )
            assert [i.input for i in page.interactions] == ["mid", "h2", "h1", "h0"]
            assert page.interactions[0].interaction_id == turn.interaction_id
            got = await stub.GetConversation(
                pb.GetConversationRequest(conversation_id=new.conversation_id), metadata=WHO
            )
            assert got.conversation.name == "mid"
            async with source.client() as old:
                assert await old.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        await server.stop(0)


@pytest.mark.slow
@pytest.mark.parametrize("bound", ["deadline", "setting"])
async def test_a_write_mid_move_whose_wait_ends_is_unavailable(
    own_cluster: LocalCluster, bound: str
) -> None:
    """A turn sent while a slot move is held past what it may wait: its deadline (2 s,
    under GENSEARCH_MEMORY_SLOT_MOVE_WAIT_SECONDS' 5), or, without a deadline, that
    setting (here 1 s). It waits for the move no longer, then answers UNAVAILABLE
    STORE_UNAVAILABLE (retryable, with ErrorInfo; not the chassis' DEADLINE_EXCEEDED),
    nothing stored; its retry after the move is stored."""
    timeout: float | None = 2
    overrides: dict[str, Any] = {}
    if bound == "setting":
        timeout, overrides = None, {"slot_move_wait_seconds": 1.0}
    server = await _memory_server(own_cluster, **overrides)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            cid, _ = await conversation_with_turns(stub, "d", 2, WHO)
            turn = pb.CreateInteractionRequest(conversation_id=cid, input="late", request_id="late")
            refused: list[grpc.aio.AioRpcError] = []

            async def hold() -> None:
                if not refused:
                    call = stub.CreateInteraction(turn, metadata=WHO, timeout=timeout)
                    # A bound on the wait, not a timing assertion: a write that waits out
                    # the held move (bound ignored) fails here instead of hanging the test.
                    refused.append(await asyncio.wait_for(rpc_error(call), 30))

            async def listed() -> list[pb.Interaction]:
                page = await stub.ListInteractions(
                    pb.ListInteractionsRequest(conversation_id=cid, page_size=10), metadata=WHO
                )
                return list(page.interactions)

            slot, source, target = _move(own_cluster)
            await own_cluster.migrate_slot(slot, source, target, batch=1000, between=hold)
            assert refused[0].code() == grpc.StatusCode.UNAVAILABLE, refused[0].details()
            assert error_info(refused[0]).reason == "STORE_UNAVAILABLE"
            # RetryInfo only when the store's wait ran out: ended by the call's own
            # deadline, the caller has no time left for the retry it would promise.
            has_retry_info = any(
                d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)
                for d in rpc_status.from_call(refused[0]).details  # type: ignore[arg-type,union-attr]
            )
            assert has_retry_info == (bound == "setting"), bound
            # Nothing stored: checked before the retry, which, with the same request_id,
            # would replay a stored turn and read the same.
            assert [i.input for i in await listed()] == ["d1", "d0"]
            stored = await stub.CreateInteraction(turn, metadata=WHO, timeout=10)
            after = await listed()
            assert [i.input for i in after] == ["late", "d1", "d0"]
            assert after[0].interaction_id == stored.interaction.interaction_id
    finally:
        await server.stop(0)


def _moved_first(moved: str, tag: str, *, empty: str, other: str) -> list[str]:
    """The keys a held move carries first: with "its keys", the turnless conversation
    ``empty``'s hash, the owner's list of conversations and usage (the new node has them);
    otherwise only the ``other`` conversation's (the owner's stay on the old node)."""
    if moved == "its keys":
        return [f"{tag}:conv:{empty}", f"{tag}:convs", f"{tag}:usage"]
    return [f"{tag}:conv:{other}", f"{tag}:conv:{other}:ints"]


@pytest.mark.slow
@pytest.mark.parametrize("moved", ["its keys", "other keys"])
async def test_a_conversation_without_turns_is_read_and_updated_mid_move(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore], moved: str
) -> None:
    """GetConversation, UpdateConversation (a new name and ttl) and UpdateSummary of a
    conversation without turns, while a slot move is held with the owner's keys on the
    new node, or on the old one (another conversation's moved): each is answered at once,
    the store not waiting for the move. A conversation without turns has no list, so
    their scripts no longer declare it (the store saw it without turns: it made it).
    Before, they declared the list, a key that does not exist: Redis refused them
    (TRYAGAIN) for the whole move, UNAVAILABLE."""
    store = make_store()
    tag = store.tag(OWNER)
    other = (await store.create_conversation(OWNER, "o")).conversation_id
    turn = await store.create_interaction(OWNER, other, pb.Interaction(input="o"), "o")
    empty = (await store.create_conversation(OWNER, "e")).conversation_id
    answers: list[dict[str, object]] = []

    async def during() -> None:
        if answers:
            return
        got: dict[str, object] = {}
        got["get"] = (await store.get_conversation(OWNER, empty)).interaction_count
        update = ConversationUpdate(name="renamed", ttl_ms=3_600_000)
        got["update"] = (await store.update_conversation(OWNER, empty, update)).name
        try:
            await store.update_summary(
                OWNER, empty, expected_through="", through=turn.interaction_id, text="s",
                turns=1, prompt_tokens=1, completion_tokens=1,
            )  # fmt: skip
        except InvalidArgument as err:
            got["summary"] = err.reason
        answers.append(got)

    first = _moved_first(moved, tag, empty=empty, other=other)
    target = await _move_slot(own_cluster, batch=100, between=during, first=first)
    assert answers == [{"get": 0, "update": "renamed", "summary": "INVALID_SUMMARY_RANGE"}]
    record = await store.get_conversation(OWNER, empty)
    assert (record.name, record.interaction_count) == ("renamed", 0)
    assert record.expire_ms > 0
    async with target.client() as client:
        assert await client.exists(f"{tag}:conv:{empty}:ints") == 0
    await _usage_intact(target, tag, [other, empty])


@pytest.mark.slow
@pytest.mark.parametrize("moved", ["its keys", "other keys"])
async def test_a_conversation_without_turns_never_seen_is_answered_mid_move(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore], moved: str
) -> None:
    """As above, by a replica that has not seen the conversation (another one made it, or
    this one restarted since): it cannot know there is no list of turns and declares it,
    a key that does not exist, which Redis refuses (TRYAGAIN) for the whole move. Its run
    is made again at once without the list (a conversation with turns would ask for it):
    GetConversation, UpdateConversation and UpdateSummary each answer, one refusal each.
    Before, each waited out GENSEARCH_MEMORY_SLOT_MOVE_WAIT_SECONDS (here 1 s, the move
    held longer) and answered UNAVAILABLE."""
    maker = make_store()
    tag = maker.tag(OWNER)
    other = (await maker.create_conversation(OWNER, "o")).conversation_id
    turn = await maker.create_interaction(OWNER, other, pb.Interaction(input="o"), "o")
    empty = (await maker.create_conversation(OWNER, "e")).conversation_id
    reader = make_store(slot_move_wait=1.0)  # never saw `empty`
    answers: list[dict[str, object]] = []

    async def during() -> None:
        if answers:
            return
        got: dict[str, object] = {}
        before = _slot_refusals()
        try:
            got["get"] = (await reader.get_conversation(OWNER, empty)).interaction_count
        except Unavailable as err:
            got["get"] = err.reason
        got["get refusals"] = _slot_refusals() - before
        fresh = make_store(slot_move_wait=1.0)  # nor did this one
        try:
            update = ConversationUpdate(name="renamed")
            got["update"] = (await fresh.update_conversation(OWNER, empty, update)).name
        except Unavailable as err:
            got["update"] = err.reason
        try:
            await make_store(slot_move_wait=1.0).update_summary(
                OWNER, empty, expected_through="", through=turn.interaction_id, text="s",
                turns=1, prompt_tokens=1, completion_tokens=1,
            )  # fmt: skip
        except (InvalidArgument, Unavailable) as err:
            got["summary"] = err.reason
        answers.append(got)

    first = _moved_first(moved, tag, empty=empty, other=other)
    await _move_slot(own_cluster, batch=100, between=during, first=first)
    assert answers == [
        {"get": 0, "get refusals": 1, "update": "renamed", "summary": "INVALID_SUMMARY_RANGE"}
    ]
    record = await make_store().get_conversation(OWNER, empty)
    assert (record.name, record.interaction_count) == ("renamed", 0)


@pytest.mark.slow
async def test_a_turn_deleted_mid_move_is_then_not_found(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """DeleteInteraction while the owner's slot moves (the turn's keys moved first, another
    conversation's still on the old node): once it is acknowledged, a read of the turn
    answers NOT_FOUND at every step of the move. The store keeps the deleted turn's key
    hint (its conversation hash and list), declared with the turn's key by the read: the
    turn's key missing with the others there, Redis refuses that run (TRYAGAIN), and the
    read is made again without the hint (``MemoryStore._run``). Before (the hint neither
    forgotten at the delete nor dropped at the refusal), the read answered UNAVAILABLE for
    as long as the move lasted."""
    store = make_store()
    await _deleted_then_read_through_a_move(
        own_cluster, store, store, _hint_by_a_read, _read_turn_not_found
    )


@pytest.mark.slow
async def test_a_turn_with_a_request_id_is_deleted_mid_move(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """DeleteInteraction of a turn stored with a request_id, mid-move, every key the turn
    has (its key, its conversation's, its request_id key) on the new node and another
    conversation's still on the old one: the turn is deleted at once, and a retry then
    answers NOT_FOUND, at every step of the move. The deletion declares both owners'
    request_id keys of the shared tag (keys.request), one of which never exists: Redis
    refuses that run (TRYAGAIN), and it is made again with only the keys found. Before,
    it answered UNAVAILABLE for as long as the move lasted."""
    store = make_store()
    cid, doomed, kept = await _two_turns_beside_four(store, "r", request_ids=True)
    tag = store.tag(OWNER)
    answers: list[str] = []

    async def delete() -> None:
        try:
            answers.append(await store.delete_interaction(OWNER, doomed.interaction_id))
        except (NotFound, Unavailable) as err:
            answers.append(type(err).__name__)

    # Both owners' request_id keys of the shared tag (one of each pair exists).
    requests = [keys.request(tag, f"r{n}", apart=a) for n in range(2) for a in (False, True)]
    # The ones that exist move (MIGRATE skips the others).
    first = [*_conversation_keys(tag, cid, doomed, kept), *requests]
    target = await _move_slot(own_cluster, batch=2, between=delete, first=first)
    assert len(answers) >= 3  # mid-move: the other conversation not moved yet
    assert answers == [cid] + ["NotFound"] * (len(answers) - 1)
    async with target.client() as new:
        assert await new.exists(keys.interaction(tag, doomed.interaction_id), *requests[:2]) == 0
        assert await new.exists(keys.interaction(tag, kept.interaction_id)) == 1
        assert await new.exists(*requests[2:]) == 1  # the kept turn's request_id key


@pytest.mark.slow
@pytest.mark.parametrize("by", ["max_turns", "summary"])
async def test_turns_with_request_ids_are_evicted_mid_move(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore], by: str
) -> None:
    """Eviction of turns stored with request_ids (UpdateConversation lowering max_turns, a
    summary covering them), mid-move: once every key of the conversation (its turns' and
    their request_id keys included) is on the new node, another conversation's still on
    the old one, the eviction runs, and the evicted turns' keys are gone. Before, it
    declared both owners' request_id keys of the shared tag (keys.request), one of each
    pair never existing: Redis refused the run (TRYAGAIN: UNAVAILABLE) for as long as the
    move lasted."""
    store = make_store()
    cid = (await store.create_conversation(OWNER, "e")).conversation_id
    turns = [
        await store.create_interaction(OWNER, cid, pb.Interaction(input=f"e{n}"), f"e{n}", b"")
        for n in range(4)
    ]
    iids = [turn.interaction_id for turn in turns]
    if by == "summary":
        await store.update_conversation(OWNER, cid, ConversationUpdate(max_turns=2))
    other = (await store.create_conversation(OWNER, "o")).conversation_id
    for n in range(4):
        await store.create_interaction(OWNER, other, pb.Interaction(input=f"o{n}"), f"o{n}", b"")
    tag = store.tag(OWNER)
    _, source, _ = _move(own_cluster)
    answers: list[str] = []

    async def evict() -> None:
        if answers and answers[-1] != "Unavailable":
            return
        try:
            if by == "max_turns":
                await store.update_conversation(
                    OWNER, cid, ConversationUpdate(max_turns=2, summary_disabled=True)
                )
            else:
                await store.update_summary(
                    OWNER, cid, expected_through="", through=iids[1], text="s", turns=2,
                    prompt_tokens=1, completion_tokens=1,
                )  # fmt: skip
        except Unavailable:
            answers.append("Unavailable")
            return
        async with source.client() as old:  # mid-move: the other conversation not moved yet
            answers.append("evicted" if await old.exists(keys.conversation(tag, other)) else "late")

    # Both owners' request_id keys of the shared tag (one of each pair exists; MIGRATE
    # skips the others), moved with the conversation's keys before the other's.
    requests = [keys.request(tag, f"e{n}", apart=a) for n in range(4) for a in (False, True)]
    first = [f"{tag}:convs", *_conversation_keys(tag, cid, *turns), *requests]
    target = await _move_slot(own_cluster, batch=2, between=evict, first=first)
    assert answers[-1] == "evicted", answers
    async with target.client() as new:
        evicted = [keys.interaction(tag, iid) for iid in iids[:2]]
        assert await new.exists(*evicted, *requests[:4]) == 0
        assert await new.exists(*(keys.interaction(tag, iid) for iid in iids[2:])) == 2
        assert await new.exists(*requests[4:]) == 2  # the kept turns' request_id keys


@pytest.mark.slow
async def test_a_turn_of_a_deleted_conversation_is_then_not_found_mid_move(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """A read of a turn of a conversation DeleteConversation deleted answers NOT_FOUND at
    every step of a later move of the owner's slot. Before, the store kept the turn's key
    hint (its conversation's hash), declared with the turn's key by the read: both missing
    mid-move, Redis refused the run (TRYAGAIN) and the read answered UNAVAILABLE for as
    long as the move lasted. Now a run a move refuses is made again without the hint."""
    store = make_store()
    cid = (await store.create_conversation(OWNER, "c")).conversation_id
    turn = await store.create_interaction(OWNER, cid, pb.Interaction(input="c"), "", b"")
    other = (await store.create_conversation(OWNER, "o")).conversation_id
    for n in range(4):
        await store.create_interaction(OWNER, other, pb.Interaction(input=f"o{n}"), f"o{n}", b"")
    # Read once: the turn's hint (its conversation hash) is known, as in a serving replica.
    await store.get_interaction_data(OWNER, turn.interaction_id)
    assert await store.delete_conversation(OWNER, cid)
    answers: list[str] = []

    async def read() -> None:
        try:
            await store.get_interaction_data(OWNER, turn.interaction_id)
            answers.append("found")
        except (NotFound, Unavailable) as err:
            answers.append(type(err).__name__)

    await _move_slot(own_cluster, batch=2, between=read, first=[keys.usage(store.tag(OWNER))])
    assert len(answers) >= 3
    assert answers == ["NotFound"] * len(answers)


@pytest.mark.slow
async def test_a_turn_another_replica_deleted_is_not_found_mid_move(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """A replica that read a turn keeps its key hint (its conversation's hash); another
    replica deletes the turn. Mid-move, a read of it by the first answers NOT_FOUND, as on
    the replica that deleted it. Before, the first still declared the stale hint with the
    turn's missing key: Redis refused the run (TRYAGAIN) and the read answered UNAVAILABLE
    for as long as the move lasted (only the deleting replica forgot its hint)."""
    reader, deleter = make_store(), make_store()
    await _deleted_then_read_through_a_move(
        own_cluster, reader, deleter, _hint_by_a_read, _read_turn_not_found
    )


async def test_a_batch_read_of_a_turn_another_replica_deleted_is_answered_mid_move(
    own_cluster: LocalCluster, make_store: Callable[..., MemoryStore]
) -> None:
    """As the one-turn read above, for the many-turn reads (GetInteractions' store call,
    the search sweep's interactions_exist): the reader's kept hint of a turn another
    replica deleted (its conversation's hash) is declared beside the turn's missing key.
    Mid-move the read of that turn answers it missing, as without the hint. Before, Redis
    refused the run (TRYAGAIN) for the whole move and the read answered UNAVAILABLE: only
    the one-turn reads (``hint``) dropped a stale hint when a move refused them."""
    reader, deleter = make_store(), make_store()
    await _deleted_then_read_through_a_move(
        own_cluster, reader, deleter, _hint_by_a_batch_read, _batch_read_turn_missing
    )


async def _hint_by_a_read(store: MemoryStore, iid: str) -> None:
    """Read once: the turn's hint (its conversation hash) is known, as in a serving
    replica."""
    await store.get_interaction_data(OWNER, iid)


async def _hint_by_a_batch_read(store: MemoryStore, iid: str) -> None:
    """The turn's hint (its conversation's hash), kept by a batch read."""
    assert (await store.get_interactions(OWNER, [iid]))[0] is not None


async def _read_turn_not_found(
    store: MemoryStore, doomed: pb.Interaction, kept: pb.Interaction
) -> None:
    with pytest.raises(NotFound):
        await store.get_interaction_data(OWNER, doomed.interaction_id)
    kept_now = await store.get_interaction_data(OWNER, kept.interaction_id)
    assert pb.Interaction.FromString(kept_now).input == "d1"


async def _batch_read_turn_missing(
    store: MemoryStore, doomed: pb.Interaction, _kept: pb.Interaction
) -> None:
    assert await store.get_interactions(OWNER, [doomed.interaction_id]) == [None]
    assert await store.interactions_exist(OWNER, [doomed.interaction_id]) == [False]


Hint = Callable[[MemoryStore, str], Awaitable[None]]
Read = Callable[[MemoryStore, pb.Interaction, pb.Interaction], Awaitable[None]]


async def _deleted_then_read_through_a_move(
    cluster: LocalCluster, reader: MemoryStore, deleter: MemoryStore, hint: Hint, read: Read
) -> None:
    """``reader`` keeps the key hint (``hint``: a read) of turn ``doomed`` of
    ``_two_turns_beside_four``; ``deleter`` (the same replica or another) deletes it at the
    first step of a move of the owner's slot, the conversation's keys moved first, the
    other's still on the old node. ``read`` (the reader's checks of ``doomed`` and
    ``kept``) runs at that step, at each later one and once the move ended."""
    cid, doomed, kept = await _two_turns_beside_four(reader, "d")
    await hint(reader, doomed.interaction_id)
    steps = {"deleted": 0, "read": 0}

    async def delete_then_read() -> None:
        if not steps["deleted"]:
            assert await deleter.delete_interaction(OWNER, doomed.interaction_id) == cid
            steps["deleted"] = 1  # mid-move: the turn's keys are all on the new node
        await read(reader, doomed, kept)
        steps["read"] += 1

    first = _conversation_keys(reader.tag(OWNER), cid, doomed, kept)
    await _move_slot(cluster, batch=2, between=delete_then_read, first=first)
    await delete_then_read()
    assert steps["read"] >= 3  # read mid-move, the other conversation not moved yet


async def _two_turns_beside_four(
    store: MemoryStore, name: str, *, request_ids: bool = False
) -> tuple[str, pb.Interaction, pb.Interaction]:
    """Conversation ``name`` with two turns (the one a test deletes, then the one it keeps)
    and another of four turns, whose keys a move that takes ``_conversation_keys`` first
    leaves on the old node for its first steps: the steps a test reads mid-move."""
    cid = (await store.create_conversation(OWNER, name)).conversation_id
    doomed, kept = [
        await store.create_interaction(
            OWNER, cid, pb.Interaction(input=f"{name}{n}"), f"{name}{n}" if request_ids else "", b""
        )
        for n in range(2)
    ]
    other = (await store.create_conversation(OWNER, "o")).conversation_id
    for n in range(4):
        await store.create_interaction(OWNER, other, pb.Interaction(input=f"o{n}"), f"o{n}", b"")
    return cid, doomed, kept


def _conversation_keys(tag: str, cid: str, *turns: pb.Interaction) -> list[str]:
    """The keys of conversation ``cid`` with ``turns``, and its owner's usage."""
    return [
        keys.conversation(tag, cid),
        keys.conversation_interactions(tag, cid),
        *(keys.interaction(tag, turn.interaction_id) for turn in turns),
        keys.usage(tag),
    ]
