"""One answer for a planned request: the fallback chain, then (with a JSON schema) the
answer validated, corrected once, or refused.

Validation lives in the generation service, not the gateway: every caller of Generate
(the gateway's per-hit and grouped calls, Ask, any other client) gets the same guarantee,
and the corrective retry is one more upstream call, which is this service's job (same
provider, key, retries and deadline as the first).

With a schema, a valid answer comes back parsed (a dict, sent as a Struct beside the
text). An invalid one gets ONE corrective retry on the pair that answered: the model sees
its own answer and the validation error and is asked for corrected JSON only. Still
invalid: FAILED_PRECONDITION with reason ``INVALID_OUTPUT`` (the model could not produce
what was asked; retrying the same request is up to the caller).

Every request sent upstream on the way (each pair's attempts, the corrective retry's) is
counted: the answer carries the count (``upstream_calls``), and so does the error when
there is no answer (ErrorInfo metadata ``upstream_calls``), so a caller that meters LLM
calls (the gateway's per-tenant quota) charges what was really spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from services.common import shutdown_cut
from services.common.errors import ATTEMPTS, WAIT_MS, FailedPrecondition, ServiceError
from services.common.fair_executor import FairExecutor
from services.common.json_schema import OutputSchema, parse_output_async
from services.common.upstream_retry import Deadline
from services.generation import fallback
from services.generation.fallback import Calls, Target
from services.generation.metrics import INVALID_OUTPUTS
from services.generation.providers.base import ChatMessage, Completion, CompletionRequest, Usage

INVALID_OUTPUT = "INVALID_OUTPUT"
CORRECTION = (
    "Your answer above does not satisfy the required JSON schema: {why}. "
    "Reply with the corrected JSON object only, with no other text."
)


@dataclass(frozen=True)
class Plan:
    chain: Sequence[Target]
    deadline: Deadline
    # Share of the time left one pair may spend while more pairs remain.
    share: float
    # Where answers are checked against ``schema``: one thread, tenants in turn.
    checks: FairExecutor
    schema: OutputSchema | None = None
    # ``fallback_index`` of each pair skipped for this call, its limits unable to hold it
    # (planning.py): named on the error when the last pair kept fails.
    skipped: tuple[int, ...] = ()


@dataclass(frozen=True)
class Answer:
    target: Target
    completion: Completion
    structured: dict[str, Any] | None = None
    corrected: bool = False
    # Requests sent upstream for this answer, failed pairs and corrective retry included.
    upstream_calls: int = 0


@dataclass(frozen=True)
class Event:
    """A text delta; or ``restart`` (discard the deltas so far); or, last, the answer."""

    delta: str = ""
    restart: bool = False
    answer: Answer | None = None


async def _check(plan: Plan, text: str) -> tuple[dict[str, Any] | None, str]:
    """``text`` checked against the plan's schema (there is one) on its checks' thread."""
    assert plan.schema is not None
    return await parse_output_async(text, plan.schema, plan.checks)


def _corrective(request: CompletionRequest, output: str, why: str) -> CompletionRequest:
    messages = [
        *request.messages,
        ChatMessage("assistant", output or "(empty)"),
        ChatMessage("user", CORRECTION.format(why=why)),
    ]
    return dataclasses.replace(request, messages=messages)


def _invalid(target: Target, why: str, spent: Completion) -> FailedPrecondition:
    """The refusal of an answer still invalid after its corrective retry; ``spent`` (both
    calls summed) gives the attempts and wait a failed call reports, as any other does."""
    INVALID_OUTPUTS.labels(target.provider.name, "retry").inc()
    metadata = {
        "provider": target.provider.name,
        "model": target.request.model,
        ATTEMPTS: str(spent.attempts),
        WAIT_MS: str(round(spent.waited * 1000)),
    }
    if spent.finish_reason == "length":
        # The model ran out of tokens mid-JSON: "Unterminated string" alone sent users
        # looking at the schema or the model when the fix is a larger max_tokens.
        why += (
            "; the answer was cut at max_tokens (finish_reason 'length') before its JSON "
            "ended: give a larger max_tokens"
        )
        metadata["finish_reason"] = "length"
    return FailedPrecondition(
        f"the answer of provider {target.provider.name!r} does not match "
        f"response_format.json_schema, even after one corrective retry: {why}",
        reason=INVALID_OUTPUT,
        metadata=metadata,
    )


def _sum(first: Completion, second: Completion) -> Completion:
    """The corrective answer, with the usage, attempts and waits of both calls (the
    caller paid for both)."""
    a, b = first.usage, second.usage
    usage = Usage(
        a.prompt_tokens + b.prompt_tokens,
        a.completion_tokens + b.completion_tokens,
        a.total_tokens + b.total_tokens,
        a.estimated or b.estimated,
    )
    return dataclasses.replace(
        second,
        usage=usage,
        attempts=first.attempts + second.attempts,
        waited=first.waited + second.waited,
    )


async def generate(plan: Plan) -> Answer:
    calls = Calls()
    try:
        answer = await _generate(plan, calls)
    except ServiceError as err:
        calls.charged_to(err)
        raise
    except asyncio.CancelledError:
        cut = _cut_charged(calls)
        if cut is None:
            raise
        raise cut from None
    return dataclasses.replace(answer, upstream_calls=calls.made)


async def _generate(plan: Plan, calls: Calls) -> Answer:
    target, done = await fallback.complete(
        plan.chain, plan.deadline, plan.share, calls, plan.skipped
    )
    if plan.schema is None:
        return Answer(target, done)
    value, why = await _check(plan, done.text)
    if value is not None:
        return Answer(target, done, value)
    INVALID_OUTPUTS.labels(target.provider.name, "first").inc()
    try:
        retry = await target.provider.complete(
            _corrective(target.request, done.text, why), plan.deadline
        )
    except ServiceError as err:
        calls.failed(err)
        raise
    calls.made += retry.attempts
    value, why = await _check(plan, retry.text)
    if value is None:
        raise _invalid(target, why, _sum(done, retry))
    return Answer(target, _sum(done, retry), value, corrected=True)


async def stream(plan: Plan) -> AsyncGenerator[Event, None]:
    calls = Calls()
    # A cut landing as a message is written refuses the next step before this runs: the
    # count goes on that error too (the gateway charged only the admitted request).
    shutdown_cut.noting(calls.charged_to)
    try:
        async with contextlib.aclosing(_stream(plan, calls)) as events:
            async for event in events:
                if event.answer is not None:
                    answer = dataclasses.replace(event.answer, upstream_calls=calls.made)
                    event = Event(answer=answer)
                yield event
    except ServiceError as err:
        calls.charged_to(err)
        raise
    except asyncio.CancelledError:
        cut = _cut_charged(calls)
        if cut is None:
            raise
        raise cut from None


def _cut_charged(calls: Calls) -> ServiceError | None:
    """What a cancelled answer raises in its place: the server's cut (shutdown_cut.py)
    carrying the requests already made, as any failed answer's error does, so that the
    gateway charges them to the tenant's quota (the cut's status had none: they went
    uncounted); None when the cancellation is not the cut (the client went away). A
    request on its way at the cut is not counted, whether it reached the provider not
    known, unless it is a stream whose text had begun to come (``Calls.streaming``)."""
    cut = shutdown_cut.claimed()
    return None if cut is None else calls.charged_to(cut)


async def _stream(plan: Plan, calls: Calls) -> AsyncGenerator[Event, None]:
    first: tuple[Target, Completion] | None = None
    parts: list[str] = []
    chain = fallback.stream(plan.chain, plan.deadline, plan.share, calls, plan.skipped)
    async with contextlib.aclosing(chain) as it:
        async for target, chunk in it:
            if chunk.final is not None:
                first = (target, chunk.final)
            elif chunk.delta:
                parts.append(chunk.delta)
                yield Event(delta=chunk.delta)
    if first is None:
        return
    target, done = first
    if plan.schema is None:
        yield Event(answer=Answer(target, done))
        return
    text = "".join(parts)
    value, why = await _check(plan, text)
    if value is not None:
        yield Event(answer=Answer(target, done, value))
        return
    INVALID_OUTPUTS.labels(target.provider.name, "first").inc()
    yield Event(restart=True)
    parts.clear()
    retry: Completion | None = None
    request = _corrective(target.request, text, why)
    try:
        async with contextlib.aclosing(target.provider.stream(request, plan.deadline)) as chunks:
            async for chunk in chunks:
                if chunk.final is not None:
                    retry = chunk.final
                    calls.finished(retry.attempts)
                elif chunk.delta:
                    calls.streaming = True
                    parts.append(chunk.delta)
                    yield Event(delta=chunk.delta)
    except ServiceError as err:
        calls.failed(err)
        raise
    if retry is None:
        return
    value, why = await _check(plan, "".join(parts))
    if value is None:
        raise _invalid(target, why, _sum(done, retry))
    yield Event(answer=Answer(target, _sum(done, retry), value, corrected=True))
