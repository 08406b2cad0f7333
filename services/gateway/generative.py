"""Generative search: search, then one LLM call per hit and/or one over all hits.

The plan (search, templates checked against the schema, prompts rendered per hit) is
made before any LLM call; the calls then fan out, bounded and under one budget, and every
hit ends with its own result or its own error. The request's checks live in
``generative_request``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from opentelemetry import trace

from services.common.call_deadline import outlasting
from services.common.errors import ATTEMPTS, FailedPrecondition, ServiceError, metadata_count
from services.common.tracing import CACHE_HIT, UPSTREAM_ATTEMPTS, service_tracer
from services.gateway import chunks, generation_cache, generative_request, rerank, templates
from services.gateway.backends import Backends
from services.gateway.catalog import CollectionInfo
from services.gateway.clients import Caller
from services.gateway.deadline import time_left
from services.gateway.errors import HitError
from services.gateway.fanout import (
    DEFAULT_MAX_BUFFERED,
    Delta,
    Emit,
    Job,
    Outcome,
    collect_outcomes,
    fan_out_stream,
)
from services.gateway.generation_cache import Policy, Scope
from services.gateway.generative_request import SearchLike
from services.gateway.generator import Options, Spent, add_usage, complete, error_result
from services.gateway.grouped import grouped_prompt
from services.gateway.hit_properties import HitProperties
from services.gateway.metrics import FANOUT_SIZE, GENERATIONS
from services.gateway.settings import GatewaySettings
from services.gateway.templates import Template

GROUPED = -1
# Seconds before the budget's end a hit stops waiting for its cache write: its answer
# must reach the fan-out before the fan-out gives up on it.
STORE_MARGIN = 0.05
# Attributes of a hit's span: the GenAI semantic conventions' names, as on the generation
# service's "chat <model>" span under it (and CACHE_HIT, UPSTREAM_ATTEMPTS).
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
T = TypeVar("T")


@dataclass
class Plan:
    hits: list[ret_pb.Hit]
    single: bool = False
    grouped: bool = False
    debug: bool = False
    stream_tokens: bool = False
    jobs: dict[int, Job[gw_pb.GenerationResult]] = field(default_factory=dict)
    failed: dict[int, HitError] = field(default_factory=dict)
    prompts: dict[int, str] = field(default_factory=dict)
    # Answers the generation cache already held: no job runs for them.
    cached: dict[int, gw_pb.GenerationResult] = field(default_factory=dict)
    max_concurrency: int | None = None
    timeout: float | None = None
    # The request field that set ``timeout`` (generate.timeout), None when the call's
    # deadline did: a hit it cuts off names it.
    timeout_field: str | None = None
    # When the generation phase ends (loop time), fixed as its budget is measured: what
    # the plan awaits before the fan-out (ListModels, the cache read) comes out of the
    # budget, not on top of it past the caller's deadline. None: ``timeout`` counts from
    # the fan-out's start.
    deadline: float | None = None
    # Token deltas held for a client that reads slowly (stream_buffered_deltas).
    max_buffered: int = DEFAULT_MAX_BUFFERED
    # With expand_context: the passages (GenerativeSearchResponse.passages).
    passages: list[gw_pb.ContextPassage] = field(default_factory=list)

    def result(self, outcome: Outcome[gw_pb.GenerationResult]) -> gw_pb.GenerationResult:
        """The proto for one outcome (called once per outcome: it also counts it)."""
        prompt = self.prompts.get(outcome.index, "") if self.debug else ""
        kind = "grouped" if outcome.index == GROUPED else "single"
        if outcome.error is not None:
            GENERATIONS.labels(kind, outcome.error.status).inc()
            return error_result(outcome.error, prompt)
        assert outcome.value is not None
        if not outcome.value.cached:  # a cached answer is counted by the cache's metric
            GENERATIONS.labels(kind, "OK").inc()
        outcome.value.prompt = prompt
        return outcome.value

    def events(self) -> AsyncGenerator[Delta | Outcome[gw_pb.GenerationResult], None]:
        """The jobs fanned out: deltas and one outcome per job, as they happen."""
        timeout = self.timeout
        if self.deadline is not None:
            timeout = self.deadline - asyncio.get_running_loop().time()
        return fan_out_stream(
            self.jobs,
            max_concurrency=self.max_concurrency,
            timeout=timeout,
            unbounded={GROUPED},
            max_buffered=self.max_buffered,
            timeout_field=self.timeout_field,
        )


def _span_name(index: int) -> str:
    return "generate grouped" if index == GROUPED else f"generate hit {index}"


def _hit_attributes(
    index: int, hits: int, object_id: str, options: Options
) -> dict[str, str | int | bool]:
    """What a hit's span says before its call: which hit, and the provider and model asked
    for (the generation service's defaults when the request and collection name none).
    Never the prompt nor an object's properties: they are the caller's data."""
    attributes: dict[str, str | int | bool] = (
        {"gensearch.hits": hits}
        if index == GROUPED
        else {"gensearch.hit.index": index, "gensearch.object.id": object_id}
    )
    if options.provider:
        attributes[PROVIDER] = options.provider
    if options.model:
        attributes[REQUEST_MODEL] = options.model
    attributes[CACHE_HIT] = False
    return attributes


def _answered(
    span: trace.Span, attributes: dict[str, str | int | bool], result: gw_pb.GenerationResult
) -> None:
    """The provider and model that answered, and the upstream attempts it took (0 for an
    answer from the generation cache: no call was made)."""
    if result.provider:
        span.set_attribute(PROVIDER, result.provider)
    if result.model:
        span.set_attribute(RESPONSE_MODEL, result.model)
        if REQUEST_MODEL not in attributes:  # the generation service's default
            span.set_attribute(REQUEST_MODEL, result.model)
    span.set_attribute(UPSTREAM_ATTEMPTS, 0 if result.cached else result.attempts)


async def traced(index: int, attributes: dict[str, str | int | bool], call: Awaitable[T]) -> T:
    """``call`` inside its own span (a hit's, or the grouped call's), ended with the
    outcome's status name, the provider, model and upstream attempts; never the prompt."""
    with service_tracer("gateway").start_as_current_span(
        _span_name(index),
        attributes=attributes,
        record_exception=False,
        set_status_on_exception=False,
    ) as span:
        try:
            result = await call
        except BaseException as err:
            outcome = HitError.outcome(err)
            span.set_attribute("gensearch.outcome", outcome)
            span.set_status(trace.StatusCode.ERROR, outcome)
            if isinstance(err, ServiceError):
                # What the generation service said of the failed call (errors.py keys).
                if err.metadata.get("provider"):
                    span.set_attribute(PROVIDER, err.metadata["provider"])
                attempts = metadata_count(err.metadata, ATTEMPTS)
                if attempts is not None:
                    span.set_attribute(UPSTREAM_ATTEMPTS, attempts)
            raise
        span.set_attribute("gensearch.outcome", "OK")
        if isinstance(result, gw_pb.GenerationResult):
            _answered(span, attributes, result)
        return result


def cached_span(
    index: int, attributes: dict[str, str | int | bool], result: gw_pb.GenerationResult
) -> None:
    """A hit answered from the generation cache has its span too (no call under it)."""
    attributes = {**attributes, CACHE_HIT: True, "gensearch.outcome": "OK"}
    with service_tracer("gateway").start_as_current_span(
        _span_name(index), attributes=attributes
    ) as span:
        _answered(span, attributes, result)


class GenerativeSearch:
    def __init__(self, backends: Backends) -> None:
        self._b = backends

    async def plan(self, request: SearchLike, caller: Caller, call_remaining: float | None) -> Plan:
        generative_request.validate(request, self._b.settings)
        await generative_request.check_response_format(
            request.generate, self._b.settings, self._b.schema_checks
        )
        loop = asyncio.get_running_loop()
        call_deadline = None if call_remaining is None else loop.time() + call_remaining
        g = request.generate
        # Parsed once: its syntax is checked here, its names against the schema once the
        # collection is known, and the plan renders it per hit.
        single = parse_single(g)
        wants_generation = bool(g.single_prompt or g.grouped_task)
        # Each once, in one pass: names are checked against the schema only later.
        extra = list(dict.fromkeys([*(single.properties if single else ()), *g.grouped_properties]))
        retrieval = self._b.clients.retrieval

        if not wants_generation:
            # Just a search: the request's own rerank block (a collection's default is for
            # generation), no expansion.
            search = generative_request.search_request(request, extra)
            rerank.apply(search, request, None)
            response = await retrieval.search(search, caller, call_remaining)
            return Plan(hits=list(response.hits))

        # The search phase ends within an hour, whatever the caller's deadline (or none).
        search_deadline = generative_request.search_phase_deadline(call_remaining)
        info, found, expand_budget = await self._search(
            request, single, extra, caller, search_deadline
        )
        expansion: chunks.Expansion | None = None
        if expand_budget is not None:
            remaining = time_left(search_deadline)
            expansion = await chunks.expand(
                found.hits,
                info,
                request.expand_context,
                budget=expand_budget,
                text_fields=list(g.grouped_properties)
                or list(request.return_properties)
                or info.text_properties,
                retrieval=retrieval,
                caller=caller,
                timeout=remaining,
            )
        return await self.build(
            hits=list(found.hits),
            info=info,
            generate=g,
            single=single,
            return_properties=list(request.return_properties),
            streaming=isinstance(request, gw_pb.StreamGenerativeSearchRequest),
            call_deadline=call_deadline,
            caller=caller,
            expansion=expansion,
        )

    async def _search(
        self,
        request: SearchLike,
        single: Template | None,
        extra: list[str],
        caller: Caller,
        search_deadline: float,
    ) -> tuple[CollectionInfo, ret_pb.SearchResponse, int | None]:
        """The collection, the search (reranked: the request's block, else the collection's)
        and, with ``expand_context``, the passages' token budget; each call within what is
        left before ``search_deadline`` (a loop time)."""
        catalog = self._b.catalog
        if request.HasField("expand_context"):
            # The collection first: its chunking shapes the search (the chunking properties
            # come back with the hits) and is checked before any search or LLM call.
            info: CollectionInfo | None = await catalog.get(
                request.collection, caller, time_left(search_deadline)
            )
        else:
            # Read moments ago: known without a call (else read beside the search, below).
            info = catalog.peek(request.collection, caller)
        expand_budget = None
        if info is not None:
            check_templates(request.generate, single, info)
            expand_budget = chunks.budget_for(request, info, self._b.settings)
            if expand_budget is not None:
                chunking = info.collection.chunking
                wanted = (chunking.document_property, chunking.order_property)
                extra = extra + [p for p in wanted if p not in extra]
        search = generative_request.search_request(request, extra)
        if info is not None:
            # The collection's default rerank is known, and the search alone is awaited
            # (no tasks to run two calls at once).
            rerank.apply(search, request, info)
            found = await self._b.clients.retrieval.search(
                search, caller, time_left(search_deadline)
            )
        else:
            # Concurrent with GetCollection, so the collection's default rerank is not
            # known here: retrieval applies it (it reads the collection for the search
            # anyway), in this one search.
            rerank.apply_or_default(search, request)
            info, found = await self._collection_and_search(
                request, single, search, caller, time_left(search_deadline)
            )
        return info, found, expand_budget

    async def _collection_and_search(
        self,
        request: SearchLike,
        single: Template | None,
        search: ret_pb.SearchRequest,
        caller: Caller,
        call_remaining: float | None,
    ) -> tuple[CollectionInfo, ret_pb.SearchResponse]:
        """The collection and the search, at once; the templates checked against it."""
        results = await asyncio.gather(
            self._b.catalog.get(request.collection, caller, call_remaining),
            self._b.clients.retrieval.search(search, caller, call_remaining),
            return_exceptions=True,
        )
        got, searched = results[0], results[1]
        if isinstance(got, BaseException):
            raise got
        # The templates are checked before the search's own error surfaces: a template
        # naming an unknown property also makes the widened return_properties fail, and
        # the caller must hear about the field they wrote, not the one we added.
        assert isinstance(got, CollectionInfo)
        check_templates(request.generate, single, got)
        if isinstance(searched, BaseException):
            raise searched
        assert isinstance(searched, ret_pb.SearchResponse)
        return got, searched

    async def build(
        self,
        *,
        hits: list[ret_pb.Hit],
        info: CollectionInfo | None,
        generate: gw_pb.Generate,
        single: Template | None,
        return_properties: list[str],
        streaming: bool,
        call_deadline: float | None,
        caller: Caller,
        failed: dict[int, HitError] | None = None,
        expansion: chunks.Expansion | None = None,
        properties: Sequence[Mapping[str, Any]] | None = None,
    ) -> Plan:
        """The generation plan over ``hits`` (found by a search, or named by the caller:
        ``named_objects``), templates already checked (``single``: the parsed
        ``generate.single_prompt``, if any). ``failed`` hits (objects not found)
        keep their error, get no call and stay out of the grouped prompt. ``info`` is None
        for inline objects without a collection. ``properties``: each hit's, as read
        already (inline objects' type check), if they were."""
        g = generate
        s = self._b.settings
        loop = asyncio.get_running_loop()
        collection = info.collection if info is not None else ret_pb.Collection()
        plan = Plan(
            hits=hits,
            single=single is not None,
            grouped=bool(g.grouped_task),
            debug=g.debug,
            stream_tokens=streaming and g.stream_tokens,
            failed=dict(failed or {}),
            max_concurrency=generative_request.max_concurrency(g, s),
            # Measured now: the search already spent part of the caller's deadline.
            timeout=generative_request.budget(g, call_deadline, s),
            max_buffered=s.stream_buffered_deltas,
        )
        deadline = plan.deadline = loop.time() + (plan.timeout or 0)
        plan.timeout_field = generative_request.budget_field(g, plan.timeout)
        options = Options.resolve(g, g.model, collection.generative, s)
        await self._b.models.check_choices(
            options, caller, generative_request.models_check_seconds(plan.timeout)
        )
        cache = self._b.cache
        policy = generation_cache_policy(g, collection, s) if cache.available else Policy()
        scope = Scope(caller.tenant, collection.name, collection.create_time.ToNanoseconds())
        keys: dict[int, str] = {}
        key_of = (
            None if policy.mode is generation_cache.Mode.BYPASS else cache.keys_for(scope, options)
        )
        # Each value converted when a prompt first reads it: a template names a few
        # properties, and the rest (inline objects may hold ~930,000 values) were all
        # converted for nothing (hit_properties).
        if properties is None:
            properties = [HitProperties(hit.properties) for hit in plan.hits]
        if expansion is not None:
            # Each hit's prompt sees its passage; the grouped prompt, the passages.
            plan.passages = expansion.protos()
            properties = [
                expansion.hit_properties(hit.id) or props
                for hit, props in zip(plan.hits, properties, strict=True)
            ]

        def span_attributes(index: int) -> dict[str, str | int | bool]:
            object_id = "" if index == GROUPED else plan.hits[index].id
            return _hit_attributes(index, len(plan.hits), object_id, options)

        def job(index: int, prompt: str) -> Job[gw_pb.GenerationResult]:
            attributes = span_attributes(index)
            messages = [gen_pb.Message(role=gen_pb.ROLE_USER, content=prompt)]
            if key_of is not None:
                keys[index] = key_of(messages)

            async def run(emit: Emit) -> gw_pb.GenerationResult:
                call = complete(
                    self._b.clients.generation,
                    caller,
                    options,
                    messages,
                    # Slightly past the fan-out budget: the fan-out cancels first and
                    # reports DEADLINE_EXCEEDED itself; this bounds the downstream call, and
                    # tells the generation service how long a hit may wait for the
                    # provider's limits (a longer wait fails the hit at once, saying why).
                    # (call_deadline.outlasting: the budget and generation's own margin.)
                    timeout=outlasting(time_left(deadline, floor=0)),
                    emit=emit if plan.stream_tokens else None,
                    restart=lambda: emit("", restart=True),
                    prompt_field=(
                        "generate.grouped_task" if index == GROUPED else "generate.single_prompt"
                    ),
                    max_tokens_field=options.max_tokens_field,
                )
                result = await traced(index, attributes, call)
                if policy.mode.writes:
                    await cache.store(
                        scope,
                        keys[index],
                        result,
                        policy.ttl,
                        wait=time_left(deadline, floor=0) - STORE_MARGIN,
                    )
                return result

            return run

        if single is not None:
            rendered = 0  # the characters of this request's prompts so far
            for index, props in enumerate(properties):
                if index in plan.failed:
                    continue
                try:
                    prompt = templates.render(
                        single,
                        props,
                        max_chars=s.max_rendered_prompt_chars,
                        field="generate.single_prompt",
                    )
                except ServiceError as err:
                    plan.failed[index] = HitError.of(err)
                    continue
                if rendered + len(prompt) > s.max_rendered_request_chars:
                    plan.failed[index] = HitError.of(
                        templates.over_request_budget(
                            len(prompt),
                            s.max_rendered_request_chars,
                            field="generate.single_prompt",
                        )
                    )
                    continue
                rendered += len(prompt)
                plan.prompts[index] = prompt
                plan.jobs[index] = job(index, prompt)
            FANOUT_SIZE.observe(len(plan.hits))
        if g.grouped_task:
            # Only what the caller asked to see: not the extras fetched for the templates.
            only = list(g.grouped_properties) or return_properties
            present: list[Mapping[str, Any]]
            if expansion is not None:
                present = [p.properties for p in expansion.passages]
            else:
                present = [p for i, p in enumerate(properties) if i not in (failed or {})]
            grouped = grouped_prompt(g.grouped_task, present, only)
            plan.prompts[GROUPED] = grouped
            limit = s.max_rendered_prompt_chars
            if not present:
                # Nothing to write on (no hit, or every named object missing): a call
                # would be charged for the model's guess over "(no results)".
                plan.jobs[GROUPED] = _refused(
                    FailedPrecondition(
                        "generate.grouped_task: no object to generate on (the search found "
                        "none, or every one named was missing), so no call was made",
                        field="generate.grouped_task",
                        reason="NO_RESULTS",
                    )
                )
            elif len(grouped) > limit:
                # The grouped result's own error, in the gateway's words: generation's
                # refusal named `messages`, a field the caller never sent.
                plan.jobs[GROUPED] = _refused(
                    templates.PromptTooLong(
                        f"the grouped prompt would be {len(grouped)} characters, longer than "
                        f"{limit} ({templates.MAX_RENDERED_SETTING}): fewer hits "
                        "(limit) or fewer properties (grouped_properties)",
                        field="generate.grouped_task",
                        metadata={
                            "max_chars": str(limit),
                            "chars": str(len(grouped)),
                            "setting": templates.MAX_RENDERED_SETTING,
                        },
                    )
                )
            else:
                plan.jobs[GROUPED] = job(GROUPED, grouped)
        if policy.mode.reads:
            # Within the budget: a Redis that does not answer is a miss, not a call that
            # outlives its caller's deadline.
            plan.cached = await cache.get_many(keys, timeout=time_left(deadline, floor=0))
            for index, result in plan.cached.items():
                del plan.jobs[index]
                cached_span(index, span_attributes(index), result)
        if return_properties:
            _strip(plan.hits, set(return_properties))
        return plan

    # -- running ---------------------------------------------------------------------------
    async def run(
        self, request: gw_pb.GenerativeSearchRequest, caller: Caller, call_remaining: float | None
    ) -> gw_pb.GenerativeSearchResponse:
        plan = await self.plan(request, caller, call_remaining)
        response = await respond(plan, gw_pb.GenerativeSearchResponse())
        response.passages.extend(plan.passages)
        return response

    async def stream(
        self,
        request: gw_pb.StreamGenerativeSearchRequest,
        caller: Caller,
        call_remaining: float | None,
    ) -> AsyncIterator[gw_pb.StreamGenerativeSearchResponse]:
        plan = await self.plan(request, caller, call_remaining)
        async for event in stream_events(plan, gw_pb.StreamGenerativeSearchResponse):
            yield event


def _refused(err: ServiceError) -> Job[gw_pb.GenerationResult]:
    """A job that fails with ``err`` before any call, as a failed call would."""

    async def run(emit: Emit) -> gw_pb.GenerationResult:
        raise err

    return run


def parse_single(g: gw_pb.Generate) -> Template | None:
    if not g.single_prompt:
        return None
    return templates.parse(g.single_prompt, field="generate.single_prompt")


def check_templates(g: gw_pb.Generate, single: Template | None, info: CollectionInfo) -> None:
    """The templates (``single``: ``g.single_prompt`` parsed) name only properties of the
    collection."""
    if single is not None:
        templates.check_single_prompt(single, info.properties, field="generate.single_prompt")
    templates.check_known(
        g.grouped_properties, info.properties, field="generate.grouped_properties"
    )


def generation_cache_policy(
    g: gw_pb.Generate, collection: ret_pb.Collection, settings: GatewaySettings
) -> Policy:
    defaults = collection.generative.cache
    return generation_cache.resolve(
        g.cache.mode,
        g.cache.ttl if g.cache.HasField("ttl") else None,
        defaults.generation,
        defaults,
        settings,
        field="generate.cache",
    )


R = TypeVar("R", gw_pb.GenerativeSearchResponse, gw_pb.GenerateOnObjectsResponse)
E = TypeVar("E", gw_pb.StreamGenerativeSearchResponse, gw_pb.StreamGenerateOnObjectsResponse)


async def respond(plan: Plan, response: R) -> R:
    """Run ``plan`` and fill ``response`` (either RPC's unary answer: same fields)."""
    outcomes: dict[int, Outcome[gw_pb.GenerationResult]] = {
        i: Outcome(i, error=e) for i, e in plan.failed.items()
    }
    outcomes.update({i: Outcome(i, value=v) for i, v in plan.cached.items()})
    if plan.jobs:
        outcomes.update(await collect_outcomes(plan.events()))
    for index, hit in enumerate(plan.hits):
        generative = response.hits.add(hit=hit)
        # A hit that failed before any call (a named object not found) says so even when
        # only a grouped task runs: its error is its own, as a per-object result would be.
        if plan.single or index in plan.failed:
            result = plan.result(outcomes[index])
            generative.generation.CopyFrom(result)
            add_usage(response.usage, result.usage)
            response.upstream_calls += result.upstream_calls
    if plan.grouped:
        result = plan.result(outcomes[GROUPED])
        response.grouped.CopyFrom(result)
        add_usage(response.usage, result.usage)
        response.upstream_calls += result.upstream_calls
    return response


async def stream_events(plan: Plan, Event: type[E]) -> AsyncIterator[E]:
    """Run ``plan`` as events (either RPC's stream: same events): hits; errors known
    before any call and cached answers; then results as calls finish; grouped; done."""
    yield Event(hits=gw_pb.HitsEvent(hits=plan.hits, passages=plan.passages))
    # Calls known to have failed before any LLM call, and cached answers, spent nothing.
    spent = Spent()
    for index, error in sorted(plan.failed.items()):
        result = plan.result(Outcome(index, error=error))
        yield Event(hit_result=gw_pb.HitResultEvent(hit_index=index, generation=result))
    grouped: gw_pb.GenerationResult | None = None
    for index, value in sorted(plan.cached.items()):
        result = plan.result(Outcome(index, value=value))
        if plan.stream_tokens and result.result:
            # The whole answer as one delta, so a client that assembles tokens has it.
            token = gw_pb.TokenEvent(delta=result.result)
            if index == GROUPED:
                token.grouped = True
            else:
                token.hit_index = index
            yield Event(token=token)
        if index == GROUPED:
            grouped = result
        else:
            yield Event(hit_result=gw_pb.HitResultEvent(hit_index=index, generation=result))
    if plan.jobs:
        async for event in plan.events():
            if isinstance(event, Delta):
                token = gw_pb.TokenEvent(delta=event.text, restart=event.restart)
                if event.index == GROUPED:
                    token.grouped = True
                else:
                    token.hit_index = event.index
                yield Event(token=token)
                continue
            result = plan.result(event)
            spent.add(result)
            if event.index == GROUPED:
                grouped = result  # sent after every per-hit result
            else:
                yield Event(
                    hit_result=gw_pb.HitResultEvent(hit_index=event.index, generation=result)
                )
    if grouped is not None:
        yield Event(grouped=grouped)
    yield Event(done=gw_pb.DoneEvent(usage=spent.usage, upstream_calls=spent.upstream_calls))


def _strip(hits: list[ret_pb.Hit], keep: set[str]) -> None:
    for hit in hits:
        for name in [n for n in hit.properties.fields if n not in keep]:
            del hit.properties.fields[name]
