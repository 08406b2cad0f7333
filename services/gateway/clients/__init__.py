"""One typed client per downstream service; every gateway call to a service goes
through its client (see ``base.py``)."""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from services.gateway.clients.caller import Caller, caller_from, caller_of
from services.gateway.clients.generation import GenerationClient
from services.gateway.clients.memory import MemoryClient
from services.gateway.clients.retrieval import RetrievalClient
from services.gateway.settings import GatewaySettings

__all__ = [
    "Caller",
    "Downstream",
    "GenerationClient",
    "MemoryClient",
    "RetrievalClient",
    "caller_from",
    "caller_of",
]


class Downstream:
    """The three clients; one per gateway process. ``interceptors`` (tracing) go on every
    channel."""

    def __init__(
        self,
        settings: GatewaySettings,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self.memory = MemoryClient(settings.memory_addr, settings, interceptors)
        self.retrieval = RetrievalClient(settings.retrieval_addr, settings, interceptors)
        self.generation = GenerationClient(settings.generation_addr, settings, interceptors)

    async def close(self) -> None:
        for client in (self.memory, self.retrieval, self.generation):
            await client.close()
