"""The retrieval service, as the gateway calls it."""

from __future__ import annotations

from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc

from services.common.egress import EMBEDDING_KEY_HEADER, RERANK_KEY_HEADER
from services.gateway.clients.base import ServiceClient
from services.gateway.clients.caller import Caller, Metadata
from services.gateway.clients.channel import RETRIEVAL_SERVICE


class RetrievalClient(ServiceClient):
    service = "retrieval"
    proto_service = RETRIEVAL_SERVICE
    stub_class = ret_grpc.RetrievalServiceStub

    def metadata(self, caller: Caller) -> Metadata:
        # The caller's own keys for a collection's embeddings endpoint and for a rerank
        # endpoint the caller named (never the keys meant for LLM providers: those go to
        # the generation service only), with the base URLs the caller names for them.
        keys = tuple(
            (k, v)
            for k, v in caller.provider_keys
            if k in (EMBEDDING_KEY_HEADER, RERANK_KEY_HEADER)
        )
        return caller.identity + keys + caller.key_destinations

    async def search(
        self, request: ret_pb.SearchRequest, caller: Caller, timeout: float | None
    ) -> ret_pb.SearchResponse:
        return await self.unary("Search", request, caller, timeout)

    async def get_chunks(
        self, request: ret_pb.GetChunksRequest, caller: Caller, timeout: float | None
    ) -> ret_pb.GetChunksResponse:
        return await self.unary("GetChunks", request, caller, timeout)

    async def get_collection(
        self, name: str, caller: Caller, timeout: float | None
    ) -> ret_pb.Collection:
        request = ret_pb.GetCollectionRequest(name=name)
        response = await self.unary("GetCollection", request, caller, timeout)
        return response.collection

    async def batch_get_objects(
        self, request: ret_pb.BatchGetObjectsRequest, caller: Caller, timeout: float | None
    ) -> ret_pb.BatchGetObjectsResponse:
        return await self.unary("BatchGetObjects", request, caller, timeout)

    async def lookup_cached_answer(
        self, request: ret_pb.LookupCachedAnswerRequest, caller: Caller, timeout: float | None
    ) -> ret_pb.LookupCachedAnswerResponse:
        return await self.unary("LookupCachedAnswer", request, caller, timeout)

    async def store_cached_answer(
        self, request: ret_pb.StoreCachedAnswerRequest, caller: Caller, timeout: float | None
    ) -> None:
        await self.unary("StoreCachedAnswer", request, caller, timeout)
