"""One call to the generation service, unary or streamed, as a GenerationResult."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.gateway.clients import Caller, GenerationClient
from services.gateway.errors import HitError
from services.gateway.settings import GatewaySettings


@dataclass(frozen=True)
class Options:
    provider: str = ""
    model: str = ""
    temperature: float | None = None
    max_tokens: int | None = None

    @classmethod
    def resolve(
        cls,
        request: Any,
        model: str,
        collection: ret_pb.GenerativeConfig,
        settings: GatewaySettings,
    ) -> Options:
        """The request's choice, else the collection's generative defaults, else the
        service's. ``request`` has provider, temperature and max_tokens (Generate, Ask)."""

        def first(field: str) -> Any:
            for source in (request, collection):
                if source.HasField(field):
                    return getattr(source, field)
            return None

        return cls(
            provider=request.provider or collection.provider or settings.default_provider,
            model=model or collection.model or settings.default_model,
            temperature=first("temperature"),
            max_tokens=first("max_tokens"),
        )


R = TypeVar("R", gen_pb.GenerateRequest, gen_pb.StreamGenerateRequest)


def _request(cls: type[R], options: Options, messages: Sequence[gen_pb.Message]) -> R:
    request = cls(provider=options.provider, model=options.model, messages=messages)
    if options.temperature is not None:
        request.temperature = options.temperature
    if options.max_tokens is not None:
        request.max_tokens = options.max_tokens
    return request


async def complete(
    generation: GenerationClient,
    caller: Caller,
    options: Options,
    messages: Sequence[gen_pb.Message],
    *,
    timeout: float | None,
    emit: Callable[[str], None] | None = None,
) -> gw_pb.GenerationResult:
    """Ask the model; with ``emit``, stream and hand each text delta to it as it comes."""
    if emit is None:
        request = _request(gen_pb.GenerateRequest, options, messages)
        response = await generation.generate(request, caller, timeout)
        return gw_pb.GenerationResult(
            result=response.text,
            usage=response.usage,
            model=response.model,
            finish_reason=response.finish_reason,
            attempts=response.attempts,
            wait_time=response.wait_time,
        )
    stream_request = _request(gen_pb.StreamGenerateRequest, options, messages)
    parts: list[str] = []
    result = gw_pb.GenerationResult()
    async for chunk in generation.stream_generate(stream_request, caller, timeout):
        if chunk.delta:
            parts.append(chunk.delta)
            emit(chunk.delta)
        if chunk.finish_reason or chunk.HasField("usage"):
            result.usage.CopyFrom(chunk.usage)
            result.model = chunk.model
            result.finish_reason = chunk.finish_reason
            result.attempts = chunk.attempts
            result.wait_time.CopyFrom(chunk.wait_time)
    result.result = "".join(parts)
    return result


def error_result(error: HitError, prompt: str = "") -> gw_pb.GenerationResult:
    result = gw_pb.GenerationResult(
        error=gw_pb.GenerationError(
            code=error.number, status=error.status, message=error.message, reason=error.reason
        ),
        prompt=prompt,
    )
    # What the generation service reported of the failed call, when it got that far.
    attempts, wait_ms = error.metadata.get("attempts"), error.metadata.get("wait_ms")
    if attempts is not None and attempts.isdigit():
        result.attempts = int(attempts)
    if wait_ms is not None and wait_ms.isdigit():
        result.wait_time.FromMilliseconds(int(wait_ms))
    return result


def add_usage(total: gen_pb.Usage, more: gen_pb.Usage) -> None:
    total.prompt_tokens += more.prompt_tokens
    total.completion_tokens += more.completion_tokens
    total.total_tokens += more.total_tokens
    total.estimated = total.estimated or more.estimated
