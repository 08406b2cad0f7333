"""Adapter for OpenAI-compatible chat completions (OpenAI, Anyscale, vLLM, Ollama, llama.cpp)
through the official ``openai`` SDK (``AsyncOpenAI`` on its aiohttp transport).

The SDK speaks HTTP and server-sent events; this adapter adds what the service promises on
top: every attempt waits its turn under the provider's limits (``services.generation.admission``:
declared rate limits shared by every replica, adaptive concurrency, a 429's Retry-After
for every call), the shared retry policy (``services.common.upstream_retry``) inside the
call's deadline, retries only before the answer started (for a stream: before the first
text delta reached our caller), usage, attempts and time waited, and a span per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncGenerator
from typing import Any

import openai
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from opentelemetry.trace import Span

from services.common.errors import seconds_text
from services.common.logs import ThrottledWarning, hide_in_this_call, redact
from services.common.model_names import MAX_MODEL_CHARS
from services.common.openai_api import (
    ATTEMPTS,
    ExtraHeaders,
    authorized,
    record_usage,
    too_large,
    upstream_span,
)
from services.common.text import clean_text
from services.common.tracing import UPSTREAM_WAITED as WAITED
from services.common.tracing import service_tracer
from services.common.upstream_retry import Deadline, Retrier, RetryPolicy
from services.generation.admission import Limiters, Permit, ProviderLimiter
from services.generation.metrics import (
    TIME_TO_FIRST_TOKEN,
    UPSTREAM_REQUESTS,
    UPSTREAM_RETRIES,
    UPSTREAM_TOKENS,
    outcome_label,
)
from services.generation.providers.base import (
    Completion,
    CompletionRequest,
    DebugInfo,
    JsonSchemaFormat,
    Provider,
    StreamChunk,
    Usage,
    estimate_call_tokens,
    estimate_prompt_tokens,
    estimate_usage,
)
from services.generation.rate_buckets import SharedLimits
from services.generation.settings import ProviderConfig, provider_prefix
from services.generation.upstream import (
    UPSTREAM_ERRORS,
    UpstreamFault,
    fault_from_error,
    to_service_error,
)

log = logging.getLogger("gensearch.generation.openai")

# GENSEARCH_GENERATION_MAX_ANSWER_CHARS's default (settings.py says why there is one).
DEFAULT_MAX_ANSWER_CHARS = 1_000_000


# Faults that say the endpoint itself cannot serve now, whoever calls: not a request's
# (a 4xx), nor the call's deadline, nor the provider's limits.
_OUTAGE_KINDS = frozenset(
    {"connection", "first_byte_timeout", "read_timeout", "bad_response", "stream_error"}
)


def _is_outage(fault: UpstreamFault) -> bool:
    if fault.kind == "http":
        return fault.status is not None and fault.status >= 500
    return fault.kind in _OUTAGE_KINDS


def _next_pair_takes(fault: UpstreamFault) -> bool:
    """Whether a fallback chain's next pair takes this fault over at once, unretried here:
    the endpoint failing (a 5xx, a refused or reset connection, a stream cut short, a
    malformed answer) or too slow (its first-byte or read timeout, the pair's time).
    Issue 13 asks for it: another endpoint is likelier to answer now than this one after
    a backoff, and each retry here spent the time the next pair would answer in. A 429 is
    not among them: the endpoint is up and asks to wait, which the pair does while its
    time share allows (``FALLBACK_TIME_SHARE``). Nor are 408 and 409, which end as
    errors no pair takes over (docs/generation.md#fallback-chains)."""
    return _is_outage(fault) or fault.kind == "timeout"


class OpenAICompatibleProvider(Provider):
    def __init__(
        self,
        config: ProviderConfig,
        *,
        client: openai.AsyncOpenAI,
        retry: RetryPolicy,
        shared_limits: SharedLimits | None = None,
        max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
        caller_url: bool = False,
    ) -> None:
        """``caller_url``: ``config.base_url`` is the one a request named (``base_url``)."""
        super().__init__(config)
        self.caller_url = caller_url
        self.retry = retry
        self.max_answer_chars = max_answer_chars
        self.url = f"{config.base_url}/chat/completions"
        self._client = client
        self.limiters = Limiters(config, shared_limits, operator_url=not caller_url)
        # The operator's endpoint down or failing: one WARNING per outage (again every 30 s
        # while it lasts) and one INFO line when it answers again. Each failed call logged
        # a WARNING of its own, and each retry one more: four lines a call while it was down.
        self._outage = ThrottledWarning(
            log,
            f"provider {config.name!r} unavailable (%s): its calls fail until it answers "
            f"({provider_prefix(config.name)}BASE_URL)",
            recovery=f"provider {config.name!r} answering again",
        )

    async def close(self) -> None:
        """Cancelled calls' held slots come back at once (admission.py): their shared
        releases start here, before the registry settles the releases and closes Redis."""
        self.limiters.close()

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
        max_tokens = self._max_tokens(request)
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
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

    def _max_tokens(self, request: CompletionRequest) -> int | None:
        """The request's, else the provider's default (like temperature)."""
        return request.max_tokens if request.max_tokens is not None else self.config.max_tokens

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
            on_retry=lambda cause: UPSTREAM_RETRIES.labels(self.name, outcome_label(cause)).inc(),
        )

    def _fail(
        self, fault: UpstreamFault, request: CompletionRequest, span: Span, turns: _Turns
    ) -> Exception:
        if (
            fault.kind in ("timeout", "queue_timeout")
            and turns.rate_limited is not None
            and turns.deadline.expired
        ):
            # The deadline ended inside an attempt made after 429s, or in the wait for the
            # provider's limits before the next one (the pause the 429 imposed, on a loaded
            # loop admitted too late): the provider's rate limit is why the call did not
            # get through, not a slow answer. Before, the wait's end was DEADLINE_EXCEEDED
            # "the deadline passed while waiting 0.0 s for the provider's limits".
            fault = turns.rate_limited
        fault.attempts = turns.retrier.attempts
        fault.waited = turns.waited
        # Hidden in this call before the error quotes the provider's text (_hold_key).
        _hold_key(request.api_key)
        UPSTREAM_REQUESTS.labels(
            self.name, outcome_label(fault.cause if fault.kind == "http" else fault.kind)
        ).inc()
        span.set_attribute(ATTEMPTS, fault.attempts)
        span.set_attribute(WAITED, round(fault.waited, 3))
        fields = {"provider": self.name, "model": request.model, "fault": fault.kind}
        # INFO: a line per call, as the access log's; the outage's WARNING is below.
        log.info(
            "upstream call failed",
            extra={**fields, "status": fault.status, "attempts": fault.attempts},
        )
        if not self.caller_url and _is_outage(fault):
            cause = f"HTTP {fault.status}" if fault.kind == "http" else fault.kind
            self._outage(fault, extra=fields, cause=cause)
        return to_service_error(fault, self.name, request.model, caller_url=self.caller_url)

    def _succeeded(self, completion: Completion, span: Span) -> None:
        if not self.caller_url:
            self._outage.recovered()
        usage = completion.usage
        UPSTREAM_REQUESTS.labels(self.name, "ok").inc()
        UPSTREAM_TOKENS.labels(self.name, "prompt").inc(usage.prompt_tokens)
        UPSTREAM_TOKENS.labels(self.name, "completion").inc(usage.completion_tokens)
        record_usage(span, usage.prompt_tokens, usage.completion_tokens)
        span.set_attribute(ATTEMPTS, completion.attempts)
        span.set_attribute(WAITED, round(completion.waited, 3))
        span.set_attribute("gen_ai.response.model", completion.model)
        if completion.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [completion.finish_reason])

    def _turns(self, request: CompletionRequest, deadline: Deadline, next_pair: bool) -> _Turns:
        return _Turns(
            self.limiters.get(request.api_key), self._retrier(deadline), deadline,
            estimate_prompt_tokens(request.messages),
            estimate_call_tokens(request.messages, self._max_tokens(request)),
            next_pair=next_pair,
        )  # fmt: skip

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
    async def complete(
        self, request: CompletionRequest, deadline: Deadline, *, next_pair: bool = False
    ) -> Completion:
        client, headers = self._authorized(request)
        params = self.build_params(request, stream=False)
        debug = DebugInfo(url=self.url, request_body="")
        turns = self._turns(request, deadline, next_pair)
        with self._span(request) as span:
            turns.retrier.span = span
            while True:
                try:
                    permit = await turns.admit()
                    try:
                        completion = await self._complete_once(
                            client, params, headers, deadline, request, debug
                        )
                    except UpstreamFault as fault:
                        if await turns.failed(permit, fault):
                            continue
                        raise
                    except BaseException as err:
                        # Cancelled (the caller left, or its budget ran out) mid-call. The
                        # release goes on apart from a cancelled call, tracked so that the
                        # close awaits it (admission.py's ``_release``): no bare shield.
                        await permit.release(outcome=_ended(err))
                        raise
                except UpstreamFault as fault:
                    raise self._fail(fault, request, span, turns) from None
                await permit.release(outcome="ok", tokens=completion.usage.total_tokens)
                completion = turns.report(completion)
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
            async with asyncio.timeout_at(deadline.expires_at):
                first_byte = self._first_byte_at(deadline)
                try:
                    async with asyncio.timeout_at(first_byte):
                        data = await self._send(client, params, headers, debug)
                except TimeoutError:
                    raise self._timeout(first_byte, deadline) from None
        except UPSTREAM_ERRORS as err:
            raise fault_from_error(err) from None
        _hold_key(request.api_key)  # before the answer's model and finish reason are checked
        completion = _parse_completion(data, request, debug)
        if len(completion.text) > self.max_answer_chars:
            # The SDK has read the whole body by now; cutting it here still keeps every
            # copy after this one (the reply, the gateway's results) bounded.
            self._note_cut(request)
            completion = dataclasses.replace(
                completion, text=completion.text[: self.max_answer_chars], finish_reason="length"
            )
        return completion

    def _note_cut(self, request: CompletionRequest) -> None:
        log.warning(
            "answer cut at GENSEARCH_GENERATION_MAX_ANSWER_CHARS",
            extra={"provider": self.name, "model": request.model, "limit": self.max_answer_chars},
        )

    def _first_byte_at(self, deadline: Deadline) -> float:
        """When (loop time) an attempt that holds a slot must have heard from upstream:
        a hanging upstream must not keep a slot for the whole deadline, while calls
        queued behind it starve."""
        limit = self.config.first_byte_timeout
        if limit is None:
            return deadline.expires_at
        return min(deadline.expires_at, asyncio.get_running_loop().time() + limit)

    def _timeout(self, first_byte: float, deadline: Deadline) -> UpstreamFault:
        limit = self.config.first_byte_timeout
        if limit is not None and first_byte < deadline.expires_at:
            return UpstreamFault(
                "first_byte_timeout",
                f"no answer began within {seconds_text(limit)} s",
                retryable=True,
            )
        return UpstreamFault("timeout")

    # -- streaming -------------------------------------------------------------------------
    async def stream(
        self, request: CompletionRequest, deadline: Deadline, *, next_pair: bool = False
    ) -> AsyncGenerator[StreamChunk, None]:
        client, headers = self._authorized(request)
        params = self.build_params(request, stream=True)
        debug = DebugInfo(url=self.url, request_body="")
        turns = self._turns(request, deadline, next_pair)
        started = time.perf_counter()
        with self._span(request, attach=False) as span:
            turns.retrier.span = span  # not the current span: see upstream_span
            while True:
                state = _StreamState(request.model, self.max_answer_chars, request.api_key)
                try:
                    permit = await turns.admit()
                    try:
                        # aclosing: when our caller stops early, the HTTP response closes
                        # now, not whenever the garbage collector finalizes the generator.
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
                        # Once text reached the caller a retry would repeat it: final.
                        if state.emitted:
                            await permit.release(outcome="failed")
                            raise
                        if await turns.failed(permit, fault):
                            continue
                        raise
                    except BaseException as err:
                        # Our caller went away (or the deadline cancelled us) mid-answer.
                        # Tracked apart from a cancelled call (admission.py's ``_release``).
                        await permit.release(outcome=_ended(err))
                        raise
                except UpstreamFault as fault:
                    raise self._fail(fault, request, span, turns) from None
                break
            if state.cut:
                self._note_cut(request)
            text = "".join(state.parts)
            final = Completion(
                text=text,
                model=state.model,
                finish_reason=state.finish_reason or "",
                usage=state.usage or estimate_usage(request.messages, text),
                debug=debug,
            )
            await permit.release(outcome="ok", tokens=final.usage.total_tokens)
            final = turns.report(final)
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
                if state.cut:
                    break  # leaving the block closes the response: the upstream stops
        if state.finish_reason is None:
            raise UpstreamFault(
                "bad_response", "the stream ended before the model finished", retryable=True
            )


def _ended(err: BaseException) -> str:
    """The release outcome of an attempt ``err`` ended: ``cancelled`` when its caller left
    (its slot is held a while before a queued call takes it: admission.py), else
    ``failed``. A caller cancelled while our stream waits at its ``yield`` (a reader
    blocked handing text on) closes the stream: that is GeneratorExit here, not
    CancelledError, with the task being cancelled all the same."""
    if isinstance(err, asyncio.CancelledError):
        return "cancelled"
    task = asyncio.current_task()
    return "cancelled" if task is not None and task.cancelling() else "failed"


class _Turns:
    """One call's attempts under the provider's limits: its place in the queue (kept across
    retries), the attempts made and the time spent waiting. ``next_pair``: a fallback
    chain's next pair takes over the faults ``_next_pair_takes`` names, unretried."""

    __slots__ = (
        "deadline",
        "estimate",
        "limiter",
        "next_pair",
        "prompt",
        "rate_limited",
        "retrier",
        "ticket",
        "waited",
    )

    def __init__(
        self,
        limiter: ProviderLimiter,
        retrier: Retrier,
        deadline: Deadline,
        prompt: int,
        estimate: int,
        *,
        next_pair: bool = False,
    ) -> None:
        self.limiter = limiter
        self.next_pair = next_pair
        self.retrier = retrier
        self.deadline = deadline
        self.prompt = prompt
        self.estimate = estimate
        self.ticket = limiter.ticket()
        self.waited = 0.0
        self.rate_limited: UpstreamFault | None = None  # the last 429, if any

    async def admit(self) -> Permit:
        loop = asyncio.get_running_loop()
        entered = loop.time()
        try:
            permit = await self.limiter.acquire(self.ticket, self.estimate, self.deadline)
        except UpstreamFault:
            # Refused after queueing (its wait would pass the deadline once its turn came,
            # or the deadline passed in the queue): that time was spent waiting too.
            self.waited += loop.time() - entered
            raise
        self.waited += permit.waited
        self.retrier.begin()
        return permit

    async def failed(self, permit: Permit, fault: UpstreamFault) -> bool:
        """Releases the attempt's permit; True when another attempt is worth making (after
        the wait this sleeps, or that the queue imposes)."""
        rate_limited = fault.status == 429
        if rate_limited:
            self.rate_limited = fault
        overloaded = rate_limited or fault.kind in ("timeout", "first_byte_timeout")
        if self.next_pair and _next_pair_takes(fault):
            wait = None  # final here: the fallback chain moves on at once
        else:
            wait = self.retrier.plan(
                retryable=fault.retryable,
                retry_after=fault.retry_after,
                cause=fault.cause,
                rate_limited=rate_limited,
            )
        paused = False
        try:
            if wait is not None and rate_limited and fault.retry_after is not None:
                # Every call of the provider waits (in every replica sharing its limits);
                # paused before the slot is given back, so no queued call slips through.
                await self.limiter.pause(wait)
                paused = True
        finally:
            # A refused request used no tokens, a failed one its prompt (what counts for a
            # provider counting usage; one counting reservations keeps the whole charge).
            await permit.release(
                outcome="overloaded" if overloaded else "failed",
                tokens=0 if rate_limited else self.prompt,
            )
        if wait is None:
            return False
        if paused:
            return True  # this call keeps its place in the queue
        loop = asyncio.get_running_loop()
        slept_from = loop.time()
        await asyncio.sleep(wait)
        self.waited += loop.time() - slept_from
        return True

    def report(self, completion: Completion) -> Completion:
        return dataclasses.replace(completion, attempts=self.retrier.attempts, waited=self.waited)


class _StreamState:
    __slots__ = ("api_key", "cut", "emitted", "finish_reason", "model", "parts", "room", "usage")

    def __init__(self, model: str, max_chars: int, api_key: str | None) -> None:
        self.model = model
        # The caller's key (None: the operator's, always redacted): _hold_key before a
        # chunk's model or finish reason is checked.
        self.api_key = api_key
        self.parts: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.emitted = False
        # Characters the answer may still take (max_answer_chars); past it, ``cut``.
        self.room = max_chars
        self.cut = False


def _stream_fault(err: BaseException) -> UpstreamFault:
    if isinstance(err, openai.APITimeoutError):
        # Mid-stream, so connected: the provider went silent past the client's read
        # timeout. Retryable as a dropped connection (no text reached the caller yet);
        # told as what it is, naming the setting (it read "a malformed response").
        return UpstreamFault("read_timeout", "the answer stalled mid-stream", retryable=True)
    fault = fault_from_error(err)
    if fault.kind == "connection":
        # Retryable as a dropped connection, as long as no text reached the caller yet.
        return UpstreamFault(
            "bad_response", f"the stream broke off ({fault.detail})", retryable=True
        )
    if fault.kind == "bad_response" and too_large(err) is None:
        return UpstreamFault("bad_response", "a stream event is not JSON")
    return fault


def _absorb(chunk: object, state: _StreamState) -> list[str]:
    """The text deltas of one chunk; model, usage and finish reason go into ``state``."""
    if not isinstance(chunk, ChatCompletionChunk):
        raise UpstreamFault("bad_response", "a stream event is not a JSON object")
    if chunk.model != state.model:  # checked once, not per chunk
        _hold_key(state.api_key)
        if _model_name(chunk.model):
            state.model = chunk.model
    usage = _usage(chunk.usage)
    if usage is not None:
        state.usage = usage
    if not isinstance(chunk.choices, list):
        # A keep-alive or a vendor's own event ('data: {}'): nothing to absorb, as an empty
        # choices list. A stream of nothing else still fails: it never finishes.
        return []
    deltas: list[str] = []
    for choice in chunk.choices:
        if not isinstance(choice, ChunkChoice) or choice.index not in (0, None):
            continue
        piece = getattr(choice.delta, "content", None)
        if piece is not None and not isinstance(piece, str):
            # As a unary answer's content: dropped, the stream ended OK with text missing.
            raise UpstreamFault("bad_response", "a stream event's content is not text")
        if isinstance(piece, str) and piece:
            piece = clean_text(piece)  # each chunk alone: a pair split across two is lost
            if len(piece) > state.room:
                # Past max_answer_chars: keep what fits, and end as max_tokens would.
                piece = piece[: state.room]
                state.cut = True
                state.finish_reason = "length"
            state.room -= len(piece)
            if piece:
                state.parts.append(piece)
                deltas.append(piece)
            if state.cut:
                return deltas
        if choice.finish_reason:
            _hold_key(state.api_key)
            state.finish_reason = _finish_reason(choice.finish_reason)
    return deltas


def _hold_key(api_key: str | None) -> None:
    """Makes sure a caller's key is hidden in this call (its context) before the provider's
    text is checked or quoted: the authenticator hid it already where the call came in
    through the chassis; this keeps it so wherever a provider is called. A key hidden
    already costs a tuple lookup. Held by the call's context, it cannot be pushed out by
    other callers' keys while the call waits."""
    hide_in_this_call(api_key)


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
    text = clean_text(content or "")
    return Completion(
        text=text,
        model=data.model if _model_name(data.model) else request.model,
        finish_reason=_finish_reason(getattr(choice, "finish_reason", None) or ""),
        usage=_usage(data.usage) or estimate_usage(request.messages, text),
        debug=debug,
    )


# The most tokens one call's usage may report and be believed. Counts past it (or below 0)
# are a broken provider's: they failed the call with INTERNAL (a Prometheus counter refuses
# a negative increment, an int32 Usage field a count past 2**31 - 1), so such usage is
# treated as absent and estimated. 10 M is far beyond any context window; the gateway's
# sum over a request's hits saturates at the int32 maximum (add_usage).
MAX_REPORTED_TOKENS = 10_000_000


# Longer than any finish reason a provider sends ("stop", "length", "content_filter" …).
MAX_FINISH_REASON_CHARS = 64


# Characters of a finish reason redacted to report it (redaction costs in the length of
# the text, on the event loop; a stream may send one per chunk, each as long as a line
# may be): a longer one is no finish reason a client can use, and is reported as
# UNKNOWN_FINISH_REASON, unread. A constant, not a setting: nothing is refused by it (the
# answer is kept, its finish reason reported as unknown), and every real finish reason is
# far shorter (MAX_FINISH_REASON_CHARS).
MAX_FINISH_REASON_READ = 1024
UNKNOWN_FINISH_REASON = "unknown"


def _finish_reason(value: object) -> str:
    """The finish reason an answer gives, as text a reply can carry: any value still says
    the answer finished, but the SDK does not validate it, and "st\\ud83dop" (a lone
    surrogate) failed the call with INTERNAL; a longer one is cut. Redacted (before the
    cut, so a secret is found whole): it goes into replies and spans, which no log
    formatter scrubs, and a provider (or a proxy) that answered with the key it was sent
    there handed the operator's key to the caller."""
    text = str(value)
    if len(text) > MAX_FINISH_REASON_READ:
        return UNKNOWN_FINISH_REASON
    return redact(clean_text(text))[:MAX_FINISH_REASON_CHARS]


def _model_name(value: object) -> bool:
    """Whether the model an answer names is one to report. The SDK does not validate
    answers: a stream chunk's ``"model": {"a": 1}`` reached the reply and failed the call
    with INTERNAL. Held to the shape a request's model name must have (bounded, printable:
    it goes into replies, spans and logs), and holding no secret (a provider echoing the
    key it was sent as the model reached the caller and the span); else the requested
    model is reported, as when a server names none."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_MODEL_CHARS
        and value.isprintable()
        and redact(value) == value
    )


def _usage(raw: object) -> Usage | None:
    if not isinstance(raw, CompletionUsage):
        return None
    prompt, completion = raw.prompt_tokens, raw.completion_tokens
    if not _plausible(prompt) or not _plausible(completion):
        return None
    total = raw.total_tokens
    return Usage(prompt, completion, total if _plausible(total) else prompt + completion)


def _plausible(count: object) -> bool:
    return (
        isinstance(count, int) and not isinstance(count, bool) and 0 <= count <= MAX_REPORTED_TOKENS
    )
