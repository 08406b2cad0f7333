"""A turn's search-index job is written to the outbox beside the turn's own write, not
after it: the two round trips overlap (before, the job's write waited for the turn's
reply, one more round trip before every acknowledgement with the index on). The job is
still in the outbox before the turn is acknowledged (tests/memory/test_kill_9.py,
test_search_write_ahead.py); one written for a turn that was not stored under its id
(a refused write, a request_id's earlier turn) is taken out again.

Told by a relay in front of Redis that holds the turn's script until the job's script
has been sent too: written after the turn's reply, the job's never comes (a bounded
wait, then the test fails; no timing assertion)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2

from services.common.redis_client import RedisClient, connect
from services.devlaunch.redis_server import RedisProcess
from services.memory.__main__ import build_server
from services.memory.store import Owner, lua_source
from tests.memory.conftest import Memory, MemoryFactory, make_settings
from tests.memory.helpers import rpc_error
from tests.memory.test_search_interactions import ALICE, search_until
from tests.memory.test_search_write_ahead import FAR, held_indexer
from tests.support.redis_relay import relaying

WAIT_SECONDS = 5.0
OWNER = Owner("acme", "alice")
_SHA = {name: hashlib.sha1(lua_source(name).encode()).hexdigest().encode()
        for name in ("create_interaction", "outbox_add", "retention_step")}  # fmt: skip


def _script(args: list[bytes]) -> bytes:
    """The sha of the script a command runs (b"" for any other command)."""
    if args[0].upper() == b"EVALSHA":
        return args[1]
    if args[0].upper() == b"EVAL":
        return hashlib.sha1(args[1]).hexdigest().encode()
    return b""


async def test_the_index_job_is_sent_beside_the_turns_write(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    sent = asyncio.Condition()
    jobs = turns = 0  # the scripts of each sent so far
    turn_held_alone: list[int] = []

    async def step(args: list[bytes]) -> None:
        nonlocal jobs, turns
        sha = _script(args)
        async with sent:
            if sha == _SHA["outbox_add"]:
                jobs += 1
                sent.notify_all()
            elif sha == _SHA["create_interaction"]:
                turns += 1
                turn = turns
                try:
                    # Held until this turn's job has been sent too.
                    await asyncio.wait_for(sent.wait_for(lambda: jobs >= turn), WAIT_SECONDS)
                except TimeoutError:
                    turn_held_alone.append(turn)

    async with relaying(redis_server.url, step) as url:
        settings = make_settings(
            url,
            search_index="keyword",
            data_dir=tmp_path,
            search_retry_seconds=30.0,
            # (a turn held WAIT_SECONDS before it reaches Redis is no outage)
            redis_socket_timeout=4 * WAIT_SECONDS,
        )
        server = await build_server(settings, port=0)
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stub = pb_grpc.MemoryServiceStub(channel)
        try:
            made = await stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
            cid = made.conversation.conversation_id
            for question in ("kumquats", "quinces"):
                await stub.CreateInteraction(
                    pb.CreateInteractionRequest(conversation_id=cid, input=question),
                    metadata=ALICE,
                )
            assert turn_held_alone == []  # each job's write was sent before the turn's reply
        finally:
            await channel.close()
            await server.stop(0)


async def _outbox_empties(memory: Memory) -> list[bytes]:
    """The outbox's jobs once it is empty, or after a bounded wait."""
    key = f"{memory.settings.key_prefix}:{{search-outbox}}:jobs"
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_SECONDS
    while True:
        jobs = await memory.redis.zrange(key, 0, -1)
        if not jobs or loop.time() > end:
            return list(jobs)
        await asyncio.sleep(0.05)


async def test_a_job_written_for_no_turn_is_taken_out_again(
    memory_factory: MemoryFactory, tmp_path: Path
) -> None:
    """A write refused (NOT_FOUND) and a retry answered with its request_id's earlier turn
    store no turn under the id their job was written for: the job leaves the outbox (left,
    it would hold a place of its bounds until a drain, a retry period later)."""
    memory = await memory_factory(
        search_index="keyword", data_dir=tmp_path, search_retry_seconds=60.0
    )
    made = await memory.stub.CreateConversation(pb.CreateConversationRequest(), metadata=ALICE)
    cid = made.conversation.conversation_id
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await memory.stub.CreateInteraction(
            pb.CreateInteractionRequest(conversation_id=str(uuid.uuid4()), input="figs"),
            metadata=ALICE,
        )
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    request = pb.CreateInteractionRequest(conversation_id=cid, input="figs", request_id="r-1")
    first = await memory.stub.CreateInteraction(request, metadata=ALICE)
    again = await memory.stub.CreateInteraction(request, metadata=ALICE)
    assert again.interaction.interaction_id == first.interaction.interaction_id
    assert await _outbox_empties(memory) == []  # each turn's job done, the others taken out


async def test_a_turn_written_slower_than_half_a_retry_period_has_its_job_written_again(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    """The job written beside the turn is due a retry period after it was sent: a turn
    write slower than that (a slot move waited out), a drain (any replica's) may take the
    job before the turn exists, find no turn and drop it. Past half a retry period the
    job is written again before the turn is acknowledged."""
    async with held_indexer(redis_server.url, tmp_path, 0.2) as (store, index, indexer):
        cid = (await store.create_conversation(OWNER, "c")).conversation_id
        ahead = indexer.write_ahead(OWNER)
        turn = await store.create_interaction(
            OWNER, cid, pb.Interaction(input="kumquats"), "", beside=ahead
        )
        job = json.dumps(["index", OWNER.tenant, OWNER.user, turn.interaction_id])
        assert ahead.task is not None and await ahead.task
        assert await store.outbox_due(FAR, 10) == [job]
        # A drain that read the turn before it was written: dropped as done.
        await store.outbox_remove(job, OWNER.tenant)
        await asyncio.sleep(0.15)  # the write took more than half a retry period
        await indexer.stored(OWNER, turn, ahead)
        assert await store.outbox_due(FAR, 10) == [job]  # there before the acknowledgement
        index.go.set()
        await indexer.idle()
        assert await index.indexed([turn.interaction_id]) == {turn.interaction_id}


@contextlib.asynccontextmanager
async def _service(
    url: str, server: RedisProcess, tmp_path: Path, **overrides: object
) -> AsyncIterator[Memory]:
    """The memory service with a keyword index on ``url`` (a relay), and a client of the
    test's own straight to ``server``."""
    settings = make_settings(url, search_index="keyword", data_dir=tmp_path, **overrides)
    grpc_server = await build_server(settings, port=0)
    await grpc_server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{grpc_server.port}")
    memory = Memory(
        grpc_server, channel, pb_grpc.MemoryServiceStub(channel), _client(server), settings
    )
    try:
        yield memory
    finally:
        await channel.close()
        await memory.redis.aclose()
        await grpc_server.stop(0)


def _client(server: RedisProcess) -> RedisClient:
    return connect(server.url, cluster=False, socket_timeout=5, connect_timeout=2)


def _job_of(args: list[bytes]) -> list[str]:
    """The index job an outbox_add command queues (its member, a JSON list)."""
    return next(json.loads(a) for a in args if a.startswith(b'["index"'))


async def test_a_turn_at_max_turns_has_its_job_written_once_under_its_id(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    """At max_turns a turn takes two runs of its script: the first names the turns its
    eviction deletes, to declare. Its id was made again for the second run, so the job
    written beside the first was taken out and written again for the new id (two outbox
    writes more per turn). The id is kept: one write, naming the turn stored. Counted from
    the commands that reach Redis."""
    adds: list[list[str]] = []

    async def step(args: list[bytes]) -> None:
        if _script(args) == _SHA["outbox_add"]:
            adds.append(_job_of(args))

    async with (
        relaying(redis_server.url, step) as url,
        _service(url, redis_server, tmp_path, search_retry_seconds=30.0) as memory,
    ):
        create = pb.CreateConversationRequest(max_turns=1, summary_disabled=True)
        made = await memory.stub.CreateConversation(create, metadata=ALICE)
        cid = made.conversation.conversation_id
        ask = pb.CreateInteractionRequest(conversation_id=cid, input="kumquats")
        await memory.stub.CreateInteraction(ask, metadata=ALICE)
        adds.clear()
        ask.input = "quinces"  # evicts the first
        stored = await memory.stub.CreateInteraction(ask, metadata=ALICE)
        iid = stored.interaction.interaction_id
        listed = await memory.stub.ListInteractions(
            pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
        )
        assert [t.interaction_id for t in listed.interactions] == [iid]  # at max_turns
        assert [job[3] for job in adds] == [iid]


async def test_a_turn_stored_then_failed_by_its_walk_keeps_its_index_job(
    redis_server: RedisProcess, tmp_path: Path
) -> None:
    """A turn stored whose walk of its conversation's turn expiries then fails (INTERNAL:
    here Redis refuses the walk's keys, an ACL changed under the service) is stored all
    the same: its index job stays and the turn is indexed. Before, the failed call took
    the job out as a refused write's, and search missed the turn until the periodic
    sweep (an hour by default)."""
    admin = _client(redis_server)
    password = uuid.uuid4().hex
    await admin.execute_command("ACL", "SETUSER", "memory", "on", f">{password}", "allkeys",
                                "allchannels", "+@all")  # fmt: skip
    armed = False
    outbox = ""

    async def step(args: list[bytes]) -> None:
        nonlocal armed
        if armed and _script(args) == _SHA["retention_step"]:
            armed = False
            # The outbox alone stays the service's: the walk's keys are refused (NOPERM).
            await admin.execute_command("ACL", "SETUSER", "memory", "resetkeys", outbox)

    try:
        async with relaying(redis_server.url, step) as url:
            as_memory = url.replace("redis://", f"redis://memory:{password}@")
            async with _service(
                as_memory, redis_server, tmp_path, search_retry_seconds=2.0
            ) as memory:
                outbox = f"~{memory.settings.key_prefix}:{{search-outbox}}:*"
                create = pb.CreateConversationRequest(ttl=duration_pb2.Duration(seconds=3600))
                made = await memory.stub.CreateConversation(create, metadata=ALICE)
                cid = made.conversation.conversation_id
                ask = pb.CreateInteractionRequest(conversation_id=cid, input="kumquats")
                first = (await memory.stub.CreateInteraction(ask, metadata=ALICE)).interaction
                # As if the turns were last renewed a ttl ago: the next turn starts a walk
                # of every turn's expiry, which reaches the first one in retention_step.lua.
                (conversation,) = await admin.keys(f"*:conv:{cid}")
                expire = int(await admin.hget(conversation, "expire_time"))
                await admin.hset(conversation, "renewed_until", expire - 3_540_000)
                armed = True
                ask.input = "quinces"
                failed = await rpc_error(memory.stub.CreateInteraction(ask, metadata=ALICE))
                assert failed.code() == grpc.StatusCode.INTERNAL
                assert not armed  # the walk's run was the one refused
                await admin.execute_command("ACL", "SETUSER", "memory", "allkeys")
                listed = await memory.stub.ListInteractions(
                    pb.ListInteractionsRequest(conversation_id=cid), metadata=ALICE
                )
                turns = [t.interaction_id for t in listed.interactions]
                assert len(turns) == 2 and first.interaction_id in turns  # stored
                (second,) = set(turns) - {first.interaction_id}
                assert await search_until(memory, ALICE, "quinces", [second]) == [second]
    finally:
        await admin.aclose()
