"""The configured providers, by name, and the same providers at a caller's base URL."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

from services.common.egress import (
    MAX_URL,
    EgressPolicy,
    UrlRefused,
    canonical_url,
    url_not_allowed,
)
from services.common.errors import InvalidArgument, quote
from services.common.openai_api import OpenAIClients
from services.common.redis_client import RedisClient
from services.common.releases import Releases, settle_wait
from services.common.upstream_retry import RetryPolicy
from services.common.values import check_chars
from services.generation.providers import DEFAULT_MAX_ANSWER_CHARS, Provider, make_provider
from services.generation.rate_buckets import (
    DeclaredLimits,
    LocalLimits,
    RedisLimits,
    SharedLimits,
)
from services.generation.settings import GenerationSettings, ProviderConfig
from services.generation.upstream import ALLOWLIST_SETTING, MAX_URL_SETTING

# Providers kept for callers' base URLs (each holds its own concurrency limit). Not a
# setting: it refuses nothing, a provider past it is made again when next used.
MAX_CALLER_ENDPOINTS = 64


def shared_limits(
    config: ProviderConfig,
    redis: RedisClient | None,
    key_prefix: str,
    releases: Releases | None = None,
) -> SharedLimits | None:
    """Where a provider's declared limits are counted: Redis (every replica), else memory.
    ``releases``: where the Redis releases run (the registry's, settled at its close)."""
    declared = DeclaredLimits.of(config)
    if not declared.any:
        return None
    if redis is None:
        return LocalLimits(declared)
    return RedisLimits(redis, declared, key_prefix=key_prefix, releases=releases)


class ProviderRegistry:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        default: str,
        clients: OpenAIClients | None = None,
        *,
        egress: EgressPolicy | None = None,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        redis: RedisClient | None = None,
        max_answer_chars: int = DEFAULT_MAX_ANSWER_CHARS,
        max_response_bytes: int | None = None,
        max_url_chars: int = MAX_URL,
        releases: Releases | None = None,
        close_wait: float = 0.0,
    ) -> None:
        """``releases``: the providers' shared limits' releases (``shared_limits``),
        awaited at ``close`` for at most ``close_wait`` seconds (releases.settle_wait) before
        the Redis client closes."""
        if default not in providers:
            raise ValueError(f"default provider {default!r} is not configured")
        self._providers = dict(providers)
        self.default = default
        # The SDK clients (one HTTP transport) the providers share; closed with the registry.
        self._clients = clients
        # URLs callers name: the operator's allowlist, checked here and on every connection
        # by the clients' own transport (services.common.egress), never the operator's one.
        self.egress = egress or EgressPolicy()
        # How providers at callers' URLs are made: as the configured ones are.
        self._retry = retry or RetryPolicy()
        self._timeouts = (connect_timeout, read_timeout)
        self._max_answer_chars = max_answer_chars
        self._max_response_bytes = max_response_bytes
        self._max_url_chars = max_url_chars
        self._caller_clients: OpenAIClients | None = None
        self._caller_providers: OrderedDict[tuple[str, str], Provider] = OrderedDict()
        # Where the providers' limits are counted; closed with the registry.
        self._redis = redis
        self._releases = releases or Releases()
        self._close_wait = close_wait

    @classmethod
    def from_settings(
        cls,
        settings: GenerationSettings,
        configs: Mapping[str, ProviderConfig] | None = None,
        redis: RedisClient | None = None,
    ) -> ProviderRegistry:
        configs = configs if configs is not None else settings.provider_configs()
        clients = OpenAIClients(max_response_bytes=settings.max_response_bytes)
        releases = Releases()
        retry = RetryPolicy(
            max_attempts=settings.retry_max_attempts,
            base_backoff=settings.retry_base_backoff,
            max_backoff=settings.retry_max_backoff,
            retry_after_max=settings.retry_after_max,
        )
        providers = {
            name: make_provider(
                config,
                clients=clients,
                retry=retry,
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                shared_limits=shared_limits(config, redis, settings.limits_key_prefix, releases),
                max_answer_chars=settings.max_answer_chars,
            )
            for name, config in configs.items()
        }
        return cls(
            providers,
            settings.default_provider,
            clients,
            egress=EgressPolicy.parse(settings.allowed_hosts),
            retry=retry,
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            redis=redis,
            max_answer_chars=settings.max_answer_chars,
            max_response_bytes=settings.max_response_bytes,
            max_url_chars=settings.max_url_chars,
            releases=releases,
            close_wait=settle_wait(settings.redis_socket_timeout, settings.redis_connect_timeout),
        )

    def get(self, name: str, field: str = "provider") -> Provider:
        """The provider called ``name`` (empty: the default). Spaces alone are no name:
        stripped, they used to silently become the default provider (as spaces once became
        the default model, ``model_names.model_name_problem``)."""
        if name and not name.strip():
            raise InvalidArgument(
                "a provider name must not be only spaces (leave it empty for the default)",
                field=field,
            )
        key = name.strip().lower() or self.default
        provider = self._providers.get(key)
        if provider is None:
            raise InvalidArgument(
                f"unknown provider {quote(name)}; configured: {', '.join(sorted(self._providers))}",
                field=field,
                reason="UNKNOWN_PROVIDER",
            )
        return provider

    def at_caller_url(self, provider: Provider, base_url: str) -> Provider:
        """``provider`` at a base URL the caller named, if the operator's allowlist allows
        it (PERMISSION_DENIED naming ``base_url`` otherwise). It never sends the operator's
        key: callers of it pass only the caller's own key, and it requires none."""
        check_chars(base_url, "base_url", self._max_url_chars, MAX_URL_SETTING)
        try:
            self.egress.check_url(base_url)
            canonical = canonical_url(base_url)
        except UrlRefused as err:
            raise url_not_allowed("base_url", err.why, ALLOWLIST_SETTING) from None
        key = (provider.name, canonical)
        cached = self._caller_providers.get(key)
        if cached is not None:
            self._caller_providers.move_to_end(key)
            return cached
        if self._caller_clients is None:
            self._caller_clients = OpenAIClients(
                egress=self.egress, max_response_bytes=self._max_response_bytes
            )
        # The URL called is the one checked, as the allowlist read it: the caller's own
        # spelling went to the HTTP client, which reads some differently ("HTTP://",
        # "127.0.0.1.", port "08080") and refused them as it sent each attempt, every
        # retry counted and charged as a call to an unavailable upstream.
        config = provider.config.model_copy(update={"base_url": canonical, "requires_key": False})
        made = make_provider(
            config,
            clients=self._caller_clients,
            retry=self._retry,
            connect_timeout=self._timeouts[0],
            read_timeout=self._timeouts[1],
            max_answer_chars=self._max_answer_chars,
            caller_url=True,
        )
        self._caller_providers[key] = made
        if len(self._caller_providers) > MAX_CALLER_ENDPOINTS:
            self._caller_providers.popitem(last=False)
        return made

    def configs(self) -> list[ProviderConfig]:
        return [p.config for p in self._providers.values()]

    async def close(self) -> None:
        for provider in [*self._providers.values(), *self._caller_providers.values()]:
            await provider.close()
        if self._clients is not None:
            await self._clients.close()
        if self._caller_clients is not None:
            await self._caller_clients.close()
        if self._redis is not None:
            # Slots released by calls cut short are freed before the client closes under
            # them (the process then gone, each stayed taken until its lease ended).
            await self._releases.settle(self._close_wait)
            await self._redis.aclose()
