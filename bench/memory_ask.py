"""Conversation-length benchmark: is the memory part of an Ask flat in the conversation's
length (issue 14)? ``Ask`` on a 200-turn conversation vs a 2-turn one, through the
gateway, every service its own process (bench/stack.py), the fake LLM answering at once.

Measured, interleaved round by round so load from elsewhere hits both alike:
  * end-to-end Ask latency on each conversation (no retrieval: context_size 0; rewriting
    off; the summary on, folding in the background);
  * the memory calls one Ask makes, timed straight against the memory service for each
    conversation: GetConversation + ListInteractions (interaction_size + 1 newest) +
    CreateInteraction (which also renews the sliding ttl: the conversations have one).

With ``--versus <checkout>``, a second memory service runs that checkout's code (its own
embedded Redis) and its memory turns are timed in the same rounds, alternately with this
checkout's: an A/B that load from elsewhere hits alike (on a shared machine, two benches
run one after the other do not).

    .venv/bin/python bench/memory_ask.py [--rounds 7] [--asks 20] [--versus /path/to/main]
        [--search-index off|keyword|hybrid]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb  # noqa: E402
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc  # noqa: E402
from gensearch.memory.v1 import memory_service_pb2 as mem_pb  # noqa: E402
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb  # noqa: E402
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc  # noqa: E402
from google.protobuf import duration_pb2  # noqa: E402

from bench.stack import IDENTITY, Stack, provider  # noqa: E402

TEXT = "a question of a typical length, asking about something in the corpus " * 3
INTERACTION_SIZE = 10


async def _conversation(memory: mem_grpc.MemoryServiceStub, turns: int) -> str:
    made = await memory.CreateConversation(
        mem_pb.CreateConversationRequest(
            name=f"{turns} turns", ttl=duration_pb2.Duration(seconds=86400)
        ),
        metadata=IDENTITY,
    )
    cid = made.conversation.conversation_id
    for n in range(turns):
        await memory.CreateInteraction(
            mem_pb.CreateInteractionRequest(
                conversation_id=cid, input=f"q{n} {TEXT}", response=f"a{n} {TEXT}"
            ),
            metadata=IDENTITY,
        )
    return cid


async def _memory_turn(memory: mem_grpc.MemoryServiceStub, cid: str) -> float:
    start = time.perf_counter()
    await asyncio.gather(
        memory.GetConversation(
            mem_pb.GetConversationRequest(conversation_id=cid), metadata=IDENTITY
        ),
        memory.ListInteractions(
            mem_pb.ListInteractionsRequest(conversation_id=cid, page_size=INTERACTION_SIZE + 1),
            metadata=IDENTITY,
        ),
    )
    await memory.CreateInteraction(
        mem_pb.CreateInteractionRequest(conversation_id=cid, input=TEXT, response=TEXT),
        metadata=IDENTITY,
    )
    return (time.perf_counter() - start) * 1000


async def _ask(gateway: gw_grpc.GatewayServiceStub, cid: str) -> float:
    start = time.perf_counter()
    await gateway.Ask(
        gw_pb.AskRequest(
            collection="Bench",
            llm_question=TEXT,
            conversation_id=cid,
            context_size=0,
            rewrite_query=False,
            interaction_size=INTERACTION_SIZE,
        ),
        metadata=IDENTITY,
    )
    return (time.perf_counter() - start) * 1000


def _row(name: str, medians: list[float]) -> str:
    return (
        f"{name:<34}{statistics.median(medians):8.2f} ms  "
        f"(range {min(medians):.2f}-{max(medians):.2f}, {len(medians)} rounds)"
    )


async def _bench(args: argparse.Namespace) -> None:
    async with Stack() as stack:
        if args.search_index != "off":
            # Both memory services (this checkout's and --versus') index their turns.
            stack.extra_env["memory"] = {"GENSEARCH_MEMORY_SEARCH_INDEX": args.search_index}
        llm = await stack.fake_llm(latency=0.0, jitter=0.0)
        memory = await stack.memory()
        retrieval = await stack.retrieval()
        generation = await stack.generation({"fake": provider(llm)})
        gateway = await stack.gateway(memory, retrieval, generation)
        mem = mem_grpc.MemoryServiceStub(stack.channel(memory))
        gw = gw_grpc.GatewayServiceStub(stack.channel(gateway))
        ret = ret_grpc.RetrievalServiceStub(stack.channel(gateway))
        await ret.CreateCollection(
            ret_pb.CreateCollectionRequest(
                collection=ret_pb.Collection(
                    name="Bench",
                    properties=[ret_pb.Property(name="body", data_type=ret_pb.DATA_TYPE_TEXT)],
                    vectorizer=ret_pb.Vectorizer(kind=ret_pb.VECTORIZER_KIND_NONE, dimensions=4),
                )
            ),
            metadata=IDENTITY,
        )
        # Through the gateway (its caller's own conversations), and straight in memory (the
        # bench identity's) for the direct timing: the same lengths.
        mem_gw = mem_grpc.MemoryServiceStub(stack.channel(gateway))
        conversations = {n: await _conversation(mem_gw, n) for n in (2, 200)}
        own = {n: await _conversation(mem, n) for n in (2, 200)}
        versus: dict[int, str] = {}
        if args.versus:
            other = mem_grpc.MemoryServiceStub(stack.channel(await stack.memory(root=args.versus)))
            versus = {n: await _conversation(other, n) for n in (2, 200)}
        for cid in conversations.values():  # warm up channels, scripts, tokenizer caches
            await _ask(gw, cid)
        ask: dict[int, list[float]] = {n: [] for n in conversations}
        direct: dict[int, list[float]] = {n: [] for n in conversations}
        against: dict[int, list[float]] = {n: [] for n in versus}
        for _ in range(args.rounds):
            for n, cid in conversations.items():
                ask[n].append(statistics.median([await _ask(gw, cid) for _ in range(args.asks)]))
                if not versus:
                    direct[n].append(
                        statistics.median(
                            [await _memory_turn(mem, own[n]) for _ in range(args.asks)]
                        )
                    )
                    continue
                # Turn by turn, alternately, each first every other turn.
                mine, theirs = [], []
                for i in range(args.asks):
                    if i % 2:
                        theirs.append(await _memory_turn(other, versus[n]))
                    mine.append(await _memory_turn(mem, own[n]))
                    if not i % 2:
                        theirs.append(await _memory_turn(other, versus[n]))
                direct[n].append(statistics.median(mine))
                against[n].append(statistics.median(theirs))
        counts = {}
        for n, cid in conversations.items():
            got = await mem_gw.GetConversation(
                mem_pb.GetConversationRequest(conversation_id=cid), metadata=IDENTITY
            )
            counts[n] = got.conversation.interaction_count
    print(
        f"\nmemory-by-length bench {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, "
        f"{args.rounds} interleaved rounds of {args.asks} calls (medians per round), "
        f"search index {args.search_index}"
    )
    for n in conversations:
        print(_row(f"Ask, {n}-turn conversation", ask[n]))
    for n in conversations:
        print(_row(f"memory per turn, {n}-turn conv.", direct[n]))
    for n in against:
        print(_row(f"memory per turn, {n}-turn, versus", against[n]))
    if against:
        print(f"(versus: the memory service of {args.versus}, timed alternately)")
    print(f"(turns at the end: {counts})")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--asks", type=int, default=20)
    parser.add_argument(
        "--versus", type=Path, help="another checkout whose memory service is timed alike"
    )
    parser.add_argument(
        "--search-index",
        choices=("off", "keyword", "hybrid"),
        default="off",
        help="memory's GENSEARCH_MEMORY_SEARCH_INDEX (off, the service's default)",
    )
    args = parser.parse_args()
    if args.versus:
        args.versus = args.versus.resolve()
    asyncio.run(_bench(args))


if __name__ == "__main__":
    main()
