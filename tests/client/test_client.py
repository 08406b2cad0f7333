"""gensearch.client against the real stack (gateway, retrieval on qdrant-edge, memory on
Redis, generation on the loopback fake LLM)."""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NoReturn

import grpc
import pytest
from gensearch.client import (
    AsyncGensearch,
    Filter,
    Gensearch,
    RetryPolicy,
    errors,
    types,
)
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc

from services.common.errors import FailedPrecondition, NotFound, ServiceError
from services.common.property_types import RFC3339_DATE_TIME
from tests.cli.conftest import RunningStack

ROOT = Path(__file__).resolve().parents[2]
_names = itertools.count()
BOOKS = [
    {"title": "Dune", "body": "A desert planet and the spice melange.", "year": 1965},
    {"title": "Neuromancer", "body": "A hacker in a cyberpunk future.", "year": 1984},
    {"title": "Foundation", "body": "A galactic empire falls.", "year": 1951},
]


@pytest.fixture
async def client(running_stack: RunningStack) -> AsyncIterator[AsyncGensearch]:
    async with AsyncGensearch(running_stack.address, timeout=60) as c:
        yield c


async def _books(client: AsyncGensearch) -> str:
    name = f"ClientBooks{next(_names)}"
    books = await client.collections.create(
        name,
        {"title": "text", "body": "text", "year": "int", "published": "date"},
        generative=types.GenerativeConfig(max_tokens=64),
    )
    result = await books.data.import_(BOOKS, batch_size=2, objects_per_call=2)
    assert result.imported == 3 and not result.errors
    return name


async def test_collections_create_config_list_delete(client: AsyncGensearch) -> None:
    name = await _books(client)
    books = client.collections.get(name)
    config = await books.config()
    assert [(p.name, p.data_type) for p in config.properties] == [
        ("title", "text"),
        ("body", "text"),
        ("year", "int"),
        ("published", "date"),
    ]
    assert config.object_count == 3 and config.vectorizer and config.vectorizer.kind == "local"
    assert isinstance(config.create_time, datetime) and config.create_time.tzinfo
    assert name in [c.name for c in await client.collections.list(page_size=1)]
    assert await client.collections.exists(name)
    # The delete names which collection of the name it removed: the one config() read.
    assert await client.collections.delete(name) == config.create_time
    assert not await client.collections.exists(name)
    with pytest.raises(errors.NotFoundError) as caught:
        await books.config()
    assert caught.value.code == grpc.StatusCode.NOT_FOUND and caught.value.domain == "gensearch"
    with pytest.raises(errors.NotFoundError) as caught:
        await client.collections.delete(name)
    assert caught.value.field == "name"


async def test_import_reports_each_rejected_object(client: AsyncGensearch) -> None:
    name = await _books(client)
    books = client.collections.get(name)
    objects = [
        {"title": "Solaris", "year": 1961},
        {"title": "Bad", "year": "not a year"},
        types.DataObject(id="not-a-uuid", properties={"title": "Bad id"}),
        {"title": "Hyperion", "year": 1989, "published": datetime(1989, 5, 26)},
    ]
    result = await books.data.import_(objects, batch_size=1, objects_per_call=2)
    assert result.received == 4 and result.imported == 2
    assert [(e.index, e.field) for e in result.errors] == [(1, "properties.year"), (2, "id")]
    assert not result.ok and not result.errors_truncated
    # Past the service's max_import_errors only the count says an object was rejected.
    assert not types.WriteResult(received=3, imported=1, errors_truncated=True).ok
    assert (await books.count()) == 5
    assert await books.count(Filter.by_property("year") > 1960) == 4
    written = await books.data.insert_many([{"title": "Ubik", "year": 1969}, {"year": 1.5}])
    assert len(written.ids) == 1 and written.errors[0].index == 1
    got = await books.data.get(written.ids[0])
    assert got.properties == {"title": "Ubik", "year": 1969} and isinstance(
        got.properties["year"], int
    )
    assert await books.data.delete(filter={"condition": {
        "property": "title", "operator": "OPERATOR_EQUAL", "value": "Ubik"}}) == 1  # fmt: skip


async def test_search_modes_filters_and_plain_values(client: AsyncGensearch) -> None:
    books = client.collections.get(await _books(client))
    near = await books.query.near_text("sand and spice", limit=3)
    assert near[0]["title"] == "Dune" and len(near) == 3
    assert all(isinstance(h["year"], int) for h in near)
    keyword = await books.query.keyword("hacker", return_properties=["title"])
    assert [h.properties for h in keyword] == [{"title": "Neuromancer"}]
    old = await books.query.hybrid(
        "empire", alpha=0.5, filter=(Filter.by_property("year") < 1970)
        & ~Filter.by_property("title").equal("Dune"),
    )  # fmt: skip
    assert [h["title"] for h in old] == ["Foundation"]
    vector = await books.query.near_text("spice", include_vector=True, limit=1)
    assert len(vector[0].vector) == 384
    assert vector.hits[0].raw.id == vector[0].id  # the message it came from


async def test_generative_search_single_and_grouped(
    client: AsyncGensearch, running_stack: RunningStack
) -> None:
    books = client.collections.get(await _books(client))
    found = await books.generate.near_text(
        "science fiction",
        limit=3,
        single_prompt="Teaser for {title} ({year})",
        grouped_task="Which is the oldest?",
        grouped_properties=["title", "year"],
        generation_timeout=timedelta(seconds=30),
        debug=True,
    )
    assert len(found) == 3 and found.grouped and found.grouped.ok
    for item in found:
        assert item.generation and item.generation.ok and item.result
        # The template saw the integer, not 1965.0.
        assert f"({item.properties['year']})" in item.generation.prompt
    assert found.usage and found.usage.total_tokens > 0
    # One LLM call per hit and one grouped, each first time lucky: what the quota charged.
    assert [i.generation.upstream_calls for i in found if i.generation] == [1, 1, 1]
    assert found.grouped.upstream_calls == 1 and found.upstream_calls == 4


async def test_a_failed_hit_carries_its_own_error(client: AsyncGensearch) -> None:
    books = client.collections.get(await _books(client))
    found = await books.generate.keyword("desert", single_prompt="About {published}")
    assert found.hits[0].generation and not found.hits[0].generation.ok
    error = found.hits[0].generation.error
    assert error and error.reason == "MISSING_PROPERTY" and error.status == "FAILED_PRECONDITION"
    # The ErrorInfo a failed call would carry: which property, which field, no parsing.
    assert error.domain == "gensearch" and error.field == "generate.single_prompt"
    assert error.metadata == {"field": "generate.single_prompt", "property": "published"}
    events = [
        e async for e in books.generate_stream.keyword("desert", single_prompt="About {published}")
    ]
    streamed = [e.generation.error for e in events if isinstance(e, types.HitResultEvent)]
    assert streamed and all(e and e.metadata == error.metadata for e in streamed)


async def test_streamed_generative_search(client: AsyncGensearch) -> None:
    books = client.collections.get(await _books(client))
    events = [
        e
        async for e in books.generate_stream.hybrid(
            "space", limit=2, single_prompt="Summarise {body}", grouped_task="Compare them",
            stream_tokens=True,
        )
    ]  # fmt: skip
    assert isinstance(events[0], types.HitsEvent) and len(events[0].hits) == 2
    assert isinstance(events[-1], types.DoneEvent) and events[-1].upstream_calls == 3
    per_hit = [e for e in events if isinstance(e, types.HitResultEvent)]
    assert sorted(e.hit_index for e in per_hit) == [0, 1]
    assert any(isinstance(e, types.TokenEvent) for e in events)
    assert any(isinstance(e, types.GroupedEvent) and e.generation.ok for e in events)


async def test_ask_chat_and_conversations(client: AsyncGensearch) -> None:
    books = client.collections.get(await _books(client))
    chat = books.chat()
    first = await chat.ask(
        "Which book is set on a desert planet?", answer_timeout=timedelta(seconds=30), timeout=60
    )
    assert first.answer and first.conversation_id == chat.conversation_id
    assert first.hits and isinstance(first.hits[0]["year"], int)
    assert first.upstream_calls == 1
    events = [e async for e in chat.ask_stream("When was it written?")]
    assert isinstance(events[0], types.AskContextEvent)
    assert any(isinstance(e, types.AnswerDelta) for e in events)
    final = events[-1]
    assert isinstance(final, types.AnswerEvent)
    assert final.answer.conversation_id == first.conversation_id
    assert final.answer.rewritten_query
    assert final.answer.upstream_calls == 2  # the question rewrite and the answer

    conversations = client.conversations
    assert chat.conversation_id in [c.id for c in await conversations.list()]
    got = await conversations.get(chat.conversation_id)
    assert got.interaction_count == 2 and isinstance(got.update_time, datetime)
    turns = await conversations.interactions(chat.conversation_id, oldest_first=True)
    assert [t.input for t in turns] == [
        "Which book is set on a desert planet?",
        "When was it written?",
    ]
    assert len(await conversations.interactions(chat.conversation_id, limit=1)) == 1
    await conversations.delete(chat.conversation_id)
    with pytest.raises(errors.ConversationNotFoundError) as caught:
        await conversations.get(chat.conversation_id)
    assert isinstance(caught.value, errors.NotFoundError)
    assert caught.value.reason == "CONVERSATION_NOT_FOUND"


async def test_ask_with_a_request_id_replays_a_stored_turn(client: AsyncGensearch) -> None:
    """ask(request_id=...) retried after its turn was stored: the stored turn, replayed,
    in the same conversation; the key for another question is RequestIdReusedError."""
    books = client.collections.get(await _books(client))
    question = "Which book is set on a desert planet?"
    key = f"idem-{next(_names)}"
    first = await books.ask(question, new_conversation=True, request_id=key)
    again = await books.ask(question, new_conversation=True, request_id=key)
    assert not first.replayed and again.replayed and again.upstream_calls == 0
    assert (again.answer, again.conversation_id, again.interaction_id) == (
        first.answer,
        first.conversation_id,
        first.interaction_id,
    )
    assert [h.id for h in again.hits] == [h.id for h in first.hits]
    events = [e async for e in books.ask_stream(question, new_conversation=True, request_id=key)]
    final = events[-1]
    assert isinstance(final, types.AnswerEvent) and final.answer.replayed
    assert [e.delta for e in events if isinstance(e, types.AnswerDelta)] == [first.answer]
    with pytest.raises(errors.RequestIdReusedError) as caught:
        await books.ask("Who wrote it?", conversation_id=first.conversation_id, request_id=key)
    assert caught.value.field == "request_id"
    assert (await client.conversations.get(first.conversation_id)).interaction_count == 1
    await client.conversations.delete(first.conversation_id)


async def test_ask_passes_a_fallback_chain_through(client: AsyncGensearch) -> None:
    books = client.collections.get(await _books(client))
    question = "Which book is set on a desert planet?"
    with pytest.raises(errors.InvalidArgumentError) as caught:
        await books.ask(question, fallback=[{"provider": "no-such-provider"}])
    assert caught.value.field == "fallback[0].provider"
    # The primary's own endpoint again (local, its default model): refused, it would
    # only re-run the primary's failure with all its retries.
    with pytest.raises(errors.DuplicateFallbackError) as repeated:
        await books.ask(question, fallback=[{"provider": "local"}])
    assert repeated.value.field == "fallback[0]"
    # A chain the primary did not need: the primary answered. (Another endpoint: local
    # lists one model only, so another provider, never called here.)
    answer = await books.ask(question, fallback=[{"provider": "ollama", "model": "llama3.2"}])
    assert answer.answer and answer.fallback_index == 0 and answer.provider == "local"


async def test_errors_carry_error_info_and_bad_request(client: AsyncGensearch) -> None:
    with pytest.raises(errors.BadNameError) as caught:
        await client.collections.create("no spaces allowed", {"title": "text"})
    err = caught.value
    assert isinstance(err, errors.InvalidArgumentError)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.reason == "BAD_NAME"
    assert err.field == "collection.name" and err.field_violations[0].field == "collection.name"
    assert "BAD_NAME" in str(err) and "BadNameError" in repr(err)

    books = client.collections.get(await _books(client))
    with pytest.raises(errors.UnknownPropertyError):
        await books.query.keyword("x", filter=Filter.by_property("nope").equal(1))
    with pytest.raises(errors.NoPlaceholderError):
        await books.generate.keyword("x", single_prompt="no placeholder")


class _Draining(ret_grpc.RetrievalServiceServicer):
    """A gateway that is reachable but answers every call UNAVAILABLE (a replica shutting
    down, say), counting the attempts that reach it."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()

    async def _refuse(self, method: str, context: grpc.aio.ServicerContext) -> NoReturn:
        self.attempts[method] += 1
        await context.abort(grpc.StatusCode.UNAVAILABLE, "draining")

    async def ListCollections(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._refuse("ListCollections", context)

    async def CreateCollection(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await self._refuse("CreateCollection", context)


@pytest.fixture
async def draining() -> AsyncIterator[tuple[str, _Draining]]:
    servicer = _Draining()
    server = grpc.aio.server()
    ret_grpc.add_RetrievalServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}", servicer
    finally:
        await server.stop(0)


async def test_unavailable_gateway_is_unavailable_after_retries(
    draining: tuple[str, _Draining],
) -> None:
    """The server counts what the channel's retry policy sends: every attempt of a read,
    one of a write."""
    address, servicer = draining
    retry = RetryPolicy(max_attempts=3, initial_backoff=timedelta(milliseconds=10))
    async with AsyncGensearch(address, retry=retry, timeout=10) as client:
        with pytest.raises(errors.UnavailableError):
            await client.collections.list()
        with pytest.raises(errors.UnavailableError):
            await client.collections.create("Books", {"title": "text"}, vectorizer="none")
    assert servicer.attempts == {"ListCollections": 3, "CreateCollection": 1}

    servicer.attempts.clear()
    async with AsyncGensearch(address, retry=None, timeout=10) as client:
        with pytest.raises(errors.UnavailableError):
            await client.collections.list()
    assert servicer.attempts == {"ListCollections": 1}


class _Deleting(ret_grpc.RetrievalServiceServicer):
    """A retrieval that answers DeleteCollection with the creation time it was given."""

    def __init__(self) -> None:
        self.answer = ret_pb.DeleteCollectionResponse()

    async def DeleteCollection(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.answer


async def test_delete_returns_none_for_a_collection_without_a_creation_time() -> None:
    """Retrieval sends the removed collection's create_time set but empty for a collection
    from before creation times were kept (config() gives None for it): delete gives None
    too, not 1970-01-01; unset (an older retrieval) is None; a real one comes back."""
    servicer = _Deleting()
    server = grpc.aio.server()
    ret_grpc.add_RetrievalServiceServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with AsyncGensearch(f"127.0.0.1:{port}", timeout=10) as client:
            servicer.answer.create_time.SetInParent()  # set, empty
            assert servicer.answer.HasField("create_time")
            assert await client.collections.delete("Old") is None
            servicer.answer = ret_pb.DeleteCollectionResponse()  # unset
            assert await client.collections.delete("Old") is None
            made = datetime(2026, 12, 6, 6, 30, tzinfo=UTC)
            servicer.answer.create_time.FromDatetime(made)
            assert await client.collections.delete("New") == made
    finally:
        await server.stop(0)


async def test_unreachable_gateway_is_unavailable() -> None:
    async with AsyncGensearch("127.0.0.1:1", timeout=10) as client:
        with pytest.raises(errors.UnavailableError):
            await client.collections.list()


def test_retries_cover_only_idempotent_reads() -> None:
    config = json.loads(RetryPolicy(max_attempts=3).service_config())
    (method_config,) = config["methodConfig"]
    methods = {n["method"] for n in method_config["name"]}
    assert {"Search", "GetCollection", "ListInteractions"} <= methods
    writes = {
        "CreateCollection", "ImportObjects", "UpsertObjects", "GenerativeSearch", "Ask",
        "UpdateConversation", "UpdateInteraction", "UpdateConversationSummary",
        "DeleteInteraction", "GenerateOnObjects", "StreamGenerateOnObjects",
    }  # fmt: skip
    assert not methods & writes
    assert method_config["retryPolicy"]["maxAttempts"] == 3


def test_datetimes_go_as_rfc3339_date_times_the_service_takes() -> None:
    from gensearch.client.filters import to_value

    plus_two = timezone(timedelta(hours=2))
    # Amsterdam's local mean time until 1937: an offset in seconds, which RFC 3339 has not.
    amsterdam_lmt = timezone(timedelta(minutes=19, seconds=32))
    sent: dict[date, str] = {
        datetime(2024, 5, 1, 12, 0, tzinfo=plus_two): "2024-05-01T12:00:00+02:00",
        datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC): "2024-05-01T12:00:00.250000Z",
        datetime(2024, 5, 1, 12, 0): "2024-05-01T12:00:00Z",  # naive: UTC
        datetime(1900, 1, 1, 12, 0, tzinfo=amsterdam_lmt): "1900-01-01T11:40:28Z",
        # A plain date is midnight UTC: "2024-05-01" alone is no date-time, and the service
        # refused it.
        date(2024, 5, 1): "2024-05-01T00:00:00Z",
    }
    for value, text in sent.items():
        assert to_value(value).string_value == text
        assert RFC3339_DATE_TIME.fullmatch(text)


async def test_a_plain_date_is_stored_and_filtered_as_midnight_utc(client: AsyncGensearch) -> None:
    books = client.collections.get(await _books(client))
    written = await books.data.insert_many(
        [{"title": "Solaris", "year": 1961, "published": date(1961, 6, 1)}]
    )
    assert not written.errors, written.errors
    got = await books.data.get(written.ids[0])
    assert got.properties["published"] == datetime(1961, 6, 1, tzinfo=UTC)
    assert await books.count(Filter.by_property("published") >= date(1961, 6, 1)) == 1
    assert await books.count(Filter.by_property("published") > date(1961, 6, 1)) == 0


def test_the_blocking_client(running_stack: RunningStack) -> None:
    with Gensearch(running_stack.address) as client:
        assert client.health() == "SERVING"
        name = f"SyncBooks{next(_names)}"
        books = client.collections.create(name, {"title": "text", "body": "text", "year": "int"})
        assert books.data.import_(BOOKS).imported == 3
        assert books.query.keyword("desert")[0]["year"] == 1965
        events = list(books.generate_stream.keyword("desert", single_prompt="Say {title}"))
        assert isinstance(events[0], types.HitsEvent) and isinstance(events[-1], types.DoneEvent)
        chat = books.chat()
        chat.ask("Which book is set on a desert planet?")
        assert chat.conversation_id and "Collection" in repr(books)
        with pytest.raises(errors.NotFoundError):
            client.collections.get("Missing").config()
        # The blocking delete gives what the async one does: the removed one's create_time.
        created = books.config().create_time
        assert isinstance(created, datetime) and client.collections.delete(name) == created


def test_every_reason_the_services_emit_has_its_class() -> None:
    """A reason added in services/ needs its class in gensearch.client.errors."""
    emitted: set[str] = set()
    constants: dict[str, str] = {}
    texts = [path.read_text(encoding="utf-8") for path in (ROOT / "services").rglob("*.py")]
    # Every module's constants first: a reason is often declared in one module
    # (errors.DOWNSTREAM_UNAVAILABLE) and raised by name in another.
    for text in texts:
        constants.update(re.findall(r'^([A-Z][A-Z_]+) = "([A-Z][A-Z_]+)"$', text, re.M))
    for text in texts:
        emitted.update(re.findall(r'reason\s*=\s*"([A-Z][A-Z_]+)"', text))
        emitted.update(constants.get(n, "") for n in re.findall(r"reason=([A-Z][A-Z_]+)\b", text))
    emitted.discard("")
    codes = {code.name for code in grpc.StatusCode}
    missing = sorted(r for r in emitted - codes if errors.error_class(r) is None)
    assert not missing, f"add classes to clients/python/gensearch/client/errors.py: {missing}"


def _rpc_error(error: ServiceError) -> grpc.aio.AioRpcError:
    status = error.to_status()
    return grpc.aio.AioRpcError(
        status.code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(*status.trailing_metadata),
        details=status.details,
    )


def test_a_reason_under_an_unusual_code_matches_both_classes() -> None:
    sent = FailedPrecondition("no vectorizer here", reason="NO_VECTORIZER", field="near_text")
    err = errors.from_rpc_error(_rpc_error(sent))
    assert isinstance(err, errors.NoVectorizerError)
    assert isinstance(err, errors.FailedPreconditionError)
    assert err.field == "near_text" and err.domain == "gensearch"
    unknown = errors.from_rpc_error(_rpc_error(NotFound("gone", reason="SOMETHING_NEW")))
    assert type(unknown) is errors.NotFoundError and unknown.reason == "SOMETHING_NEW"


async def test_the_blocking_client_works_inside_a_running_loop(running_stack: RunningStack) -> None:
    """As in a notebook: the blocking client runs its own loop in a thread."""
    with Gensearch(running_stack.address) as client:
        assert client.health() == "SERVING"
        assert isinstance(client.collections.list(limit=1), list)
