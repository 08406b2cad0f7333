"""The generation service, as the gateway calls it.

LLM calls are metered here (the per-tenant quota, wired in ``__main__``): one call is
admitted before each Generate and StreamGenerate (``before_generate``, which raises to
refuse it); the generation service then says how many upstream calls it really made
(``upstream_calls``: retries, fallback pairs, a corrective retry), on its reply or its
error, and the calls beyond the one admitted are charged after the fact
(``after_generate``). They are never refused: they were made already. The tenant is the
caller's, not the task's: a summary fold runs in a background worker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc

from services.common.errors import ServiceError, upstream_calls
from services.gateway.clients.base import ServiceClient
from services.gateway.clients.caller import Caller, Metadata
from services.gateway.clients.channel import GENERATION_SERVICE


class GenerationClient(ServiceClient):
    service = "generation"
    proto_service = GENERATION_SERVICE
    stub_class = gen_grpc.GenerationServiceStub

    #: Awaited with the caller's tenant before each Generate and StreamGenerate (the
    #: per-tenant LLM quota); it raises to refuse the call.
    before_generate: Callable[[str], Awaitable[None]] | None = None
    #: Awaited with the upstream calls a Generate or StreamGenerate made beyond the first,
    #: and the caller's tenant, once they are known (only when there were any).
    after_generate: Callable[[int, str], Awaitable[None]] | None = None

    def metadata(self, caller: Caller) -> Metadata:
        # The caller's own provider keys go to the generation service only.
        return caller.identity + caller.provider_keys

    async def _charge_extra(self, calls: int, caller: Caller) -> None:
        if self.after_generate is not None and calls > 1:
            await self.after_generate(calls - 1, caller.tenant)

    async def generate(
        self, request: gen_pb.GenerateRequest, caller: Caller, timeout: float | None
    ) -> gen_pb.GenerateResponse:
        if self.before_generate is not None:
            await self.before_generate(caller.tenant)
        try:
            response: gen_pb.GenerateResponse = await self.unary(
                "Generate", request, caller, timeout
            )
        except ServiceError as err:
            await self._charge_extra(upstream_calls(err.metadata), caller)
            raise
        await self._charge_extra(response.upstream_calls, caller)
        return response

    def stream_generate(
        self, request: gen_pb.StreamGenerateRequest, caller: Caller, timeout: float | None
    ) -> AsyncIterator[gen_pb.StreamGenerateResponse]:
        if self.before_generate is None and self.after_generate is None:
            return self.stream("StreamGenerate", request, caller, timeout)
        return self._metered_stream(request, caller, timeout)

    async def _metered_stream(
        self,
        request: gen_pb.StreamGenerateRequest,
        caller: Caller,
        timeout: float | None,
    ) -> AsyncIterator[gen_pb.StreamGenerateResponse]:
        if self.before_generate is not None:
            await self.before_generate(caller.tenant)
        try:
            async for chunk in self.stream("StreamGenerate", request, caller, timeout):
                if chunk.upstream_calls:
                    # The last message: charged before it is passed on, so a reader that
                    # stops at it leaves nothing uncounted.
                    await self._charge_extra(chunk.upstream_calls, caller)
                yield chunk
        except ServiceError as err:
            await self._charge_extra(upstream_calls(err.metadata), caller)
            raise

    async def list_models(self, caller: Caller, timeout: float | None) -> gen_pb.ListModelsResponse:
        return await self.unary("ListModels", gen_pb.ListModelsRequest(), caller, timeout)
