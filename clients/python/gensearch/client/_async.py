"""``AsyncGensearch``: the whole API through the gateway, with plain Python values.

    async with AsyncGensearch("localhost:50050", api_key="...") as client:
        books = client.collections.get("Books")
        hits = await books.query.near_text("sand and spice", limit=3)
        found = await books.generate.hybrid("science fiction", single_prompt="Teaser: {title}")
        chat = books.chat()
        print(await chat.ask("Which book is set on a desert planet?"))
        print(await chat.ask("When was it written?"))

Every method takes the request's fields as keyword arguments (plain values: dicts for
properties, ``Filter`` or dicts for filters, ``timedelta`` for durations); fields this
client does not name yet pass straight through to the request message.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import dataclasses
import itertools
import random
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
    Sequence,
)
from datetime import UTC, date, datetime, timedelta
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import grpc
from gensearch.client import types as t
from gensearch.client._transport import DEFAULT, RetryPolicy, Timeout, Transport, seconds
from gensearch.client.errors import (
    GensearchError,
    InvalidArgumentError,
    InvalidPageTokenError,
    NotFoundError,
    QuotaExceededError,
)
from gensearch.client.filters import FilterLike, as_filter, to_struct_dict
from gensearch.gateway.v1 import gateway_service_pb2 as gpb
from gensearch.generation.v1 import generation_service_pb2 as genpb
from gensearch.memory.v1 import memory_service_pb2 as mpb
from gensearch.retrieval.v1 import retrieval_service_pb2 as rpb
from google.protobuf import (
    descriptor_pool,
    field_mask_pb2,
    json_format,
    message_factory,
    struct_pb2,
)
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2

QUERY_KINDS = ("near_text", "keyword", "hybrid", "near_vector")


def _clean(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Request keyword arguments: None means unset; filters, durations and the client's
    own dataclasses (``Rerank``, ``ContextExpansion`` …) converted."""
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if value is None:
            continue
        if name == "filter":
            value = as_filter(value)
        elif isinstance(value, list | tuple):
            value = [_message_of(v) for v in value]
        else:
            value = _message_of(value)
        # timedelta / datetime stay as they are: protobuf takes them for Duration and
        # Timestamp fields itself.
        out[name] = value
    return out


def _message_of(value: Any) -> Any:
    """A dataclass of ``types`` as the proto message it stands for; anything else as is."""
    if not dataclasses.is_dataclass(value) or isinstance(value, type):
        return value
    for full_name, cls in t._TYPES.items():
        if cls is type(value):
            message_cls = message_factory.GetMessageClass(
                descriptor_pool.Default().FindMessageTypeByName(full_name)
            )
            return t.to_proto(value, message_cls)
    return value


def _not_after(interaction_id: str, position: str) -> bool:
    """Whether a turn is at or before ``position``: ids sort as the turns were made."""
    return interaction_id.lower() <= position.lower()


def _listed_as_before(page: mpb.ListInteractionsResponse, oldest_first: bool, after: str) -> bool:
    """Whether a replica older than ListInteractions' ``oldest_first`` and
    ``after_interaction_id`` answered ``page``: it ignores both, so it lists newest first
    (its answer does not say ``oldest_first``) from the newest turn (ids sort as the
    turns were made: one at or before ``after`` means the position was ignored)."""
    if oldest_first and page.interactions and not page.oldest_first:
        return True
    return bool(after) and any(_not_after(i.interaction_id, after) for i in page.interactions)


def _page_limit(limit: int | None) -> int | None:
    """A paging helper's ``limit`` (how many items at most; None: all): a negative one
    would slice the last items off, so it is refused."""
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be 0 or more (None: all), not {limit}")
    return limit


def _data_object(value: t.DataObject | Mapping[str, Any]) -> rpb.DataObject:
    if isinstance(value, t.DataObject):
        return rpb.DataObject(
            id=value.id, properties=to_struct_dict(value.properties), vector=value.vector
        )
    return rpb.DataObject(properties=to_struct_dict(dict(value)))


def coerce_properties(properties: dict[str, Any], types: Mapping[str, str]) -> dict[str, Any]:
    """Struct numbers are doubles: INT properties back to ``int``, DATE ones to ``datetime``."""
    out = dict(properties)
    for name, value in properties.items():
        kind = types.get(name)
        if kind == "int" and isinstance(value, float) and value.is_integer():
            out[name] = int(value)
        elif kind == "date" and isinstance(value, str):
            with contextlib.suppress(ValueError):  # not a date after all: left as sent
                out[name] = datetime.fromisoformat(value)
    return out


class AsyncGensearch:
    """A client of the gateway (one address, one key, every API).

    ``timeout``: the default deadline of every call (per-call ``timeout=`` wins); ``retry``:
    gRPC retries of idempotent reads (``None`` turns them off); ``llm_keys``: provider keys
    sent as ``x-<provider>-api-key``; ``key_urls``: the base URL your ``embedding`` /
    ``rerank`` key is meant for (``x-embedding-base-url``, ``x-rerank-base-url``: needed
    to send it to a URL a collection's admin set); ``credentials``: TLS (default plaintext).
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        api_key: str | None = None,
        llm_keys: Mapping[str, str] | None = None,
        key_urls: Mapping[str, str] | None = None,
        timeout: Timeout = 60.0,
        retry: RetryPolicy | None = RetryPolicy(),
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self._t = Transport(
            address,
            api_key=api_key,
            llm_keys=llm_keys,
            key_urls=key_urls,
            timeout=timeout,
            retry=retry,
            credentials=credentials,
            options=options,
        )
        self.collections = Collections(self._t)
        self.conversations = Conversations(self._t)
        # Generation over inline objects with no collection (a collection's handle has
        # the same methods, and by_ids, under .generate / .generate_stream).
        self.generate = InlineGenerate(self._t)
        self.generate_stream = InlineGenerateStream(self._t)

    @property
    def address(self) -> str:
        return self._t.address

    def __repr__(self) -> str:
        return f"AsyncGensearch({self._t.address!r})"

    async def health(self, service: str = "", *, timeout: Timeout = DEFAULT) -> str:
        """The grpc.health.v1 status name, e.g. ``"SERVING"``."""
        reply = await self._t.unary(
            self._t.health.Check, health_pb2.HealthCheckRequest(service=service), timeout
        )
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    async def close(self) -> None:
        await self._t.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


# --- collections -----------------------------------------------------------------------------


PropertiesSpec = Sequence[t.Property] | Mapping[str, str]


class Collections:
    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def get(self, name: str) -> AsyncCollection:
        """A handle on a collection (no call is made)."""
        return AsyncCollection(self._t, name)

    async def create(
        self,
        name: str,
        properties: PropertiesSpec = (),
        *,
        description: str = "",
        vectorizer: t.Vectorizer | str = "local",
        generative: t.GenerativeConfig | None = None,
        keyword_index: bool | None = None,
        chunking: t.Chunking | None = None,
        rerank: t.Rerank | None = None,
        timeout: Timeout = DEFAULT,
    ) -> AsyncCollection:
        """Create a collection; ``properties`` as ``{"title": "text", "year": "int"}`` or a
        list of ``Property``. ``chunking``: its objects are chunks of documents (for
        ``expand_context``); ``rerank``: the default rerank stage of its Asks and
        generative searches (a request's own ``rerank=`` wins). Returns its handle."""
        props = (
            [t.Property(n, kind) for n, kind in properties.items()]
            if isinstance(properties, Mapping)
            else list(properties)
        )
        spec = t.Collection(
            name=name,
            description=description,
            properties=props,
            vectorizer=t.Vectorizer(kind=vectorizer) if isinstance(vectorizer, str) else vectorizer,
            keyword_index=keyword_index,
            generative=generative,
            chunking=chunking,
            rerank=rerank,
        )
        return await self.create_from(spec, timeout=timeout)

    async def create_from(
        self, collection: t.Collection | rpb.Collection, *, timeout: Timeout = DEFAULT
    ) -> AsyncCollection:
        """Create a collection from a full ``Collection`` (or its proto message)."""
        spec = (
            collection
            if isinstance(collection, rpb.Collection)
            else t.to_proto(collection, rpb.Collection)
        )
        reply = await self._t.unary(
            self._t.retrieval.CreateCollection,
            rpb.CreateCollectionRequest(collection=spec),
            timeout,
        )
        handle = AsyncCollection(self._t, collection.name)
        handle.schema = t.from_proto(t.Collection, reply.collection)
        return handle

    async def list(
        self, *, limit: int | None = None, page_size: int = 100, timeout: Timeout = DEFAULT
    ) -> builtins.list[t.Collection]:
        """Every collection (all pages), or the first ``limit``."""
        found: builtins.list[t.Collection] = []
        token = ""
        if _page_limit(limit) == 0:
            return found
        while True:
            page = await self._t.unary(
                self._t.retrieval.ListCollections,
                rpb.ListCollectionsRequest(page_size=page_size, page_token=token),
                timeout,
            )
            found.extend(t.from_proto(t.Collection, c) for c in page.collections)
            token = page.next_page_token
            if not token or (limit is not None and len(found) >= limit):
                return found[:limit]

    async def exists(self, name: str, *, timeout: Timeout = DEFAULT) -> bool:
        try:
            await self.get(name).config(timeout=timeout)
        except NotFoundError:
            return False
        return True

    async def delete(self, name: str, *, timeout: Timeout = DEFAULT) -> datetime | None:
        """Delete the collection and every object in it. Returns the removed collection's
        ``create_time`` (as ``config()`` gave it), so a caller can tell whether it removed
        the collection it read or one made again under the name since; ``None`` from a
        retrieval service older than the field, or for a collection from before creation
        times were kept. An unknown name raises ``NotFoundError``."""
        reply = await self._t.unary(
            self._t.retrieval.DeleteCollection, rpb.DeleteCollectionRequest(name=name), timeout
        )
        # Unset (an older retrieval), or set but empty: a collection from before creation
        # times were kept, whose config() gives None too (retrieval still sends it, as the
        # gateway fences such a collection's late cache stores by it).
        if not reply.HasField("create_time") or reply.create_time.ToNanoseconds() == 0:
            return None
        return reply.create_time.ToDatetime(tzinfo=UTC)


class AsyncCollection:
    """One collection: ``.data`` (write, read, delete objects), ``.query`` (search),
    ``.generate`` (generative search), ``.generate_stream``, ``.ask``, ``.chat()``."""

    def __init__(self, transport: Transport, name: str) -> None:
        self._t = transport
        self.name = name
        # The schema and settings last read (by ``config()``, ``create``, or a query).
        self.schema: t.Collection | None = None
        self.data = Data(self)
        self.query = Query(self)
        self.generate = Generate(self)
        self.generate_stream = GenerateStream(self)

    def __repr__(self) -> str:
        return f"AsyncCollection({self.name!r})"

    async def config(self, *, timeout: Timeout = DEFAULT) -> t.Collection:
        """The schema and settings, with ``object_count``."""
        reply = await self._t.unary(
            self._t.retrieval.GetCollection, rpb.GetCollectionRequest(name=self.name), timeout
        )
        got = t.from_proto(t.Collection, reply.collection)
        got.object_count = int(reply.object_count)
        self.schema = got
        return got

    async def property_types(self) -> dict[str, str]:
        """Property name -> data type (fetched once per handle; {} when unreadable)."""
        if self.schema is None:
            try:
                await self.config()
            except GensearchError:
                return {}
        return self.schema.property_types() if self.schema else {}

    async def count(self, filter: FilterLike | None = None, *, timeout: Timeout = DEFAULT) -> int:
        request = rpb.CountObjectsRequest(**_clean({"collection": self.name, "filter": filter}))
        reply = await self._t.unary(self._t.retrieval.CountObjects, request, timeout)
        return int(reply.count)

    async def _hits(self, hits: Iterable[rpb.Hit]) -> list[t.Hit]:
        types = await self.property_types()
        out = []
        for hit in hits:
            converted = t.from_proto(t.Hit, hit)
            converted.properties = coerce_properties(converted.properties, types)
            out.append(converted)
        return out

    async def _passages(self, passages: list[t.ContextPassage]) -> None:
        """A passage's ``document`` (a Value: numbers are doubles) back to the type of the
        collection's ``chunking.document_property``, in place."""
        if not passages:
            return
        types = await self.property_types()
        chunking = self.schema.chunking if self.schema else None
        name = chunking.document_property if chunking else ""
        for passage in passages:
            passage.document = coerce_properties({name: passage.document}, types)[name]

    # --- conversational search -----------------------------------------------------------

    def _ask_request(self, cls: type[Message], question: str, fields: dict[str, Any]) -> Any:
        query = {k: fields.pop(k) for k in QUERY_KINDS if k in fields}
        request = cls(**_clean({"collection": self.name, "llm_question": question, **fields}))
        for kind, value in query.items():
            _set_query(request, kind, value)
        return request

    async def ask(
        self,
        question: str,
        *,
        conversation_id: str = "",
        new_conversation: bool = False,
        context_size: int | None = None,
        interaction_size: int | None = None,
        answer_timeout: timedelta | None = None,
        request_id: str = "",
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> t.Answer:
        """Answer ``question`` from the top hits (and the conversation's recent turns).

        ``answer_timeout`` is the server's budget for the turn (AskRequest.timeout, default
        30 s); ``timeout`` the call's deadline, as everywhere. ``request_id`` (with
        ``conversation_id`` or ``new_conversation``): your idempotency key for the turn
        (visible ASCII: ``str(uuid.uuid4())``, say); a retry with it after the turn was
        stored returns that turn (``replayed``) with no LLM call. Other AskRequest fields
        (``llm_model``, ``provider``, ``fallback``, ``filter``, ``system_prompt``,
        ``near_text``, ``debug``, ``rerank=Rerank(...)``,
        ``expand_context=ContextExpansion(...)`` …) pass through; the client's dataclasses
        are taken for message fields, as dicts are.
        """
        request = self._ask_request(
            gpb.AskRequest,
            question,
            dict(
                conversation_id=conversation_id,
                new_conversation=new_conversation,
                context_size=context_size,
                interaction_size=interaction_size,
                timeout=answer_timeout,
                request_id=request_id,
                **fields,
            ),
        )
        reply = await self._t.unary(self._t.gateway.Ask, request, timeout)
        answer = t.from_proto(t.Answer, reply)
        answer.hits = await self._hits(reply.hits)
        await self._passages(answer.passages)
        return answer

    async def ask_stream(
        self,
        question: str,
        *,
        conversation_id: str = "",
        new_conversation: bool = False,
        answer_timeout: timedelta | None = None,
        request_id: str = "",
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> AsyncIterator[t.AskEvent]:
        """Like ``ask``, streamed: an ``AskContextEvent``, ``AnswerDelta``s, a
        ``CitationsEvent``, an ``AnswerEvent`` (a replayed turn: its answer as one
        delta)."""
        request = self._ask_request(
            gpb.StreamAskRequest,
            question,
            dict(
                conversation_id=conversation_id,
                new_conversation=new_conversation,
                timeout=answer_timeout,
                request_id=request_id,
                **fields,
            ),
        )
        async for event in self._t.server_stream(self._t.gateway.StreamAsk, request, timeout):
            kind = event.WhichOneof("event")
            if kind == "context":
                context = t.from_proto(t.AskContextEvent, event.context)
                context.hits = await self._hits(event.context.hits)
                context.raw = event
                yield context
            elif kind == "delta":
                yield t.AnswerDelta(event.delta, raw=event)
            elif kind == "citations":
                citations = t.from_proto(t.CitationsEvent, event.citations)
                citations.raw = event
                yield citations
            elif kind == "answer":
                answer = t.from_proto(t.Answer, event.answer)
                answer.hits = await self._hits(event.answer.hits)
                await self._passages(answer.passages)
                yield t.AnswerEvent(answer, raw=event)

    def chat(self, conversation_id: str = "") -> Chat:
        """A conversation: each ``ask`` continues it (the first one starts it)."""
        return Chat(self, conversation_id)


class Chat:
    """Turns of one conversation; ``conversation_id`` is set after the first answer."""

    def __init__(self, collection: AsyncCollection, conversation_id: str = "") -> None:
        self.collection = collection
        self.conversation_id = conversation_id

    def __repr__(self) -> str:
        return f"Chat({self.collection.name!r}, conversation_id={self.conversation_id!r})"

    async def ask(self, question: str, **fields: Any) -> t.Answer:
        answer = await self.collection.ask(
            question,
            conversation_id=self.conversation_id,
            new_conversation=not self.conversation_id,
            **fields,
        )
        self.conversation_id = answer.conversation_id or self.conversation_id
        return answer

    async def ask_stream(self, question: str, **fields: Any) -> AsyncIterator[t.AskEvent]:
        async for event in self.collection.ask_stream(
            question,
            conversation_id=self.conversation_id,
            new_conversation=not self.conversation_id,
            **fields,
        ):
            if isinstance(event, t.AskContextEvent) and event.conversation_id:
                self.conversation_id = event.conversation_id
            elif isinstance(event, t.AnswerEvent) and event.answer.conversation_id:
                self.conversation_id = event.answer.conversation_id
            yield event


def _set_query(request: Any, kind: str, value: Any) -> None:
    """The oneof query from a plain value: text for near_text/keyword/hybrid, a list of
    floats for near_vector, or a dict of the query message's fields."""
    field = getattr(request, kind)
    if isinstance(value, Message):
        field.CopyFrom(value)
    elif isinstance(value, Mapping):
        field.CopyFrom(type(field)(**_clean(value)))
    elif kind == "near_vector":
        field.vector.extend(float(x) for x in value)
    else:
        field.text = str(value)


# --- objects ---------------------------------------------------------------------------------


ObjectLike = t.DataObject | Mapping[str, Any]


class Data:
    def __init__(self, collection: AsyncCollection) -> None:
        self._c = collection
        self._t = collection._t

    async def insert(
        self,
        properties: Mapping[str, Any],
        *,
        id: str = "",
        vector: Sequence[float] = (),
        timeout: Timeout = DEFAULT,
    ) -> str:
        """Write one object; returns its id. A rejected object raises its error."""
        result = await self.insert_many(
            [t.DataObject(properties=dict(properties), id=id, vector=list(vector))],
            timeout=timeout,
        )
        if result.errors:
            err = result.errors[0]
            raise InvalidArgumentError(
                err.message, code=grpc.StatusCode.INVALID_ARGUMENT, metadata={"field": err.field}
            )
        return result.ids[0]

    async def insert_many(
        self, objects: Iterable[ObjectLike], *, timeout: Timeout = DEFAULT
    ) -> t.WriteResult:
        """One UpsertObjects call: invalid objects come back as ``errors``, the rest land."""
        batch = [_data_object(o) for o in objects]
        reply = await self._t.unary(
            self._t.retrieval.UpsertObjects,
            rpb.UpsertObjectsRequest(collection=self._c.name, objects=batch),
            timeout,
        )
        errors = [t.from_proto(t.ObjectError, e) for e in reply.errors]
        return t.WriteResult(
            ids=list(reply.ids), errors=errors, received=len(batch), imported=len(reply.ids)
        )

    async def import_(
        self,
        objects: Iterable[ObjectLike],
        *,
        batch_size: int = 100,
        objects_per_call: int = 1000,
        timeout: Timeout = None,
        on_sent: Callable[[int], None] | None = None,
        wait_for_quota: bool = True,
        on_quota_wait: QuotaWait | None = None,
    ) -> t.WriteResult:
        """Bulk load over ImportObjects (client streaming), ``batch_size`` objects a message.

        The objects go in streams of ``objects_per_call`` (each acknowledged before the
        next); ``errors[i].index`` is the object's position in ``objects``. ``on_sent(n)``
        is called as each message of ``n`` objects goes out (for a progress bar), each
        object once.

        ``timeout`` is each stream's deadline. A stream the gateway stops at the tenant's
        objects-written quota (``QuotaExceededError`` with a retry delay) is waited out
        and resumed after the objects the service received, none sent twice, unless
        ``wait_for_quota`` is false; ``on_quota_wait(seconds, error)`` is called before
        each wait. The stream's waits and resumptions stay within its ``timeout``: a wait
        that would end past it raises the quota error at once.
        """
        result = t.WriteResult()
        async for part in self.import_iter(
            objects,
            batch_size=batch_size,
            objects_per_call=objects_per_call,
            timeout=timeout,
            on_sent=on_sent,
            wait_for_quota=wait_for_quota,
            on_quota_wait=on_quota_wait,
        ):
            result.received += part.received
            result.imported += part.imported
            result.errors.extend(part.errors)
            result.errors_truncated |= part.errors_truncated
        return result

    async def import_iter(
        self,
        objects: Iterable[ObjectLike],
        *,
        batch_size: int = 100,
        objects_per_call: int = 1000,
        timeout: Timeout = None,
        on_sent: Callable[[int], None] | None = None,
        wait_for_quota: bool = True,
        on_quota_wait: QuotaWait | None = None,
    ) -> AsyncIterator[t.WriteResult]:
        """``import_`` one acknowledged stream at a time (for progress reporting)."""
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        per_call = max(objects_per_call, batch_size)
        source = iter(objects)
        offset = 0
        first = True
        while True:
            chunk = [_data_object(o) for o in itertools.islice(source, per_call)]
            if not chunk and not first:
                return
            first = False
            # An empty stream still names the collection, so a wrong name is reported.
            yield await _ImportStream(
                self, chunk, offset, batch_size, on_sent, wait_for_quota, on_quota_wait
            ).run(timeout)
            offset += len(chunk)
            if len(chunk) < per_call:
                return

    async def get(
        self, id: str, *, include_vector: bool = False, timeout: Timeout = DEFAULT
    ) -> t.DataObject:
        reply = await self._t.unary(
            self._t.retrieval.GetObject,
            rpb.GetObjectRequest(collection=self._c.name, id=id, include_vector=include_vector),
            timeout,
        )
        obj = t.from_proto(t.DataObject, reply.object)
        obj.properties = coerce_properties(obj.properties, await self._c.property_types())
        return obj

    async def get_many(
        self, ids: Iterable[str], *, include_vector: bool = False, timeout: Timeout = DEFAULT
    ) -> t.BatchGetResult:
        """Several objects by id in one call (BatchGetObjects; at most the service's
        ``MAX_GET_IDS``). Ids the collection does not hold are not an error: they come back
        in ``missing_ids`` (canonical lower-case form) and the rest in ``objects``, in the
        order first given, each once. A malformed id, no ids or too many raise
        ``InvalidArgumentError`` naming the field; an unknown collection ``NotFoundError``."""
        if isinstance(ids, str):  # would be read as one id per character
            raise TypeError("get_many takes a list of ids (data.get reads one)")
        reply = await self._t.unary(
            self._t.retrieval.BatchGetObjects,
            rpb.BatchGetObjectsRequest(
                collection=self._c.name, ids=list(ids), include_vector=include_vector
            ),
            timeout,
        )
        result = t.from_proto(t.BatchGetResult, reply)
        if result.objects:
            types = await self._c.property_types()
            for obj in result.objects:
                obj.properties = coerce_properties(obj.properties, types)
        return result

    async def chunks(
        self,
        ranges: Iterable[t.ChunkRange | Any],
        *,
        return_properties: Sequence[str] | None = None,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.ChunkList]:
        """Chunks of documents of a collection that declares ``chunking`` (GetChunks): per
        range, one document's chunks between two positions, in document order. A range is
        a ``ChunkRange(document, first=, last=)`` or a bare document value (all its chunks).
        One ``ChunkList`` per range, in the order given."""
        request = rpb.GetChunksRequest(
            collection=self._c.name,
            ranges=[_chunk_range(r) for r in ranges],
            return_properties=list(return_properties or ()),
        )
        reply = await self._t.unary(self._t.retrieval.GetChunks, request, timeout)
        types = await self._c.property_types()
        lists = [t.from_proto(t.ChunkList, message) for message in reply.ranges]
        for chunk_list in lists:  # the hits are converted already: only their values typed
            for hit in chunk_list.chunks:
                hit.properties = coerce_properties(hit.properties, types)
        return lists

    async def delete(
        self,
        ids: Sequence[str] = (),
        *,
        filter: FilterLike | None = None,
        timeout: Timeout = DEFAULT,
    ) -> int:
        """Delete by ids or by filter; returns how many went."""
        request = rpb.DeleteObjectsRequest(
            **_clean({"collection": self._c.name, "ids": list(ids), "filter": filter})
        )
        reply = await self._t.unary(self._t.retrieval.DeleteObjects, request, timeout)
        return int(reply.deleted_count)


def _chunk_range(value: t.ChunkRange | Any) -> rpb.ChunkRange:
    if isinstance(value, rpb.ChunkRange):
        return value
    if not isinstance(value, t.ChunkRange):
        value = t.ChunkRange(value)
    message = rpb.ChunkRange(first=value.first, last=value.last)
    # A document value (a string, a number) converted by the protobuf library.
    json_format.ParseDict(value.document, message.document)
    return message


async def _batches(
    collection: str,
    objects: list[rpb.DataObject],
    size: int,
    on_sent: Callable[[int], None] | None = None,
) -> AsyncIterator[rpb.ImportObjectsRequest]:
    for start in range(0, max(len(objects), 1), size):
        batch = objects[start : start + size]
        # The first message names the collection (even an empty stream's).
        yield rpb.ImportObjectsRequest(collection=collection if not start else "", objects=batch)
        if on_sent is not None and batch:
            on_sent(len(batch))


# The gateway's per-tenant write quotas an import waits out (docs/operations.md#quotas).
WRITE_QUOTAS = frozenset({"objects_written_per_minute", "bytes_written_per_minute"})
# on_quota_wait(seconds, error): an import is about to wait that long for the quota.
QuotaWait = Callable[[float, QuotaExceededError], None]


def _quota_wait(retry_delay: float) -> float:
    """How long to wait when the service says ``retry_delay``: that, 50 ms for the
    clocks' granularity, and a random part of up to a tenth of it (at most 1 s), so a
    tenant's importers do not all come back at the same instant."""
    delay = max(retry_delay, 0.0)
    return delay + 0.05 + random.uniform(0.0, min(1.0, delay / 10))


def _resumable(err: QuotaExceededError, sent: int) -> int | None:
    """How many of the ``sent`` objects of an ImportObjects stream the service received
    before the gateway stopped it at a write quota (objects or bytes a minute), when
    waiting can help (a RetryInfo, and the counts); None otherwise."""
    if err.metadata.get("quota") not in WRITE_QUOTAS:
        return None
    try:
        received = int(err.metadata["received_count"])
        int(err.metadata["imported_count"])
    except (KeyError, ValueError):
        return None
    # The refused message was not received: at least one object is left to send.
    return received if 0 <= received < sent else None


class _ImportStream:
    """One ImportObjects stream of ``objects`` (at ``offset`` in the whole import), sent
    again from where the gateway stopped it at the tenant's objects-written quota once
    the quota's window frees, the parts' results merged."""

    def __init__(
        self,
        data: Data,
        objects: list[rpb.DataObject],
        offset: int,
        batch_size: int,
        on_sent: Callable[[int], None] | None,
        wait_for_quota: bool,
        on_quota_wait: QuotaWait | None,
    ) -> None:
        self._data = data
        self._t = data._t
        self._objects = objects
        self._offset = offset
        self._batch_size = batch_size
        self._on_sent = on_sent
        self._wait = wait_for_quota
        self._on_quota_wait = on_quota_wait
        self._result = t.WriteResult()
        self._start = 0  # objects received by the service in earlier parts
        self._position = 0  # objects of the current part gone out, from the stream's start
        self._reported = 0  # objects reported to on_sent (each once, resent or not)
        # Earlier parts' rejections, stream positions, and whether that list was cut.
        self._rejected: list[int] = []
        self._rejected_cut = False

    def _sent(self, count: int) -> None:
        self._position += count
        if self._on_sent is not None and self._position > self._reported:
            self._on_sent(self._position - self._reported)
        self._reported = max(self._reported, self._position)

    async def run(self, timeout: Timeout) -> t.WriteResult:
        budget = seconds(self._t.timeout if timeout is DEFAULT else timeout)
        deadline = None if budget is None else time.monotonic() + budget
        while True:
            self._position = self._start
            left: Timeout = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                reply = await self._t.client_stream(
                    self._t.retrieval.ImportObjects,
                    _batches(
                        self._data._c.name,
                        self._objects[self._start :],
                        self._batch_size,
                        self._sent,
                    ),
                    left,
                )
            except QuotaExceededError as err:
                received = _resumable(err, len(self._objects) - self._start)
                if received is None or err.retry_delay is None or not self._wait:
                    self._whole_stream(err)
                    raise
                wait = _quota_wait(err.retry_delay)
                if deadline is not None and time.monotonic() + wait >= deadline:
                    self._whole_stream(err)  # waiting would pass the deadline: not begun
                    raise
                self._add_part(err)
                if self._on_quota_wait is not None:
                    self._on_quota_wait(wait, err)
                await asyncio.sleep(wait)
                self._start += received
                continue
            except GensearchError as err:
                self._whole_stream(err)
                raise
            for error in reply.errors:
                converted = t.from_proto(t.ObjectError, error)
                converted.index += self._offset + self._start
                self._result.errors.append(converted)
            self._result.received += int(reply.received_count)
            self._result.imported += int(reply.imported_count)
            self._result.errors_truncated |= reply.errors_truncated
            return self._result

    def _add_part(self, err: QuotaExceededError) -> None:
        """What the part the quota stopped wrote: its counts, and an error for each object
        it rejected, with the reason the error's details carry (the first of them, within
        a bounded size) or else its position alone (``rejected_indexes``)."""
        received = int(err.metadata["received_count"])
        self._result.received += received
        self._result.imported += int(err.metadata["imported_count"])
        indexes, cut = err.rejected_indexes
        reasons = {e.index: e for e in err.object_errors}
        positions = sorted(set(indexes) | set(reasons))
        for index in positions:
            position = self._start + index
            if not 0 <= position < len(self._objects):
                continue
            self._rejected.append(position)
            error = reasons.get(index) or t.ObjectError(
                index=index,
                id=self._objects[position].id,
                message=(
                    "rejected by the service; its reason did not fit in the error that "
                    "stopped the stream at the write quota (write this object alone to see "
                    "why)"
                ),
            )
            self._result.errors.append(dataclasses.replace(error, index=self._offset + position))
        listed = len(positions) < received - int(err.metadata["imported_count"])
        self._rejected_cut |= cut or listed
        self._result.errors_truncated |= cut or listed

    def _whole_stream(self, err: GensearchError) -> None:
        """Makes the counts of ``err``, the failure of a stream resumed after waiting for
        the quota (ErrorInfo metadata ``received_count``, ``imported_count``,
        ``rejected_indexes``), the whole stream's, from its first object, as they are for
        a stream never resumed; without them its message says what earlier parts
        imported."""
        if not self._start:
            return
        try:
            received = int(err.metadata["received_count"])
            imported = int(err.metadata["imported_count"])
        except (KeyError, ValueError):  # what the last part did is unknown
            err.message += (
                f" ({self._result.imported} objects of the stream were imported before it "
                f"was resumed at its object {self._start} after waiting for the write quota)"
            )
            err.args = (err.message,)
            return
        indexes, cut = err.rejected_indexes
        rejected = self._rejected + [self._start + index for index in indexes]
        err.metadata["received_count"] = str(self._start + received)
        err.metadata["imported_count"] = str(self._result.imported + imported)
        if rejected:
            text = ",".join(str(index) for index in rejected)
            err.metadata["rejected_indexes"] = text + (",…" if cut or self._rejected_cut else "")
        # Earlier parts' errors (positions in the caller's input) and this part's, as
        # positions in the stream, as for a stream never resumed.
        err.object_errors = [
            dataclasses.replace(e, index=e.index - self._offset) for e in self._result.errors
        ] + [dataclasses.replace(e, index=self._start + e.index) for e in err.object_errors]
        err.message += (
            f" (the stream was resumed at its object {self._start} after waiting for the "
            "write quota: the counts are from its start)"
        )
        err.args = (err.message,)


# --- search ----------------------------------------------------------------------------------


R = TypeVar("R")


class _Searcher(Generic[R]):
    """near_text / keyword / hybrid / near_vector, each turned into one request. The common
    fields are named; any other field of the request passes through as a keyword."""

    def __init__(self, collection: AsyncCollection) -> None:
        self._c = collection
        self._t = collection._t

    def _run(self, kind: str, value: Any, fields: dict[str, Any]) -> R:
        raise NotImplementedError

    def near_text(
        self,
        text: str,
        *,
        limit: int | None = None,
        offset: int | None = None,
        filter: FilterLike | None = None,
        return_properties: Sequence[str] | None = None,
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> R:
        """Dense search by the embedding of ``text``."""
        common = _common(limit, offset, filter, return_properties, timeout)
        return self._run("near_text", text, {**common, **fields})

    def keyword(
        self,
        text: str,
        *,
        limit: int | None = None,
        offset: int | None = None,
        filter: FilterLike | None = None,
        return_properties: Sequence[str] | None = None,
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> R:
        """BM25 keyword search."""
        common = _common(limit, offset, filter, return_properties, timeout)
        return self._run("keyword", text, {**common, **fields})

    def hybrid(
        self,
        text: str,
        *,
        alpha: float | None = None,
        vector: Sequence[float] = (),
        limit: int | None = None,
        offset: int | None = None,
        filter: FilterLike | None = None,
        return_properties: Sequence[str] | None = None,
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> R:
        """Dense and BM25 fused (RRF); ``alpha`` weighs the dense side (default 0.5)."""
        value = {"text": text, "alpha": alpha, "vector": list(vector)}
        common = _common(limit, offset, filter, return_properties, timeout)
        return self._run("hybrid", value, {**common, **fields})

    def near_vector(
        self,
        vector: Sequence[float],
        *,
        limit: int | None = None,
        offset: int | None = None,
        filter: FilterLike | None = None,
        return_properties: Sequence[str] | None = None,
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> R:
        """Dense search by a vector of your own."""
        common = _common(limit, offset, filter, return_properties, timeout)
        return self._run("near_vector", vector, {**common, **fields})

    def _request(self, cls: type[Message], kind: str, value: Any, fields: dict[str, Any]) -> Any:
        fields.pop("timeout", None)
        request = cls(**_clean({"collection": self._c.name, **fields}))
        _set_query(request, kind, value)
        return request


def _common(
    limit: int | None,
    offset: int | None,
    filter: FilterLike | None,
    return_properties: Sequence[str] | None,
    timeout: Timeout,
) -> dict[str, Any]:
    return {
        "limit": limit,
        "offset": offset,
        "filter": filter,
        "return_properties": list(return_properties) if return_properties else None,
        "timeout": timeout,
    }


class Query(_Searcher[Awaitable[t.SearchResult]]):
    """Search: ``await books.query.near_text("sand", limit=3, filter=..., return_properties=[..])``
    returns a ``SearchResult`` (iterable of ``Hit``); ``include_vector=True`` adds vectors."""

    def _run(self, kind: str, value: Any, fields: dict[str, Any]) -> Awaitable[t.SearchResult]:
        return self._search(kind, value, fields)

    async def _search(self, kind: str, value: Any, fields: dict[str, Any]) -> t.SearchResult:
        timeout = fields.get("timeout", DEFAULT)
        request = self._request(rpb.SearchRequest, kind, value, fields)
        reply = await self._t.unary(self._t.retrieval.Search, request, timeout)
        result = t.from_proto(t.SearchResult, reply)
        result.hits = await self._c._hits(reply.hits)
        return result


def _generate_message(fields: dict[str, Any]) -> gpb.Generate:
    names = set(gpb.Generate.DESCRIPTOR.fields_by_name)
    chosen = {k: fields.pop(k) for k in list(fields) if k in names and k != "timeout"}
    if "generation_timeout" in fields:
        chosen["timeout"] = fields.pop("generation_timeout")
    return gpb.Generate(**_clean(chosen))


# --- generation over named objects ----------------------------------------------------------


InlineObject = t.DataObject | Mapping[str, Any]


class _Inline(Generic[R]):
    """``on_objects``: generation over objects given inline (GenerateOnObjects, no search)."""

    def _run_objects(self, kind: str, value: Any, fields: dict[str, Any]) -> R:
        raise NotImplementedError

    def on_objects(
        self,
        objects: Iterable[InlineObject],
        *,
        single_prompt: str = "",
        grouped_task: str = "",
        return_properties: Sequence[str] | None = None,
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> R:
        """The ``generate`` block over ``objects`` given as properties (dicts or
        ``DataObject``s): ``single_prompt`` is one LLM call per object, ``grouped_task``
        one over all. On a collection's handle its schema checks the objects and templates
        and its generative defaults apply; ``client.generate.on_objects`` needs none. Other
        ``Generate`` fields (``provider``, ``model``, ``max_tokens``, ``generation_timeout``
        …) are keywords, as for generative search."""
        if isinstance(objects, Mapping | t.DataObject):
            raise TypeError("on_objects takes a list of objects")
        sent = builtins.list(objects)
        return self._run_objects(
            "inline",
            sent,
            _objects_fields(single_prompt, grouped_task, return_properties, timeout, fields),
        )


class _Named(_Inline[R]):
    """``by_ids`` beside ``on_objects``: objects of this collection named by id."""

    def by_ids(
        self,
        ids: Iterable[str],
        *,
        single_prompt: str = "",
        grouped_task: str = "",
        return_properties: Sequence[str] | None = None,
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> R:
        """The ``generate`` block over objects of this collection by id, in the order
        given (an id given twice is two objects). An id the collection does not hold is
        that object's own NOT_FOUND error (``OBJECT_NOT_FOUND``), not the call's; a
        malformed id, no ids or more than the gateway's ``max_hits`` raise
        ``InvalidArgumentError`` naming the field."""
        if isinstance(ids, str):  # would be read as one id per character
            raise TypeError("by_ids takes a list of ids")
        return self._run_objects(
            "ids",
            builtins.list(ids),
            _objects_fields(single_prompt, grouped_task, return_properties, timeout, fields),
        )


class InlineGenerate(_Inline[Awaitable[t.GenerateOnObjectsResult]]):
    """``client.generate.on_objects([...], single_prompt=...)``: generation over objects
    given inline, with no collection behind them; ``complete`` (one prompt, one answer)
    and ``models`` (the providers and their models), GenerationService through the
    gateway."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def _run_objects(
        self, kind: str, value: Any, fields: dict[str, Any]
    ) -> Awaitable[t.GenerateOnObjectsResult]:
        return _generate_on_objects(self._t, None, kind, value, fields)

    async def models(self, *, timeout: Timeout = DEFAULT) -> t.Models:
        """The LLM providers the generation service has configured, each with its default
        model and known models (ListModels; a read, retried like the others)."""
        reply = await self._t.unary(
            self._t.generation.ListModels, genpb.ListModelsRequest(), timeout
        )
        return t.from_proto(t.Models, reply)

    async def complete(
        self,
        prompt: str | Sequence[t.ChatMessage | Mapping[str, Any]],
        *,
        system: str = "",
        provider: str = "",
        model: str = "",
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> t.Completion:
        """One LLM call (Generate): ``prompt`` is the user's message, or the whole
        conversation as ``ChatMessage``s or ``{"role": "user", "content": …}`` dicts;
        ``system`` a system message put first. Other GenerateRequest fields
        (``temperature``, ``max_tokens``, ``stop``, ``seed``, ``response_format``,
        ``fallback``, ``base_url``, ``debug`` …) are keywords. Charged to your tenant's
        LLM-calls quota; never retried by the client (a retry would pay again)."""
        request = _completion_request(
            genpb.GenerateRequest, prompt, system, provider, model, fields
        )
        reply = await self._t.unary(self._t.generation.Generate, request, timeout)
        return t.from_proto(t.Completion, reply)


class InlineGenerateStream(_Inline[AsyncIterator[t.SearchEvent]]):
    """``client.generate_stream.on_objects([...])``: the streamed form (the events of
    ``generate_stream``); ``complete`` streams one LLM call's text."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    def _run_objects(
        self, kind: str, value: Any, fields: dict[str, Any]
    ) -> AsyncIterator[t.SearchEvent]:
        return _stream_on_objects(self._t, None, kind, value, fields)

    async def complete(
        self,
        prompt: str | Sequence[t.ChatMessage | Mapping[str, Any]],
        *,
        system: str = "",
        provider: str = "",
        model: str = "",
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> AsyncIterator[t.CompletionStreamEvent]:
        """``generate.complete`` streamed (StreamGenerate): ``CompletionDelta``s as the
        model writes, a ``CompletionRestart`` when the deltas so far are to be discarded
        (``response_format``'s corrective retry), then a ``CompletionEvent`` with the
        whole ``Completion``."""
        request = _completion_request(
            genpb.StreamGenerateRequest, prompt, system, provider, model, fields
        )
        text: builtins.list[str] = []
        stream = self._t.server_stream(self._t.generation.StreamGenerate, request, timeout)
        async for message in stream:
            if message.restart:
                text.clear()
                yield t.CompletionRestart(raw=message)
            elif message.delta:
                text.append(message.delta)
                yield t.CompletionDelta(message.delta, raw=message)
            else:  # the last message: no delta, the answer's fields
                completion = t.from_proto(t.Completion, message)
                completion.text = "".join(text)
                yield t.CompletionEvent(completion, raw=message)


def _completion_request(
    cls: type[Message],
    prompt: str | Sequence[t.ChatMessage | Mapping[str, Any]],
    system: str,
    provider: str,
    model: str,
    fields: dict[str, Any],
) -> Any:
    """A GenerateRequest or StreamGenerateRequest (the same fields) from ``complete``'s
    arguments."""
    if isinstance(prompt, str):
        said: builtins.list[t.ChatMessage | Mapping[str, Any]] = [t.ChatMessage("user", prompt)]
    else:
        said = builtins.list(prompt)
    if system:
        said.insert(0, t.ChatMessage("system", system))
    messages = [
        t.to_proto(m if isinstance(m, t.ChatMessage) else dict(m), genpb.Message) for m in said
    ]
    return cls(**_clean({"provider": provider, "model": model, **fields}), messages=messages)


def _objects_fields(
    single_prompt: str,
    grouped_task: str,
    return_properties: Sequence[str] | None,
    timeout: Timeout,
    fields: dict[str, Any],
) -> dict[str, Any]:
    return {
        "single_prompt": single_prompt,
        "grouped_task": grouped_task,
        "return_properties": builtins.list(return_properties) if return_properties else None,
        "timeout": timeout,
        **fields,
    }


def _objects_request(
    cls: type[Message], collection: AsyncCollection | None, kind: str, value: Any, fields: Any
) -> Any:
    fields = dict(fields)
    fields.pop("timeout", None)
    generate = _generate_message(fields)
    name = collection.name if collection is not None else ""
    request: Any = cls(**_clean({"collection": name, **fields}))
    request.generate.CopyFrom(generate)
    if kind == "ids":
        request.ids.ids.extend(value)
        request.ids.SetInParent()  # no ids at all is still "ids", for the server to name
    else:
        request.inline.objects.extend(_inline_struct(o) for o in value)
        request.inline.SetInParent()
    return request


def _inline_properties(obj: InlineObject) -> Mapping[str, Any]:
    return obj.properties if isinstance(obj, t.DataObject) else obj


def _inline_struct(obj: InlineObject) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    json_format.ParseDict(to_struct_dict(dict(_inline_properties(obj))), struct)
    return struct


def _sent_types(obj: InlineObject) -> dict[str, str]:
    """The kinds of an inline object's values that a ``Struct`` does not keep (every number
    a double, a ``datetime`` a string), so they come back as they were given (a ``date``
    as the ``datetime`` it was sent as: midnight UTC)."""
    kinds: dict[str, str] = {}
    for name, value in _inline_properties(obj).items():
        if isinstance(value, int) and not isinstance(value, bool):
            kinds[str(name)] = "int"
        elif isinstance(value, date):
            kinds[str(name)] = "date"
    return kinds


def _objects_hits(
    collection: AsyncCollection | None, kind: str, value: Any
) -> Callable[[Iterable[rpb.Hit]], Awaitable[list[t.Hit]]]:
    """How the answer's hits become ``Hit``s: by the collection's schema, or, for inline
    objects with no collection, by the values sent (the hits come in the order given)."""
    if collection is not None:
        return collection._hits

    async def convert(hits: Iterable[rpb.Hit]) -> list[t.Hit]:
        out = []
        for index, hit in enumerate(hits):
            converted = t.from_proto(t.Hit, hit)
            if kind == "inline" and index < len(value):
                kinds = _sent_types(value[index])
                converted.properties = coerce_properties(converted.properties, kinds)
            out.append(converted)
        return out

    return convert


async def _generate_on_objects(
    transport: Transport,
    collection: AsyncCollection | None,
    kind: str,
    value: Any,
    fields: dict[str, Any],
) -> t.GenerateOnObjectsResult:
    timeout = fields.get("timeout", DEFAULT)
    request = _objects_request(gpb.GenerateOnObjectsRequest, collection, kind, value, fields)
    # Never retried (like generative search): a retry would pay for every call again.
    reply = await transport.unary(transport.gateway.GenerateOnObjects, request, timeout)
    result = t.from_proto(t.GenerateOnObjectsResult, reply)
    hits = await _objects_hits(collection, kind, value)(h.hit for h in reply.hits)
    for item, hit in zip(result.hits, hits, strict=True):
        item.hit = hit
    return result


async def _stream_on_objects(
    transport: Transport,
    collection: AsyncCollection | None,
    kind: str,
    value: Any,
    fields: dict[str, Any],
) -> AsyncIterator[t.SearchEvent]:
    timeout = fields.get("timeout", DEFAULT)
    request = _objects_request(gpb.StreamGenerateOnObjectsRequest, collection, kind, value, fields)
    stream = transport.server_stream(transport.gateway.StreamGenerateOnObjects, request, timeout)
    passages = collection._passages if collection is not None else None
    async for event in _search_events(stream, _objects_hits(collection, kind, value), passages):
        yield event


class Generate(
    _Searcher[Awaitable[t.GenerativeSearchResult]],
    _Named[Awaitable[t.GenerateOnObjectsResult]],
):
    """Generative search: a search, then ``single_prompt`` (one LLM call per hit, ``{property}``
    filled from the hit) and/or ``grouped_task`` (one call over all hits). Any field of
    ``Generate`` (``grouped_properties``, ``provider``, ``model``, ``temperature``,
    ``max_tokens``, ``max_concurrency``, ``debug``; ``generation_timeout`` for its
    ``timeout``) is a keyword here; ``timeout`` is the call's deadline.

    ``by_ids`` and ``on_objects`` run the same generation over objects you name, with no
    search (GenerateOnObjects)."""

    def _run(
        self, kind: str, value: Any, fields: dict[str, Any]
    ) -> Awaitable[t.GenerativeSearchResult]:
        return self._generate(kind, value, fields)

    def _run_objects(
        self, kind: str, value: Any, fields: dict[str, Any]
    ) -> Awaitable[t.GenerateOnObjectsResult]:
        return _generate_on_objects(self._t, self._c, kind, value, fields)

    async def _generate(
        self, kind: str, value: Any, fields: dict[str, Any]
    ) -> t.GenerativeSearchResult:
        timeout = fields.get("timeout", DEFAULT)
        generate = _generate_message(fields)
        request = self._request(gpb.GenerativeSearchRequest, kind, value, fields)
        request.generate.CopyFrom(generate)
        reply = await self._t.unary(self._t.gateway.GenerativeSearch, request, timeout)
        result = t.from_proto(t.GenerativeSearchResult, reply)
        hits = await self._c._hits(h.hit for h in reply.hits)
        await self._c._passages(result.passages)
        for item, hit in zip(result.hits, hits, strict=True):
            item.hit = hit
        return result


class GenerateStream(_Searcher[AsyncIterator[t.SearchEvent]], _Named[AsyncIterator[t.SearchEvent]]):
    """``async for event in books.generate_stream.near_text(...)``: a ``HitsEvent``, then
    ``HitResultEvent``s in completion order (``TokenEvent``s with ``stream_tokens=True``),
    a ``GroupedEvent``, a ``DoneEvent``. The same keywords as ``generate``; ``by_ids`` and
    ``on_objects`` stream the same events over objects you name."""

    def _run(self, kind: str, value: Any, fields: dict[str, Any]) -> AsyncIterator[t.SearchEvent]:
        return self._events(kind, value, fields)

    def _run_objects(
        self, kind: str, value: Any, fields: dict[str, Any]
    ) -> AsyncIterator[t.SearchEvent]:
        return _stream_on_objects(self._t, self._c, kind, value, fields)

    async def _events(
        self, kind: str, value: Any, fields: dict[str, Any]
    ) -> AsyncIterator[t.SearchEvent]:
        timeout = fields.get("timeout", DEFAULT)
        generate = _generate_message(fields)
        request = self._request(gpb.StreamGenerativeSearchRequest, kind, value, fields)
        request.generate.CopyFrom(generate)
        stream = self._t.server_stream(self._t.gateway.StreamGenerativeSearch, request, timeout)
        async for event in _search_events(stream, self._c._hits, self._c._passages):
            yield event


async def _search_events(
    stream: AsyncIterator[Any],
    hits: Callable[[Iterable[rpb.Hit]], Awaitable[list[t.Hit]]],
    passages: Callable[[list[t.ContextPassage]], Awaitable[None]] | None = None,
) -> AsyncIterator[t.SearchEvent]:
    """The typed events of a StreamGenerativeSearch or StreamGenerateOnObjects stream (the
    same events); ``hits`` converts the first event's hits, ``passages`` its passages."""
    async for event in stream:
        which = event.WhichOneof("event")
        converted: t.SearchEvent
        if which == "hits":
            converted = t.from_proto(t.HitsEvent, event.hits)
            converted.hits = await hits(event.hits.hits)
            if passages is not None:
                await passages(converted.passages)
        elif which == "hit_result":
            converted = t.from_proto(t.HitResultEvent, event.hit_result)
        elif which == "token":
            converted = t.from_proto(t.TokenEvent, event.token)
        elif which == "grouped":
            converted = t.GroupedEvent(t.from_proto(t.GenerationResult, event.grouped))
        elif which == "done":
            converted = t.from_proto(t.DoneEvent, event.done)
        else:
            continue  # an event kind newer than this client
        converted.raw = event
        yield converted


# --- conversations ---------------------------------------------------------------------------


class Conversations:
    """Your conversations (MemoryService through the gateway; only yours are visible)."""

    def __init__(self, transport: Transport) -> None:
        self._t = transport

    async def create(
        self, name: str = "", *, timeout: Timeout = DEFAULT, **fields: Any
    ) -> t.Conversation:
        """A new conversation; other CreateConversationRequest fields (``ttl`` as a
        ``timedelta``, ``max_turns``, ``summary_disabled``) pass through."""
        request = mpb.CreateConversationRequest(**_clean({"name": name, **fields}))
        reply = await self._t.unary(self._t.memory.CreateConversation, request, timeout)
        return t.from_proto(t.Conversation, reply.conversation)

    async def get(self, conversation_id: str, *, timeout: Timeout = DEFAULT) -> t.Conversation:
        reply = await self._t.unary(
            self._t.memory.GetConversation,
            mpb.GetConversationRequest(conversation_id=conversation_id),
            timeout,
        )
        return t.from_proto(t.Conversation, reply.conversation)

    async def list(
        self, *, limit: int | None = None, page_size: int = 100, timeout: Timeout = DEFAULT
    ) -> builtins.list[t.Conversation]:
        """Most recently updated first; all of them, or the first ``limit``."""
        found: builtins.list[t.Conversation] = []
        if _page_limit(limit) == 0:
            return found
        async for conv in self.iter(page_size=page_size, timeout=timeout):
            found.append(conv)
            if limit is not None and len(found) >= limit:
                break
        return found

    async def iter(
        self, *, page_size: int = 100, timeout: Timeout = DEFAULT
    ) -> AsyncIterator[t.Conversation]:
        token = ""
        while True:
            page, token = await self.page(page_size=page_size, page_token=token, timeout=timeout)
            for conv in page:
                yield conv
            if not token:
                return

    async def page(
        self, *, page_size: int = 10, page_token: str = "", timeout: Timeout = DEFAULT
    ) -> tuple[builtins.list[t.Conversation], str]:
        """One page and the token of the next ("" after the last). A page may be empty
        and still have a token (docs/memory.md#legacy-owners): only "" ends the list."""
        reply = await self._t.unary(
            self._t.memory.ListConversations,
            mpb.ListConversationsRequest(page_size=page_size, page_token=page_token),
            timeout,
        )
        found = [t.from_proto(t.Conversation, c) for c in reply.conversations]
        return found, reply.next_page_token

    async def update(
        self,
        conversation_id: str,
        *,
        name: str | None = None,
        ttl: timedelta | None = None,
        max_turns: int | None = None,
        summary_disabled: bool | None = None,
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> t.Conversation:
        """Change what you pass, and only that (UpdateConversation with a field mask of
        the arguments given): ``name``, ``ttl`` (``timedelta(0)`` removes the expiry),
        ``max_turns`` (0: no limit), ``summary_disabled``. Not retried (a write)."""
        changes = _clean(
            {
                "name": name,
                "ttl": ttl,
                "max_turns": max_turns,
                "summary_disabled": summary_disabled,
                **fields,
            }
        )
        if not changes:
            # A call that changes nothing is a mistake in the caller's code, said here (the
            # service would answer the conversation unchanged).
            raise ValueError("update needs at least one field to change")
        request = mpb.UpdateConversationRequest(
            conversation_id=conversation_id,
            update_mask=field_mask_pb2.FieldMask(paths=sorted(changes)),
            **changes,
        )
        reply = await self._t.unary(self._t.memory.UpdateConversation, request, timeout)
        return t.from_proto(t.Conversation, reply.conversation)

    async def update_summary(
        self,
        conversation_id: str,
        text: str,
        *,
        through_interaction_id: str,
        expected_through_interaction_id: str = "",
        summarised_turns: int = 0,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        expected_unfolded_deletions: int | None = None,
        timeout: Timeout = DEFAULT,
    ) -> t.Conversation:
        """Replace the conversation's rolling summary with ``text``, covering the turns up
        to ``through_interaction_id`` (UpdateConversationSummary) — if the current summary
        still covers up to ``expected_through_interaction_id`` ("" when there is none):
        a compare-and-set, so a concurrent writer (the gateway's own summarizer, say)
        makes this raise ``SummaryChangedError`` (``metadata["through_interaction_id"]``:
        what the summary covers now). ``expected_unfolded_deletions``: the conversation's
        ``unfolded_deletions`` as read before the turns summarised were; when one of the
        turns up to ``through_interaction_id`` was deleted since (or more than 8 turns
        were), ``SummaryChangedError`` too, as the summary may hold the deleted turn's
        words; a newer turn deleted meanwhile does not refuse it (None: not checked).
        Turns beyond ``max_turns`` that it covers are evicted. Not retried (a write)."""
        request = mpb.UpdateConversationSummaryRequest(
            conversation_id=conversation_id,
            text=text,
            expected_through_interaction_id=expected_through_interaction_id,
            through_interaction_id=through_interaction_id,
            summarised_turns=summarised_turns,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        if expected_unfolded_deletions is not None:
            request.expected_unfolded_deletions = expected_unfolded_deletions
        reply = await self._t.unary(self._t.memory.UpdateConversationSummary, request, timeout)
        return t.from_proto(t.Conversation, reply.conversation)

    async def check_storage(
        self,
        conversation_id: str = "",
        *,
        turn_bytes: int = 0,
        summary: bool = False,
        request_id: str = "",
        timeout: Timeout = DEFAULT,
    ) -> t.StorageUsage:
        """Whether one more turn of ``turn_bytes`` (its serialized interaction and traces, as
        far as known) fits in ``conversation_id`` ("": in a new conversation), storing
        nothing (CheckStorage): raises ``OwnerStorageFullError`` (or
        ``OwnerConversationsFullError``, ``ConversationInteractionsFullError``) as storing
        it would, else returns your usage and
        memory's ``limits`` on a turn. With ``summary``, ``turn_bytes`` is the length of a
        new summary of ``conversation_id`` (required), checked as ``update_summary`` would
        count it. A check before costly work, not a reservation: the write itself may
        still be refused. Not retried (a write may follow). With ``request_id``: the
        returned ``interaction`` is your turn already stored with it, if any (then nothing
        else is checked; in another conversation than ``conversation_id`` it raises
        ``RequestIdReusedError``)."""
        request = mpb.CheckStorageRequest(
            conversation_id=conversation_id,
            bytes=turn_bytes,
            summary=summary,
            request_id=request_id,
        )
        reply = await self._t.unary(self._t.memory.CheckStorage, request, timeout)
        return t.from_proto(t.StorageUsage, reply)

    async def delete(self, conversation_id: str, *, timeout: Timeout = DEFAULT) -> None:
        await self._t.unary(
            self._t.memory.DeleteConversation,
            mpb.DeleteConversationRequest(conversation_id=conversation_id),
            timeout,
        )

    async def _interaction_pages(
        self,
        conversation_id: str,
        *,
        oldest_first: bool,
        after: str,
        page_size: int,
        limit: int | None,
        timeout: Timeout,
    ) -> AsyncGenerator[builtins.list[t.Interaction], None]:
        """ListInteractions page by page, in the memory service's order: ``oldest_first``
        is the RPC's (from the first turn on), not ``interactions``' reversal. Each page
        asks for at most ``page_size`` turns and no more than ``limit`` in all (None: every
        page).

        Memory replicas of two versions (a rolling upgrade) may serve one list's pages.
        A replica older than ``oldest_first`` and ``after_interaction_id`` ignores them
        (it answers newest first, from the newest turn), and replicas of the two versions
        refuse each other's page tokens for such a list (INVALID_PAGE_TOKEN); a plain
        listing's tokens both take. So, with no turn handed out twice or skipped:
        - a refused token, oldest first: the list starts again as a first page (no
          token) after the last turn handed out. ``after_interaction_id`` is a position
          (ids sort as turns were made), not a token, so any replica with the field reads
          it, and the pages go on holding one page at a time;
        - an answer from a replica without the fields, or a refused token newest first
          (no field starts below a turn): the rest is read as before the fields
          (``_read_as_before``)."""
        token = ""
        read = 0
        start = after  # the position the current run of pages (its tokens) started from
        last = after  # the last turn handed out, or the caller's position
        while limit is None or read < limit:
            size = page_size if limit is None else min(page_size, limit - read)
            try:
                page = await self._t.unary(
                    self._t.memory.ListInteractions,
                    mpb.ListInteractionsRequest(
                        conversation_id=conversation_id,
                        page_size=size,
                        page_token=token,
                        oldest_first=oldest_first,
                        after_interaction_id=start,
                    ),
                    timeout,
                )
            except InvalidPageTokenError:
                if not token:
                    raise
                if oldest_first and last != start:  # a turn handed out since (re)starting
                    start, token = last, ""
                    continue
                page = None
            if page is None or _listed_as_before(page, oldest_first, start):
                rest = await self._read_as_before(
                    conversation_id,
                    above=last if oldest_first else after,
                    below="" if oldest_first or last == after else last,
                    # Newest first, the first ones read are those wanted.
                    wanted=None if limit is None or oldest_first else limit - read,
                    timeout=timeout,
                )
                if oldest_first:
                    rest.reverse()
                if limit is not None:
                    rest = rest[: limit - read]
                for at in range(0, len(rest), page_size):
                    yield [t.from_proto(t.Interaction, i) for i in rest[at : at + page_size]]
                return
            read += len(page.interactions)
            if page.interactions:
                last = page.interactions[-1].interaction_id
            yield [t.from_proto(t.Interaction, i) for i in page.interactions]
            token = page.next_page_token
            if not token:
                return

    async def _read_as_before(
        self,
        conversation_id: str,
        *,
        above: str,
        below: str,
        wanted: int | None,
        timeout: Timeout,
    ) -> builtins.list[mpb.Interaction]:
        """The turns newer than ``above`` and older than ``below`` ("": no bound), newest
        first, at most ``wanted`` (None: all), read as every memory version lists: newest
        first from the newest turn, no position, with the page tokens replicas of either
        version take. It holds what it reads, at most the conversation's turns (memory
        bounds them per conversation); used only while a replica older than
        ``oldest_first`` serves the list."""
        found: builtins.list[mpb.Interaction] = []
        token = ""
        while wanted is None or len(found) < wanted:
            page = await self._t.unary(
                self._t.memory.ListInteractions,
                mpb.ListInteractionsRequest(
                    conversation_id=conversation_id, page_size=100, page_token=token
                ),
                timeout,
            )
            for i in page.interactions:
                if above and _not_after(i.interaction_id, above):
                    return found
                if not below or i.interaction_id.lower() < below.lower():
                    found.append(i)
            token = page.next_page_token
            if not token:
                break
        return found[:wanted]

    async def interactions(
        self,
        conversation_id: str,
        *,
        limit: int | None = None,
        oldest_first: bool = False,
        after_interaction_id: str = "",
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.Interaction]:
        """A list of the turns read newest first: all of them, or the ``limit`` newest.

        ``oldest_first=True`` only reverses that list once it is read, so with ``limit``
        it is still the ``limit`` newest turns, the oldest of them first (the end of a
        chat, to show). It is not ListInteractions' ``oldest_first`` and never gives the
        conversation's first turns: for those, or to page a whole conversation from its
        start without holding it, use ``iter_interactions``. ``after_interaction_id``
        keeps to the turns newer than that one (it need not exist any more: a position,
        such as a summary's ``through_interaction_id``). A memory service older than the
        field (all of it, or some replicas mid-upgrade) is read as it lists, and only the
        turns newer than the position are kept."""
        found: builtins.list[t.Interaction] = []
        pages = self._interaction_pages(
            conversation_id,
            oldest_first=False,
            after=after_interaction_id,
            page_size=100,
            limit=_page_limit(limit),
            timeout=timeout,
        )
        async with contextlib.aclosing(pages):
            async for turns in pages:
                found.extend(turns)
        if oldest_first:
            found.reverse()
        return found

    async def iter_interactions(
        self,
        conversation_id: str,
        *,
        after_interaction_id: str = "",
        page_size: int = 100,
        timeout: Timeout = DEFAULT,
    ) -> AsyncIterator[t.Interaction]:
        """The turns oldest first, from the conversation's first turn (or the first newer
        than ``after_interaction_id``) on, one page at a time in the memory service's own
        order (ListInteractions ``oldest_first``). Stop early with ``break``; nothing more
        is read, and no list of the whole conversation is held. Unlike
        ``interactions(oldest_first=True)``, which reverses the newest turns it read.

        Mid-upgrade (memory replicas of two versions), a page token one replica refuses
        from the other restarts the list as a first page after the last turn handed out
        (no turn twice, none skipped). A replica older than ``oldest_first`` (or a memory
        service all older) lists newest first only: the turns after the last one handed
        out are then read that way and held (at most the conversation's turns), then handed
        out oldest first."""
        pages = self._interaction_pages(
            conversation_id,
            oldest_first=True,
            after=after_interaction_id,
            page_size=page_size,
            limit=None,
            timeout=timeout,
        )
        # Closed with this generator (a caller's break), not left to the loop's finalizer.
        async with contextlib.aclosing(pages):
            async for turns in pages:
                for turn in turns:
                    yield turn

    async def get_interaction(
        self, interaction_id: str, *, timeout: Timeout = DEFAULT
    ) -> t.Interaction:
        """One of your interactions (another user's is ``InteractionNotFoundError`` too)."""
        reply = await self._t.unary(
            self._t.memory.GetInteraction,
            mpb.GetInteractionRequest(interaction_id=interaction_id),
            timeout,
        )
        return t.from_proto(t.Interaction, reply.interaction)

    async def traces(
        self,
        interaction_id: str,
        *,
        limit: int | None = None,
        page_size: int = 100,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.Trace]:
        """The steps that produced an interaction (rewrite, retrieval, generation …), in
        the order they ran: all of them (every page), or the first ``limit``."""
        found: builtins.list[t.Trace] = []
        token = ""
        _page_limit(limit)
        while limit is None or len(found) < limit:
            page = await self._t.unary(
                self._t.memory.ListInteractionTraces,
                mpb.ListInteractionTracesRequest(
                    interaction_id=interaction_id, page_size=page_size, page_token=token
                ),
                timeout,
            )
            found.extend(t.from_proto(t.Trace, trace) for trace in page.traces)
            token = page.next_page_token
            if not token:
                break
        return found[:limit]

    async def search(
        self,
        query: str,
        *,
        conversation_id: str = "",
        mode: str | None = None,
        limit: int | None = None,
        timeout: Timeout = DEFAULT,
    ) -> builtins.list[t.InteractionHit]:
        """Your interactions by meaning and keyword (SearchInteractions), best first;
        ``conversation_id`` keeps to one conversation; ``mode``: hybrid, semantic or
        keyword (default: hybrid when the index has vectors). The index is the memory
        service's option: with it off this raises ``SearchDisabledError``."""
        request = t.to_proto(
            {"query": query, "conversation_id": conversation_id, "mode": mode, "limit": limit},
            mpb.SearchInteractionsRequest,
        )
        reply = await self._t.unary(self._t.memory.SearchInteractions, request, timeout)
        return [t.from_proto(t.InteractionHit, hit) for hit in reply.hits]

    async def add_interaction(
        self,
        conversation_id: str,
        input: str,
        response: str = "",
        *,
        additional_info: Mapping[str, Any] | None = None,
        timeout: Timeout = DEFAULT,
        **fields: Any,
    ) -> t.Interaction:
        request = mpb.CreateInteractionRequest(
            **_clean(
                {
                    "conversation_id": conversation_id,
                    "input": input,
                    "response": response,
                    "additional_info": to_struct_dict(dict(additional_info))
                    if additional_info
                    else None,
                    **fields,
                }
            )
        )
        reply = await self._t.unary(self._t.memory.CreateInteraction, request, timeout)
        return t.from_proto(t.Interaction, reply.interaction)

    async def update_interaction(
        self,
        interaction_id: str,
        additional_info: Mapping[str, Any],
        *,
        keys: Iterable[str] | None = None,
        timeout: Timeout = DEFAULT,
    ) -> t.Interaction:
        """Change an interaction's ``additional_info`` (the only field of a turn that may
        change; UpdateInteraction). Without ``keys`` it is replaced whole; with ``keys``
        only those top-level keys change: each is set from ``additional_info``, or removed
        when ``additional_info`` lacks it, and the other keys stay (concurrent updates of
        different keys all land). Sets ``update_time``. Not retried (a write)."""
        if isinstance(keys, str):  # would be read as one key per character
            raise TypeError("keys takes a list of key names")
        paths = ["additional_info"] if keys is None else [f"additional_info.{k}" for k in keys]
        if not paths:
            raise ValueError("keys is empty: nothing would change")
        request = mpb.UpdateInteractionRequest(
            interaction=mpb.Interaction(
                interaction_id=interaction_id,
                additional_info=to_struct_dict(dict(additional_info)),
            ),
            update_mask=field_mask_pb2.FieldMask(paths=paths),
        )
        reply = await self._t.unary(self._t.memory.UpdateInteraction, request, timeout)
        return t.from_proto(t.Interaction, reply.interaction)

    async def delete_interaction(self, interaction_id: str, *, timeout: Timeout = DEFAULT) -> None:
        """Delete one of your interactions (DeleteInteraction): it leaves its conversation,
        its traces with it, its bytes go back to your storage and search stops finding it.
        The conversation's summary is not rewritten: what was folded into it stays. Another
        user's, or one already deleted, is ``InteractionNotFoundError``. Not retried (a
        write: a retry after it landed would be ``InteractionNotFoundError``)."""
        await self._t.unary(
            self._t.memory.DeleteInteraction,
            mpb.DeleteInteractionRequest(interaction_id=interaction_id),
            timeout,
        )
