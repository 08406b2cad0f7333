"""The configured providers, by name."""

from __future__ import annotations

from collections.abc import Mapping

from services.common.errors import InvalidArgument, quote
from services.common.openai_api import OpenAIClients
from services.common.redis_client import RedisClient
from services.common.upstream_retry import RetryPolicy
from services.generation.providers import Provider, make_provider
from services.generation.rate_buckets import (
    DeclaredLimits,
    LocalLimits,
    RedisLimits,
    SharedLimits,
)
from services.generation.settings import GenerationSettings, ProviderConfig


def shared_limits(
    config: ProviderConfig, redis: RedisClient | None, key_prefix: str
) -> SharedLimits | None:
    """Where a provider's declared limits are counted: Redis (every replica), else memory."""
    declared = DeclaredLimits.of(config)
    if not declared.any:
        return None
    if redis is None:
        return LocalLimits(declared)
    return RedisLimits(redis, declared, key_prefix=key_prefix)


class ProviderRegistry:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        default: str,
        clients: OpenAIClients | None = None,
        redis: RedisClient | None = None,
    ) -> None:
        if default not in providers:
            raise ValueError(f"default provider {default!r} is not configured")
        self._providers = dict(providers)
        self.default = default
        # The SDK clients (one HTTP transport) the providers share; closed with the registry.
        self._clients = clients
        # Where the providers' limits are counted; closed with the registry.
        self._redis = redis

    @classmethod
    def from_settings(
        cls,
        settings: GenerationSettings,
        configs: Mapping[str, ProviderConfig] | None = None,
        redis: RedisClient | None = None,
    ) -> ProviderRegistry:
        retry = RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            base_backoff=settings.retry_base_backoff,
            max_backoff=settings.retry_max_backoff,
            retry_after_max=settings.retry_after_max,
        )
        configs = configs if configs is not None else settings.provider_configs()
        clients = OpenAIClients()
        providers = {
            name: make_provider(
                config,
                clients=clients,
                retry=retry,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                shared_limits=shared_limits(config, redis, settings.limits_key_prefix),
            )
            for name, config in configs.items()
        }
        return cls(providers, settings.default_provider, clients, redis)

    def get(self, name: str) -> Provider:
        """The provider called ``name`` (empty: the default)."""
        key = name.strip().lower() or self.default
        provider = self._providers.get(key)
        if provider is None:
            raise InvalidArgument(
                f"unknown provider {quote(name)}; configured: {', '.join(sorted(self._providers))}",
                field="provider",
                reason="UNKNOWN_PROVIDER",
            )
        return provider

    def configs(self) -> list[ProviderConfig]:
        return [p.config for p in self._providers.values()]

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        if self._clients is not None:
            await self._clients.close()
        if self._redis is not None:
            await self._redis.aclose()
