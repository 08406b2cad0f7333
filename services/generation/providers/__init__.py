"""LLM provider adapters behind one port (``base.Provider``)."""

from __future__ import annotations

from services.generation.providers.base import Provider
from services.generation.providers.openai_compatible import OpenAICompatibleProvider
from services.generation.retry import RetryPolicy
from services.generation.settings import ProviderConfig


def make_provider(
    config: ProviderConfig, *, retry: RetryPolicy, connect_timeout: float, read_timeout: float
) -> Provider:
    """The adapter for a provider's ``kind`` (one kind today; Anthropic would be another)."""
    if config.kind == "openai_compatible":
        return OpenAICompatibleProvider(
            config, retry=retry, connect_timeout=connect_timeout, read_timeout=read_timeout
        )
    raise ValueError(f"provider {config.name!r}: unsupported kind {config.kind!r}")


__all__ = ["OpenAICompatibleProvider", "Provider", "make_provider"]
