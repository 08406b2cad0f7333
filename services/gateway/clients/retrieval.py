"""The retrieval service, as the gateway calls it."""

from __future__ import annotations

from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc

from services.gateway.clients.base import ServiceClient
from services.gateway.clients.caller import Caller
from services.gateway.clients.channel import RETRIEVAL_SERVICE


class RetrievalClient(ServiceClient):
    service = "retrieval"
    proto_service = RETRIEVAL_SERVICE
    stub_class = ret_grpc.RetrievalServiceStub

    async def search(
        self, request: ret_pb.SearchRequest, caller: Caller, timeout: float | None
    ) -> ret_pb.SearchResponse:
        return await self.unary("Search", request, caller, timeout)

    async def get_collection(
        self, name: str, caller: Caller, timeout: float | None
    ) -> ret_pb.Collection:
        request = ret_pb.GetCollectionRequest(name=name)
        response = await self.unary("GetCollection", request, caller, timeout)
        return response.collection
