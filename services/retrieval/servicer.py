"""The gRPC face of the retrieval service: validate the request, call the domain, answer.

Every RPC is scoped to the caller's tenant and checks the caller's role first (collections:
admin; objects: writer; reads: reader), here in the service itself, whoever forwards the
call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc

from services.common.auth import Role, require_role, require_service_caller
from services.common.errors import (
    InvalidArgument,
    MissingField,
    NotFound,
    ResourceExhausted,
    ServiceError,
    note_imported,
    out_of_range,
    quote,
)
from services.common.repeats import refuse_repeats
from services.common.shutdown_cut import claimed
from services.common.suggest import did_you_mean
from services.common.values import check_uuid
from services.common.well_known import struct
from services.retrieval import chunks
from services.retrieval.answer_cache import AnswerCache
from services.retrieval.catalog import Catalog, CollectionGone, not_found
from services.retrieval.embedders import Embedders, use_caller_key
from services.retrieval.filters import Node, build_filter
from services.retrieval.ingest import write_batch
from services.retrieval.read_bytes import SAMPLE_POINTS, ReadBytes
from services.retrieval.rerankers import Rerankers, use_caller_rerank_key
from services.retrieval.schema import Schema
from services.retrieval.search import Page, Searcher
from services.retrieval.settings import RetrievalSettings
from services.retrieval.store import PROPS, FoundPoint, VectorStore
from services.retrieval.value_count import (
    PER_BATCH_SETTING,
    BatchTooManyValues,
    count_batch,
)

DEFAULT_LIMIT = 10
MAX_OBJECTS_SETTING = "GENSEARCH_RETRIEVAL_MAX_OBJECTS_PER_COLLECTION"
MAX_BATCH_SIZE_SETTING = "GENSEARCH_RETRIEVAL_MAX_BATCH_SIZE"
# Query modes that carry text (a rerank stage can rank against it).
_TEXT_QUERIES = ("near_text", "keyword", "hybrid")
log = logging.getLogger("gensearch.retrieval")


class RetrievalServicer(pb_grpc.RetrievalServiceServicer):
    def __init__(
        self,
        settings: RetrievalSettings,
        store: VectorStore,
        catalog: Catalog,
        embedders: Embedders,
        rerankers: Rerankers,
    ) -> None:
        # The rerank stage (rerankers.py); build_server closes it on stop.
        self._rerankers = rerankers
        self._answers = AnswerCache(store, catalog, embedders, settings)
        self._settings = settings
        self._store = store
        self._catalog = catalog
        self._embedders = embedders
        self._searcher = Searcher(
            store,
            embedders,
            candidates=settings.hybrid_candidates,
            rrf_k=settings.rrf_k,
            max_query_chars=settings.max_query_text_chars,
        )
        # Objects written per engine collection since its last optimize (ImportObjects).
        self._unoptimized: dict[str, int] = {}
        # The bytes one tenant's Searches, BatchGetObjects and GetChunks may be building at once.
        self._reads = ReadBytes(
            settings.max_read_bytes_in_flight_per_tenant, settings.read_bytes_wait
        )

    # -- collections ----------------------------------------------------------------------

    async def CreateCollection(
        self, request: pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateCollectionResponse:
        tenant = require_role(Role.ADMIN).tenant
        if not request.HasField("collection"):
            raise MissingField("collection is required", field="collection")
        self._rerankers.check_default(request.collection)
        schema = await self._catalog.create(tenant, request.collection)
        return pb.CreateCollectionResponse(collection=schema.collection)

    async def GetCollection(
        self, request: pb.GetCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCollectionResponse:
        tenant = require_role(Role.READER).tenant
        schema = await self._catalog.get(tenant, request.name, field="name")
        with self._dropped(schema):
            count = await self._store.count(schema.store_name, None)
        return pb.GetCollectionResponse(collection=schema.collection, object_count=count)

    async def ListCollections(
        self, request: pb.ListCollectionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCollectionsResponse:
        tenant = require_role(Role.READER).tenant
        schemas, token = await self._catalog.page(tenant, request.page_size, request.page_token)
        return pb.ListCollectionsResponse(
            collections=[s.collection for s in schemas], next_page_token=token
        )

    async def DeleteCollection(
        self, request: pb.DeleteCollectionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteCollectionResponse:
        tenant = require_role(Role.ADMIN).tenant
        schema = await self._catalog.delete(tenant, request.name)
        self._reads.forget(schema.store_name)
        self._unoptimized.pop(schema.store_name, None)
        # Its cached answers go with it. Best effort: the collection is gone either way,
        # and a recreated one would miss them (their place is named after create_time).
        try:
            await self._answers.drop(schema)
        except Exception:
            log.exception("dropping the answer cache of a deleted collection failed")
        # Which collection of the name this delete removed, from the same read that removed
        # it: the gateway fences its generation cache's late stores with it (a separate
        # read before the delete could see another one: a stale replica, a recreate).
        return pb.DeleteCollectionResponse(create_time=schema.collection.create_time)

    # -- objects --------------------------------------------------------------------------

    async def UpsertObjects(
        self, request: pb.UpsertObjectsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpsertObjectsResponse:
        use_caller_key(context.invocation_metadata())  # type: ignore[arg-type]
        schema = await self._catalog.get(require_role(Role.WRITER).tenant, request.collection)
        self._check_batch(len(request.objects))
        too_many = self._check_values(request.objects)
        result = await self._write(schema, request.objects, 0, context, too_many)
        self._written(schema, len(result.ids))
        return pb.UpsertObjectsResponse(ids=result.ids, errors=result.errors)

    async def ImportObjects(
        self,
        request_iterator: AsyncIterator[pb.ImportObjectsRequest],
        context: grpc.aio.ServicerContext,
    ) -> pb.ImportObjectsResponse:
        use_caller_key(context.invocation_metadata())  # type: ignore[arg-type]
        tenant = require_role(Role.WRITER).tenant
        schema: Schema | None = None
        received = imported = 0
        # The objects of the message being written: a write the server's stop cuts runs on
        # in the engine (shielded) and may land after the stream's status left.
        writing = 0
        errors: list[pb.ObjectError] = []
        message_no = 0
        try:
            async for message in request_iterator:
                if schema is None:
                    if not message.collection:
                        raise MissingField(
                            "the first message must name the collection", field="collection"
                        )
                    schema = await self._catalog.get(tenant, message.collection)
                elif message.collection and message.collection != schema.name:
                    raise InvalidArgument(
                        "every message must name the same collection (or none)",
                        field="collection",
                    )
                self._check_batch(len(message.objects), message_no)
                too_many = self._check_values(message.objects, message_no)
                # Into the collection the stream started with: one deleted since (and maybe
                # created again under its name) takes no more of its objects (_write).
                writing = len(message.objects)
                result = await self._write(schema, message.objects, received, context, too_many)
                writing = 0
                # Counted as written: a stream that ends in an error (a later message's,
                # or the stream's own) wrote these all the same.
                self._written(schema, len(result.ids))
                received += len(message.objects)
                imported += len(result.ids)
                errors.extend(result.errors[: self._settings.max_import_errors - len(errors)])
                message_no += 1
        except ServiceError as err:
            # Earlier messages are stored; say so, so the client knows where to resume. The
            # stream itself raises too (a message too large or that protobuf cannot parse,
            # request_parse.py; none arriving within stream_idle_timeout, the chassis),
            # hence the whole loop in here.
            note_imported(err, message_no, received, imported, errors)
            raise
        except asyncio.CancelledError:
            # The server stopping ended the stream (shutdown_cut.py), waiting for the next
            # message or in a write: said like the failures above, so the client resumes
            # where it should (on another replica).
            cut = claimed()
            if cut is None:
                raise
            note_imported(cut, message_no, received, imported, errors)
            if writing:
                cut.metadata["writing_count"] = str(writing)
                cut.message += f"; its {writing} objects were being written and may be stored too"
            raise cut from None
        if schema is None:
            # It forgot the collection as a first message without one does: the same
            # reason (it was the generic INVALID_ARGUMENT), and the counts every failed
            # stream's status carries.
            raise MissingField(
                "the stream carried no message; the first must name the collection",
                field="collection",
                metadata={"received_count": "0", "imported_count": "0"},
            )
        if self._written(schema, 0) >= self._settings.import_optimize_min_objects:
            await self._optimize(schema)
        return pb.ImportObjectsResponse(
            received_count=received,
            imported_count=imported,
            errors=errors,
            errors_truncated=len(errors) < received - imported,
        )

    async def _optimize(self, schema: Schema) -> None:
        """Optimizes ``schema``'s collection, its count of objects written cleared first
        (a stream ending meanwhile starts a new count, not another optimize) and given back
        if the optimize fails: its objects are still unoptimized, and were lost to the
        count. Not for a collection dropped meanwhile, whose count went with it."""
        held = self._unoptimized.pop(schema.store_name, 0)
        try:
            with self._dropped(schema):
                await self._store.optimize(schema.store_name)
        except (CollectionGone, NotFound):
            raise
        except BaseException:
            self._written(schema, held)
            raise

    def _written(self, schema: Schema, count: int) -> int:
        """Counts ``count`` objects written into ``schema``'s collection; returns how many
        it took since its last optimize. An import stream's end optimizes only from
        IMPORT_OPTIMIZE_MIN_OBJECTS on: tiny streams each ending in an engine flush held
        the engine's one thread, shared by every tenant, 50 times longer than their writes
        (one entry per collection written to, dropped with it)."""
        held = self._unoptimized.get(schema.store_name, 0) + count
        if held:
            self._unoptimized[schema.store_name] = held
        return held

    async def _write(
        self,
        schema: Schema,
        objects: Any,
        first_index: int,
        context: grpc.aio.ServicerContext,
        too_many_values: dict[int, int],
    ) -> Any:
        """Writes only into the very collection ``schema`` was read from, checked in the
        engine right before the write: embedding may take long enough for it to be
        deleted, and maybe created again under its name, in between. Its embeddings end
        within the call's deadline (``context.time_remaining``)."""

        async def same_collection() -> None:
            await self._catalog.check_same(schema)

        async def room(ids: list[str]) -> None:
            await self._check_room(schema, ids)

        with self._dropped(schema):
            return await write_batch(
                schema,
                objects,
                self._store,
                self._embedders,
                first_index=first_index,
                too_many_values=too_many_values,
                max_values_per_object=self._settings.max_values_per_object,
                max_value_depth=self._settings.max_value_depth,
                max_isolation_calls=self._settings.max_isolation_calls,
                # The bound GetChunks' document has (check_ranges): any key stored can be
                # named there.
                max_document_chars=self._settings.max_query_text_chars,
                before_write=same_collection,
                check_room=room,
                time_left=context.time_remaining,
            )

    async def _check_room(self, schema: Schema, ids: list[str]) -> None:
        """Refuses a batch that would take the collection past MAX_OBJECTS_PER_COLLECTION:
        nothing else bounds what one collection holds (an import stream has no length
        limit), and one writer could fill the disk every tenant shares. The engine's count,
        read without a lock: writers at work at once may each overshoot by one batch. Ids
        already stored are replacements, not new objects; they are looked up only when the
        batch could not fit otherwise."""
        limit = self._settings.max_objects_per_collection
        held = await self._store.count(schema.store_name, None)
        wanted = list(dict.fromkeys(ids))
        if held + len(wanted) <= limit:
            return
        stored = await self._store.retrieve(schema.store_name, wanted, False)
        new = len(wanted) - len({point.id for point in stored})
        if new and held + new > limit:
            raise ResourceExhausted(
                f"collection {quote(schema.name)} holds {held} objects, and this batch would "
                f"add {new} more than the limit of {limit} ({MAX_OBJECTS_SETTING}); nothing "
                "of it was written: delete objects, or write into another collection",
                field="objects",
                reason="COLLECTION_FULL",
                metadata={
                    "limit": str(limit),
                    "setting": MAX_OBJECTS_SETTING,
                    "collection": schema.name,
                },
            )

    @contextlib.contextmanager
    def _dropped(self, schema: Schema) -> Iterator[None]:
        """Around engine calls: a collection dropped since we looked it up (by another call
        or replica) answers like any missing collection, under the caller's name for it,
        never the engine's."""
        try:
            yield
        except CollectionGone:
            raise
        except NotFound:
            self._catalog.forget(schema)
            raise not_found(schema.name, "collection") from None

    @contextlib.asynccontextmanager
    async def _reading(
        self, schema: Schema, points: int, time_left: float | None
    ) -> AsyncIterator[None]:
        """Room for a read of ``points`` points of ``schema``'s collection in its tenant's
        bound of reads being built (read_bytes.py): waits for it, or RESOURCE_EXHAUSTED.
        A collection no read has measured yet is sampled first (a few points)."""
        if not self._reads.knows(schema.store_name):
            with self._dropped(schema):
                sample, _ = await self._store.scroll(schema.store_name, None, SAMPLE_POINTS)
            self._reads.observe(schema.store_name, sample)
        size = self._reads.estimate(schema.store_name, points)
        async with self._reads.reading(schema.tenant, size, time_left):
            yield

    def _filter(self, message: pb.Filter, schema: Schema) -> Node:
        return build_filter(
            message,
            schema.types,
            max_value_depth=self._settings.max_value_depth,
            max_checks=self._settings.max_filter_checks,
            max_depth=self._settings.max_filter_depth,
            max_conditions=self._settings.max_filter_conditions,
            max_values=self._settings.max_filter_values,
            max_value_chars=self._settings.max_query_text_chars,
        )

    def _check_batch(
        self, size: int, message_no: int | None = None, field: str = "objects"
    ) -> None:
        limit = self._settings.max_batch_size
        if size > limit:
            raise _batch_too_large(
                f"{field} holds {size} entries",
                detail=f", more than the limit of {limit}",
                field=field,
                limit=limit,
                setting=MAX_BATCH_SIZE_SETTING,
                message_no=message_no,
            )

    def _check_values(self, objects: Any, message_no: int | None = None) -> dict[int, int]:
        """Counts the batch's values (value_count.py) before any is checked: a batch past
        MAX_VALUES_PER_BATCH is refused whole, as one past MAX_BATCH_SIZE is (same reason,
        metadata and field), its values left unread. Returns the positions of the objects
        past MAX_VALUES_PER_OBJECT (each refused on its own by write_batch) with their
        counts as far as read."""
        limit = self._settings.max_values_per_batch
        try:
            return count_batch(objects, self._settings.max_values_per_object, limit)
        except BatchTooManyValues:
            raise _batch_too_large(
                f"objects hold more than {limit} property values",
                detail=f" ({PER_BATCH_SETTING}: each property's value, list element and nested "
                "field counts one)",
                field="objects",
                limit=limit,
                setting=PER_BATCH_SETTING,
                message_no=message_no,
            ) from None

    async def GetObject(
        self, request: pb.GetObjectRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetObjectResponse:
        schema = await self._catalog.get(require_role(Role.READER).tenant, request.collection)
        object_id = check_uuid(request.id, "id")
        with self._dropped(schema):
            found = await self._store.retrieve(
                schema.store_name, [object_id], request.include_vector
            )
        if not found:
            raise NotFound(f"object {object_id} not found in {schema.name!r}", field="id")
        return pb.GetObjectResponse(object=_data_object(found[0]))

    async def BatchGetObjects(
        self, request: pb.BatchGetObjectsRequest, context: grpc.aio.ServicerContext
    ) -> pb.BatchGetObjectsResponse:
        schema = await self._catalog.get(require_role(Role.READER).tenant, request.collection)
        limit = self._settings.max_get_ids
        if not request.ids:
            raise MissingField(f"ids is required: 1 to {limit} object ids", field="ids")
        if len(request.ids) > limit:
            raise out_of_range(
                f"ids must hold between 1 and {limit} entries, not {len(request.ids)}",
                field="ids",
                bound=limit,
                setting="GENSEARCH_RETRIEVAL_MAX_GET_IDS",
            )
        # Canonical and each once (the engine answers an id once however often it is
        # named); the answer follows the order ids were first given.
        ids = list(dict.fromkeys(check_uuid(v, f"ids[{i}]") for i, v in enumerate(request.ids)))
        async with self._reading(schema, len(ids), context.time_remaining()):
            with self._dropped(schema):
                found = await self._store.retrieve(schema.store_name, ids, request.include_vector)
            self._reads.observe(schema.store_name, found)
            # The collection is the caller's tenant's own: another tenant's objects are not
            # in it, so their ids are missing like ids never written.
            by_id = {point.id: point for point in found}
            return pb.BatchGetObjectsResponse(
                objects=[_data_object(by_id[i]) for i in ids if i in by_id],
                missing_ids=[i for i in ids if i not in by_id],
            )

    async def DeleteObjects(
        self, request: pb.DeleteObjectsRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteObjectsResponse:
        schema = await self._catalog.get(require_role(Role.WRITER).tenant, request.collection)
        has_filter = request.HasField("filter")
        if request.ids and has_filter:
            raise InvalidArgument("give ids or filter, not both", field="filter")
        if request.ids:
            self._check_batch(len(request.ids), field="ids")
            ids = [check_uuid(v, f"ids[{i}]") for i, v in enumerate(request.ids)]
            with self._dropped(schema):
                deleted = await self._store.delete_ids(schema.store_name, ids)
        elif has_filter:
            where = self._filter(request.filter, schema)
            with self._dropped(schema):
                deleted = await self._store.delete_matching(schema.store_name, where)
        else:
            raise MissingField("give ids or filter", field="ids")
        return pb.DeleteObjectsResponse(deleted_count=deleted)

    async def CountObjects(
        self, request: pb.CountObjectsRequest, context: grpc.aio.ServicerContext
    ) -> pb.CountObjectsResponse:
        schema = await self._catalog.get(require_role(Role.READER).tenant, request.collection)
        where = self._filter(request.filter, schema) if request.HasField("filter") else None
        with self._dropped(schema):
            count = await self._store.count(schema.store_name, where)
        return pb.CountObjectsResponse(count=count)

    # -- search ---------------------------------------------------------------------------

    async def Search(
        self, request: pb.SearchRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchResponse:
        use_caller_key(context.invocation_metadata())  # type: ignore[arg-type]
        schema = await self._catalog.get(require_role(Role.READER).tenant, request.collection)
        page = self._page(request)
        where: Node | None = None
        if request.HasField("filter"):
            where = self._filter(request.filter, schema)
        wanted = _return_properties(schema, request.return_properties)
        if request.HasField("rerank"):
            # Each repeat was joined again into every candidate's text to rank.
            refuse_repeats(request.rerank.properties, "rerank.properties")
        rerank = _rerank_stage(request, schema)
        if rerank is not None:
            use_caller_rerank_key(context.invocation_metadata())  # type: ignore[arg-type]
            return await self._reranked_search(
                schema, request, rerank, where, page, wanted, context.time_remaining
            )
        points = self._searcher.points_read(request, page)
        async with self._reading(schema, points, context.time_remaining()):
            with self._dropped(schema):
                result = await self._searcher.search(
                    schema, request, where, page, context.time_remaining()
                )
            self._reads.observe(schema.store_name, result.hits)
            return pb.SearchResponse(
                hits=[_hit(h, wanted) for h in result.hits],
                embed_ms=result.embed_ms,
                query_ms=result.query_ms,
            )

    async def _reranked_search(
        self,
        schema: Schema,
        request: pb.SearchRequest,
        rerank: pb.Rerank,
        where: Node | None,
        page: Page,
        wanted: list[str] | None,
        time_left: Callable[[], float | None],
    ) -> pb.SearchResponse:
        """Retrieve the plan's candidates (from the first hit), rerank them, then cut the
        page: each hit keeps its retrieval score beside its rerank score. ``time_left``
        (``context.time_remaining``) is asked at each step, so the query's embedding and
        the rerank request each end within what the call has left by then."""
        plan = self._rerankers.plan(rerank, schema, _query_text(request), page.offset, page.limit)
        inner = Page(
            limit=plan.candidates,
            offset=0,
            with_vector=page.with_vector or plan.needs_vectors(schema),
        )
        points = self._searcher.points_read(request, inner)
        async with self._reading(schema, points, time_left()):
            with self._dropped(schema):
                result = await self._searcher.search(schema, request, where, inner, time_left())
            self._reads.observe(schema.store_name, result.hits)
            ranked = await self._rerankers.rerank(
                plan, schema, result.hits, page.offset + page.limit, time_left=time_left()
            )
            hits: list[pb.Hit] = []
            for point, score in ranked[page.offset :]:
                if not page.with_vector:
                    point.dense = None
                hit = _hit(point, wanted)
                hit.rerank_score = score
                hits.append(hit)
            return pb.SearchResponse(hits=hits, embed_ms=result.embed_ms, query_ms=result.query_ms)

    async def GetChunks(
        self, request: pb.GetChunksRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetChunksResponse:
        schema = await self._catalog.get(require_role(Role.READER).tenant, request.collection)
        chunking = chunks.check_ranges(
            schema, request, self._settings.max_limit, self._settings.max_query_text_chars
        )
        wanted = _return_properties(schema, request.return_properties)
        if wanted is not None:
            # The chunking properties always come back: they say where a chunk belongs.
            for name in (chunking.document_property, chunking.order_property):
                if name not in wanted:
                    wanted.append(name)
        # Room in the tenant's reads for what each range asks the engine for (its chunks
        # and the one that says more matched), as a Search takes it for its limit: up to
        # MAX_LIMIT ranges of MAX_CHUNKS_PER_RANGE chunks, 200 Searches' worth at the
        # defaults, built here at once before the reply bound counts any of it.
        max_chunks = self._settings.max_chunks_per_range
        points = len(request.ranges) * (max_chunks + 1)
        async with self._reading(schema, points, context.time_remaining()):
            with self._dropped(schema):
                found = await chunks.read_ranges(
                    self._store,
                    schema,
                    chunking,
                    list(request.ranges),
                    max_chunks=max_chunks,
                    max_value_depth=self._settings.max_value_depth,
                    max_value_chars=self._settings.max_query_text_chars,
                )
            self._reads.observe(schema.store_name, [p for got, _ in found for p in got])
            return pb.GetChunksResponse(
                ranges=[
                    pb.ChunkList(chunks=[_hit(p, wanted) for p in got], truncated=truncated)
                    for got, truncated in found
                ]
            )

    # -- semantic answer cache (internal: the gateway's Ask; not forwarded to clients) ---

    async def LookupCachedAnswer(
        self, request: pb.LookupCachedAnswerRequest, context: grpc.aio.ServicerContext
    ) -> pb.LookupCachedAnswerResponse:
        require_service_caller()
        caller = require_role(Role.READER)
        return await self._answers.lookup(caller.tenant, caller.user, request)

    async def StoreCachedAnswer(
        self, request: pb.StoreCachedAnswerRequest, context: grpc.aio.ServicerContext
    ) -> pb.StoreCachedAnswerResponse:
        # Reader, like the Ask whose answer it keeps: the gateway calls it for any caller
        # who may ask; the entry is scoped to the caller's tenant and collection.
        require_service_caller()
        caller = require_role(Role.READER)
        await self._answers.store(caller.tenant, caller.user, request)
        return pb.StoreCachedAnswerResponse()

    def _page(self, request: pb.SearchRequest) -> Page:
        # The default within the operator's maximum: below 10 it refused every search that
        # gave no limit, naming a field the caller never set.
        default = min(DEFAULT_LIMIT, self._settings.max_limit)
        limit = request.limit or default
        if limit < 0 or limit > self._settings.max_limit:
            raise out_of_range(
                f"limit must be in 1..{self._settings.max_limit} (0 means {default})",
                field="limit",
                bound=self._settings.max_limit,
                setting="GENSEARCH_RETRIEVAL_MAX_LIMIT",
            )
        if request.offset < 0:
            raise InvalidArgument("offset must not be negative", field="offset")
        # The offset itself, as documented (MAX_OFFSET is the largest offset): measured with
        # the limit against MAX_OFFSET + MAX_LIMIT, a small page could start past it.
        if request.offset > self._settings.max_offset:
            raise out_of_range(
                f"offset must be at most {self._settings.max_offset}",
                field="offset",
                bound=self._settings.max_offset,
                setting="GENSEARCH_RETRIEVAL_MAX_OFFSET",
            )
        return Page(limit=limit, offset=request.offset, with_vector=request.include_vector)


def _batch_too_large(
    what: str, *, detail: str, field: str, limit: int, setting: str, message_no: int | None
) -> InvalidArgument:
    """The refusal of a whole write batch past one of its bounds (its objects, its property
    values; a read's ids are OUT_OF_RANGE, as every read's count bound): one
    reason, field and metadata whatever the bound, so a client splits batches on
    BATCH_TOO_LARGE and its ``max`` without parsing the message. ``message_no``: the
    ImportObjects message it came in (None for a unary call)."""
    where = "" if message_no is None else f" in message {message_no}"
    return InvalidArgument(
        f"{what}{where}{detail}; nothing of it was written: split it into smaller batches",
        field=field,
        reason="BATCH_TOO_LARGE",
        # As every other count limit says its bound (BatchGetObjects' OUT_OF_RANGE,
        # TOO_MANY_COLLECTIONS): a client splits by it without parsing the message.
        metadata={"max": str(limit), "setting": setting},
    )


def _return_properties(schema: Schema, names: Any) -> list[str] | None:
    refuse_repeats(names, "return_properties")
    for i, name in enumerate(names):
        if name not in schema.types:
            hint, metadata = did_you_mean(name, schema.types)
            raise InvalidArgument(
                f"return_properties[{i}]: no property {quote(name)} in this collection{hint}",
                field=f"return_properties[{i}]",
                reason="UNKNOWN_PROPERTY",
                metadata=metadata,
            )
    return list(names) or None


def _rerank_stage(request: pb.SearchRequest, schema: Schema) -> pb.Rerank | None:
    """The request's rerank block; else, when asked (``use_collection_rerank``), the
    collection's default, unless the query has no text to rank against (near_vector); else
    none."""
    if request.HasField("rerank"):
        return request.rerank
    collection = schema.collection
    if (
        request.use_collection_rerank
        and collection.HasField("rerank")
        and request.WhichOneof("query") in _TEXT_QUERIES
    ):
        return default_rerank(collection.rerank, request)
    return None


def default_rerank(default: pb.Rerank, request: pb.SearchRequest) -> pb.Rerank:
    """A collection's default rerank block for this search: its ``candidates`` (a default,
    set by whoever made the collection) raised to the page's offset + limit, as
    RERANK_CANDIDATES is. Kept as set, a search for a longer page than the collection's
    candidates was INVALID_ARGUMENT naming ``rerank.candidates``, a field its caller never
    set (a gateway Ask with a larger context_size, say)."""
    block = pb.Rerank()
    block.CopyFrom(default)
    wanted = request.offset + (request.limit or DEFAULT_LIMIT)
    if block.candidates and block.candidates < wanted:
        block.candidates = wanted
    return block


def _query_text(request: pb.SearchRequest) -> str:
    mode = request.WhichOneof("query")
    if mode in _TEXT_QUERIES:
        return str(getattr(request, mode).text)
    return ""


def _data_object(point: FoundPoint) -> pb.DataObject:
    obj = pb.DataObject(id=point.id, properties=struct(point.payload.get(PROPS, {})))
    if point.dense is not None:
        obj.vector.extend(point.dense)
    return obj


def _hit(point: FoundPoint, wanted: list[str] | None) -> pb.Hit:
    props = point.payload.get(PROPS, {})
    if wanted is not None:
        props = {k: props[k] for k in wanted if k in props}
    hit = pb.Hit(id=point.id, score=point.score)
    # Filled in place: a Struct built apart would be copied into the hit.
    hit.properties.update(props)
    if point.dense is not None:
        hit.vector.extend(point.dense)
    return hit
