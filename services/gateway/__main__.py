"""Serve the gateway: ``python -m services.gateway`` (configured by GENSEARCH_* env)."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass

from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc

from services.common.logs import configure_logging
from services.common.quotas import Quotas
from services.common.redis_client import RedisClient, connect_configured
from services.common.releases import settle_wait
from services.common.server import GrpcServer, log_share_off, run_until_signal
from services.common.settings import load_settings, warn_unknown_variables
from services.common.tracing import client_interceptors
from services.gateway.ask import AskService
from services.gateway.backends import Backends
from services.gateway.clients.channel import (
    GENERATION_SERVICE,
    MEMORY_SERVICE,
    RETRIEVAL_SERVICE,
)
from services.gateway.clients.generation import PER_TENANT_SETTING
from services.gateway.forward import GenerationForwarder, MemoryForwarder, RetrievalForwarder
from services.gateway.generative import GenerativeSearch
from services.gateway.named_objects import NamedObjects
from services.gateway.servicer import GatewayServicer
from services.gateway.settings import GatewaySettings

GATEWAY_SERVICE = "gensearch.gateway.v1.GatewayService"
log = logging.getLogger("gensearch.gateway")


@dataclass(frozen=True)
class Gateway:
    """The server, and the Ask service behind it (whose background work a test can wait
    for: ``AskService.idle``)."""

    server: GrpcServer
    ask: AskService


async def build_server(settings: GatewaySettings, *, port: int | None = None) -> GrpcServer:
    return (await build(settings, port=port)).server


async def build(settings: GatewaySettings, *, port: int | None = None) -> Gateway:
    # One client (one pool) for the quotas and the generation cache, closed once, last:
    # summary folds drained at shutdown still charge their LLM calls to the quotas.
    redis = connect_redis(settings)
    quotas = build_quotas(settings, redis)
    server = GrpcServer(
        settings,
        port=settings.port if port is None else port,
        metrics_port=settings.metrics_port,
        accept_forwarded_identity=False,
        admission=quotas.admit if quotas is not None else None,
    )
    # Every downstream call gets a CLIENT span and carries the trace context.
    backends = Backends.build(settings, interceptors=client_interceptors("gateway"), redis=redis)
    clients = backends.clients
    # Off, as the call share, where the gateway knows one tenant or none.
    share_off = clients.generation.share_among(server.authenticator, settings.generation_share())
    if share_off is not None:
        log_share_off(
            PER_TENANT_SETTING,
            share_off,
            explicit=settings.generation_max_in_flight_per_tenant is not None,
        )
    if redis is not None:
        server.on_stop(redis.aclose)
    if quotas is not None:
        # Run just before the client closes (callbacks run last-registered first): the
        # slots' releases still on their way end first, bounded by the client's timeouts.
        wait = settle_wait(settings.redis_socket_timeout, settings.redis_connect_timeout)
        server.on_stop(functools.partial(quotas.settle, wait))
        clients.generation.before_generate = quotas.charge_llm
        clients.generation.after_generate = quotas.charge_llm_made
    token = settings.internal_token.get_secret_value()
    search = GenerativeSearch(backends)
    ask = AskService(backends)
    servicer = GatewayServicer(search, ask, NamedObjects(backends, search), token)
    server.add_service(gw_grpc.add_GatewayServiceServicer_to_server, servicer, GATEWAY_SERVICE)
    server.add_service(
        mem_grpc.add_MemoryServiceServicer_to_server,
        MemoryForwarder(clients.memory, token),
        MEMORY_SERVICE,
    )
    server.add_service(
        ret_grpc.add_RetrievalServiceServicer_to_server,
        RetrievalForwarder(
            clients.retrieval,
            token,
            backends.catalog,
            backends.cache,
            cache_max_ttl=settings.cache_max_ttl,
            max_fallbacks=settings.max_fallbacks,
            max_prompt_chars=settings.max_prompt_chars,
            charge_writes=quotas.charge_written if quotas is not None else None,
        ),
        RETRIEVAL_SERVICE,
    )
    # Through the same metered client as the gateway's own generation calls.
    server.add_service(
        gen_grpc.add_GenerationServiceServicer_to_server,
        GenerationForwarder(clients.generation, token),
        GENERATION_SERVICE,
    )
    server.on_stop(clients.close)
    server.on_stop(backends.tokenizers.close)
    server.on_stop(backends.schema_checks.aclose)
    # Callbacks run last-registered first: queued semantic cache stores and summary folds
    # finish before the downstream channels close.
    server.on_stop(backends.summarizer.drain)
    server.on_stop(ask.drain)
    return Gateway(server, ask)


def connect_redis(settings: GatewaySettings) -> RedisClient | None:
    """The client for the gateway's Redis (quotas, generation cache); None when none is
    configured. Standalone or Redis Cluster (``redis_cluster``); the URL's password is
    registered as a secret, so it never reaches a log."""
    url = settings.redis_url.get_secret_value()
    if not url:
        return None
    return connect_configured(url, settings)


def build_quotas(settings: GatewaySettings, redis: RedisClient | None) -> Quotas | None:
    """The per-tenant quotas on the gateway's Redis; None (quotas off) without one."""
    if redis is None:
        log.warning(
            "per-tenant quotas are off: GENSEARCH_GATEWAY_REDIS_URL is not set "
            "(docs/operations.md#quotas)"
        )
        return None
    return Quotas(
        redis,
        key_prefix=settings.quota_key_prefix,
        concurrent_calls=settings.quota_concurrent_calls,
        llm_calls_per_minute=settings.quota_llm_calls_per_minute,
        objects_written_per_minute=settings.quota_objects_written_per_minute,
        bytes_written_per_minute=settings.quota_bytes_written_per_minute,
        lease=settings.quota_lease,
    )


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging(settings.log_level, service="gateway")
    warn_unknown_variables(settings)
    asyncio.run(_serve(settings))


async def _serve(settings: GatewaySettings) -> None:
    # Built inside the running loop: grpc.aio servers and channels belong to one loop.
    await run_until_signal(await build_server(settings))


if __name__ == "__main__":
    main()
