"""The memory service, as the gateway calls it."""

from __future__ import annotations

from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc

from services.common.errors import Internal
from services.gateway.clients.base import ServiceClient
from services.gateway.clients.caller import Caller
from services.gateway.clients.channel import MEMORY_SERVICE


class MemoryClient(ServiceClient):
    service = "memory"
    proto_service = MEMORY_SERVICE
    stub_class = mem_grpc.MemoryServiceStub

    async def get_conversation(
        self, conversation_id: str, caller: Caller, timeout: float | None
    ) -> mem_pb.Conversation:
        request = mem_pb.GetConversationRequest(conversation_id=conversation_id)
        response = await self.unary("GetConversation", request, caller, timeout)
        return response.conversation

    async def list_interactions(
        self, request: mem_pb.ListInteractionsRequest, caller: Caller, timeout: float | None
    ) -> mem_pb.ListInteractionsResponse:
        return await self.unary("ListInteractions", request, caller, timeout)

    async def check_storage(
        self,
        conversation_id: str,
        turn_bytes: int,
        caller: Caller,
        timeout: float | None,
        *,
        summary: bool = False,
        request_id: str = "",
        request_fingerprint: str = "",
        claim_token: str = "",
        claim_seconds: int = 0,
        release_claim: bool = False,
    ) -> mem_pb.CheckStorageResponse | None:
        """RESOURCE_EXHAUSTED (memory's ErrorInfo) when a turn of ``turn_bytes`` would not
        fit in ``conversation_id`` ("": a new conversation); NOT_FOUND when that is not the
        caller's; else memory's answer (its usage, and its limits when it is new enough
        to say them). With ``summary``, ``turn_bytes`` is the length of a new summary of
        ``conversation_id`` instead (UpdateConversationSummary's check). A memory service
        too old to have CheckStorage is not an error (None): the write will tell. With
        ``request_id``, the answer's ``interaction`` is the caller's turn already stored
        with it (unset: none, or a memory service older than the field); one stored
        for another request than ``request_fingerprint`` is memory's INVALID_ARGUMENT /
        REQUEST_ID_REUSED. With
        ``claim_token``, ``request_id`` is reserved for that attempt for ``claim_seconds``
        unless another holds it (the answer's ``request_id_in_use``); ``release_claim``
        ends the attempt's reservation instead."""
        request = mem_pb.CheckStorageRequest(
            conversation_id=conversation_id,
            bytes=turn_bytes,
            summary=summary,
            request_id=request_id,
            request_fingerprint=request_fingerprint,
            claim_token=claim_token,
            claim_seconds=claim_seconds,
            release_claim=release_claim,
        )
        try:
            response: mem_pb.CheckStorageResponse = await self.unary(
                "CheckStorage", request, caller, timeout
            )
        except Internal as err:
            if err.metadata.get("downstream_code") != "UNIMPLEMENTED":
                raise
            return None
        return response

    async def create_interaction(
        self, request: mem_pb.CreateInteractionRequest, caller: Caller, timeout: float | None
    ) -> mem_pb.Interaction:
        response = await self.unary("CreateInteraction", request, caller, timeout)
        return response.interaction

    async def update_conversation_summary(
        self,
        request: mem_pb.UpdateConversationSummaryRequest,
        caller: Caller,
        timeout: float | None,
    ) -> mem_pb.Conversation:
        response = await self.unary("UpdateConversationSummary", request, caller, timeout)
        return response.conversation
