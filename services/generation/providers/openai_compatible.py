"""Adapter for OpenAI-compatible chat completions (OpenAI, Anyscale, vLLM, Ollama, llama.cpp)
through the official ``openai`` SDK (``AsyncOpenAI`` on its aiohttp transport).

The SDK speaks HTTP and server-sent events; this adapter adds what the service promises on
top: a semaphore holding in-flight requests at the provider's limit, the shared retry policy
(``services.common.upstream_retry``) inside the call's deadline, retries only before the
answer started (for a stream: before the first text delta reached our caller), usage, and
a span per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import openai
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from opentelemetry.trace import Span

from services.common.openai_api import (
    ATTEMPTS,
    ExtraHeaders,
    authorized,
    record_usage,
    upstream_span,
)
from services.common.tracing import service_tracer
from services.common.upstream_retry import Deadline, Retrier, RetryPolicy
from services.generation.metrics import (
    TIME_TO_FIRST_TOKEN,
    UPSTREAM_REQUESTS,
    UPSTREAM_RETRIES,
    UPSTREAM_TOKENS,
)
from services.generation.providers.base import (
    Completion,
    CompletionRequest,
    DebugInfo,
    JsonSchemaFormat,
    Provider,
    StreamChunk,
    Usage,
    estimate_usage,
)
from services.generation.settings import ProviderConfig
from services.generation.upstream import (
    UPSTREAM_ERRORS,
    UpstreamFault,
    fault_from_error,
    to_service_error,
)

log = logging.getLogger("gensearch.generation.openai")


class OpenAICompatibleProvider(Provider):
    def __init__(
        self, config: ProviderConfig, *, client: openai.AsyncOpenAI, retry: RetryPolicy
    ) -> None:
        super().__init__(config)
        self.retry = retry
        self.url = f"{config.base_url}/chat/completions"
        self._client = client
        self._limit = asyncio.Semaphore(config.max_concurrency)

    # -- plumbing --------------------------------------------------------------------------
    def build_params(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        """Keyword arguments of ``chat.completions.create`` (unset ones are not sent)."""
        params: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        temperature = request.temperature
        if temperature is None:
            temperature = self.config.temperature
        if temperature is not None:
            params["temperature"] = temperature
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if request.stop:
            params["stop"] = list(request.stop)
        if request.frequency_penalty is not None:
            params["frequency_penalty"] = request.frequency_penalty
        if request.presence_penalty is not None:
            params["presence_penalty"] = request.presence_penalty
        if request.seed is not None:
            params["seed"] = request.seed
        if request.response_format is not None:
            params["response_format"] = json_schema_format(request.response_format)
        if stream:
            params["stream"] = True
            if self.config.stream_usage:
                params["stream_options"] = {"include_usage": True}
        return params

    def _authorized(self, request: CompletionRequest) -> tuple[openai.AsyncOpenAI, ExtraHeaders]:
        if request.api_key is None and self.config.requires_key:
            envs = " or ".join(self.config.api_key_env) or "its key variable"
            raise to_service_error(
                UpstreamFault(
                    "missing_key",
                    f"provider {self.name!r} needs an API key: send metadata "
                    f"'{self.config.key_header}' or set {envs}",
                ),
                self.name,
                request.model,
            )
        return authorized(self._client, request.api_key)

    def _span(
        self, request: CompletionRequest, *, attach: bool = True
    ) -> contextlib.AbstractContextManager[Span]:
        return upstream_span(
            service_tracer("generation"),
            "chat",
            request.model,
            provider=self.name,
            base_url=self.config.base_url,
            attach=attach,
        )

    def _retrier(self, deadline: Deadline) -> Retrier:
        return Retrier(
            self.retry,
            deadline,
            self.name,
            on_retry=lambda cause: UPSTREAM_RETRIES.labels(self.name, cause).inc(),
        )

    def _fail(
        self, fault: UpstreamFault, request: CompletionRequest, span: Span, attempts: int
    ) -> Exception:
        fault.attempts = attempts
        UPSTREAM_REQUESTS.labels(
            self.name, fault.cause if fault.kind == "http" else fault.kind
        ).inc()
        span.set_attribute(ATTEMPTS, fault.attempts)
        log.warning(
            "upstream call failed",
            extra={
                "provider": self.name,
                "model": request.model,
                "fault": fault.kind,
                "status": fault.status,
                "attempts": fault.attempts,
            },
        )
        return to_service_error(fault, self.name, request.model)

    def _succeeded(self, completion: Completion, span: Span) -> None:
        usage = completion.usage
        UPSTREAM_REQUESTS.labels(self.name, "ok").inc()
        UPSTREAM_TOKENS.labels(self.name, "prompt").inc(usage.prompt_tokens)
        UPSTREAM_TOKENS.labels(self.name, "completion").inc(usage.completion_tokens)
        record_usage(span, usage.prompt_tokens, usage.completion_tokens)
        span.set_attribute(ATTEMPTS, completion.debug.attempts)
        span.set_attribute("gen_ai.response.model", completion.model)
        if completion.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [completion.finish_reason])

    @staticmethod
    async def _retry(retrier: Retrier, fault: UpstreamFault) -> bool:
        return await retrier.pause(
            retryable=fault.retryable, retry_after=fault.retry_after, cause=fault.cause
        )

    @staticmethod
    async def _send(
        client: openai.AsyncOpenAI,
        params: dict[str, Any],
        headers: ExtraHeaders,
        debug: DebugInfo,
    ) -> object:
        """One request; ``debug`` gets the body exactly as sent (``with_raw_response`` keeps
        the request). Unary: the parsed answer; ``stream=True``: an ``AsyncStream``."""
        raw = await client.chat.completions.with_raw_response.create(
            **params, extra_headers=headers
        )
        debug.request_body = raw.http_request.content.decode()
        return raw.parse()

    # -- unary -----------------------------------------------------------------------------
    async def complete(self, request: CompletionRequest, deadline: Deadline) -> Completion:
        client, headers = self._authorized(request)
        params = self.build_params(request, stream=False)
        debug = DebugInfo(url=self.url, request_body="")
        retrier = self._retrier(deadline)
        with self._span(request) as span:
            while True:
                debug.attempts = retrier.begin()
                try:
                    completion = await self._complete_once(
                        client, params, headers, deadline, request, debug
                    )
                except UpstreamFault as fault:
                    if await self._retry(retrier, fault):
                        continue
                    raise self._fail(fault, request, span, retrier.attempts) from None
                self._succeeded(completion, span)
                return completion

    async def _complete_once(
        self,
        client: openai.AsyncOpenAI,
        params: dict[str, Any],
        headers: ExtraHeaders,
        deadline: Deadline,
        request: CompletionRequest,
        debug: DebugInfo,
    ) -> Completion:
        try:
            async with asyncio.timeout_at(deadline.expires_at), self._limit:
                first_byte = self._first_byte_at(deadline)
                try:
                    async with asyncio.timeout_at(first_byte):
                        data = await self._send(client, params, headers, debug)
                except TimeoutError:
                    raise self._timeout(first_byte, deadline) from None
        except UPSTREAM_ERRORS as err:
            raise fault_from_error(err) from None
        return _parse_completion(data, request, debug)

    def _first_byte_at(self, deadline: Deadline) -> float:
        """When (loop time) an attempt that holds a slot must have heard from upstream:
        a hanging upstream must not keep a slot for the whole deadline, while calls
        queued behind it starve."""
        limit = self.config.first_byte_timeout
        if limit is None:
            return deadline.expires_at
        return min(deadline.expires_at, asyncio.get_running_loop().time() + limit)

    def _timeout(self, first_byte: float, deadline: Deadline) -> UpstreamFault:
        if first_byte < deadline.expires_at:
            return UpstreamFault(
                "first_byte_timeout",
                f"no answer began within {self.config.first_byte_timeout:g} s",
                retryable=True,
            )
        return UpstreamFault("timeout")

    # -- streaming -------------------------------------------------------------------------
    async def stream(
        self, request: CompletionRequest, deadline: Deadline
    ) -> AsyncGenerator[StreamChunk, None]:
        client, headers = self._authorized(request)
        params = self.build_params(request, stream=True)
        debug = DebugInfo(url=self.url, request_body="")
        retrier = self._retrier(deadline)
        started = time.perf_counter()
        with self._span(request, attach=False) as span:
            while True:
                debug.attempts = retrier.begin()
                state = _StreamState(request.model)
                try:
                    # aclosing: when our caller stops early, the HTTP response closes now, not
                    # whenever the garbage collector finalizes the generator.
                    async with contextlib.aclosing(
                        self._stream_once(client, params, headers, deadline, state, debug)
                    ) as deltas:
                        async for delta in deltas:
                            if not state.emitted:
                                TIME_TO_FIRST_TOKEN.labels(self.name).observe(
                                    time.perf_counter() - started
                                )
                                state.emitted = True
                            yield StreamChunk(delta=delta)
                except UpstreamFault as fault:
                    # Once text reached the caller a retry would repeat it: the fault is final.
                    if not state.emitted and await self._retry(retrier, fault):
                        continue
                    raise self._fail(fault, request, span, retrier.attempts) from None
                break
            text = "".join(state.parts)
            final = Completion(
                text=text,
                model=state.model,
                finish_reason=state.finish_reason or "",
                usage=state.usage or estimate_usage(request.messages, text),
                debug=debug,
            )
            self._succeeded(final, span)
        yield StreamChunk(final=final)

    async def _stream_once(
        self,
        client: openai.AsyncOpenAI,
        params: dict[str, Any],
        headers: ExtraHeaders,
        deadline: Deadline,
        state: _StreamState,
        debug: DebugInfo,
    ) -> AsyncGenerator[str, None]:
        try:
            async with asyncio.timeout_at(deadline.expires_at):
                await self._limit.acquire()
        except TimeoutError:
            raise UpstreamFault("timeout") from None
        try:
            # Until the first chunk arrives, reads are bounded by the first-byte timeout.
            bound = self._first_byte_at(deadline)
            try:
                async with asyncio.timeout_at(bound):
                    chunks = await self._send(client, params, headers, debug)
            except TimeoutError:
                raise self._timeout(bound, deadline) from None
            except UPSTREAM_ERRORS as err:
                raise fault_from_error(err) from None
            assert isinstance(chunks, openai.AsyncStream)
            # Closing the stream closes its response: an unfinished answer drops the
            # connection, so the upstream stops generating for a caller who has gone.
            async with chunks:
                while True:
                    # Each read alone is bounded: a timeout around a yield would fire in our
                    # caller's code instead of here.
                    try:
                        async with asyncio.timeout_at(bound):
                            chunk = await anext(chunks, None)
                    except TimeoutError:
                        raise self._timeout(bound, deadline) from None
                    except UPSTREAM_ERRORS as err:
                        raise _stream_fault(err) from None
                    if chunk is None:
                        break
                    bound = deadline.expires_at
                    for delta in _absorb(chunk, state):
                        yield delta
            if state.finish_reason is None:
                raise UpstreamFault(
                    "bad_response", "the stream ended before the model finished", retryable=True
                )
        finally:
            self._limit.release()


class _StreamState:
    __slots__ = ("emitted", "finish_reason", "model", "parts", "usage")

    def __init__(self, model: str) -> None:
        self.model = model
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.emitted = False


def _stream_fault(err: BaseException) -> UpstreamFault:
    fault = fault_from_error(err)
    if fault.kind == "connection":
        # Retryable as a dropped connection, as long as no text reached the caller yet.
        return UpstreamFault(
            "bad_response", f"the stream broke off ({fault.detail})", retryable=True
        )
    if fault.kind == "bad_response":
        return UpstreamFault("bad_response", "a stream event is not JSON")
    return fault


def _absorb(chunk: object, state: _StreamState) -> list[str]:
    """The text deltas of one chunk; model, usage and finish reason go into ``state``."""
    if not isinstance(chunk, ChatCompletionChunk):
        raise UpstreamFault("bad_response", "a stream event is not a JSON object")
    if chunk.model:
        state.model = chunk.model
    usage = _usage(chunk.usage)
    if usage is not None:
        state.usage = usage
    if not isinstance(chunk.choices, list):
        if usage is None:
            raise UpstreamFault("bad_response", "a stream event has no choices")
        return []
    deltas: list[str] = []
    for choice in chunk.choices:
        if not isinstance(choice, ChunkChoice) or choice.index not in (0, None):
            continue
        piece = getattr(choice.delta, "content", None)
        if isinstance(piece, str) and piece:
            state.parts.append(piece)
            deltas.append(piece)
        if choice.finish_reason:
            state.finish_reason = str(choice.finish_reason)
    return deltas


def json_schema_format(fmt: JsonSchemaFormat) -> dict[str, Any]:
    """OpenAI's ``response_format`` for a JSON schema (``strict`` only when asked)."""
    spec: dict[str, Any] = {"name": fmt.name, "schema": fmt.schema}
    if fmt.strict is not None:
        spec["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": spec}


def _parse_completion(data: object, request: CompletionRequest, debug: DebugInfo) -> Completion:
    # Responses are not validated by the SDK (a missing field is None, and a body that is
    # not an object comes back as it is), so the shape is checked here.
    if not isinstance(data, ChatCompletion):
        raise UpstreamFault("bad_response", "the body is not a JSON object")
    choices = data.choices
    if not isinstance(choices, list) or not choices:
        raise UpstreamFault("bad_response", "the body has no choices")
    choice = choices[0]
    message = getattr(choice, "message", None)
    if not isinstance(message, ChatCompletionMessage):
        raise UpstreamFault("bad_response", "the first choice has no message")
    content = message.content
    if content is not None and not isinstance(content, str):
        raise UpstreamFault("bad_response", "the message content is not text")
    text = content or ""
    return Completion(
        text=text,
        model=data.model if isinstance(data.model, str) and data.model else request.model,
        finish_reason=str(getattr(choice, "finish_reason", None) or ""),
        usage=_usage(data.usage) or estimate_usage(request.messages, text),
        debug=debug,
    )


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, CompletionUsage):
        return None
    prompt, completion = raw.prompt_tokens, raw.completion_tokens
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = raw.total_tokens
    return Usage(prompt, completion, total if isinstance(total, int) else prompt + completion)
