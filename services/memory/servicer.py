"""gRPC face of the memory service: validate, call the store, build the response."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from google.protobuf import timestamp_pb2

from services.common.auth import current_identity
from services.common.errors import FailedPrecondition, InvalidArgument
from services.common.values import check_value
from services.memory import traces
from services.memory.ids import parse_id
from services.memory.page_token import PageTokens
from services.memory.settings import MemorySettings
from services.memory.store import ConversationRecord, MemoryStore, Owner

if TYPE_CHECKING:  # the search index (and what it imports) loads only when it is on
    from services.memory.indexer import Indexer

DEFAULT_PAGE_SIZE = 10
MAX_PAGE_SIZE = 100
_CONVERSATIONS = "c"
_INTERACTIONS = "i"
_TRACES = "t"
DEFAULT_SEARCH_LIMIT = 10
_ADDITIONAL_INFO = "additional_info"


class MemoryServicer(pb_grpc.MemoryServiceServicer):
    def __init__(
        self, store: MemoryStore, settings: MemorySettings, indexer: Indexer | None = None
    ) -> None:
        self._store = store
        self._settings = settings
        self._indexer = indexer
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
        owner = _owner()
        await self._store.delete_conversation(owner, cid)
        if self._indexer is not None:
            self._indexer.conversation_deleted(owner, cid)
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
            _check_additional_info(request.additional_info, s)
            interaction.additional_info.CopyFrom(request.additional_info)
        stored_traces = traces.prepare(
            request.traces, s.max_traces, s.max_trace_bytes, s.max_value_depth
        )
        interaction.trace_count = len(request.traces)
        _check_fits_a_page(interaction, s.page_bytes)
        owner = _owner()
        stored = await self._store.create_interaction(
            owner, cid, interaction, request_id, stored_traces
        )
        if self._indexer is not None:
            self._indexer.stored(owner, stored)
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

    async def UpdateInteraction(
        self, request: pb.UpdateInteractionRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateInteractionResponse:
        iid = _id(request.interaction.interaction_id, "interaction.interaction_id")
        keys = _update_paths(request)
        new_info = request.interaction.additional_info
        _check_additional_info(new_info, self._settings, "interaction.additional_info")
        settings = self._settings

        def change(interaction: pb.Interaction) -> None:
            if keys is None:
                interaction.additional_info.CopyFrom(new_info)
            else:
                fields = interaction.additional_info.fields
                for key in keys:
                    if key in new_info.fields:
                        fields[key].CopyFrom(new_info.fields[key])
                    elif key in fields:
                        del fields[key]
            _check_additional_info(
                interaction.additional_info, settings, "interaction.additional_info"
            )
            interaction.update_time.GetCurrentTime()
            _check_fits_a_page(interaction, settings.page_bytes)

        updated = await self._store.update_interaction(_owner(), iid, change)
        return pb.UpdateInteractionResponse(interaction=updated)

    async def ListInteractionTraces(
        self, request: pb.ListInteractionTracesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInteractionTracesResponse:
        iid = _id(request.interaction_id, "interaction_id")
        size = _page_size(request.page_size)
        owner = _owner()
        after = -1
        if request.page_token:
            tokens = await self._page_tokens()
            cursor = tokens.decode(request.page_token, _TRACES, iid, owner.key)
            after = int(cursor) if cursor.isdigit() else -1
        stored = await self._store.get_interaction_traces(owner, iid)
        items, last = traces.page(stored, after, size, self._settings.page_bytes)
        token = ""
        if last is not None:
            tokens = await self._page_tokens()
            token = tokens.encode(_TRACES, iid, str(last), owner.key)
        return pb.ListInteractionTracesResponse(traces=items, next_page_token=token)

    async def SearchInteractions(
        self, request: pb.SearchInteractionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchInteractionsResponse:
        s = self._settings
        if self._indexer is None:
            raise FailedPrecondition(
                "interaction search is off on this memory service (search_index=off)",
                reason="SEARCH_DISABLED",
            )
        query = _text(request.query, "query", s.max_search_query_bytes)
        if not query.strip():
            raise InvalidArgument("query is required", field="query", reason="MISSING_FIELD")
        if request.limit < 0 or request.limit > s.max_search_limit:
            raise InvalidArgument(
                f"limit must be between 0 and {s.max_search_limit}",
                field="limit",
                reason="INVALID_LIMIT",
            )
        limit = request.limit or min(DEFAULT_SEARCH_LIMIT, s.max_search_limit)
        owner = _owner()
        cid = ""
        if request.conversation_id:
            cid = _id(request.conversation_id, "conversation_id")
            await self._store.get_conversation(owner, cid)  # NOT_FOUND unless the caller's
        self._indexer.index.resolve_mode(request.mode)  # a mode it cannot serve, before work
        hits = await self._indexer.search(owner, query, cid, request.mode, limit)
        return pb.SearchInteractionsResponse(hits=hits)


def _update_paths(request: pb.UpdateInteractionRequest) -> list[str] | None:
    """None: replace additional_info whole; else the top-level keys to set or remove."""
    paths = list(request.update_mask.paths) or [_ADDITIONAL_INFO]
    keys: list[str] = []
    whole = False
    for path in paths:
        if path == _ADDITIONAL_INFO:
            whole = True
        elif path.startswith(_ADDITIONAL_INFO + ".") and len(path) > len(_ADDITIONAL_INFO) + 1:
            keys.append(path[len(_ADDITIONAL_INFO) + 1 :])
        else:
            raise InvalidArgument(
                f"update_mask path {path[:100]!r} cannot be updated; only additional_info "
                "(or additional_info.<key>) may change",
                field="update_mask",
                reason="FIELD_NOT_UPDATABLE",
            )
    return None if whole else keys


def _check_additional_info(info: Any, s: MemorySettings, field: str = "additional_info") -> None:
    size = info.ByteSize()
    if size > s.max_additional_info_bytes:
        raise InvalidArgument(
            f"{field} is {size} bytes serialized; the limit is {s.max_additional_info_bytes}",
            field=field,
            reason="FIELD_TOO_LARGE",
        )
    # After the size check: the walk is bounded by it.
    check_value(info, field, s.max_value_depth)


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
