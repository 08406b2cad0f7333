"""Server bootstrap shared by every service.

``GrpcServer`` wires a ``grpc.aio`` server with the chassis (identity, errors, metrics,
tracing and the access log around every method of our services), gRPC health checking,
server reflection and (optionally) a Prometheus endpoint. ``run_until_signal`` runs it
until SIGTERM/SIGINT, then shuts down gracefully: health goes NOT_SERVING first (so
Kubernetes stops routing), in-flight calls get ``grace_period`` seconds to finish.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from services.common.auth import Authenticator
from services.common.chassis import ChassisRegistry
from services.common.logs import register_secret
from services.common.metrics import serve_metrics, server_name
from services.common.settings import CommonSettings
from services.common.tracing import tracer

log = logging.getLogger("gensearch.server")

Registrar = Callable[[Any, grpc.aio.Server], None]


class GrpcServer:
    def __init__(
        self,
        settings: CommonSettings,
        *,
        port: int,
        metrics_port: int | None = None,
        host: str | None = None,
        accept_forwarded_identity: bool = True,
    ) -> None:
        keys = settings.api_key_map()
        token = settings.internal_token.get_secret_value()
        for secret in (*keys, token):
            register_secret(secret)
        self.settings = settings
        self.host = host or settings.host
        self.port = port
        self.metrics_port = metrics_port
        self.authenticator = Authenticator(keys, token, accept_forwarded=accept_forwarded_identity)
        options = [
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if settings.max_connection_age > 0:
            options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age * 1000)))
        self.server = grpc.aio.server(options=options)
        self._chassis: ChassisRegistry | None = None
        self.health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self._service_names: list[str] = []
        self._on_stop: list[Callable[[], Awaitable[None]]] = []

    def add_service(self, registrar: Registrar, servicer: Any, full_name: str) -> None:
        """Registers a servicer through its generated ``add_*_to_server`` function, with the
        chassis around every method. The first service names the server in metrics and
        traces (``service.name=gensearch-<name>``)."""
        if self._chassis is None:
            name = server_name(full_name)
            self._chassis = ChassisRegistry(self.server, self.authenticator, name, tracer(name))
        registrar(servicer, self._chassis)
        self._service_names.append(full_name)

    def on_stop(self, callback: Callable[[], Awaitable[None]]) -> None:
        """Run after the server has stopped serving (close pools, stop child processes)."""
        self._on_stop.append(callback)

    @property
    def service_names(self) -> Sequence[str]:
        return tuple(self._service_names)

    async def start(self) -> int:
        names = (
            *self._service_names,
            reflection.SERVICE_NAME,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
        )
        reflection.enable_server_reflection(names, self.server)
        address = f"{self.host}:{self.port}"
        bound = self.server.add_insecure_port(address)
        if bound == 0:
            raise RuntimeError(f"could not bind {address}")
        self.port = bound
        await self.server.start()
        serving = health_pb2.HealthCheckResponse.SERVING
        await self.health.set("", serving)
        for name in self._service_names:
            await self.health.set(name, serving)
        if self.metrics_port is not None:
            self.metrics_port = serve_metrics(self.host, self.metrics_port)
        log.info(
            "serving",
            extra={"address": f"{self.host}:{bound}", "services": list(self._service_names)},
        )
        return bound

    async def stop(self, grace: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(self.settings.grace_period if grace is None else grace)
        for callback in reversed(self._on_stop):
            try:
                await callback()
            except Exception:
                log.exception("error during shutdown")

    async def wait_for_termination(self) -> None:
        await self.server.wait_for_termination()


async def run_until_signal(server: GrpcServer) -> None:
    """Start ``server`` and serve until SIGTERM or SIGINT, then stop gracefully."""
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down", extra={"grace_period": server.settings.grace_period})
    await server.stop()
