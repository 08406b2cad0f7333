"""Generative search: search, then one LLM call per hit and/or one over all hits.

The plan (search, templates checked against the schema, prompts rendered per hit) is
made before any LLM call; the calls then fan out, bounded and under one budget, and every
hit ends with its own result or its own error.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format

from services.common.errors import InvalidArgument, ServiceError, from_rpc_error
from services.gateway import templates
from services.gateway.catalog import Catalog, CollectionInfo
from services.gateway.clients import Caller, Downstream
from services.gateway.errors import HitError
from services.gateway.fanout import Delta, Emit, Job, Outcome, fan_out, fan_out_stream
from services.gateway.generator import Options, add_usage, complete, error_result
from services.gateway.grouped import grouped_prompt
from services.gateway.metrics import FANOUT_SIZE, GENERATIONS
from services.gateway.models import ModelCatalog
from services.gateway.settings import GatewaySettings

GROUPED = -1
SearchLike = gw_pb.GenerativeSearchRequest | gw_pb.StreamGenerativeSearchRequest
_QUERIES = ("near_text", "near_vector", "keyword", "hybrid")


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
    max_concurrency: int = 1
    timeout: float | None = None

    def result(self, outcome: Outcome[gw_pb.GenerationResult]) -> gw_pb.GenerationResult:
        """The proto for one outcome (called once per outcome: it also counts it)."""
        prompt = self.prompts.get(outcome.index, "") if self.debug else ""
        kind = "grouped" if outcome.index == GROUPED else "single"
        if outcome.error is not None:
            GENERATIONS.labels(kind, outcome.error.status).inc()
            return error_result(outcome.error, prompt)
        GENERATIONS.labels(kind, "OK").inc()
        assert outcome.value is not None
        outcome.value.prompt = prompt
        return outcome.value


def _seconds(duration: Any) -> float:
    return float(duration.seconds) + duration.nanos / 1e9


class GenerativeSearch:
    def __init__(
        self,
        downstream: Downstream,
        catalog: Catalog,
        models: ModelCatalog,
        settings: GatewaySettings,
    ):
        self._downstream = downstream
        self._catalog = catalog
        self._models = models
        self._settings = settings

    # -- validation ------------------------------------------------------------------------
    def _validate(self, request: SearchLike) -> None:
        s = self._settings
        if not request.collection:
            raise InvalidArgument("collection is required", field="collection")
        if request.limit < 0 or request.limit > s.max_hits:
            raise InvalidArgument(
                f"limit must be between 0 and {s.max_hits}", field="limit", reason="OUT_OF_RANGE"
            )
        g = request.generate
        for name in ("single_prompt", "grouped_task"):
            if len(getattr(g, name)) > s.max_prompt_chars:
                raise InvalidArgument(
                    f"{name} is longer than {s.max_prompt_chars} characters",
                    field=f"generate.{name}",
                )
        if g.grouped_properties and not g.grouped_task:
            raise InvalidArgument(
                "grouped_properties needs a grouped_task", field="generate.grouped_properties"
            )
        if g.max_concurrency < 0:
            raise InvalidArgument(
                "max_concurrency must not be negative", field="generate.max_concurrency"
            )
        if g.HasField("timeout") and _seconds(g.timeout) <= 0:
            raise InvalidArgument("timeout must be positive", field="generate.timeout")
        if g.HasField("temperature") and not 0 <= g.temperature <= 2:
            raise InvalidArgument(
                "temperature must be between 0 and 2", field="generate.temperature"
            )
        if g.HasField("max_tokens") and g.max_tokens < 1:
            raise InvalidArgument("max_tokens must be at least 1", field="generate.max_tokens")

    # -- planning --------------------------------------------------------------------------
    def _search_request(self, request: SearchLike, extra: list[str]) -> ret_pb.SearchRequest:
        search = ret_pb.SearchRequest(
            collection=request.collection,
            limit=request.limit,
            offset=request.offset,
            return_properties=request.return_properties,
        )
        kind = request.WhichOneof("query")
        if kind is not None:
            getattr(search, kind).CopyFrom(getattr(request, kind))
        if request.HasField("filter"):
            search.filter.CopyFrom(request.filter)
        if request.return_properties:
            # The templates need their properties even when the caller did not ask for them.
            for name in extra:
                if name not in search.return_properties:
                    search.return_properties.append(name)
        return search

    async def _search(
        self, search: ret_pb.SearchRequest, caller: Caller, timeout: float | None
    ) -> ret_pb.SearchResponse:
        try:
            return await self._downstream.retrieval.Search(
                search, metadata=caller.identity, timeout=timeout
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, "retrieval") from None

    def _options(self, g: gw_pb.Generate, info: CollectionInfo) -> Options:
        return Options.resolve(g, g.model, info.generative, self._settings)

    def _budget(self, g: gw_pb.Generate, call_deadline: float | None) -> float:
        budget = _seconds(g.timeout) if g.HasField("timeout") else None
        if call_deadline is not None:
            call_remaining = call_deadline - asyncio.get_running_loop().time()
            # Leave time to send the partial results before the caller gives up.
            cap = call_remaining - min(0.25, call_remaining * 0.1)
            budget = cap if budget is None else min(budget, cap)
        return self._settings.default_generation_timeout if budget is None else budget

    async def plan(self, request: SearchLike, caller: Caller, call_remaining: float | None) -> Plan:
        self._validate(request)
        loop = asyncio.get_running_loop()
        call_deadline = None if call_remaining is None else loop.time() + call_remaining
        g = request.generate
        single_field, grouped_field = "generate.single_prompt", "generate.grouped_properties"
        single = templates.parse(g.single_prompt, field=single_field) if g.single_prompt else None
        wants_generation = bool(g.single_prompt or g.grouped_task)
        extra = list(single.properties) if single else []
        extra += [p for p in g.grouped_properties if p not in extra]
        search = self._search_request(request, extra)

        if not wants_generation:
            response = await self._search(search, caller, call_remaining)
            return Plan(hits=list(response.hits))

        results = await asyncio.gather(
            self._catalog.get(request.collection, caller, call_remaining),
            self._search(search, caller, call_remaining),
            return_exceptions=True,
        )
        info, found = results[0], results[1]
        if isinstance(info, BaseException):
            raise info
        # The templates are checked before the search's own error surfaces: a template naming
        # an unknown property also makes the widened return_properties fail, and the caller
        # must hear about the field they wrote, not the one we added.
        if single is not None:
            templates.parse_single_prompt(g.single_prompt, info.properties, field=single_field)
        templates.check_known(g.grouped_properties, info.properties, field=grouped_field)
        if isinstance(found, BaseException):
            raise found
        assert isinstance(info, CollectionInfo) and isinstance(found, ret_pb.SearchResponse)

        s = self._settings
        plan = Plan(
            hits=list(found.hits),
            single=single is not None,
            grouped=bool(g.grouped_task),
            debug=g.debug,
            stream_tokens=isinstance(request, gw_pb.StreamGenerativeSearchRequest)
            and g.stream_tokens,
            max_concurrency=min(
                g.max_concurrency or s.default_max_concurrency, s.max_concurrency_limit
            ),
            # Measured now: the search already spent part of the caller's deadline.
            timeout=self._budget(g, call_deadline),
        )
        options = self._options(g, info)
        await self._models.check_provider(
            options.provider, "generate.provider", caller, min(plan.timeout or 2.0, 2.0)
        )
        deadline = loop.time() + (plan.timeout or 0)
        properties = [json_format.MessageToDict(hit.properties) for hit in plan.hits]

        def job(prompt: str) -> Job[gw_pb.GenerationResult]:
            async def run(emit: Emit) -> gw_pb.GenerationResult:
                messages = [gen_pb.Message(role=gen_pb.ROLE_USER, content=prompt)]
                # Slightly past the fan-out budget: the fan-out cancels first and reports
                # DEADLINE_EXCEEDED itself; this only bounds the downstream call.
                timeout = max(deadline - loop.time(), 0) + 1.0
                return await complete(
                    self._downstream,
                    caller,
                    options,
                    messages,
                    timeout=timeout,
                    emit=emit if plan.stream_tokens else None,
                )

            return run

        if single is not None:
            for index, props in enumerate(properties):
                try:
                    prompt = templates.render(single, props)
                except ServiceError as err:
                    plan.failed[index] = HitError.of(err)
                    continue
                plan.prompts[index] = prompt
                plan.jobs[index] = job(prompt)
            FANOUT_SIZE.observe(len(plan.hits))
        if g.grouped_task:
            # Only what the caller asked to see: not the extras fetched for the templates.
            only = list(g.grouped_properties) or list(request.return_properties)
            grouped = grouped_prompt(g.grouped_task, properties, only)
            plan.prompts[GROUPED] = grouped
            plan.jobs[GROUPED] = job(grouped)
        if request.return_properties:
            _strip(plan.hits, set(request.return_properties))
        return plan

    # -- running ---------------------------------------------------------------------------
    async def run(
        self, request: gw_pb.GenerativeSearchRequest, caller: Caller, call_remaining: float | None
    ) -> gw_pb.GenerativeSearchResponse:
        plan = await self.plan(request, caller, call_remaining)
        response = gw_pb.GenerativeSearchResponse()
        outcomes: dict[int, Outcome[gw_pb.GenerationResult]] = {
            i: Outcome(i, error=e) for i, e in plan.failed.items()
        }
        if plan.jobs:
            outcomes.update(
                await fan_out(
                    plan.jobs,
                    max_concurrency=plan.max_concurrency,
                    timeout=plan.timeout,
                    unbounded={GROUPED},
                )
            )
        for index, hit in enumerate(plan.hits):
            generative = response.hits.add(hit=hit)
            if plan.single:
                result = plan.result(outcomes[index])
                generative.generation.CopyFrom(result)
                add_usage(response.usage, result.usage)
        if plan.grouped:
            result = plan.result(outcomes[GROUPED])
            response.grouped.CopyFrom(result)
            add_usage(response.usage, result.usage)
        return response

    async def stream(
        self,
        request: gw_pb.StreamGenerativeSearchRequest,
        caller: Caller,
        call_remaining: float | None,
    ) -> AsyncIterator[gw_pb.StreamGenerativeSearchResponse]:
        Event = gw_pb.StreamGenerativeSearchResponse
        plan = await self.plan(request, caller, call_remaining)
        yield Event(hits=gw_pb.HitsEvent(hits=plan.hits))
        usage = gen_pb.Usage()
        for index, error in sorted(plan.failed.items()):
            result = plan.result(Outcome(index, error=error))
            yield Event(hit_result=gw_pb.HitResultEvent(hit_index=index, generation=result))
        grouped: gw_pb.GenerationResult | None = None
        if plan.jobs:
            events = fan_out_stream(
                plan.jobs,
                max_concurrency=plan.max_concurrency,
                timeout=plan.timeout,
                unbounded={GROUPED},
            )
            async for event in events:
                if isinstance(event, Delta):
                    token = gw_pb.TokenEvent(delta=event.text)
                    if event.index == GROUPED:
                        token.grouped = True
                    else:
                        token.hit_index = event.index
                    yield Event(token=token)
                    continue
                result = plan.result(event)
                add_usage(usage, result.usage)
                if event.index == GROUPED:
                    grouped = result  # sent after every per-hit result
                else:
                    yield Event(
                        hit_result=gw_pb.HitResultEvent(hit_index=event.index, generation=result)
                    )
        if grouped is not None:
            yield Event(grouped=grouped)
        yield Event(done=gw_pb.DoneEvent(usage=usage))


def _strip(hits: list[ret_pb.Hit], keep: set[str]) -> None:
    for hit in hits:
        for name in [n for n in hit.properties.fields if n not in keep]:
            del hit.properties.fields[name]
