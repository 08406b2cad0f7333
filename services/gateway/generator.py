"""One call to the generation service, unary or streamed, as a GenerationResult."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.errors import (
    ATTEMPTS,
    DOMAIN,
    WAIT_MS,
    capped_metadata,
    metadata_count,
    upstream_calls,
)
from services.gateway.clients import Caller, GenerationClient
from services.gateway.clients.generation import CallerFields
from services.gateway.errors import HitError
from services.gateway.request_parts import check_fallback
from services.gateway.settings import GatewaySettings

DEFAULT_PROVIDER_SETTING = "GENSEARCH_GATEWAY_DEFAULT_PROVIDER"
DEFAULT_MODEL_SETTING = "GENSEARCH_GATEWAY_DEFAULT_MODEL"


@dataclass(frozen=True)
class Options:
    provider: str = ""
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None
    # The rest of the sampling parameters, the JSON schema, the fallback chain and a
    # caller's base URL: passed to the generation service as they are (Generate only,
    # but for the fallback chain, which Ask has too).
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    response_format: gen_pb.ResponseFormat | None = None
    fallback: tuple[tuple[str, str], ...] = ()
    # Where the chain came from, for error fields: the request's or the collection's.
    fallback_field: str = "generate.fallback"
    # Where max_tokens came from, for error fields: the request's or the collection's.
    max_tokens_field: str = "generate.max_tokens"
    base_url: str = ""
    # Where the provider and the model came from, for error fields, as max_tokens.
    provider_field: str = "generate.provider"
    model_field: str = "generate.model"
    # The gateway's setting the provider came from when neither the request nor the
    # collection named one (empty otherwise): an unknown one is the operator's to fix.
    provider_setting: str = ""
    # The same for the model: the gateway's setting it came from when neither the
    # request nor the collection named the model the call uses (empty otherwise).
    model_setting: str = ""

    def primary(self, temperature: float, max_tokens: int) -> Options:
        """The primary (provider, model) alone, at ``temperature`` and ``max_tokens``: the
        gateway's own calls for a request (the question rewrite, a summary fold), with
        none of the caller's sampling, schema, chain or URL. Where the provider and the
        model came from is kept: an unknown one the operator's setting chose is refused
        naming that setting (``caller_fields``), not a field the caller never sent."""
        return Options(
            self.provider,
            self.model,
            temperature,
            max_tokens,
            provider_field=self.provider_field,
            model_field=self.model_field,
            provider_setting=self.provider_setting,
            model_setting=self.model_setting,
        )

    def caller_fields(self, prompt_field: str | None, max_tokens_field: str | None) -> CallerFields:
        """The fields generation's refusal of this call is named by (``caller_fields_refused``):
        the caller's ``prompt_field`` and ``max_tokens_field``, and where the provider and
        the model came from, with the setting that chose either. Not the provider's or the
        model's with a fallback chain: generation names every pair's ``model`` alike, so
        its refusal may be a fallback pair's. A model sent to the caller's own
        ``base_url`` is refused by the caller's endpoint, not the operator's: no setting
        is blamed for it (``ModelCatalog.check_choices`` skips its check there too)."""
        chain = bool(self.fallback)
        return CallerFields(
            prompt=prompt_field,
            max_tokens=max_tokens_field,
            provider=None if chain else self.provider_field,
            model=None if chain else self.model_field,
            provider_setting=self.provider_setting,
            model_setting="" if self.base_url else self.model_setting,
        )

    @classmethod
    def resolve(
        cls,
        request: Any,
        model: str,
        collection: ret_pb.GenerativeConfig,
        settings: GatewaySettings,
        *,
        prefix: str = "generate.",
        model_field: str = "model",
    ) -> Options:
        """The request's choice, else the collection's generative defaults, else the
        service's. ``request`` has provider, temperature, max_tokens and fallback
        (Generate, Ask); ``prefix`` is where its fields sit in the RPC's request, for
        error fields, and ``model_field`` is the name of its model field (``model`` is
        its value)."""

        def first(field: str) -> Any:
            for source in (request, collection):
                if source.HasField(field):
                    return getattr(source, field)
            return None

        def own(field: str) -> Any:
            fields = request.DESCRIPTOR.fields_by_name
            if field in fields and request.HasField(field):
                return getattr(request, field)
            return None

        # The request's own chain, else the collection's.
        chain = list(request.fallback)
        fallback_field = f"{prefix}fallback"
        if not chain:
            chain, fallback_field = list(collection.fallback), "collection.generative.fallback"
            # A collection stores up to retrieval's 8 pairs; more than generation takes
            # would fail every hit alike: one error, on the collection (as max_tokens).
            check_fallback(chain, settings.max_fallbacks, fallback_field)
        # A model belongs to its provider: the collection's (or the service's default)
        # applies only while the request names no other provider. Before, a request
        # naming another provider got the collection's model sent to it (anyscale asked
        # for "fake-model": refused, or another endpoint's model called).
        provider = request.provider or collection.provider or settings.default_provider
        stored_model, from_setting = "", False
        if _same_provider(request.provider, collection.provider):
            stored_model = collection.model
        if not stored_model and _same_provider(
            request.provider or collection.provider, settings.default_provider
        ):
            stored_model, from_setting = settings.default_model, bool(settings.default_model)
        # Where the model the call uses came from: the request, the collection, the
        # gateway's setting (by source, not by value: a setting equal to the collection's
        # model of another provider is still the setting's).
        model_source = "request" if model else "setting" if from_setting else "collection"
        return cls(
            provider=provider,
            model=model or stored_model,
            temperature=first("temperature"),
            max_tokens=first("max_tokens"),
            top_p=own("top_p"),
            stop=tuple(getattr(request, "stop", ())),
            frequency_penalty=own("frequency_penalty"),
            presence_penalty=own("presence_penalty"),
            seed=own("seed"),
            response_format=own("response_format"),
            fallback=tuple((c.provider, c.model) for c in chain),
            fallback_field=fallback_field,
            # Without either, the provider's default applies: the request's field is the
            # one a caller can set to change it.
            max_tokens_field=(
                "collection.generative.max_tokens"
                if not request.HasField("max_tokens") and collection.HasField("max_tokens")
                else f"{prefix}max_tokens"
            ),
            # Spaces around it are no part of a URL, as the generation service reads it.
            base_url=getattr(request, "base_url", "").strip(),
            # A collection's stored provider or model that generation does not serve is
            # named as the collection's (as its fallback chain is), not as a field of a
            # request that never set it.
            provider_field=(
                "collection.generative.provider"
                if not request.provider and collection.provider
                else f"{prefix}provider"
            ),
            provider_setting=(
                DEFAULT_PROVIDER_SETTING
                if not (request.provider or collection.provider) and settings.default_provider
                else ""
            ),
            model_field=(
                "collection.generative.model"
                if model_source == "collection" and stored_model
                else f"{prefix}{model_field}"
            ),
            # Named as the request's field (what a caller can set to get past it), with
            # the setting: an unknown one is the operator's to fix, as the provider's.
            model_setting=DEFAULT_MODEL_SETTING if model_source == "setting" else "",
        )


def _same_provider(named: str, owner: str) -> bool:
    """Whether a provider ``named`` by a request (empty: none named) is the one a stored
    model was chosen for (``owner``'s; empty: the default one), as the generation
    service reads names (spaces stripped, case ignored)."""
    named = named.strip().lower()
    return not named or named == owner.strip().lower()


R = TypeVar("R", gen_pb.GenerateRequest, gen_pb.StreamGenerateRequest)


def generate_request(cls: type[R], options: Options, messages: Sequence[gen_pb.Message]) -> R:
    """The generation request for ``options`` and ``messages``: the one place it is built,
    for the call and for the generation cache's key (``generation_cache.cache_request_message``)."""
    o = options
    request = cls(
        provider=o.provider,
        model=o.model,
        messages=messages,
        stop=o.stop,
        fallback=[gen_pb.ModelChoice(provider=p, model=m) for p, m in o.fallback],
        base_url=o.base_url,
    )
    for name in (
        "temperature",
        "max_tokens",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "seed",
    ):
        value = getattr(o, name)
        if value is not None:
            setattr(request, name, value)
    if o.response_format is not None:
        request.response_format.CopyFrom(o.response_format)
    return request


async def complete(
    generation: GenerationClient,
    caller: Caller,
    options: Options,
    messages: Sequence[gen_pb.Message],
    *,
    timeout: float | None,
    emit: Callable[[str], Awaitable[None]] | None = None,
    restart: Callable[[], Awaitable[None]] | None = None,
    prompt_field: str | None = None,
    max_tokens_field: str | None = None,
) -> gw_pb.GenerationResult:
    """Ask the model; with ``emit``, stream and hand each text delta to it as it comes,
    reading the next one only once ``emit`` returned (it waits while its consumer is
    behind); ``restart``: the deltas so far are void, a corrective retry's follow.
    ``prompt_field``: the caller's field ``messages`` were rendered from, which a refusal
    of them as too long names (``GenerationClient.generate``); ``max_tokens_field``: the
    caller's field that set ``options.max_tokens`` (``options.max_tokens_field``), which
    a refusal of it names; None for the gateway's own calls. A refusal of the provider or
    the model names where it came from (``options.caller_fields``)."""
    fields = options.caller_fields(prompt_field, max_tokens_field)
    if emit is None:
        request = generate_request(gen_pb.GenerateRequest, options, messages)
        response = await generation.generate(request, caller, timeout, fields=fields)
        result = gw_pb.GenerationResult(
            result=response.text,
            usage=response.usage,
            model=response.model,
            finish_reason=response.finish_reason,
            provider=response.provider,
            fallback_index=response.fallback_index,
            attempts=response.attempts,
            wait_time=response.wait_time,
            upstream_calls=response.upstream_calls,
        )
        if response.HasField("structured"):
            result.structured.CopyFrom(response.structured)
        return result
    stream_request = generate_request(gen_pb.StreamGenerateRequest, options, messages)
    parts: list[str] = []
    result = gw_pb.GenerationResult()
    chunks = generation.stream_generate(stream_request, caller, timeout, fields=fields)
    async for chunk in chunks:
        if chunk.restart:
            parts.clear()
            if restart is not None:
                await restart()
        if chunk.delta:
            parts.append(chunk.delta)
            await emit(chunk.delta)
        if chunk.finish_reason or chunk.HasField("usage"):
            result.usage.CopyFrom(chunk.usage)
            result.model = chunk.model
            result.finish_reason = chunk.finish_reason
            result.provider = chunk.provider
            result.fallback_index = chunk.fallback_index
            if chunk.HasField("structured"):
                result.structured.CopyFrom(chunk.structured)
            result.attempts = chunk.attempts
            result.wait_time.CopyFrom(chunk.wait_time)
        if chunk.upstream_calls:  # on the last message only
            result.upstream_calls = chunk.upstream_calls
    result.result = "".join(parts)
    return result


def error_result(error: HitError, prompt: str = "") -> gw_pb.GenerationResult:
    result = gw_pb.GenerationResult(
        error=gw_pb.GenerationError(
            code=error.number,
            status=error.status,
            message=error.message,
            reason=error.reason,
            # The ErrorInfo a failed call would carry, so a client reads the field, the
            # limit, the provider ... of a hit's failure as it does a call's.
            domain=DOMAIN,
            metadata=capped_metadata(error.metadata),
        ),
        prompt=prompt,
    )
    # What the generation service reported of the failed call, when it got that far.
    result.attempts = metadata_count(error.metadata, ATTEMPTS) or 0
    wait_ms = metadata_count(error.metadata, WAIT_MS)
    if wait_ms is not None:
        result.wait_time.FromMilliseconds(wait_ms)
    result.upstream_calls = upstream_calls(error.metadata)
    return result


@dataclass
class Spent:
    """What a request's generation calls cost, summed: tokens and upstream calls."""

    usage: gen_pb.Usage = dataclasses.field(default_factory=gen_pb.Usage)
    upstream_calls: int = 0

    def add(self, result: gw_pb.GenerationResult) -> None:
        add_usage(self.usage, result.usage)
        self.upstream_calls += result.upstream_calls


# Usage's fields are int32. Generation believes at most 10 M tokens per field and call,
# but a request's sum over its hits is not bounded that way: 220 hits (max_hits and
# retrieval's max_limit go to 10,000) of a provider reporting 10 M + 10 M tokens overflowed
# total_tokens, and protobuf's ValueError failed the whole request with INTERNAL. A sum
# that large is a broken provider's anyway: it stops at the field's largest value.
MAX_USAGE = 2**31 - 1


def add_usage(total: gen_pb.Usage, more: gen_pb.Usage) -> None:
    total.prompt_tokens = min(total.prompt_tokens + more.prompt_tokens, MAX_USAGE)
    total.completion_tokens = min(total.completion_tokens + more.completion_tokens, MAX_USAGE)
    total.total_tokens = min(total.total_tokens + more.total_tokens, MAX_USAGE)
    total.estimated = total.estimated or more.estimated
