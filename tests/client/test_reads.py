"""The client's reads beyond search, through the real gateway stack: several objects by id
(BatchGetObjects), document chunks (GetChunks), one interaction, its traces, and search over
interactions; and which forwarded and gateway RPCs the client covers and retries."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from gensearch.client import AsyncGensearch, Gensearch, RetryPolicy, errors, types
from gensearch.client._transport import IDEMPOTENT
from gensearch.gateway.v1 import gateway_service_pb2
from gensearch.generation.v1 import generation_service_pb2
from gensearch.memory.v1 import memory_service_pb2
from gensearch.retrieval.v1 import retrieval_service_pb2

from services.gateway.forward import GenerationForwarder, MemoryForwarder, RetrievalForwarder
from tests.cli.conftest import RunningStack

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "python" / "gensearch" / "client" / "_async.py"
_names = itertools.count()
# The background search index of the stack's memory service catches up within this.
INDEX_WAIT_SECONDS = 60.0


@pytest.fixture
async def client(running_stack: RunningStack) -> AsyncIterator[AsyncGensearch]:
    async with AsyncGensearch(running_stack.address, timeout=60) as c:
        yield c


async def _three_books(client: AsyncGensearch) -> tuple[str, list[str]]:
    name = f"ManyBooks{next(_names)}"
    books = await client.collections.create(name, {"title": "text", "year": "int"})
    written = await books.data.insert_many(
        [
            {"title": "Dune", "year": 1965},
            {"title": "Neuromancer", "year": 1984},
            {"title": "Foundation", "year": 1951},
        ]
    )
    assert not written.errors
    return name, written.ids


async def test_get_many_answers_found_in_order_and_missing(client: AsyncGensearch) -> None:
    name, (dune, neuromancer, foundation) = await _three_books(client)
    books = client.collections.get(name)
    absent = str(uuid.uuid4())
    found = await books.data.get_many([foundation, absent, dune.upper(), foundation])
    assert isinstance(found, types.BatchGetResult)
    # Order first given, each once; the upper-case id is the same object.
    assert [o.id for o in found] == [foundation, dune]
    assert [o.properties["title"] for o in found] == ["Foundation", "Dune"]
    assert found.missing_ids == [absent] and not found.ok
    assert all(isinstance(o.properties["year"], int) for o in found)  # not 1951.0
    assert found.objects[0].vector == [] and found.raw.objects[0].id == foundation
    assert found.by_id()[dune].properties == {"title": "Dune", "year": 1965}

    everything = await books.data.get_many(iter([neuromancer, dune]), include_vector=True)
    assert everything.ok and len(everything) == 2 and everything[0].id == neuromancer
    assert all(len(o.vector) == 384 for o in everything)
    # The same object GetObject reads.
    assert everything[1] == await books.data.get(dune, include_vector=True)


async def test_get_many_errors_name_the_field(client: AsyncGensearch) -> None:
    name, ids = await _three_books(client)
    books = client.collections.get(name)
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await books.data.get_many([ids[0], "not-a-uuid"])
    assert caught.value.field == "ids[1]"
    with pytest.raises(TypeError):
        await books.data.get_many(ids[0])
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await books.data.get_many([])
    assert caught.value.field == "ids"
    too_many = [str(uuid.uuid4()) for _ in range(1001)]  # MAX_GET_IDS is 1000
    with pytest.raises(errors.ValueOutOfRangeError) as caught:
        await books.data.get_many(too_many)
    assert isinstance(caught.value, errors.InvalidArgumentError)
    assert caught.value.field == "ids" and caught.value.metadata["max"] == "1000"
    with pytest.raises(errors.NotFoundError) as caught:
        await client.collections.get(f"{name}Gone").data.get_many(ids)
    assert caught.value.field == "collection"


def test_get_many_blocking(running_stack: RunningStack) -> None:
    with Gensearch(running_stack.address) as client:
        books = client.collections.create(f"SyncMany{next(_names)}", {"title": "text"})
        (written,) = books.data.insert_many([{"title": "Ubik"}]).ids
        absent = str(uuid.uuid4())
        found = books.data.get_many([absent, written])
        assert isinstance(found, types.BatchGetResult)
        assert [o.properties for o in found] == [{"title": "Ubik"}]
        assert found.missing_ids == [absent]


async def test_chunks_of_documents(client: AsyncGensearch) -> None:
    spec = types.Collection(
        name=f"Handbook{next(_names)}",
        properties=[
            types.Property("doc_id", "text"),
            types.Property("chunk_index", "int"),
            types.Property("text", "text"),
        ],
        chunking=types.Chunking(document_property="doc_id", order_property="chunk_index"),
    )
    handbook = await client.collections.create_from(spec)
    await handbook.data.insert_many(
        [{"doc_id": "ops", "chunk_index": i, "text": f"ops part {i}"} for i in (2, 0, 3, 1)]
        + [{"doc_id": "faq", "chunk_index": 0, "text": "faq"}]
    )
    ops, faq, nothing = await handbook.data.chunks(
        [types.ChunkRange("ops", first=1, last=2), "faq", types.ChunkRange("none")],
        return_properties=["text"],
    )
    assert [c["chunk_index"] for c in ops] == [1, 2]  # document order, an int
    assert [c["text"] for c in ops] == ["ops part 1", "ops part 2"] and not ops.truncated
    assert [c["text"] for c in faq] == ["faq"] and len(nothing) == 0

    plain = await client.collections.create(f"Plain{next(_names)}", {"title": "text"})
    with pytest.raises(errors.NoChunkingError) as caught:
        await plain.data.chunks(["x"])
    assert isinstance(caught.value, errors.FailedPreconditionError)


async def test_interaction_its_traces_and_search(client: AsyncGensearch) -> None:
    name, _ = await _three_books(client)
    chat = client.collections.get(name).chat()
    answer = await chat.ask("Which book is about a desert planet?")
    conversations = client.conversations

    turn = await conversations.get_interaction(answer.interaction_id)
    assert turn.input == "Which book is about a desert planet?"
    assert turn.conversation_id == chat.conversation_id and turn.update_time is None
    assert turn.trace_count > 0

    traces = await conversations.traces(turn.id, page_size=1)
    assert [tr.trace_number for tr in traces] == list(range(turn.trace_count))
    assert "retrieval" in [tr.step for tr in traces]
    assert all(tr.start_time and tr.start_time.tzinfo for tr in traces)
    assert len(await conversations.traces(turn.id, limit=1, page_size=1)) == 1

    kept = await conversations.create("kept", ttl=timedelta(hours=2), max_turns=5)
    got = await conversations.get(kept.id)
    assert got.ttl == timedelta(hours=2) and got.max_turns == 5 and not got.summary_disabled
    assert got.expire_time and got.create_time and got.expire_time > got.create_time
    assert got.summary is None  # no turns yet, nothing to summarise

    with pytest.raises(errors.InteractionNotFoundError):
        await conversations.get_interaction(str(uuid.uuid4()))

    # The memory service indexes turns in the background: search until it has this one.
    loop = asyncio.get_running_loop()
    end = loop.time() + INDEX_WAIT_SECONDS
    while True:
        hits = await conversations.search(
            "desert planet", conversation_id=chat.conversation_id, mode="keyword", limit=5
        )
        if hits or loop.time() > end:
            break
        await asyncio.sleep(0.1)
    assert [h.id for h in hits] == [turn.id]
    assert isinstance(hits[0], types.InteractionHit) and hits[0].score > 0
    assert hits[0].interaction.input == turn.input

    with pytest.raises(errors.InvalidArgumentError) as caught:
        await conversations.search("desert", limit=-1)
    assert caught.value.field == "limit"
    with pytest.raises(ValueError, match="mode"):
        await conversations.search("desert", mode="fuzzy")


# --- which forwarded RPCs the client covers --------------------------------------------------

# Forwarded by the gateway, not yet a client method (reachable through the generated
# stubs): listed so that a newly forwarded RPC fails the test below. None today.
NOT_IN_CLIENT: set[str] = set()
READ = re.compile(r"^(Get|BatchGet|List|Count|Search)([A-Z]|$)")
FORWARDED = {
    "gensearch.retrieval.v1.RetrievalService": (
        RetrievalForwarder,
        retrieval_service_pb2.DESCRIPTOR.services_by_name["RetrievalService"],
    ),
    "gensearch.memory.v1.MemoryService": (
        MemoryForwarder,
        memory_service_pb2.DESCRIPTOR.services_by_name["MemoryService"],
    ),
    "gensearch.generation.v1.GenerationService": (
        GenerationForwarder,
        generation_service_pb2.DESCRIPTOR.services_by_name["GenerationService"],
    ),
}


def _forwarded(forwarder: type, descriptor: Any) -> set[str]:
    """The RPCs the gateway serves for this service: those its forwarder defines (the
    generated base answers UNIMPLEMENTED), but the ``_internal`` ones, which refuse."""
    defined = {name for name in descriptor.methods_by_name if name in vars(forwarder)}
    internal = {n for n in defined if vars(forwarder)[n].__qualname__.startswith("_internal")}
    # Every RPC of a forwarded service is served, or refused on purpose.
    assert defined == set(descriptor.methods_by_name), forwarder
    return defined - internal


def test_every_forwarded_rpc_has_a_client_method() -> None:
    forwarded = set().union(*(_forwarded(*pair) for pair in FORWARDED.values()))
    assert {"BatchGetObjects", "GetChunks", "SearchInteractions"} <= forwarded
    assert {"ListModels", "Generate", "StreamGenerate"} <= forwarded
    assert "LookupCachedAnswer" not in forwarded
    pattern = r"self\._t\.(?:retrieval|memory|generation)\.([A-Za-z]+)"
    called = set(re.findall(pattern, CLIENT.read_text()))
    assert forwarded - called == NOT_IN_CLIENT, "a forwarded RPC has no client method"
    assert {"UpdateConversation", "UpdateInteraction", "UpdateConversationSummary"} <= called


def test_every_gateway_rpc_has_a_client_method() -> None:
    service = gateway_service_pb2.DESCRIPTOR.services_by_name["GatewayService"]
    rpcs = set(service.methods_by_name)
    assert {"GenerateOnObjects", "StreamGenerateOnObjects"} <= rpcs
    called = set(re.findall(r"\.gateway\.([A-Za-z]+)\b", CLIENT.read_text()))
    assert rpcs - called == set(), "a gateway RPC has no client method"
    # Generation pays per call: never retried by the client.
    assert not rpcs & {m for methods in IDEMPOTENT.values() for m in methods}


def test_every_forwarded_read_is_retried_like_get_object() -> None:
    for service, (forwarder, descriptor) in FORWARDED.items():
        reads = {m for m in _forwarded(forwarder, descriptor) if READ.match(m)}
        assert set(IDEMPOTENT[service]) == reads, service
    assert IDEMPOTENT["gensearch.generation.v1.GenerationService"] == ("ListModels",)
    config = json.loads(RetryPolicy().service_config())
    (method_config,) = config["methodConfig"]  # one policy: BatchGetObjects as GetObject
    methods = {n["method"] for n in method_config["name"]}
    assert {"GetObject", "BatchGetObjects", "GetChunks", "SearchInteractions"} <= methods
    assert "ListModels" in methods and not {"Generate", "StreamGenerate"} & methods
