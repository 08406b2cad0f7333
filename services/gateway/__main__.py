"""Serve the gateway: ``python -m services.gateway`` (configured by GENSEARCH_* env)."""

from __future__ import annotations

import asyncio

from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc

from services.common.logs import configure_logging
from services.common.server import GrpcServer, run_until_signal
from services.common.settings import warn_unknown_variables
from services.common.tracing import client_interceptors
from services.gateway.ask import AskService
from services.gateway.backends import Backends
from services.gateway.clients.channel import MEMORY_SERVICE, RETRIEVAL_SERVICE
from services.gateway.forward import MemoryForwarder, RetrievalForwarder
from services.gateway.generative import GenerativeSearch
from services.gateway.servicer import GatewayServicer
from services.gateway.settings import GatewaySettings

GATEWAY_SERVICE = "gensearch.gateway.v1.GatewayService"


async def build_server(settings: GatewaySettings, *, port: int | None = None) -> GrpcServer:
    server = GrpcServer(
        settings,
        port=settings.port if port is None else port,
        metrics_port=settings.metrics_port,
        accept_forwarded_identity=False,
    )
    # Every downstream call gets a CLIENT span and carries the trace context.
    backends = Backends.build(settings, interceptors=client_interceptors("gateway"))
    clients = backends.clients
    token = settings.internal_token.get_secret_value()
    servicer = GatewayServicer(GenerativeSearch(backends), AskService(backends), token)
    server.add_service(gw_grpc.add_GatewayServiceServicer_to_server, servicer, GATEWAY_SERVICE)
    server.add_service(
        mem_grpc.add_MemoryServiceServicer_to_server,
        MemoryForwarder(clients.memory, token),
        MEMORY_SERVICE,
    )
    server.add_service(
        ret_grpc.add_RetrievalServiceServicer_to_server,
        RetrievalForwarder(clients.retrieval, token),
        RETRIEVAL_SERVICE,
    )
    server.on_stop(clients.close)
    return server


def main() -> None:
    settings = GatewaySettings()
    configure_logging(settings.log_level, service="gateway")
    warn_unknown_variables(settings)
    asyncio.run(_serve(settings))


async def _serve(settings: GatewaySettings) -> None:
    # Built inside the running loop: grpc.aio servers and channels belong to one loop.
    await run_until_signal(await build_server(settings))


if __name__ == "__main__":
    main()
