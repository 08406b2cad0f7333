"""gRPC face of the memory service: validate, call the store, build the response."""

from __future__ import annotations

import asyncio

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from google.protobuf import timestamp_pb2

from services.common.auth import current_identity
from services.common.errors import InvalidArgument
from services.common.values import check_value
from services.memory.ids import parse_id
from services.memory.page_token import PageTokens
from services.memory.settings import MemorySettings
from services.memory.store import ConversationRecord, MemoryStore, Owner

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
_CONVERSATIONS = "c"
_INTERACTIONS = "i"


class MemoryServicer(pb_grpc.MemoryServiceServicer):
    def __init__(self, store: MemoryStore, settings: MemorySettings) -> None:
        self._store = store
        self._settings = settings
        secret = settings.page_token_secret.get_secret_value()
        self._tokens: PageTokens | None = PageTokens(secret.encode()) if secret else None
        self._tokens_lock = asyncio.Lock()

    async def _page_tokens(self) -> PageTokens:
        if self._tokens is None:
            async with self._tokens_lock:
                if self._tokens is None:
                    self._tokens = PageTokens(await self._store.shared_secret())
        return self._tokens

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateConversationResponse:
        name = _text(request.name, "name", self._settings.max_name_bytes)
        record = await self._store.create_conversation(_owner(), name)
        return pb.CreateConversationResponse(conversation=_conversation(record))

    async def GetConversation(
        self, request: pb.GetConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetConversationResponse:
        cid = _id(request.conversation_id, "conversation_id")
        record = await self._store.get_conversation(_owner(), cid)
        return pb.GetConversationResponse(conversation=_conversation(record))

    async def ListConversations(
        self, request: pb.ListConversationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListConversationsResponse:
        size = _page_size(request.page_size)
        owner = _owner()
        cursor = None
        if request.page_token:
            tokens = await self._page_tokens()
            cursor = tokens.decode(request.page_token, _CONVERSATIONS, "", owner.key)
        page = await self._store.list_conversations(owner, size, cursor)
        token = ""
        if page.next_cursor is not None:
            tokens = await self._page_tokens()
            token = tokens.encode(_CONVERSATIONS, "", page.next_cursor, owner.key)
        return pb.ListConversationsResponse(
            conversations=[_conversation(c) for c in page.items], next_page_token=token
        )

    async def UpdateConversation(
        self, request: pb.UpdateConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateConversationResponse:
        cid = _id(request.conversation_id, "conversation_id")
        name = _text(request.name, "name", self._settings.max_name_bytes)
        record = await self._store.rename_conversation(_owner(), cid, name)
        return pb.UpdateConversationResponse(conversation=_conversation(record))

    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteConversationResponse:
        cid = _id(request.conversation_id, "conversation_id")
        await self._store.delete_conversation(_owner(), cid)
        return pb.DeleteConversationResponse()

    async def CreateInteraction(
        self, request: pb.CreateInteractionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateInteractionResponse:
        s = self._settings
        cid = _id(request.conversation_id, "conversation_id")
        text = _text(request.input, "input", s.max_text_bytes)
        template = _text(request.prompt_template, "prompt_template", s.max_prompt_template_bytes)
        response = _text(request.response, "response", s.max_text_bytes)
        origin = _text(request.origin, "origin", s.max_origin_bytes)
        request_id = _text(request.request_id, "request_id", s.max_request_id_bytes)
        interaction = pb.Interaction(
            input=text, prompt_template=template, response=response, origin=origin
        )
        if request.HasField("additional_info"):
            size = request.additional_info.ByteSize()
            if size > s.max_additional_info_bytes:
                raise InvalidArgument(
                    f"additional_info is {size} bytes serialized; "
                    f"the limit is {s.max_additional_info_bytes}",
                    field="additional_info",
                    reason="FIELD_TOO_LARGE",
                )
            # After the size check: the walk is bounded by it.
            check_value(request.additional_info, "additional_info", s.max_value_depth)
            interaction.additional_info.CopyFrom(request.additional_info)
        _check_fits_a_page(interaction, s.page_bytes)
        stored = await self._store.create_interaction(_owner(), cid, interaction, request_id)
        return pb.CreateInteractionResponse(interaction=stored)

    async def GetInteraction(
        self, request: pb.GetInteractionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInteractionResponse:
        iid = _id(request.interaction_id, "interaction_id")
        interaction = await self._store.get_interaction(_owner(), iid)
        return pb.GetInteractionResponse(interaction=interaction)

    async def ListInteractions(
        self, request: pb.ListInteractionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInteractionsResponse:
        cid = _id(request.conversation_id, "conversation_id")
        size = _page_size(request.page_size)
        owner = _owner()
        cursor = None
        if request.page_token:
            tokens = await self._page_tokens()
            cursor = tokens.decode(request.page_token, _INTERACTIONS, cid, owner.key)
        page = await self._store.list_interactions(
            owner, cid, size, cursor, self._settings.page_bytes
        )
        token = ""
        if page.next_cursor is not None:
            tokens = await self._page_tokens()
            token = tokens.encode(_INTERACTIONS, cid, page.next_cursor, owner.key)
        answer = pb.ListInteractionsResponse(next_page_token=token)
        for data in page.items:
            answer.interactions.add().MergeFromString(data)
        return answer


def _owner() -> Owner:
    # Every role includes reader, which may keep its own conversations: no role check.
    identity = current_identity()
    return Owner(identity.tenant, identity.user)


def _id(value: str, field: str) -> str:
    if not value:
        raise InvalidArgument(f"{field} is required", field=field, reason="MISSING_FIELD")
    parsed = parse_id(value)
    if parsed is None:
        raise InvalidArgument(
            f"{field} must be a UUID like 0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d",
            field=field,
            reason="INVALID_ID",
        )
    return parsed


def _text(value: str, field: str, limit: int) -> str:
    # len() counts code points; UTF-8 needs 1-4 bytes each, so encode only when unsure.
    if len(value) * 4 > limit and len(value.encode()) > limit:
        raise InvalidArgument(
            f"{field} is longer than {limit} bytes (UTF-8)",
            field=field,
            reason="FIELD_TOO_LARGE",
        )
    return value


# Room for what the store adds to an interaction (ids, create_time) and for its framing in
# a page.
_STORED_FIELDS_BYTES = 128


def _check_fits_a_page(interaction: pb.Interaction, max_page_bytes: int) -> None:
    """Every stored interaction can be read back: alone, it fits a ListInteractions page."""
    size = interaction.ByteSize() + _STORED_FIELDS_BYTES
    if size <= max_page_bytes:
        return
    sizes = {
        "input": len(interaction.input.encode()),
        "prompt_template": len(interaction.prompt_template.encode()),
        "response": len(interaction.response.encode()),
        "additional_info": interaction.additional_info.ByteSize(),
    }
    largest = max(sizes, key=sizes.__getitem__)
    raise InvalidArgument(
        f"the interaction is {size} bytes serialized, more than a page holds "
        f"({max_page_bytes}); {largest} is the largest part ({sizes[largest]} bytes)",
        field=largest,
        reason="INTERACTION_TOO_LARGE",
    )


def _page_size(value: int) -> int:
    if value < 0:
        raise InvalidArgument(
            "page_size must not be negative", field="page_size", reason="INVALID_PAGE_SIZE"
        )
    if value == 0:
        return DEFAULT_PAGE_SIZE
    return min(value, MAX_PAGE_SIZE)


def _timestamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def _conversation(record: ConversationRecord) -> pb.Conversation:
    return pb.Conversation(
        conversation_id=record.conversation_id,
        name=record.name,
        user=record.user,
        create_time=_timestamp(record.create_ms),
        update_time=_timestamp(record.update_ms),
        interaction_count=record.interaction_count,
    )
