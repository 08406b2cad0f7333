"""gRPC face of the generation service: plan the request, answer it, build the reply."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
from gensearch.generation.v1 import generation_service_pb2 as pb
from gensearch.generation.v1 import generation_service_pb2_grpc as pb_grpc

from services.common.well_known import duration, struct
from services.generation import answering
from services.generation.keys import env_key
from services.generation.planning import Planner
from services.generation.providers.base import Completion, Usage

_KINDS = {"openai_compatible": pb.PROVIDER_KIND_OPENAI_COMPATIBLE}


class GenerationServicer(pb_grpc.GenerationServiceServicer):
    def __init__(self, planner: Planner, allowed_hosts: str = "") -> None:
        self._planner = planner
        self._registry = planner.registry
        self._allowed_hosts = allowed_hosts

    async def _plan(
        self,
        request: pb.GenerateRequest | pb.StreamGenerateRequest,
        context: grpc.aio.ServicerContext,
    ) -> answering.Plan:
        return await self._planner.plan(
            request, context.invocation_metadata(), context.time_remaining()
        )

    async def Generate(
        self, request: pb.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> pb.GenerateResponse:
        answer = await answering.generate(await self._plan(request, context))
        return pb.GenerateResponse(
            text=answer.completion.text, **_answer_fields(answer, debug=request.debug)
        )

    async def StreamGenerate(
        self, request: pb.StreamGenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.StreamGenerateResponse]:
        plan = await self._plan(request, context)
        async with contextlib.aclosing(answering.stream(plan)) as events:
            async for event in events:
                if event.restart:
                    yield pb.StreamGenerateResponse(restart=True)
                elif event.delta:
                    yield pb.StreamGenerateResponse(delta=event.delta)
                elif event.answer is not None:
                    yield pb.StreamGenerateResponse(
                        **_answer_fields(event.answer, debug=request.debug)
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
                max_concurrency=c.concurrency_cap or 0,
                context_window=c.context_window or 0,
                models_checked=c.check_models and bool(c.models),
                requires_key=c.requires_key,
            )
            for c in self._registry.configs()
        ]
        return pb.ListModelsResponse(
            providers=providers,
            default_provider=self._registry.default,
            allowed_hosts=self._allowed_hosts,
            max_tokens_limit=self._planner.limits.max_tokens,
        )


def _answer_fields(answer: answering.Answer, *, debug: bool) -> dict[str, Any]:
    """The fields a unary reply and a stream's last message share."""
    done = answer.completion
    return {
        "model": done.model,
        "finish_reason": done.finish_reason,
        "usage": _usage(done.usage),
        "debug": _debug(done) if debug else None,
        "provider": answer.target.provider.name,
        "structured": None if answer.structured is None else struct(answer.structured),
        "fallback_index": answer.target.index,
        "corrected": answer.corrected,
        "attempts": done.attempts,
        "wait_time": duration(done.waited),
        "upstream_calls": answer.upstream_calls,
    }


def _usage(usage: Usage) -> pb.Usage:
    return pb.Usage(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        estimated=usage.estimated,
    )


def _debug(done: Completion) -> pb.Debug:
    # Debug.attempts is deprecated: the reply's own attempts, repeated for older callers.
    debug = done.debug
    return pb.Debug(url=debug.url, request_body=debug.request_body, attempts=done.attempts)
