"""The semantic answer cache of Ask: a question close enough in meaning to one already
answered over the same collection, in the same tenant and under the same settings, gets
the stored answer, marked cached, with no retrieval and no LLM call.

Only for an Ask without a conversation (no ``conversation_id``, no ``new_conversation``):
an answer that depends on history must never be reused, and a turn stored in memory records
an answer generated for it. The entries live in the retrieval service, beside the engine
that holds the collection (``LookupCachedAnswer`` / ``StoreCachedAnswer``): retrieval owns
Qdrant, the embedders and tenancy, and drops the entries with the collection.

Nearness is not sameness of everything else: the stored entry carries a digest of what
besides the question decides the answer (``context_key``: the request without the question
and per-call switches, the resolved model, the collection's generative defaults); only an
entry with the same digest can answer. Best effort: a failed lookup is a miss and a failed
store is logged; the cache never fails a question.

Nor is an answer better than the objects it was built from: the entry keeps its sources,
every hit it shows and every chunk its passages put in the prompt, each with a digest of
its properties as this Ask saw them. Retrieval answers an entry only while all of them are
still there unchanged (checked against the caller's own collection, in the lookup itself);
an entry passed over for that is counted as a ``stale`` lookup when nothing else answers.

The store waits for no answer: it is queued (``background.WorkQueue``, bounded by
``semantic_cache_store_queue``, a tenant's share by ``semantic_cache_store_queue_per_tenant``;
full: dropped, counted, logged) and made by a background
worker after the answer has gone out. Retrieval keeps the vectors of the questions it
looked up lately (per tenant), so the store reuses the lookup's instead of embedding the
question again (a store that reaches another retrieval replica embeds it there).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import duration_pb2, timestamp_pb2

from services.common.errors import InvalidArgument, ServiceError
from services.common.well_known import properties_sha256
from services.gateway import generation_cache
from services.gateway.ask_request import AskLike
from services.gateway.backends import Backends
from services.gateway.background import WorkQueue
from services.gateway.catalog import CollectionInfo
from services.gateway.clients import Caller
from services.gateway.generation_cache import THIS_CALL, Policy
from services.gateway.generator import Options, generate_request
from services.gateway.metrics import CACHE_LOOKUPS, SEMANTIC_STORES

log = logging.getLogger("gensearch.gateway.ask")

MIN_SIMILARITY = 0.5
# A server's refusal of a request over its MAX_REQUEST_BYTES (services/common/request_size.py).
_REQUEST_TOO_LARGE = "REQUEST_TOO_LARGE"
# Fields of an Ask that do not change its answer, or are the question itself.
_PER_CALL = ("llm_question", "timeout", "debug", "semantic_cache")


@dataclass(frozen=True)
class SemanticPlan:
    """What one Ask does with the semantic cache."""

    policy: Policy
    # The similarity a stored question needs to answer this one.
    threshold: float
    # ``context_key`` of the Ask, computed once for its lookup and its store; empty when
    # the Ask neither reads nor writes the cache.
    key: str
    # The collection's creation time as this Ask read it, sent with the store: retrieval
    # refuses a store into a collection that is not that one any more (deleted, or made
    # again under its name while the answer was written), whatever this gateway's
    # collection cache still says.
    created: timestamp_pb2.Timestamp


@dataclass(frozen=True)
class _Store:
    """One answer to store, for ``caller``."""

    request: ret_pb.StoreCachedAnswerRequest
    caller: Caller


class SemanticAnswers:
    def __init__(self, backends: Backends) -> None:
        self._b = backends
        s = backends.settings
        self._stores = WorkQueue(
            self._store,
            name="semantic cache",
            size=s.semantic_cache_store_queue,
            per_tenant=s.semantic_cache_store_queue_per_tenant,
            workers=s.semantic_cache_store_workers,
            drain_timeout=s.semantic_cache_store_drain_timeout,
        )

    def plan(self, request: AskLike, info: CollectionInfo, options: Options) -> SemanticPlan:
        """What this Ask does with the cache, the similarity a match needs and the key
        its entries carry."""
        s = self._b.settings
        c = request.semantic_cache
        defaults = info.generative.cache
        policy = generation_cache.resolve(
            c.mode,
            c.ttl if c.HasField("ttl") else None,
            defaults.semantic,
            defaults,
            s,
            field="semantic_cache",
        )
        if c.HasField("min_similarity"):
            if not MIN_SIMILARITY <= c.min_similarity <= 1:
                raise InvalidArgument(
                    f"semantic_cache.min_similarity must be between {MIN_SIMILARITY} and 1",
                    field="semantic_cache.min_similarity",
                    reason="OUT_OF_RANGE",
                )
            threshold = c.min_similarity
        elif defaults.HasField("min_similarity"):
            threshold = min(max(defaults.min_similarity, MIN_SIMILARITY), 1.0)
        else:
            threshold = s.semantic_cache_min_similarity
        if request.conversation_id or request.new_conversation:
            policy = Policy()  # history (or a turn to store): never from the cache
        if len(request.llm_question) > s.semantic_cache_max_question_chars:
            # No entry can hold it (retrieval refuses it): asked uncached, no cache call.
            # Sent, its refused lookup and store read as a broken cache (errors counted,
            # WARNINGs logged) whenever any caller asked a long question.
            policy = Policy()
        used = policy.mode.reads or policy.mode.writes
        key = context_key(request, info, options) if used else ""
        created = timestamp_pb2.Timestamp()
        created.CopyFrom(info.collection.create_time)
        return SemanticPlan(policy, threshold, key, created)

    async def lookup(
        self, request: AskLike, plan: SemanticPlan, caller: Caller, timeout: float
    ) -> gw_pb.AskResponse | None:
        lookup = ret_pb.LookupCachedAnswerRequest(
            collection=request.collection,
            question=request.llm_question,
            min_similarity=plan.threshold,
            context_key=plan.key,
        )
        try:
            found = await self._b.clients.retrieval.lookup_cached_answer(lookup, caller, timeout)
        except ServiceError as err:
            log.warning("semantic cache lookup failed", extra={"reason": err.reason})
            CACHE_LOOKUPS.labels("semantic", "error").inc()
            return None
        if not found.found:
            CACHE_LOOKUPS.labels("semantic", "stale" if found.stale else "miss").inc()
            return None
        answer = gw_pb.AskResponse()
        try:
            answer.ParseFromString(found.answer)
        except Exception:
            return None
        CACHE_LOOKUPS.labels("semantic", "hit").inc()
        answer.cached = True
        for name in THIS_CALL:  # this call made none, whatever was stored
            answer.ClearField(name)
        answer.cached_question = found.question
        answer.cached_similarity = found.similarity
        return answer

    def store(
        self,
        request: AskLike,
        plan: SemanticPlan,
        response: gw_pb.AskResponse,
        sources: Sequence[ret_pb.Hit],
        caller: Caller,
    ) -> None:
        """Queues ``response`` to be stored (see the module's docstring), built from
        ``sources`` as they are here; once a worker makes it,
        ``semantic_cache_store_timeout`` bounds it."""
        kept = gw_pb.AskResponse()
        kept.CopyFrom(response)
        # What belongs to this call only: its spending, its debug prompt.
        for name in (*THIS_CALL, "prompt", "conversation_id", "interaction_id"):
            kept.ClearField(name)
        answer = kept.SerializeToString()
        limit = self._b.settings.semantic_cache_max_answer_bytes
        if len(answer) > limit:
            # Larger than retrieval keeps (an answer carries its hits' properties: a
            # writer's large objects make large entries): not sent only to be refused.
            SEMANTIC_STORES.labels("too_large").inc()
            log.info(
                "semantic cache store skipped: the answer is larger than an entry holds",
                extra={
                    "answer_bytes": len(answer),
                    "limit": limit,
                    "setting": "GENSEARCH_GATEWAY_SEMANTIC_CACHE_MAX_ANSWER_BYTES",
                },
            )
            return
        ttl = duration_pb2.Duration()
        ttl.FromNanoseconds(int(plan.policy.ttl * 1e9))
        store = ret_pb.StoreCachedAnswerRequest(
            collection=request.collection,
            question=request.llm_question,
            answer=answer,
            ttl=ttl,
            context_key=plan.key,
            sources=_sources(sources),
            collection_create_time=plan.created,
        )
        if not self._stores.submit(caller.tenant, _Store(store, caller)):
            SEMANTIC_STORES.labels("dropped").inc()
            log.warning("semantic cache store dropped (queue full, or the gateway is stopping)")

    async def idle(self) -> None:
        """Returns once every store queued so far has been made (or has failed)."""
        await self._stores.idle()

    async def drain(self) -> None:
        """At shutdown: the queued stores get ``semantic_cache_store_drain_timeout``."""
        await self._stores.drain()

    async def _store(self, job: _Store) -> None:
        retrieval = self._b.clients.retrieval
        try:
            # Its own budget, from when a worker makes it: the Ask's deadline no longer
            # bounds it (the answer is out).
            timeout = self._b.settings.semantic_cache_store_timeout
            await retrieval.store_cached_answer(job.request, job.caller, timeout)
        except ServiceError as err:
            if _collection_gone(err):
                # Deleted (or deleted and made again) while the answer was written: a
                # normal event, nothing wrong with the cache; the answer is kept nowhere.
                # What this gateway keeps of the collection is older than that: forgotten,
                # so the next Ask reads the new one and its own store is taken (else every
                # store of the new collection was refused until COLLECTION_CACHE_TTL).
                # Only the one this Ask read: a fresh entry of the new collection, kept
                # since by another Ask, stays.
                self._b.catalog.forget(
                    job.caller.tenant,
                    job.request.collection,
                    job.request.collection_create_time,
                )
                SEMANTIC_STORES.labels("gone").inc()
                log.info(
                    "semantic cache store: its collection is gone", extra={"reason": err.reason}
                )
                return
            if _refused_entry(err):
                # The entry's own size: no cache in trouble. Counted and warned as
                # ``failed``, any writer's large objects (shown as hits, kept with the
                # answer) made a healthy cache look broken on every Ask.
                SEMANTIC_STORES.labels("refused").inc()
                log.info("semantic cache store refused", extra={"reason": err.reason})
                return
            SEMANTIC_STORES.labels("failed").inc()
            log.warning("semantic cache store failed", extra={"reason": err.reason})
            return
        SEMANTIC_STORES.labels("stored").inc()


def _collection_gone(err: ServiceError) -> bool:
    """Whether retrieval refused the store because its collection is not there any more
    (NOT_FOUND naming ``collection``: deleted, or made again since the Ask read it)."""
    return err.code == grpc.StatusCode.NOT_FOUND and err.field == "collection"


def _refused_entry(err: ServiceError) -> bool:
    """Whether retrieval refused this entry for its size (larger than an entry or the
    tenant's whole cache may be: INVALID_ARGUMENT naming ``answer``; larger than a request
    it takes: RESOURCE_EXHAUSTED / REQUEST_TOO_LARGE, refused before the answer's own bound
    is read) rather than failed to store it. A collection's cache full (COLLECTION_FULL)
    stays a WARNING: the operator's bound is reached."""
    if err.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return err.reason == _REQUEST_TOO_LARGE
    return err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field == "answer"


def _sources(objects: Sequence[ret_pb.Hit]) -> list[ret_pb.CachedAnswerSource]:
    """Each object once (a chunk may be a hit too), with the digest of its properties."""
    seen: dict[str, ret_pb.CachedAnswerSource] = {}
    for obj in objects:
        if obj.id not in seen:
            seen[obj.id] = ret_pb.CachedAnswerSource(
                id=obj.id, properties_sha256=properties_sha256(obj.properties)
            )
    return list(seen.values())


def context_key(request: AskLike, info: CollectionInfo, options: Options) -> str:
    """A digest of everything but the question that decides an Ask's answer: the request
    itself (every field, so fields added later count too) less the question and per-call
    switches, the resolved model and sampling, and the collection's generative defaults.
    Not the collection's creation time: retrieval refuses a store into a collection made
    again (``collection_create_time``), and a key that changed would have made every entry
    stored before unreachable while it still counted against the cache's bounds."""
    ask = gw_pb.AskRequest()
    ask.ParseFromString(request.SerializeToString())  # Ask and StreamAsk share numbering
    for name in _PER_CALL:
        ask.ClearField(name)
    digest = hashlib.sha256()
    digest.update(ask.SerializeToString(deterministic=True))
    digest.update(
        generate_request(gen_pb.GenerateRequest, options, []).SerializeToString(deterministic=True)
    )
    generative = ret_pb.GenerativeConfig()
    generative.CopyFrom(info.generative)
    generative.ClearField("cache")
    digest.update(generative.SerializeToString(deterministic=True))
    return digest.hexdigest()


def replay(answer: gw_pb.AskResponse, *, stream: bool) -> list[gw_pb.StreamAskResponse]:
    """A cached answer as the events of an Ask: its context, and when streaming its text
    as one delta and its citation check (the stored answer's own: a stream sends every
    answer's ``citations`` event between the last delta and the answer; a client reading
    citations from the event got none from a cached answer), then the answer."""
    # The context as the answer's own fields say it (the rewrite method too: a context
    # event from the cache said REWRITE_METHOD_UNSPECIFIED where its answer, and a fresh
    # Ask's context event, said UNCHANGED).
    context = gw_pb.AskContextEvent(
        hits=answer.hits,
        rewritten_query=answer.rewritten_query,
        rewrite_method=answer.rewrite_method,
        rewrite_rejection=answer.rewrite_rejection,
    )
    events = [gw_pb.StreamAskResponse(context=context)]
    if stream:
        if answer.answer:
            events.append(gw_pb.StreamAskResponse(delta=answer.answer))
        checked = gw_pb.CitationsEvent(
            citations=answer.citations,
            sentences=answer.sentences,
            citation_coverage=answer.citation_coverage,
            dropped_citations=answer.dropped_citations,
        )
        events.append(gw_pb.StreamAskResponse(citations=checked))
    events.append(gw_pb.StreamAskResponse(answer=answer))
    return events
