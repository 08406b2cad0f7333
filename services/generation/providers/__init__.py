"""LLM provider adapters behind one port (``base.Provider``)."""

from __future__ import annotations

from services.common.openai_api import OpenAIClients
from services.common.upstream_retry import RetryPolicy
from services.generation.providers.base import Provider
from services.generation.providers.openai_compatible import (
    DEFAULT_MAX_ANSWER_CHARS,
    OpenAICompatibleProvider,
)
from services.generation.rate_buckets import SharedLimits
from services.generation.settings import ProviderConfig


def make_provider(
    config: ProviderConfig,
    *,
    clients: OpenAIClients,
    retry: RetryPolicy,
    connect_timeout: float,
    read_timeout: float,
    shared_limits: SharedLimits | None = None,
    max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
    caller_url: bool = False,
) -> Provider:
    """The adapter for a provider's ``kind`` (one kind today; Anthropic would be another)."""
    if config.kind == "openai_compatible":
        client = clients.get(
            config.base_url, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
        return OpenAICompatibleProvider(
            config,
            client=client,
            retry=retry,
            shared_limits=shared_limits,
            max_answer_chars=max_answer_chars,
            caller_url=caller_url,
        )
    raise ValueError(f"provider {config.name!r}: unsupported kind {config.kind!r}")


__all__ = ["DEFAULT_MAX_ANSWER_CHARS", "OpenAICompatibleProvider", "Provider", "make_provider"]
