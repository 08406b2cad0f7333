"""The provider port: what the generation service needs from an LLM API.

An adapter turns a ``CompletionRequest`` into one upstream exchange (retries included) and
answers with a ``Completion``, or with ``StreamChunk``s for a stream. Adapters raise
``services.common.errors.ServiceError`` subclasses with the upstream fault already mapped
(see ``services.generation.upstream``), so the servicer never sees HTTP. ``Deadline`` (from
``services.common.upstream_retry``) bounds the whole exchange, retries included.

OpenAI-compatible chat completions is the only kind today; another API (Anthropic's
messages, say) is one more class implementing ``Provider``.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.tokens import estimate_tokens
from services.common.upstream_retry import Deadline
from services.generation.settings import ProviderConfig

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str  # one of ROLES
    content: str


@dataclass(frozen=True, slots=True)
class JsonSchemaFormat:
    """``response_format: {"type": "json_schema", ...}``: the schema the answer must match."""

    name: str
    schema: dict[str, Any]
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    """A validated request; ``None`` means "the provider's default"."""

    model: str
    messages: Sequence[ChatMessage]
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    stop: Sequence[str] = ()
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    response_format: JsonSchemaFormat | None = None
    # Never logged, never part of the body: adapters send it as the bearer token only.
    api_key: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    estimated: bool = False


@dataclass(slots=True)
class DebugInfo:
    url: str
    request_body: str  # exactly the bytes sent upstream (keys travel in headers only)


@dataclass(frozen=True, slots=True)
class Completion:
    text: str
    model: str
    finish_reason: str
    usage: Usage
    debug: DebugInfo
    # Upstream attempts made, and seconds spent waiting for the provider's limits (queue,
    # Retry-After, backoff) before and between them.
    attempts: int = 1
    waited: float = 0.0


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """Either a text delta, or (last) the finished completion with an empty delta."""

    delta: str = ""
    final: Completion | None = None


def estimate_prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    return sum(estimate_tokens(m.content) for m in messages)


# Completion tokens a call is charged up front under tokens_per_minute when neither the
# request nor the provider sets max_tokens. What a provider that counts reserved tokens
# (OpenAI) reserves for such a call is not documented; a call that then uses more is
# charged the rest when it ends (docs/generation.md#provider-limits).
COMPLETION_ESTIMATE = 256


def estimate_call_tokens(messages: Sequence[ChatMessage], max_tokens: int | None) -> int:
    """The tokens a call is charged when it starts: its prompt plus ``max_tokens`` (the
    request's, else the provider's), else ``COMPLETION_ESTIMATE``."""
    completion = COMPLETION_ESTIMATE if max_tokens is None else max_tokens
    return estimate_prompt_tokens(messages) + completion


def estimate_usage(messages: Sequence[ChatMessage], completion: str) -> Usage:
    prompt = estimate_prompt_tokens(messages)
    done = estimate_tokens(completion)
    return Usage(prompt, done, prompt + done, estimated=True)


class Provider(abc.ABC):
    """One configured LLM endpoint."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config

    @property
    def name(self) -> str:
        return self.config.name

    @abc.abstractmethod
    async def complete(
        self, request: CompletionRequest, deadline: Deadline, *, next_pair: bool = False
    ) -> Completion:
        """One completion; retries within ``deadline``. ``next_pair``: a fallback chain
        has a pair after this one, so a fault that pair would take over (a 5xx, a failed
        connection, a timeout, a malformed answer) ends the call at once instead of being
        retried here; a 429 is still retried (docs/generation.md#fallback-chains)."""

    @abc.abstractmethod
    def stream(
        self, request: CompletionRequest, deadline: Deadline, *, next_pair: bool = False
    ) -> AsyncGenerator[StreamChunk, None]:
        """Text deltas as they arrive, then one chunk with ``final`` set. Closing the
        iterator early (the caller went away) cancels the upstream request.
        ``next_pair``: as for ``complete``, before the first delta (after it, a fault
        ends the stream as it always does)."""

    async def close(self) -> None:
        """Release connections (called once at shutdown)."""
        return None
