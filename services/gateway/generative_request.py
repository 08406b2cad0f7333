"""A GenerativeSearch (or StreamGenerativeSearch) request: its checks, the search it makes
and the generation budget it gets."""

from __future__ import annotations

import asyncio

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.call_deadline import room_before_cut
from services.common.errors import InvalidArgument, MissingField, out_of_range
from services.common.fair_executor import FairExecutor
from services.common.json_schema import (
    check_schema_fairly,
    format_name,
    schema_data,
)
from services.common.repeats import refuse_repeats
from services.common.settings import MAX_WAIT_SECONDS
from services.common.well_known import duration_seconds
from services.gateway import generation_cache
from services.gateway.request_parts import (
    check_fallback,
    check_length,
    check_sampling,
    copy_query,
    require,
)
from services.gateway.settings import GatewaySettings

SearchLike = gw_pb.GenerativeSearchRequest | gw_pb.StreamGenerativeSearchRequest
_GENERATE = "generate."


def validate(request: SearchLike, settings: GatewaySettings) -> None:
    s = settings
    require(request, "collection")
    refuse_repeats(request.return_properties, "return_properties")
    if request.limit < 0 or request.limit > s.max_hits:
        raise out_of_range(
            f"limit must be between 0 and {s.max_hits}",
            field="limit",
            bound=s.max_hits,
            setting="GENSEARCH_GATEWAY_MAX_HITS",
        )
    validate_generate(request.generate, s)
    # No generate block: a plain search. A block with no task is a mistake, refused as
    # GenerateOnObjects refuses it, not a search that silently generates nothing.
    if request.HasField("generate"):
        require_task(request.generate)


def require_task(g: gw_pb.Generate) -> None:
    if not (g.single_prompt or g.grouped_task):
        raise MissingField(
            "give generate.single_prompt, generate.grouped_task or both",
            field="generate.single_prompt",
        )


def validate_generate(g: gw_pb.Generate, settings: GatewaySettings) -> None:
    """The ``generate`` block, whatever it runs over (a search, named objects)."""
    s = settings
    check_length(g, ("single_prompt", "grouped_task"), s.max_prompt_chars, prefix=_GENERATE)
    if g.grouped_task and not g.grouped_task.strip():
        # The model got the hits and no instruction.
        raise InvalidArgument(
            "generate.grouped_task is blank: say what to do with the hits, or leave it unset",
            field="generate.grouped_task",
        )
    refuse_repeats(g.grouped_properties, "generate.grouped_properties")
    if g.grouped_properties and not g.grouped_task:
        # The missing one is the task (the properties say what it reads): named as every
        # missing field is, so a client tells "you forgot X" by reason alone.
        raise MissingField(
            "generate.grouped_task is required when generate.grouped_properties is set",
            field="generate.grouped_task",
        )
    if g.max_concurrency < 0:
        raise InvalidArgument(
            "max_concurrency must not be negative", field="generate.max_concurrency"
        )
    if g.HasField("timeout"):
        timeout = duration_seconds(g.timeout, "generate.timeout")
        if timeout <= 0:
            raise InvalidArgument("timeout must be positive", field="generate.timeout")
        if timeout > MAX_WAIT_SECONDS:
            # 1e10 s made a gRPC deadline past its range: every hit failed at once with
            # DEADLINE_EXCEEDED "the generation service did not answer in time".
            raise InvalidArgument(
                f"timeout must be at most {MAX_WAIT_SECONDS} s (a day)",
                field="generate.timeout",
                reason="OUT_OF_RANGE",
                metadata={"max_seconds": str(MAX_WAIT_SECONDS)},
            )
    check_sampling(g, prefix=_GENERATE)
    check_structured_options(g, s)
    # The cache block's own checks (mode, ttl bounds), before any search or call.
    generation_cache.check_block(
        g.cache.mode,
        g.cache.ttl if g.cache.HasField("ttl") else None,
        s,
        field="generate.cache",
    )


def check_structured_options(g: gw_pb.Generate, s: GatewaySettings) -> None:
    """stop, fallback, base_url and response_format's name: bounded and well formed before any
    call (the generation service checks them again; here a mistake is one error, not one per
    hit). Its schema: ``check_response_format``. Provider and model names are checked
    against ListModels by the plan."""
    if len(g.stop) > s.max_stop_sequences:
        # The bound and its setting in the ErrorInfo, as ``limit`` gives them: a client
        # trims by them without parsing the message (before: the field alone).
        raise out_of_range(
            f"at most {s.max_stop_sequences} stop sequences are allowed",
            field="generate.stop",
            bound=s.max_stop_sequences,
            setting="GENSEARCH_GATEWAY_MAX_STOP_SEQUENCES",
        )
    for i, stop in enumerate(g.stop):
        if not stop or len(stop) > s.max_stop_chars:
            raise InvalidArgument(
                f"a stop sequence has 1 to {s.max_stop_chars} characters",
                field=f"generate.stop[{i}]",
                metadata={
                    "max_chars": str(s.max_stop_chars),
                    "setting": "GENSEARCH_GATEWAY_MAX_STOP_CHARS",
                },
            )
    check_fallback(g.fallback, s.max_fallbacks, "generate.fallback")
    if g.base_url and not g.base_url.strip():
        # As the generation service refuses it: blanks are no URL, neither unset (the
        # operator's endpoint) nor a host the allowlist could refuse.
        raise InvalidArgument("base_url must not be blank", field="generate.base_url")
    if g.HasField("response_format"):
        format_name(g.response_format.name, "generate.response_format.name")


async def check_response_format(
    g: gw_pb.Generate, s: GatewaySettings, schema_checks: FairExecutor
) -> None:
    """response_format's schema, checked once here (not once per hit by the generation
    service), its metaschema check on ``schema_checks``' thread, tenants in turn."""
    if g.HasField("response_format"):
        field = "generate.response_format.json_schema"
        limits = s.schema_limits()
        await check_schema_fairly(
            schema_data(g.response_format.json_schema, field, limits), field, limits, schema_checks
        )


def search_request(request: SearchLike, extra: list[str]) -> ret_pb.SearchRequest:
    """The caller's search, returning also the ``extra`` properties the templates need
    when the caller narrowed ``return_properties``."""
    search = ret_pb.SearchRequest(
        collection=request.collection,
        limit=request.limit,
        offset=request.offset,
        return_properties=request.return_properties,
    )
    copy_query(request, search)
    if request.return_properties:
        # A set, not the repeated field: a scan of it per name was quadratic in the lists.
        asked = set(request.return_properties)
        search.return_properties.extend(name for name in extra if name not in asked)
    return search


def max_concurrency(g: gw_pb.Generate, settings: GatewaySettings) -> int | None:
    """Per-hit calls at once; None: every hit (no cap asked for nor configured)."""
    wanted = g.max_concurrency or settings.default_max_concurrency
    cap = settings.max_concurrency_limit
    if not wanted:
        return cap or None
    return min(wanted, cap) if cap else wanted


def budget_field(g: gw_pb.Generate, budget: float | None) -> str | None:
    """``generate.timeout`` when the request's timeout set the generation phase's
    ``budget`` (shorter than what the call's deadline left): a hit it cuts off names the
    field to raise, as any error about a client's field does; None when the call's
    deadline (or the default) set it."""
    if budget is None or not g.HasField("timeout"):
        return None
    return "generate.timeout" if duration_seconds(g.timeout, "generate.timeout") <= budget else None


def models_check_seconds(budget: float | None) -> float:
    """Seconds the check of the request's providers and models may take (ListModels, when
    the gateway's copy is cold): at most 2 s, and never past the generation ``budget``. A
    budget the search spent already (0: ``room_before_cut`` found no time left) gets a
    moment only; the check is skipped when generation does not answer in time, and each
    hit then says it ran out of time. ``budget or 2.0`` gave it 2 s past the caller's
    deadline, and the chassis' cut ended the whole call, its search results lost."""
    if budget is None:
        return 2.0
    return min(max(budget, 0.001), 2.0)


def search_phase_deadline(call_remaining: float | None) -> float:
    """The loop time by which the search phase (the collection, the search, the passages;
    GenerateOnObjects' read of its objects) must end: SEARCH_PHASE_SECONDS from now, or
    the caller's deadline if sooner. Whatever the caller's deadline, or none: the
    generation cache's drop mark must outlive a search that read the collection before
    its delete (generation_cache.LONGEST_SEARCH_SECONDS), and retrieval's own timeouts
    (GENSEARCH_RETRIEVAL_QDRANT_TIMEOUT up to a day a call) bound it no better than none."""
    seconds = generation_cache.SEARCH_PHASE_SECONDS
    if call_remaining is not None:
        seconds = min(seconds, call_remaining)
    return asyncio.get_running_loop().time() + seconds


def budget(g: gw_pb.Generate, call_deadline: float | None, settings: GatewaySettings) -> float:
    """Seconds the generation phase may take: the request's timeout, else the call's
    deadline less a margin, else the default."""
    value = duration_seconds(g.timeout, "generate.timeout") if g.HasField("timeout") else None
    if call_deadline is not None:
        call_remaining = call_deadline - asyncio.get_running_loop().time()
        # Leave time to send the partial results before the caller gives up, and before
        # the chassis' own cut with its generic message (call_deadline.upstream_margin).
        cap = room_before_cut(call_remaining)
        value = cap if value is None else min(value, cap)
    if value is None:
        return settings.default_generation_timeout
    # At most a day, as generate.timeout is, whatever the caller's deadline: the generation
    # cache's drop mark lives the longest a search runs (LONGEST_SEARCH_SECONDS: this cap
    # plus the search phase's, SEARCH_PHASE_SECONDS, which generative.plan enforces).
    return min(value, MAX_WAIT_SECONDS)
