"""Atomic delete, idempotent create, restarts and Redis outages."""

from __future__ import annotations

import asyncio
import contextlib

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb
from google.protobuf import duration_pb2

from services.devlaunch.redis_server import RedisProcess
from services.memory.__main__ import build_server
from services.memory.store import MemoryStore, Owner
from tests.memory.conftest import ALICE, BOB, Memory, MemoryFactory, make_settings
from tests.memory.helpers import conversation_with_turns, expect_error, rpc_error, usage_bytes
from tests.support.rpc import error_info

NOT_FOUND = grpc.StatusCode.NOT_FOUND
OWNER = Owner("alice", "alice")  # the key "alice:ka": alice alone in a tenant of her name


async def _conversation(memory: Memory, name: str = "") -> str:
    answer = await memory.stub.CreateConversation(
        pb.CreateConversationRequest(name=name), metadata=ALICE
    )
    return answer.conversation.conversation_id


async def _interaction(memory: Memory, cid: str, text: str, request_id: str = "") -> str:
    answer = await memory.stub.CreateInteraction(
        pb.CreateInteractionRequest(conversation_id=cid, input=text, request_id=request_id),
        metadata=ALICE,
    )
    return answer.interaction.interaction_id


async def _keys(memory: Memory, pattern: str = "*") -> list[bytes]:
    return [key async for key in memory.redis.scan_iter(match=pattern, count=1000)]


async def test_delete_is_atomic_and_leaves_nothing(memory: Memory) -> None:
    s = memory.stub
    keep = await _conversation(memory, "keep")
    await _interaction(memory, keep, "kept", request_id="keep-1")
    cid = await _conversation(memory, "doomed")
    iids = [await _interaction(memory, cid, f"q{n}", request_id=f"req-{n}") for n in range(20)]
    keys_before = await _keys(memory)

    # Writers race the delete: each either lands before it (and is deleted with it) or
    # finds the conversation gone. Nothing may survive half-deleted.
    async def writer(n: int) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            await _interaction(memory, cid, f"late{n}", request_id=f"late-{n}")

    writers = [asyncio.create_task(writer(n)) for n in range(30)]
    await asyncio.sleep(0)
    await s.DeleteConversation(pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE)
    await asyncio.gather(*writers)

    for call in (
        s.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=ALICE),
        s.UpdateConversation(
            pb.UpdateConversationRequest(conversation_id=cid, name="x"), metadata=ALICE
        ),
        s.DeleteConversation(pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE),
        s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=cid, input="x", request_id="req-1"),
            metadata=ALICE,
        ),
        s.ListInteractions(pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE),
        *(
            s.GetInteraction(pb.GetInteractionRequest(interaction_id=iid), metadata=ALICE)
            for iid in iids
        ),
    ):
        await expect_error(call, NOT_FOUND)

    remaining = await _keys(memory)
    assert not [k for k in remaining if cid.encode() in k]
    assert not [k for k in remaining if any(i.encode() in k for i in iids)]
    assert not [k for k in remaining if b":req:req-" in k or b":req:late-" in k]
    # The other conversation is untouched, key for key.
    kept = [k for k in keys_before if cid.encode() not in k and b":req:req-" not in k]
    kept = [k for k in kept if not any(i.encode() in k for i in iids)]
    assert sorted(remaining) == sorted(kept)
    listed = await s.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
    assert [c.conversation_id for c in listed.conversations] == [keep]


async def test_idempotent_create(memory: Memory) -> None:
    s = memory.stub
    cid = await _conversation(memory)
    request = pb.CreateInteractionRequest(
        conversation_id=cid, input="q", response="a", request_id="retry-me"
    )
    first = (await s.CreateInteraction(request, metadata=ALICE)).interaction
    again = (await s.CreateInteraction(request, metadata=ALICE)).interaction
    assert again == first
    # Concurrent retries all get the one interaction.
    racing = pb.CreateInteractionRequest(conversation_id=cid, input="r", request_id="race")
    answers = await asyncio.gather(
        *(s.CreateInteraction(racing, metadata=ALICE) for _ in range(20))
    )
    assert len({a.interaction.interaction_id for a in answers}) == 1

    conv = (
        await s.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=ALICE)
    ).conversation
    assert conv.interaction_count == 2
    listed = await s.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert len(listed.interactions) == 2

    # The same key in another conversation is a client bug, not a silent cross-link.
    other = await _conversation(memory)
    await expect_error(
        s.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=other, input="q", request_id="retry-me"),
            metadata=ALICE,
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "request_id",
    )
    # Without request_id every call is a new interaction.
    plain = pb.CreateInteractionRequest(conversation_id=cid, input="q")
    a = await s.CreateInteraction(plain, metadata=ALICE)
    b = await s.CreateInteraction(plain, metadata=ALICE)
    assert a.interaction.interaction_id != b.interaction.interaction_id


async def test_request_id_keys_expire(memory_factory: MemoryFactory) -> None:
    memory = await memory_factory(request_id_ttl_seconds=1)
    cid = await _conversation(memory)
    first = await _interaction(memory, cid, "q", request_id="r")
    ttl = await memory.redis.pttl(next(iter(await _keys(memory, "*:req:r"))))
    assert 0 < ttl <= 1000
    assert await _interaction(memory, cid, "q", request_id="r") == first


async def test_service_restart_loses_nothing(memory_factory: MemoryFactory) -> None:
    one = await memory_factory()
    cid = await _conversation(one, "survivor")
    iids = [await _interaction(one, cid, f"q{n}") for n in range(5)]
    await one.server.stop(1)

    two = await memory_factory()
    listed = await two.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
    )
    assert [i.interaction_id for i in listed.interactions] == iids[::-1]
    # The idempotency key and the page token secret survive too.
    page = await two.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid, page_size=2), metadata=ALICE
    )
    three = await memory_factory()
    rest = await three.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid, page_token=page.next_page_token),
        metadata=ALICE,
    )
    assert [i.interaction_id for i in rest.interactions] == iids[::-1][2:]


async def _write_while(memory: Memory, cid: str, stop: asyncio.Event) -> list[str]:
    """Writes until ``stop``; returns the ids of the writes that were acknowledged."""
    acknowledged: list[str] = []

    async def worker(w: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                acknowledged.append(await _interaction(memory, cid, f"w{w}-{n}"))
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.UNAVAILABLE, err
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(w) for w in range(8)))
    return acknowledged


async def _all_interactions(memory: Memory, cid: str) -> list[str]:
    ids, token = [], ""
    while True:
        page = await memory.stub.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=cid, page_size=100, page_token=token),
            metadata=ALICE,
        )
        ids.extend(i.interaction_id for i in page.interactions)
        token = page.next_page_token
        if not token:
            return ids


async def _until_available(memory: Memory, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await memory.stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE)
            return
        except grpc.aio.AioRpcError as err:
            assert err.code() == grpc.StatusCode.UNAVAILABLE
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def test_redis_killed_mid_run_then_back(memory: Memory, redis_server: RedisProcess) -> None:
    """kill -9 under load with appendfsync always: every acknowledged write survives;
    while Redis is down calls are UNAVAILABLE; the service recovers by itself."""
    cid = await _conversation(memory)
    stop = asyncio.Event()
    writing = asyncio.create_task(_write_while(memory, cid, stop))
    await asyncio.sleep(0.3)
    await redis_server.kill()

    err = await rpc_error(
        memory.stub.GetConversation(pb.GetConversationRequest(conversation_id=cid), metadata=ALICE)
    )
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    # redis-py's text names Redis's address: logged, never sent to the caller.
    assert err.details() == "memory store unavailable; try again", err.details()
    assert error_info(err).reason == "STORE_UNAVAILABLE"

    await redis_server.start()  # same port, same data directory
    await _until_available(memory)
    await asyncio.sleep(0.2)  # writes flow again
    stop.set()
    acknowledged = await writing
    assert len(acknowledged) > 10

    stored = set(await _all_interactions(memory, cid))
    lost = [iid for iid in acknowledged if iid not in stored]
    assert not lost, f"{len(lost)} acknowledged writes lost"
    conv = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    assert conv.conversation.interaction_count == len(stored)


async def test_redis_restart_with_sigterm(memory: Memory, redis_server: RedisProcess) -> None:
    cid = await _conversation(memory, "kept")
    iids = [await _interaction(memory, cid, f"q{n}", request_id=f"r{n}") for n in range(5)]
    await redis_server.stop()
    await expect_error(
        memory.stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE),
        grpc.StatusCode.UNAVAILABLE,
    )
    await redis_server.start()
    await _until_available(memory)
    assert await _all_interactions(memory, cid) == iids[::-1]
    # Idempotency survives the restart too.
    assert await _interaction(memory, cid, "q0", request_id="r0") == iids[0]


async def test_unreachable_redis_from_the_start(redis_server: RedisProcess) -> None:
    """A service whose Redis is down answers UNAVAILABLE without leaking the URL's password."""
    await redis_server.stop()
    url = f"redis://:hunter2secret@127.0.0.1:{redis_server.port}/0"
    server = await build_server(make_settings(url), port=0)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

            stub = pb_grpc.MemoryServiceStub(channel)
            err = await expect_error(
                stub.ListConversations(pb.ListConversationsRequest(), metadata=ALICE),
                grpc.StatusCode.UNAVAILABLE,
            )
            assert "hunter2secret" not in err.details()
            assert "hunter2secret" not in str(err.trailing_metadata())
    finally:
        await server.stop(0)


async def test_deleting_every_conversation_leaves_no_key_of_the_owner(memory: Memory) -> None:
    """A user who deletes all their conversations leaves nothing behind in Redis: the
    per-owner storage count went too (it stayed as {"total": "0"} under the owner's
    hashed tag), and another owner's keys are untouched."""
    bob = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=BOB)
    bob_keys = await _keys(memory)
    cids = [await _conversation(memory, f"c{n}") for n in range(3)]
    for n, cid in enumerate(cids):
        await _interaction(memory, cid, "q", request_id=f"r-{n}")
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(OWNER)
    assert await _keys(memory, f"{tag}:*")
    for cid in cids:
        await memory.stub.DeleteConversation(
            pb.DeleteConversationRequest(conversation_id=cid), metadata=ALICE
        )
    assert await _keys(memory, f"{tag}:*") == []
    assert sorted(await _keys(memory)) == sorted(bob_keys)
    # And the owner starts again from zero.
    cid = await _conversation(memory, "again")
    usage = await memory.stub.CheckStorage(
        pb.CheckStorageRequest(conversation_id=cid), metadata=ALICE
    )
    assert usage.conversation_count == 1 and 0 < usage.used_bytes < 1024
    assert bob.conversation.conversation_id


async def test_a_turn_key_gone_for_good_is_dropped_not_unavailable_forever(
    memory: Memory,
) -> None:
    """A turn whose key is gone while its id is still listed (Redis evicted it under a
    maxmemory-policy other than noeviction, or an operator deleted it: here by hand) is
    dropped from the conversation, with its bytes given back. Before, ListInteractions
    (and Ask, which reads the recent turns with it) answered UNAVAILABLE for that
    conversation on every call, for good: the script took the missing key for one a
    reshard had not moved yet (TRYAGAIN), on a standalone server too."""
    cid, iids = await conversation_with_turns(memory.stub, "lost", 3, ALICE)
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(OWNER)
    await memory.redis.delete(f"{tag}:int:{iids[1]}")
    listing = pb.ListInteractionsRequest(conversation_id=cid, page_size=10)
    for _ in range(2):  # the first read drops it, the next finds it dropped
        page = await memory.stub.ListInteractions(listing, metadata=ALICE)
        assert [i.input for i in page.interactions] == ["lost2", "lost0"]
    assert [m.decode() for m in await memory.redis.zrange(f"{tag}:conv:{cid}:ints", 0, -1)] == [
        iids[0],
        iids[2],
    ]
    got = await memory.stub.GetConversation(
        pb.GetConversationRequest(conversation_id=cid), metadata=ALICE
    )
    assert got.conversation.interaction_count == 2
    field, total, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == measured == total
    # The conversation goes on as before.
    await _interaction(memory, cid, "after")
    page = await memory.stub.ListInteractions(listing, metadata=ALICE)
    assert [i.input for i in page.interactions] == ["after", "lost2", "lost0"]
    field, _, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == measured


async def test_turns_evicted_by_a_volatile_lru_redis_leave_their_conversation_readable(
    memory: Memory, redis_server: RedisProcess
) -> None:
    """The realistic way a turn's key goes while its conversation stays: a Redis run with
    a maxmemory-policy other than noeviction (volatile-lru is the default of several
    managed offerings; deploy/ runs noeviction), full. A conversation with a ttl has every
    key volatile; its old turns, read least recently, are evicted first, its hash and list
    (touched by every turn) last. Before, that conversation answered UNAVAILABLE to
    ListInteractions (and Ask) for good; now the evicted turns are dropped from it."""
    conv = await memory.stub.CreateConversation(
        pb.CreateConversationRequest(name="lru", ttl=duration_pb2.Duration(seconds=3600)),
        metadata=ALICE,
    )
    cid = conv.conversation.conversation_id
    big = "x" * 20_000
    for n in range(20):
        await _interaction(memory, cid, f"{n}{big}")
    # Redis's LRU clock ticks once a second: let the turns written so far age past it,
    # then a new turn touches the conversation's own keys.
    await asyncio.sleep(2.5)
    await _interaction(memory, cid, f"new{big}")
    tag = MemoryStore(memory.redis, key_prefix=memory.settings.key_prefix).tag(OWNER)
    used = (await memory.redis.info("memory"))["used_memory"]
    await memory.redis.config_set("maxmemory-policy", "volatile-lru")
    await memory.redis.config_set("maxmemory", used + 200_000)
    n = 0
    while (await memory.redis.info("stats"))["evicted_keys"] == 0:
        await memory.redis.set(f"filler:{n}", big, px=3_600_000)
        n += 1
    await memory.redis.config_set("maxmemory", 0)
    listed = [m.decode() for m in await memory.redis.zrange(f"{tag}:conv:{cid}:ints", 0, -1)]
    kept = [iid for iid in listed if await memory.redis.exists(f"{tag}:int:{iid}")]
    assert await memory.redis.exists(f"{tag}:conv:{cid}")
    assert len(kept) < len(listed)  # the state: a listed turn whose key was evicted
    page = await memory.stub.ListInteractions(
        pb.ListInteractionsRequest(conversation_id=cid, page_size=50), metadata=ALICE
    )
    assert [i.interaction_id for i in page.interactions] == kept[::-1]
    assert [m.decode() for m in await memory.redis.zrange(f"{tag}:conv:{cid}:ints", 0, -1)] == kept
    field, _, measured = await usage_bytes(memory.redis, tag, cid)
    assert field == measured
