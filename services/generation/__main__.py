"""Serve the generation service: ``python -m services.generation``.

The local llama.cpp server is started first (on the host and port of the ``local``
provider's base URL) and stopped after the service when ``GENSEARCH_LOCAL_LLM_AUTOSTART``
is true, or when it is unset and a fresh machine needs it: the default provider is
``local``, its URL is on loopback, llama-cpp-python is installed and nothing answers there.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
from urllib.parse import urlsplit

from gensearch.generation.v1 import generation_service_pb2_grpc as pb_grpc

from services.common.logs import configure_logging
from services.common.server import GrpcServer, run_until_signal
from services.generation.keys import env_key
from services.generation.registry import ProviderRegistry
from services.generation.servicer import GenerationServicer
from services.generation.settings import GenerationSettings
from services.generation.validation import Limits

SERVICE_NAME = "gensearch.generation.v1.GenerationService"


async def build_server(settings: GenerationSettings, *, port: int | None = None) -> GrpcServer:
    registry = ProviderRegistry.from_settings(settings)
    for config in registry.configs():
        env_key(config)  # registers environment keys with the log redactor up front
    limits = Limits(
        max_messages=settings.max_messages,
        max_prompt_chars=settings.max_prompt_chars,
        max_stop_sequences=settings.max_stop_sequences,
    )
    server = GrpcServer(
        settings,
        port=settings.generation_port if port is None else port,
        metrics_port=settings.generation_metrics_port,
    )
    server.add_service(
        pb_grpc.add_GenerationServiceServicer_to_server,
        GenerationServicer(registry, limits, settings.default_timeout),
        SERVICE_NAME,
    )
    server.on_stop(registry.close)
    return server


LOOPBACK = {"127.0.0.1", "localhost", "::1"}


async def _answers(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def local_llm_address(settings: GenerationSettings) -> tuple[str, int] | None:
    """Where to start the local model server, or None when it should not be started."""
    local = settings.provider_configs().get("local")
    if local is None or settings.local_llm_autostart is False:
        return None
    url = urlsplit(local.base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 8088
    if settings.local_llm_autostart:
        return host, port
    auto = (
        settings.default_provider == "local"
        and host in LOOPBACK
        and importlib.util.find_spec("llama_cpp") is not None
        and not await _answers(host, port)
    )
    return (host, port) if auto else None


async def _serve(settings: GenerationSettings) -> None:
    llm = None
    address = await local_llm_address(settings)
    if address is not None:
        from services.generation.local_llm import LocalLLMServer

        llm = LocalLLMServer(host=address[0], port=address[1])
        await llm.start()
    try:
        server = await build_server(settings)
        await run_until_signal(server)
    finally:
        if llm is not None:
            await llm.stop()


def main() -> None:
    settings = GenerationSettings()
    configure_logging(settings.log_level, service="generation")
    asyncio.run(_serve(settings))


if __name__ == "__main__":
    main()
