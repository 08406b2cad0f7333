"""The memory, retrieval and generation APIs served on the gateway's address.

Every call goes downstream unchanged, through the same client (channel, identity, error
mapping) the gateway's own calls use, with the caller's identity (as the gateway
authenticated it) and the caller's remaining deadline; the downstream status, with its
reason and field, comes back unchanged. Generate and StreamGenerate also pass the
generation client's meter: each is charged to the tenant's LLM-calls quota like the
gateway's own generation calls. UpsertObjects requests and ImportObjects messages are
charged to the tenant's objects-written quota before they are sent on.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc

from services.common.auth import Role, require_role
from services.common.egress import UrlRefused, canonical_url
from services.common.errors import (
    Internal,
    InvalidArgument,
    PermissionDenied,
    ServiceError,
    note_imported,
    out_of_range,
    seconds_text,
)
from services.common.well_known import duration_seconds
from services.gateway.catalog import Catalog
from services.gateway.clients import Caller, GenerationClient, caller_of
from services.gateway.clients.base import ServiceClient
from services.gateway.generation_cache import GenerationCache

log = logging.getLogger("gensearch.gateway.forward")


class _Forwarder:
    def __init__(self, client: ServiceClient, internal_token: str) -> None:
        self._client = client
        self._token = internal_token


# Says, on the error that ended a client stream here, what the downstream service did with
# the messages relayed before it: (error, its answer or None, messages relayed).
Partial = Callable[[ServiceError, Any, int], None]
# Admits one request (a client stream's: one message) before it is sent on, or raises:
# (forwarder, request, caller).
Charge = Callable[[Any, Any, Caller], Awaitable[None]]


def _forward(
    method: str,
    prepare: Callable[[Any], None] | None = None,
    after: Callable[[Any, Any, Caller], Awaitable[None]] | None = None,
    partial: Partial | None = None,
    charge: Charge | None = None,
) -> Any:
    """A servicer method that sends the call on unchanged. For a client-streaming method
    ``request`` is the stream of requests, which the stub accepts just the same.
    ``after(self, request, caller)`` runs once a unary call succeeded downstream, before
    the caller is answered; ``partial`` adds to a client stream's failure here what was
    done downstream before it; ``charge(self, request, caller)`` runs before a unary
    request, or each message of a client stream, is sent on: an error it raises is the
    call's (a stream's messages before it stay sent)."""

    async def forward(self: _Forwarder, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if prepare is not None:
            prepare(request)
        caller = caller_of(context, self._token)
        if not isinstance(request, AsyncIterator):
            if charge is not None:
                await charge(self, request, caller)
            answer = await self._client.unary(method, request, caller, context.time_remaining())
            if after is not None:
                await after(self, request, caller)
            return answer
        admit = None if charge is None else lambda message: charge(self, message, caller)
        relay = _Relay(request, partial, admit)
        try:
            answer = await self._client.unary(method, relay, caller, context.time_remaining())
        except ServiceError:
            relay.raise_failure(None)  # the stream's own failure, if any, came first
            raise
        relay.raise_failure(answer)
        return answer

    forward.__name__ = method
    return forward


def _internal(method: str) -> Any:
    """A method only the gateway itself calls downstream (the semantic answer cache): a
    client storing answers under its tenant's questions could poison that cache."""

    async def refuse(self: _Forwarder, request: Any, context: grpc.aio.ServicerContext) -> Any:
        raise PermissionDenied(
            f"{method} is internal to the services and not served by the gateway",
            reason="INTERNAL_METHOD",
        )

    refuse.__name__ = method
    return refuse


class _Relay:
    """A client stream passed downstream, stopping at a message that fails here (one
    protobuf cannot parse, say, none arriving within the gateway's stream_idle_timeout, or
    one ``admit`` refuses). grpc-python would swallow that error while it reads the stream
    for the downstream call and cancel the call, leaving our caller waiting for its
    deadline; instead the downstream stream ends (the service answers for the messages it
    got, and keeps what it stored), and the error is the answer."""

    def __init__(
        self,
        requests: AsyncIterator[Any],
        partial: Partial | None,
        admit: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self._requests = requests
        self._partial = partial
        self._admit = admit
        self._failure: ServiceError | None = None
        self._relayed = 0

    async def __aiter__(self) -> AsyncIterator[Any]:
        try:
            async for request in self._requests:
                if self._admit is not None:
                    await self._admit(request)
                yield request
                self._relayed += 1
        except ServiceError as err:
            self._failure = err
        except Exception:  # a bug of ours: still an answer, never a call left hanging
            log.exception("relaying a client stream failed")
            self._failure = Internal("the gateway failed while relaying the stream")

    def raise_failure(self, answer: Any) -> None:
        """Raises the stream's failure, if it had one; ``answer``: the downstream's (None
        when it failed)."""
        if self._failure is None:
            return
        if self._partial is not None:
            self._partial(self._failure, answer, self._relayed)
        raise self._failure


def _imported(err: ServiceError, answer: Any, relayed: int) -> None:
    """What retrieval imported of an ImportObjects stream that failed here, said as
    retrieval says it of a failure of its own (docs/retrieval.md), so a client knows where
    to resume. Unknown when retrieval failed too, after messages were relayed."""
    if answer is None and relayed:
        return
    received = answer.received_count if answer is not None else 0
    imported = answer.imported_count if answer is not None else 0
    rejected = list(answer.errors) if answer is not None else []
    note_imported(err, relayed, received, imported, rejected)


def _idempotent(request: Any) -> None:
    # The memory channel retries CreateInteraction on UNAVAILABLE; a request_id makes a
    # retry of a write that did land return it instead of storing it twice.
    if not request.request_id:
        request.request_id = uuid.uuid4().hex


class MemoryForwarder(_Forwarder, mem_grpc.MemoryServiceServicer):
    CreateConversation = _forward("CreateConversation")
    GetConversation = _forward("GetConversation")
    ListConversations = _forward("ListConversations")
    UpdateConversation = _forward("UpdateConversation")
    DeleteConversation = _forward("DeleteConversation")
    CreateInteraction = _forward("CreateInteraction", _idempotent)
    GetInteraction = _forward("GetInteraction")
    ListInteractions = _forward("ListInteractions")
    UpdateInteraction = _forward("UpdateInteraction")
    DeleteInteraction = _forward("DeleteInteraction")
    ListInteractionTraces = _forward("ListInteractionTraces")
    SearchInteractions = _forward("SearchInteractions")
    UpdateConversationSummary = _forward("UpdateConversationSummary")
    CheckStorage = _forward("CheckStorage")


class RetrievalForwarder(_Forwarder, ret_grpc.RetrievalServiceServicer):
    def __init__(
        self,
        client: ServiceClient,
        internal_token: str,
        catalog: Catalog | None = None,
        cache: GenerationCache | None = None,
        cache_max_ttl: float | None = None,
        max_fallbacks: int | None = None,
        max_prompt_chars: int | None = None,
        charge_writes: Callable[[int, int, str], Awaitable[None]] | None = None,
    ) -> None:
        """``charge_writes(objects, size, tenant)``: the tenant's objects- and
        bytes-written quotas, which raise when a write does not fit (None: no quota)."""
        super().__init__(client, internal_token)
        self._catalog = catalog
        self._cache = cache
        self._cache_max_ttl = cache_max_ttl
        self._max_fallbacks = max_fallbacks
        self._max_prompt_chars = max_prompt_chars
        self._charge_writes = charge_writes

    _create_collection = _forward("CreateCollection")

    async def CreateCollection(
        self, request: ret_pb.CreateCollectionRequest, context: grpc.aio.ServicerContext
    ) -> ret_pb.CreateCollectionResponse:
        """Forwarded once the collection's cache TTL is within this gateway's
        CACHE_MAX_TTL, its fallback chain within its MAX_FALLBACKS and its system prompt
        and instructions within its MAX_PROMPT_CHARS (as a request's), settings retrieval
        does not know: before, a longer TTL was stored and cut to the max at every use
        without a word, and a longer chain stored and refused at every use. (Either stored
        before an operator lowered the max, or straight through retrieval, is still cut or
        refused at use.) The caller's role comes first, as in retrieval: a caller who may
        not create collections is PERMISSION_DENIED whatever the body."""
        require_role(Role.ADMIN)
        chain = request.collection.generative.fallback
        if self._max_fallbacks is not None and len(chain) > self._max_fallbacks:
            raise out_of_range(
                f"collection.generative.fallback has at most {self._max_fallbacks} pairs",
                field="collection.generative.fallback",
                bound=self._max_fallbacks,
                setting="GENSEARCH_GATEWAY_MAX_FALLBACKS",
            )
        generative = request.collection.generative
        chars = self._max_prompt_chars
        for name in ("system_prompt", "user_instructions"):
            if chars is not None and len(getattr(generative, name)) > chars:
                raise InvalidArgument(
                    f"collection.generative.{name} is longer than {chars} characters "
                    "(GENSEARCH_GATEWAY_MAX_PROMPT_CHARS)",
                    field=f"collection.generative.{name}",
                    metadata={
                        "max_chars": str(chars),
                        "setting": "GENSEARCH_GATEWAY_MAX_PROMPT_CHARS",
                    },
                )
        cache = generative.cache
        limit = self._cache_max_ttl
        field = "collection.generative.cache.ttl"
        if (
            limit is not None
            and cache.HasField("ttl")
            and duration_seconds(cache.ttl, field) > limit
        ):
            raise out_of_range(
                f"{field} must be at most {seconds_text(limit)} s",
                field=field,
                bound=limit,
                setting="GENSEARCH_GATEWAY_CACHE_MAX_TTL",
                seconds=True,
            )
        answer: ret_pb.CreateCollectionResponse = await self._create_collection(request, context)
        return answer

    _delete_collection = _forward("DeleteCollection")

    async def DeleteCollection(
        self, request: ret_pb.DeleteCollectionRequest, context: grpc.aio.ServicerContext
    ) -> ret_pb.DeleteCollectionResponse:
        """Forwarded, then what this gateway keeps of the collection goes with it. The
        caller's role comes first, as in CreateCollection: a caller who may not delete
        collections is PERMISSION_DENIED with no downstream call."""
        require_role(Role.ADMIN)
        caller = caller_of(context, self._token)
        answer: ret_pb.DeleteCollectionResponse = await self._delete_collection(request, context)
        # This replica forgets a deleted collection at once (others within their
        # collection_cache_ttl): a collection recreated under the name is another one, with
        # another creation time, which scopes its generation cache entries.
        if self._catalog is not None:
            self._catalog.forget(caller.tenant, request.name)
        # Its cached answers go with it (the semantic ones live in retrieval, dropped there),
        # and a search that read it before the delete stores none after the drop: the mark
        # names the creation time of the collection the delete removed, as retrieval
        # answers it (one call: a read before the delete could name another). A retrieval
        # older than that field answers none: the entries are dropped, late stores are
        # unfenced (upgrade retrieval first: docs/operations.md).
        if self._cache is not None:
            created_ns = (
                answer.create_time.ToNanoseconds() if answer.HasField("create_time") else None
            )
            await self._cache.drop_collection(caller.tenant, request.name, created_ns)
        return answer

    async def _charge_objects(self, request: Any, caller: Caller) -> None:
        """Counts the objects (and bytes) of an UpsertObjects request or ImportObjects
        message against the tenant's objects- and bytes-written quotas before it is sent
        on, all or none: one that does not fit is refused whole, nothing of it written (and
        an ImportObjects stream ends there, its earlier messages written and counted in
        the error: ``_imported``).
        Counted whether retrieval then writes them or rejects some: the quota bounds the
        work a tenant sends to the engine. A caller whose role may not write is not
        charged (retrieval refuses the write): a reader may not use up its tenant's
        quota."""
        if self._charge_writes is None or not request.objects:
            return
        if caller.who.role.includes(Role.WRITER):
            await self._charge_writes(len(request.objects), request.ByteSize(), caller.tenant)

    GetCollection = _forward("GetCollection")
    ListCollections = _forward("ListCollections")
    UpsertObjects = _forward("UpsertObjects", charge=_charge_objects)
    ImportObjects = _forward("ImportObjects", partial=_imported, charge=_charge_objects)
    GetObject = _forward("GetObject")
    DeleteObjects = _forward("DeleteObjects")
    CountObjects = _forward("CountObjects")
    Search = _forward("Search")
    GetChunks = _forward("GetChunks")
    LookupCachedAnswer = _internal("LookupCachedAnswer")
    StoreCachedAnswer = _internal("StoreCachedAnswer")
    BatchGetObjects = _forward("BatchGetObjects")


class GenerationForwarder(_Forwarder, gen_grpc.GenerationServiceServicer):
    """ListModels is a read passed on without the operator's endpoint URLs and key
    variable names (and a ``debug`` answer without the operator's endpoint URL). Generate
    and StreamGenerate go through the client's ``generate``/``stream_generate``: one LLM
    call admitted by the tenant's quota before each is sent, the upstream calls beyond it
    charged once reported; the caller's ``x-<provider>-api-key`` headers go to the
    generation service only. Roles, models and a request's base_url are checked there, as
    for a direct caller."""

    _client: GenerationClient

    async def ListModels(
        self, request: gen_pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> gen_pb.ListModelsResponse:
        caller = caller_of(context, self._token)
        models = await self._client.list_models(caller, context.time_remaining())
        # Where the operator's endpoints live (internal host names) and which variables
        # hold their keys are the operator's own business: a client learns the providers,
        # their models and limits, whether a key is configured, and the allowlist its own
        # base_url must pass.
        for provider in models.providers:
            provider.ClearField("base_url")
            provider.ClearField("api_key_env")
        return models

    async def Generate(
        self, request: gen_pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> gen_pb.GenerateResponse:
        caller = caller_of(context, self._token)
        reply = await self._client.generate(request, caller, context.time_remaining())
        _hide_operator_url(reply, request.base_url)
        return reply

    async def StreamGenerate(
        self, request: gen_pb.StreamGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gen_pb.StreamGenerateResponse]:
        caller = caller_of(context, self._token)
        chunks = self._client.stream_generate(request, caller, context.time_remaining())
        async for chunk in chunks:
            _hide_operator_url(chunk, request.base_url)
            yield chunk


def _hide_operator_url(
    reply: gen_pb.GenerateResponse | gen_pb.StreamGenerateResponse, base_url: str
) -> None:
    """``debug.url`` names the endpoint that answered. An operator's endpoint (an internal
    host and port, as ListModels' base_url) is not the client's to learn, so the URL stays
    only when the caller's own ``base_url`` answered: the primary pair, under that URL."""
    if not reply.HasField("debug") or not reply.debug.url:
        return
    # As generation called it: the URL the allowlist read (canonical), not the caller's
    # spelling ("HTTP://…", no port, a trailing dot), which hid the caller's own URL.
    try:
        own = canonical_url(base_url.strip()) + "/" if base_url.strip() else ""
    except UrlRefused:
        own = ""
    if own and reply.fallback_index == 0 and reply.debug.url.startswith(own):
        return
    reply.debug.ClearField("url")
