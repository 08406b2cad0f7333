"""Auto-pipelining against a real Redis: batched commands keep their own results and
errors, and scripts Redis forgot (SCRIPT FLUSH, a restart) are loaded again."""

from __future__ import annotations

import asyncio

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.errors import NotFound
from services.common.redis_process import RedisProcess
from services.memory.pipelining import AutoPipeline
from services.memory.store import MemoryStore, connect


async def test_concurrent_commands_share_pipelines(redis_server: RedisProcess) -> None:
    client = connect(redis_server.url)
    pipe = AutoPipeline(client)
    sent: list[int] = []
    original = pipe._send

    async def counting(batch):  # type: ignore[no-untyped-def]
        sent.append(len(batch))
        await original(batch)

    pipe._send = counting  # type: ignore[method-assign]
    try:
        results = await asyncio.gather(
            *(pipe.command("SET", f"k{n}", n) for n in range(50)),
            *(pipe.command("GET", f"k{n}") for n in range(50)),
        )
        assert results[:50] == [True] * 50
        assert results[50:] == [str(n).encode() for n in range(50)]
        assert max(sent) > 1, "nothing was batched"
        # One bad command fails alone.
        ok, bad = await asyncio.gather(
            pipe.command("GET", "k1"), pipe.command("INCR", "k1x", "too", "many"),
            return_exceptions=True,
        )  # fmt: skip
        assert ok == b"1"
        assert isinstance(bad, Exception)
    finally:
        await client.aclose()


async def test_scripts_survive_script_flush(redis_server: RedisProcess) -> None:
    store = MemoryStore(connect(redis_server.url))
    try:
        conv = await store.create_conversation("u", "n")
        await store._redis.script_flush()
        made = await asyncio.gather(
            *(
                store.create_interaction(
                    "u", conv.conversation_id, pb.Interaction(input=str(n)), ""
                )
                for n in range(40)
            )
        )
        page = await store.list_interactions("u", conv.conversation_id, 100, None)
        assert len(page.items) == 40
        assert sorted(m.interaction_id for m in made) == sorted(
            pb.Interaction.FromString(d).interaction_id for d in page.items
        )
        with pytest.raises(NotFound):
            await asyncio.gather(
                store.create_interaction("u", conv.conversation_id, pb.Interaction(), ""),
                store.create_interaction("other", conv.conversation_id, pb.Interaction(), ""),
            )
        again = await store.get_conversation("u", conv.conversation_id)
        assert again.interaction_count == 41
    finally:
        await store.close()
