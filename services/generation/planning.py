"""A Generate / StreamGenerate request turned into an ``answering.Plan``: every check
made, every (provider, model) pair of the chain resolved with its key, before any call.

Keys: the primary at the operator's URL gets the caller's ``x-<provider>-api-key`` or the
operator's key variable; at a caller's ``base_url`` only the caller's own key, or none
(the operator's key goes only to the operator's URLs). Fallback pairs are the operator's
configured endpoints, each with its own key the same way.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

from gensearch.generation.v1 import generation_service_pb2 as pb

from services.common.errors import InvalidArgument, MissingField, out_of_range, quote
from services.common.fair_executor import FairExecutor
from services.common.model_names import check_model_name
from services.common.upstream_retry import Deadline, exchange_seconds
from services.generation.answering import Plan
from services.generation.fallback import Target
from services.generation.keys import request_key, resolve_key
from services.generation.metrics import FALLBACK_SKIPS
from services.generation.providers.base import CompletionRequest
from services.generation.registry import ProviderRegistry
from services.generation.validation import (
    CONTEXT_WINDOW_EXCEEDED,
    MAX_MODEL_CHARS_SETTING,
    Limits,
    build_request,
    check_model,
    limit_refusal,
    response_format,
)

log = logging.getLogger("gensearch.generation.planning")

Metadata = Iterable[tuple[str, str | bytes]] | None


@dataclasses.dataclass(frozen=True)
class Planner:
    registry: ProviderRegistry
    limits: Limits
    default_timeout: float
    # See GenerationSettings.fallback_time_share.
    fallback_share: float = 0.5
    # Where response_format schemas not seen before are checked (json_schema), tenants in
    # turn: not on the event loop, which every other caller's call shares.
    schema_checks: FairExecutor = dataclasses.field(
        default_factory=lambda: FairExecutor(thread_name_prefix="schema-check")
    )
    # Where answers are checked against their schema, tenants in turn (json_schema's
    # parse_output_async): apart from the schemas' own checks, so a new schema's check
    # never waits for answers, nor an answer for a new schema.
    answer_checks: FairExecutor = dataclasses.field(
        default_factory=lambda: FairExecutor(thread_name_prefix="answer-check")
    )

    async def plan(
        self,
        msg: pb.GenerateRequest | pb.StreamGenerateRequest,
        metadata: Metadata,
        time_remaining: float | None,
    ) -> Plan:
        fmt = await response_format(msg, self.limits, self.schema_checks)
        provider = self.registry.get(msg.provider)
        base_url = msg.base_url.strip()
        if msg.base_url and not base_url:
            # Blanks are no URL: read as unset, the call went to the operator's endpoint.
            raise InvalidArgument("base_url must not be blank", field="base_url")
        if base_url:
            key = request_key(provider.config, metadata)
            provider = self.registry.at_caller_url(provider, base_url)
        else:
            key = resolve_key(provider.config, metadata)
        request = build_request(
            msg,
            provider.config,
            self.limits,
            key,
            fmt=None if fmt is None else fmt[0],
            check_models=not base_url,
        )
        primary_refusal = limit_refusal(request, provider.config)
        if primary_refusal is not None and _callers_own_max_tokens(primary_refusal, request):
            # The caller's own max_tokens is wrong for the model it named first (alone past
            # its window or its token budget): refused whatever the chain (a fallback that
            # could take it would hide the mistake).
            raise primary_refusal
        chain = [Target(0, provider, request)]
        refusals: list[InvalidArgument | None] = [primary_refusal]
        # Endpoint (provider, model, caller's base URL or "") -> the field that named it.
        named = {(provider.name, request.model, base_url): "primary"}
        if len(msg.fallback) > self.limits.max_fallbacks:
            raise out_of_range(
                f"at most {self.limits.max_fallbacks} fallback pairs are allowed",
                field="fallback",
                bound=self.limits.max_fallbacks,
                setting="GENSEARCH_GENERATION_MAX_FALLBACKS",
            )
        for i, choice in enumerate(msg.fallback):
            where = f"fallback[{i}]"
            if not choice.provider.strip():
                raise MissingField("provider is required", field=f"{where}.provider")
            other = self.registry.get(choice.provider, field=f"{where}.provider")
            # As sent, as for the primary.
            check_model_name(
                choice.model,
                f"{where}.model",
                self.limits.max_model_chars,
                MAX_MODEL_CHARS_SETTING,
            )
            model = choice.model.strip() or other.config.default_model
            check_model(model, other.config, f"{where}.model")
            _check_repeat(named, (other.name, model, ""), where)
            chain.append(
                Target(
                    i + 1,
                    other,
                    dataclasses.replace(
                        request, model=model, api_key=resolve_key(other.config, metadata)
                    ),
                )
            )
            refusals.append(limit_refusal(request, other.config))
        # The caller's deadline bounds everything upstream, retries and fallbacks included,
        # less a margin (call_deadline.upstream_margin, time for the reply to reach the
        # caller, through the gateway too, before the chassis' own cut): a call that fails
        # on it (a wait for the provider's limits, an upstream that does not answer) is
        # told so while the caller still listens, not left to the chassis' generic cut or
        # the caller's own bare DEADLINE_EXCEEDED.
        kept, skipped = _pairs_that_hold(chain, refusals)
        return Plan(
            chain=kept,
            skipped=skipped,
            deadline=Deadline(exchange_seconds(time_remaining, self.default_timeout)),
            share=self.fallback_share,
            checks=self.answer_checks,
            schema=None if fmt is None else fmt[1],
        )


def _callers_own_max_tokens(refusal: InvalidArgument, request: CompletionRequest) -> bool:
    """A refusal of the max_tokens the caller sent on its own: alone past the context
    window, or alone past a whole window of the token budget. A budget refusal of the
    prompt plus max_tokens is the prompt's length as much as the max_tokens (the budget
    check names max_tokens, what a caller can lower, unless the prompt alone is over):
    such a pair stays skippable, as a pair whose window cannot hold the prompt (before, a
    long prompt with a small max_tokens refused the whole call, whatever the chain). A
    provider's own default max_tokens (``request.max_tokens`` None) is no argument of the
    caller's: a pair refused for it stays skippable."""
    if refusal.field != "max_tokens" or request.max_tokens is None:
        return False
    if refusal.reason == CONTEXT_WINDOW_EXCEEDED:
        return True  # the window check names max_tokens only when it alone is over
    # PROVIDER_TOKEN_LIMIT_EXCEEDED: metadata ``tokens`` is the whole window's allowance.
    return request.max_tokens > int(refusal.metadata["tokens"])


def _pairs_that_hold(
    chain: list[Target], refusals: list[InvalidArgument | None]
) -> tuple[list[Target], tuple[int, ...]]:
    """The pairs whose limits can take the request (``refusals[i]`` None), in order, and
    the ``fallback_index`` of each pair skipped: a pair that cannot is never sent the
    prompt, so the chain stays the caller's insurance (before, one small-window fallback
    refused the whole request). With no pair left, the primary's refusal, as when the
    chain had none. Nothing is sent to a skipped pair, so it adds no attempt or upstream
    call; ``fallback_index`` names the pair that answered."""
    kept = [target for target, why in zip(chain, refusals, strict=True) if why is None]
    # Nothing kept means every pair was refused, the primary too (zip(strict=True) rules
    # out lists of different lengths): ``primary is not None`` then holds, and only
    # narrows the type.
    primary = refusals[0]
    if not kept and primary is not None:
        raise primary
    skipped: list[int] = []
    for target, why in zip(chain, refusals, strict=True):
        if why is not None:
            skipped.append(target.index)
            # Counted and logged when planned, whether or not the call would have reached
            # the pair: a count an operator can read, at DEBUG so that a search of 100
            # hits does not log 100 lines for one chain.
            FALLBACK_SKIPS.labels(target.provider.name, why.reason).inc()
            log.debug(
                "skipping a provider/model that cannot hold the request",
                extra={
                    "provider": target.provider.name,
                    "model": target.request.model,
                    "fallback_index": target.index,
                    "reason": why.reason,
                },
            )
    return kept, tuple(skipped)


def _check_repeat(
    named: dict[tuple[str, str, str], str], endpoint: tuple[str, str, str], where: str
) -> None:
    """INVALID_ARGUMENT (DUPLICATE_FALLBACK) when fallback pair ``where`` names the endpoint
    of the primary or of an earlier pair (the same provider, model after the default is
    filled in, and base URL: a caller's ``base_url`` is the primary's alone), as the gateway
    refuses it: the endpoint that just failed would be called again with all its retries,
    each charged to the tenant and taken from the provider's shared limits."""
    first = named.setdefault(endpoint, where)
    if first != where:
        raise InvalidArgument(
            f"{where} repeats {'the primary' if first == 'primary' else first} (provider "
            f"{quote(endpoint[0])}, model {quote(endpoint[1])}): the same endpoint would be "
            "called again, with all its retries; name another provider or model, or drop "
            "the pair",
            field=where,
            reason="DUPLICATE_FALLBACK",
            metadata={"repeats": first},
        )
