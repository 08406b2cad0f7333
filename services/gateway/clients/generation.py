"""The generation service, as the gateway calls it."""

from __future__ import annotations

from collections.abc import AsyncIterator

from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc

from services.gateway.clients.base import ServiceClient
from services.gateway.clients.caller import Caller, Metadata
from services.gateway.clients.channel import GENERATION_SERVICE


class GenerationClient(ServiceClient):
    service = "generation"
    proto_service = GENERATION_SERVICE
    stub_class = gen_grpc.GenerationServiceStub

    def metadata(self, caller: Caller) -> Metadata:
        # The caller's own provider keys go to the generation service only.
        return caller.identity + caller.provider_keys

    async def generate(
        self, request: gen_pb.GenerateRequest, caller: Caller, timeout: float | None
    ) -> gen_pb.GenerateResponse:
        return await self.unary("Generate", request, caller, timeout)

    def stream_generate(
        self, request: gen_pb.StreamGenerateRequest, caller: Caller, timeout: float | None
    ) -> AsyncIterator[gen_pb.StreamGenerateResponse]:
        return self.stream("StreamGenerate", request, caller, timeout)

    async def list_models(self, caller: Caller, timeout: float | None) -> gen_pb.ListModelsResponse:
        return await self.unary("ListModels", gen_pb.ListModelsRequest(), caller, timeout)
