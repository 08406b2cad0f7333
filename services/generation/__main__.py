"""Serve the generation service: ``python -m services.generation``.

The local llama.cpp server (a dev-only launcher, ``services.devlaunch.llm_server``) is
started first and stopped after the service when ``GENSEARCH_GENERATION_LOCAL_LLM_AUTOSTART``
is true, or when it is unset and a fresh machine needs it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from gensearch.generation.v1 import generation_service_pb2_grpc as pb_grpc

from services.common.logs import configure_logging
from services.common.redis_client import RedisClient, connect_configured
from services.common.server import GrpcServer, run_until_signal
from services.common.settings import load_settings, warn_unknown_variables
from services.devlaunch.llm_server import start_local_llm
from services.generation.keys import env_key
from services.generation.planning import Planner
from services.generation.rate_buckets import DeclaredLimits
from services.generation.registry import ProviderRegistry
from services.generation.servicer import GenerationServicer
from services.generation.settings import GenerationSettings, ProviderConfig
from services.generation.validation import Limits

SERVICE_NAME = "gensearch.generation.v1.GenerationService"
log = logging.getLogger("gensearch.generation")


def limits_redis(
    settings: GenerationSettings, configs: Mapping[str, ProviderConfig]
) -> RedisClient | None:
    """The Redis the providers' declared limits are counted in; None: in this process."""
    url = settings.redis_url.get_secret_value()
    declared = [c.name for c in configs.values() if DeclaredLimits.of(c).any]
    if not url:
        if declared:
            log.warning(
                "provider limits of %s are counted per replica: GENSEARCH_GENERATION_REDIS_URL "
                "is not set (docs/generation.md#provider-limits)",
                ", ".join(sorted(declared)),
            )
        return None
    return connect_configured(url, settings)


async def build_server(settings: GenerationSettings, *, port: int | None = None) -> GrpcServer:
    configs = settings.provider_configs()
    registry = ProviderRegistry.from_settings(
        settings, configs, redis=limits_redis(settings, configs)
    )
    for config in registry.configs():
        env_key(config)  # registers environment keys with the log redactor up front
    limits = Limits(
        max_messages=settings.max_messages,
        max_prompt_chars=settings.max_prompt_chars,
        max_stop_sequences=settings.max_stop_sequences,
        max_stop_chars=settings.max_stop_chars,
        max_fallbacks=settings.max_fallbacks,
        max_tokens=settings.max_tokens_limit,
        max_model_chars=settings.max_model_chars,
        schema=settings.schema_limits(
            pattern_seconds=settings.schema_pattern_seconds,
            validate_seconds=settings.schema_validate_seconds,
        ),
    )
    planner = Planner(registry, limits, settings.default_timeout, settings.fallback_time_share)
    server = GrpcServer(
        settings,
        port=settings.port if port is None else port,
        metrics_port=settings.metrics_port,
    )
    server.add_service(
        pb_grpc.add_GenerationServiceServicer_to_server,
        GenerationServicer(planner, settings.allowed_hosts),
        SERVICE_NAME,
    )
    server.on_stop(registry.close)
    server.on_stop(planner.schema_checks.aclose)
    server.on_stop(planner.answer_checks.aclose)
    return server


async def _serve(settings: GenerationSettings) -> None:
    llm = await start_local_llm(settings)
    try:
        server = await build_server(settings)
        await run_until_signal(server)
    finally:
        if llm is not None:
            await llm.stop()


def main() -> None:
    settings = load_settings(GenerationSettings)
    configure_logging(settings.log_level, service="generation")
    warn_unknown_variables(settings)
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
