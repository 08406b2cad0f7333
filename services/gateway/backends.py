"""What the orchestration of a call works with, built once per gateway process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from services.common.fair_executor import FairExecutor
from services.common.redis_client import RedisClient
from services.gateway.catalog import Catalog
from services.gateway.clients import Downstream
from services.gateway.generation_cache import GenerationCache
from services.gateway.models import ModelCatalog
from services.gateway.settings import GatewaySettings
from services.gateway.summarizer import Summarizer
from services.gateway.tokens import Tokenizers


@dataclass(frozen=True)
class Backends:
    clients: Downstream
    catalog: Catalog
    models: ModelCatalog
    settings: GatewaySettings
    cache: GenerationCache
    tokenizers: Tokenizers
    summarizer: Summarizer
    # Where response_format schemas not seen before are checked (json_schema), tenants in turn.
    schema_checks: FairExecutor

    @classmethod
    def build(
        cls,
        settings: GatewaySettings,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
        redis: RedisClient | None = None,
    ) -> Backends:
        """``interceptors`` go on every downstream channel (see ``clients.channel``);
        ``redis`` (the gateway's, shared with the quotas; None: no generation cache) is
        closed by its owner, not here."""
        clients = Downstream(settings, interceptors)
        return cls(
            clients=clients,
            catalog=Catalog(
                clients.retrieval,
                settings.collection_cache_ttl,
                settings.collection_cache_entries_per_tenant,
            ),
            models=ModelCatalog(
                clients.generation, settings.max_model_chars, settings.max_url_chars
            ),
            settings=settings,
            cache=GenerationCache(
                redis,
                settings.quota_key_prefix,
                settings.cache_max_ttl,
                settings.cache_max_bytes_per_tenant,
            ),
            tokenizers=Tokenizers(
                settings.tokenize_urls,
                timeout=settings.tokenize_timeout,
                retry_seconds=settings.tokenize_retry_seconds,
                cache_entries=settings.token_cache_entries,
            ),
            summarizer=Summarizer(clients.memory, clients.generation, settings),
            schema_checks=FairExecutor(thread_name_prefix="schema-check"),
        )
