"""gRPC face of the generation service: validate, call the provider, build the answer."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from gensearch.generation.v1 import generation_service_pb2 as pb
from gensearch.generation.v1 import generation_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2

from services.common.upstream_retry import Deadline
from services.generation.keys import env_key, resolve_key
from services.generation.providers.base import (
    Completion,
    CompletionRequest,
    DebugInfo,
    Provider,
    Usage,
)
from services.generation.registry import ProviderRegistry
from services.generation.validation import Limits, build_request

_KINDS = {"openai_compatible": pb.PROVIDER_KIND_OPENAI_COMPATIBLE}


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, registry: ProviderRegistry, limits: Limits, default_timeout: float) -> None:
        self._registry = registry
        self._limits = limits
        self._default_timeout = default_timeout

    def _prepare(
        self,
        request: pb.GenerateRequest | pb.StreamGenerateRequest,
        context: grpc.aio.ServicerContext,
    ) -> tuple[Provider, CompletionRequest, Deadline]:
        provider = self._registry.get(request.provider)
        key = resolve_key(provider.config, context.invocation_metadata())
        completion_request = build_request(request, provider.config, self._limits, key)
        # The caller's deadline bounds everything upstream, retries included.
        remaining = context.time_remaining()
        timeout = (
            self._default_timeout if remaining is None else min(remaining, self._default_timeout)
        )
        return provider, completion_request, Deadline(timeout)

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        provider, completion_request, deadline = self._prepare(request, context)
        done = await provider.complete(completion_request, deadline)
        return pb.GenerateResponse(
            text=done.text,
            model=done.model,
            finish_reason=done.finish_reason,
            usage=_usage(done.usage),
            debug=_debug(done.debug) if request.debug else None,
            provider=provider.name,
            attempts=done.attempts,
            wait_time=_duration(done.waited),
        )

    async def StreamGenerate(
        self, request: pb.StreamGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamGenerateResponse]:
        provider, completion_request, deadline = self._prepare(request, context)
        final: Completion | None = None
        async with contextlib.aclosing(provider.stream(completion_request, deadline)) as chunks:
            async for chunk in chunks:
                if chunk.final is not None:
                    final = chunk.final
                elif chunk.delta:
                    yield pb.StreamGenerateResponse(delta=chunk.delta)
        if final is not None:
            yield pb.StreamGenerateResponse(
                model=final.model,
                finish_reason=final.finish_reason,
                usage=_usage(final.usage),
                debug=_debug(final.debug) if request.debug else None,
                provider=provider.name,
                attempts=final.attempts,
                wait_time=_duration(final.waited),
            )

    async def ListModels(
        self, request: pb.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListModelsResponse:
        providers = [
            pb.Provider(
                name=c.name,
                kind=_KINDS.get(c.kind, pb.PROVIDER_KIND_UNSPECIFIED),
                base_url=c.base_url,
                default_model=c.default_model,
                models=c.known_models,
                api_key_env=",".join(c.api_key_env),
                api_key_configured=env_key(c) is not None,
                max_concurrency=c.max_concurrency or c.max_in_flight or 0,
                context_window=c.context_window or 0,
            )
            for c in self._registry.configs()
        ]
        return pb.ListModelsResponse(providers=providers, default_provider=self._registry.default)


def _usage(usage: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        estimated=usage.estimated,
    )


def _duration(seconds: float) -> duration_pb2.Duration:
    value = duration_pb2.Duration()
    value.FromNanoseconds(round(seconds * 1e9))
    return value


def _debug(debug: DebugInfo) -> pb.Debug:
    return pb.Debug(url=debug.url, request_body=debug.request_body, attempts=debug.attempts)
