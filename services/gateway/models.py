"""What the generation service says it can serve (ListModels), kept for a minute."""

from __future__ import annotations

import time

import grpc
from gensearch.generation.v1 import generation_service_pb2 as gen_pb

from services.common.errors import InvalidArgument
from services.gateway.clients import Caller, Downstream

TTL_SECONDS = 60.0


class ModelCatalog:
    def __init__(self, downstream: Downstream) -> None:
        self._downstream = downstream
        self._cached: tuple[float, gen_pb.ListModelsResponse] | None = None

    async def models(self, caller: Caller, timeout: float) -> gen_pb.ListModelsResponse | None:
        """None when the generation service cannot tell right now."""
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > TTL_SECONDS:
            try:
                models = await self._downstream.generation.ListModels(
                    gen_pb.ListModelsRequest(), metadata=caller.identity, timeout=timeout
                )
            except grpc.aio.AioRpcError:
                return None
            self._cached = (now, models)
        return self._cached[1]

    async def provider(self, name: str, caller: Caller, timeout: float) -> gen_pb.Provider | None:
        models = await self.models(caller, timeout)
        if models is None:
            return None
        wanted = (name or models.default_provider).lower()
        return next((p for p in models.providers if p.name.lower() == wanted), None)

    async def check_provider(self, name: str, field: str, caller: Caller, timeout: float) -> None:
        """INVALID_ARGUMENT for a provider the generation service does not have, before any
        call is fanned out (one clear error instead of the same one on every hit)."""
        if not name:
            return
        models = await self.models(caller, timeout)
        if models is None:  # generation unreachable: each hit will say so itself
            return
        if not any(p.name.lower() == name.lower() for p in models.providers):
            known = ", ".join(sorted(p.name for p in models.providers))
            raise InvalidArgument(
                f"unknown provider {name!r} (configured: {known})",
                field=field,
                reason="UNKNOWN_PROVIDER",
            )
