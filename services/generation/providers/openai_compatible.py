"""Adapter for OpenAI-compatible chat completions (OpenAI, Anyscale, vLLM, Ollama, llama.cpp).

One ``aiohttp.ClientSession`` per provider (keep-alive connections, pool sized to the
provider's concurrency limit); a semaphore holds in-flight upstream requests at that limit.
Every await on the network is bounded by the call's deadline; retries happen only before
the answer started (for a stream: before the first text delta reached our caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import aiohttp

from services.generation.metrics import TIME_TO_FIRST_TOKEN, UPSTREAM_REQUESTS, UPSTREAM_TOKENS
from services.generation.providers.base import (
    Completion,
    CompletionRequest,
    Deadline,
    DebugInfo,
    Provider,
    StreamChunk,
    Usage,
    estimate_usage,
)
from services.generation.retry import Retrier, RetryPolicy
from services.generation.settings import ProviderConfig
from services.generation.upstream import UpstreamFault, fault_from_response, to_service_error

log = logging.getLogger("gensearch.generation.openai")


class OpenAICompatibleProvider(Provider):
    def __init__(
        self,
        config: ProviderConfig,
        *,
        retry: RetryPolicy,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
    ) -> None:
        super().__init__(config)
        self.retry = retry
        self.url = f"{config.base_url}/chat/completions"
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._limit = asyncio.Semaphore(config.max_concurrency)
        self._session: aiohttp.ClientSession | None = None

    # -- plumbing --------------------------------------------------------------------------
    def _client(self) -> aiohttp.ClientSession:
        # Created on first use: a session belongs to the running event loop.
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=self.config.max_concurrency, limit_per_host=0, ttl_dns_cache=300
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": "gensearch-generation/0.1"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def build_body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        }
        temperature = request.temperature
        if temperature is None:
            temperature = self.config.temperature
        if temperature is not None:
            body["temperature"] = temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.top_p is not None:
            body["top_p"] = request.top_p
        if request.stop:
            body["stop"] = list(request.stop)
        if stream:
            body["stream"] = True
            if self.config.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    def _headers(self, request: CompletionRequest, *, stream: bool) -> dict[str, str]:
        if request.api_key is None and self.config.requires_key:
            envs = " or ".join(self.config.api_key_env) or "its key variable"
            raise to_service_error(
                UpstreamFault(
                    "missing_key",
                    f"provider {self.name!r} needs an API key: send metadata "
                    f"'{self.config.key_header}' or set {envs}",
                    retryable=False,
                ),
                self.name,
                request.model,
            )
        headers = {"Content-Type": "application/json"}
        headers["Accept"] = "text/event-stream" if stream else "application/json"
        if request.api_key:
            headers["Authorization"] = f"Bearer {request.api_key}"
        return headers

    def _fail(self, fault: UpstreamFault, request: CompletionRequest, attempts: int) -> Exception:
        fault.attempts = max(fault.attempts, attempts)
        UPSTREAM_REQUESTS.labels(self.name, _outcome(fault)).inc()
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

    def _succeeded(self, usage: Usage) -> None:
        UPSTREAM_REQUESTS.labels(self.name, "ok").inc()
        UPSTREAM_TOKENS.labels(self.name, "prompt").inc(usage.prompt_tokens)
        UPSTREAM_TOKENS.labels(self.name, "completion").inc(usage.completion_tokens)

    # -- unary -----------------------------------------------------------------------------
    async def complete(self, request: CompletionRequest, deadline: Deadline) -> Completion:
        raw_body = _dumps(self.build_body(request, stream=False))
        headers = self._headers(request, stream=False)
        debug = DebugInfo(url=self.url, request_body=raw_body.decode())
        retrier = Retrier(self.retry, deadline, self.name)
        while True:
            debug.attempts = retrier.begin()
            try:
                data = await self._post_json(raw_body, headers, deadline)
                completion = _parse_completion(data, request, debug)
            except UpstreamFault as fault:
                if await retrier.before_retry(fault):
                    continue
                raise self._fail(fault, request, retrier.attempts) from None
            self._succeeded(completion.usage)
            return completion

    async def _post_json(self, body: bytes, headers: dict[str, str], deadline: Deadline) -> Any:
        try:
            async with asyncio.timeout_at(deadline.expires_at), self._limit:
                try:
                    async with self._client().post(self.url, data=body, headers=headers) as resp:
                        raw = await resp.read()
                        if resp.status != 200:
                            raise fault_from_response(resp.status, resp.headers, raw)
                except aiohttp.ClientError as err:
                    raise _connection_fault(err) from None
        except TimeoutError:
            raise UpstreamFault("timeout", retryable=False) from None
        try:
            return json.loads(raw)
        except ValueError:
            raise UpstreamFault("bad_response", "the body is not JSON") from None

    # -- streaming -------------------------------------------------------------------------
    async def stream(
        self, request: CompletionRequest, deadline: Deadline
    ) -> AsyncGenerator[StreamChunk, None]:
        raw_body = _dumps(self.build_body(request, stream=True))
        headers = self._headers(request, stream=True)
        debug = DebugInfo(url=self.url, request_body=raw_body.decode())
        retrier = Retrier(self.retry, deadline, self.name)
        started = time.perf_counter()
        while True:
            debug.attempts = retrier.begin()
            state = _StreamState(request.model)
            try:
                # aclosing: when our caller stops early, the HTTP response closes now, not
                # whenever the garbage collector finalizes the generator.
                async with contextlib.aclosing(
                    self._stream_once(raw_body, headers, deadline, state)
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
                if not state.emitted and await retrier.before_retry(fault):
                    continue
                raise self._fail(fault, request, retrier.attempts) from None
            break
        text = "".join(state.parts)
        usage = state.usage or estimate_usage(request.messages, text)
        self._succeeded(usage)
        yield StreamChunk(
            final=Completion(
                text=text,
                model=state.model,
                finish_reason=state.finish_reason or "",
                usage=usage,
                debug=debug,
            )
        )

    async def _stream_once(
        self, body: bytes, headers: dict[str, str], deadline: Deadline, state: _StreamState
    ) -> AsyncGenerator[str, None]:
        resp: aiohttp.ClientResponse | None = None
        try:
            try:
                async with asyncio.timeout_at(deadline.expires_at):
                    await self._limit.acquire()
            except TimeoutError:
                raise UpstreamFault("timeout", retryable=False) from None
            try:
                try:
                    async with asyncio.timeout_at(deadline.expires_at):
                        resp = await self._client().post(self.url, data=body, headers=headers)
                        if resp.status != 200:
                            raw = await resp.read()
                            raise fault_from_response(resp.status, resp.headers, raw)
                except aiohttp.ClientError as err:
                    raise _connection_fault(err) from None
                except TimeoutError:
                    raise UpstreamFault("timeout", retryable=False) from None
                async with contextlib.aclosing(_read_sse(resp, deadline, state)) as deltas:
                    async for delta in deltas:
                        yield delta
            finally:
                self._limit.release()
        finally:
            if resp is not None:
                # close(), not release(): an unfinished answer must drop the connection so
                # the upstream stops generating for a caller who has gone.
                if state.done:
                    resp.release()
                else:
                    resp.close()


class _StreamState:
    __slots__ = ("done", "emitted", "finish_reason", "model", "parts", "usage")

    def __init__(self, model: str) -> None:
        self.model = model
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.emitted = False
        self.done = False


async def _read_sse(
    resp: aiohttp.ClientResponse, deadline: Deadline, state: _StreamState
) -> AsyncGenerator[str, None]:
    """Server-sent events (``data:`` lines, a blank line ends an event) until ``[DONE]``."""
    data_lines: list[str] = []
    content = resp.content
    while True:
        try:
            async with asyncio.timeout_at(deadline.expires_at):
                line = await content.readline()
        except TimeoutError:
            raise UpstreamFault("timeout", retryable=False) from None
        except aiohttp.ClientPayloadError:
            # Retryable as a dropped connection, as long as no text reached the caller yet.
            raise UpstreamFault(
                "bad_response", "the stream was cut before it finished", retryable=True
            ) from None
        except aiohttp.ClientError as err:
            fault = _connection_fault(err)
            raise UpstreamFault(
                "bad_response", f"the stream broke off ({fault.detail})", retryable=True
            ) from None
        except ValueError:  # a line over aiohttp's limit
            raise UpstreamFault("bad_response", "an event line is too long") from None
        if not line:  # EOF
            if data_lines:
                for delta in _dispatch("\n".join(data_lines), state):
                    yield delta
            if state.finish_reason is None and not state.done:
                raise UpstreamFault(
                    "bad_response", "the stream ended before the model finished", retryable=True
                )
            state.done = True
            return
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        if not text:
            if data_lines:
                event, data_lines = "\n".join(data_lines), []
                for delta in _dispatch(event, state):
                    yield delta
                if state.done:
                    return
            continue
        if text.startswith("data:"):
            data_lines.append(text[6:] if text.startswith("data: ") else text[5:])
        # Comments (":"), "event:", "id:" and "retry:" lines carry nothing we use.


def _dispatch(data: str, state: _StreamState) -> list[str]:
    if data.strip() == "[DONE]":
        state.done = True
        return []
    try:
        chunk = json.loads(data)
    except ValueError:
        raise UpstreamFault("bad_response", "a stream event is not JSON") from None
    if not isinstance(chunk, dict):
        raise UpstreamFault("bad_response", "a stream event is not a JSON object")
    if "error" in chunk:
        err = chunk["error"]
        message = err.get("message", "") if isinstance(err, dict) else str(err)
        raise UpstreamFault("stream_error", str(message), retryable=False)
    if isinstance(chunk.get("model"), str) and chunk["model"]:
        state.model = chunk["model"]
    usage = _parse_usage(chunk.get("usage"))
    if usage is not None:
        state.usage = usage
    choices = chunk.get("choices")
    if not isinstance(choices, list):
        if usage is None:
            raise UpstreamFault("bad_response", "a stream event has no choices")
        return []
    deltas: list[str] = []
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("index", 0) != 0:
            continue
        delta = choice.get("delta") or {}
        piece = delta.get("content") if isinstance(delta, dict) else None
        if isinstance(piece, str) and piece:
            state.parts.append(piece)
            deltas.append(piece)
        if choice.get("finish_reason"):
            state.finish_reason = str(choice["finish_reason"])
    return deltas


def _parse_completion(data: Any, request: CompletionRequest, debug: DebugInfo) -> Completion:
    if not isinstance(data, dict):
        raise UpstreamFault("bad_response", "the body is not a JSON object")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise UpstreamFault("bad_response", "the body has no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise UpstreamFault("bad_response", "the first choice has no message")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise UpstreamFault("bad_response", "the message content is not text")
    text = content or ""
    usage = _parse_usage(data.get("usage")) or estimate_usage(request.messages, text)
    model = data.get("model")
    return Completion(
        text=text,
        model=model if isinstance(model, str) and model else request.model,
        finish_reason=str(choice.get("finish_reason") or ""),
        usage=usage,
        debug=debug,
    )


def _parse_usage(raw: Any) -> Usage | None:
    if not isinstance(raw, dict):
        return None
    prompt, completion = raw.get("prompt_tokens"), raw.get("completion_tokens")
    if not isinstance(prompt, int) or not isinstance(completion, int):
        return None
    total = raw.get("total_tokens")
    return Usage(prompt, completion, total if isinstance(total, int) else prompt + completion)


def _connection_fault(err: aiohttp.ClientError) -> UpstreamFault:
    if isinstance(err, aiohttp.ServerTimeoutError):
        detail = "no data from the server within the read timeout"
    elif isinstance(err, aiohttp.ClientConnectorError):
        detail = "connection refused or unreachable"
    elif isinstance(err, aiohttp.ServerDisconnectedError):
        detail = "the server closed the connection"
    elif isinstance(err, aiohttp.ClientPayloadError):
        detail = "the response was cut short"
    elif isinstance(err, aiohttp.ClientOSError):
        detail = "connection reset"
    else:
        detail = type(err).__name__
    return UpstreamFault("connection", detail)


def _outcome(fault: UpstreamFault) -> str:
    return str(fault.status) if fault.kind == "http" else fault.kind


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
