"""The gRPC face of the gateway: who is calling, then the domain, then the reply."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc

from services.common.auth import Role, require_role
from services.gateway.ask import AskService
from services.gateway.clients import Caller, caller_of
from services.gateway.generative import GenerativeSearch
from services.gateway.named_objects import NamedObjects


class GatewayServicer(gw_grpc.GatewayServiceServicer):
    def __init__(
        self,
        search: GenerativeSearch,
        ask: AskService,
        objects: NamedObjects,
        internal_token: str,
    ) -> None:
        self._search = search
        self._ask = ask
        self._token = internal_token
        self._objects = objects

    def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        # Generative search and Ask read a collection (and Ask the caller's own
        # conversations): role reader. Retrieval and memory check again themselves.
        require_role(Role.READER)
        return caller_of(context, self._token)

    async def GenerativeSearch(
        self, request: gw_pb.GenerativeSearchRequest, context: grpc.aio.ServicerContext
    ) -> gw_pb.GenerativeSearchResponse:
        return await self._search.run(request, self._caller(context), context.time_remaining())

    async def StreamGenerativeSearch(
        self, request: gw_pb.StreamGenerativeSearchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gw_pb.StreamGenerativeSearchResponse]:
        events = self._search.stream(request, self._caller(context), context.time_remaining())
        async for event in events:
            yield event

    async def Ask(
        self, request: gw_pb.AskRequest, context: grpc.aio.ServicerContext
    ) -> gw_pb.AskResponse:
        return await self._ask.ask(request, self._caller(context), context.time_remaining())

    async def StreamAsk(
        self, request: gw_pb.StreamAskRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gw_pb.StreamAskResponse]:
        events = self._ask.stream(request, self._caller(context), context.time_remaining())
        async for event in events:
            yield event

    async def GenerateOnObjects(
        self, request: gw_pb.GenerateOnObjectsRequest, context: grpc.aio.ServicerContext
    ) -> gw_pb.GenerateOnObjectsResponse:
        return await self._objects.run(request, self._caller(context), context.time_remaining())

    async def StreamGenerateOnObjects(
        self, request: gw_pb.StreamGenerateOnObjectsRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[gw_pb.StreamGenerateOnObjectsResponse]:
        caller = self._caller(context)
        events = self._objects.stream(request, caller, context.time_remaining())
        async for event in events:
            yield event
