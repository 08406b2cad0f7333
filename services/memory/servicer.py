"""gRPC face of the memory service: validate, call the store, build the response."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import grpc
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc
from google.protobuf import duration_pb2, timestamp_pb2
from google.protobuf.message import Message

from services.common.auth import current_identity
from services.common.control_chars import check_no_controls
from services.common.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    MissingField,
    NotFound,
    ServiceError,
    Unavailable,
    out_of_range,
)
from services.common.logs import ThrottledWarning
from services.common.request_ids import check_request_id, fingerprint
from services.common.turn_size import over_utf8, stored_interaction, utf8_size
from services.common.values import check_value
from services.common.well_known import duration_seconds
from services.memory import traces
from services.memory.ids import parse_id
from services.memory.page_token import PageTokens, unwrap
from services.memory.settings import MemorySettings
from services.memory.store import (
    CONTENT,
    GIVEN,
    ConversationRecord,
    ConversationUpdate,
    MemoryStore,
    NewConversation,
    Owner,
    Retention,
    SummaryConflict,
    interaction_not_found,
)
from services.memory.update_masks import refuse_path, unsupported_path

if TYPE_CHECKING:  # the search index (and what it imports) loads only when it is on
    from services.memory.indexer import Indexer

log = logging.getLogger("gensearch.memory")
DEFAULT_PAGE_SIZE = 10
# Not a setting: a larger page_size is served as this (AIP-158), never refused, and a
# caller pages on with next_page_token (GENSEARCH_MEMORY_MAX_PAGE_BYTES bounds a page's
# bytes).
MAX_PAGE_SIZE = 100
_CONVERSATIONS = "c"
_INTERACTIONS = "i"
_INTERACTIONS_OLDEST_FIRST = "io"
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
        # The key kept in Redis unreachable: one WARNING every 30 s at most, as the store's
        # own line for the outage; each call needing the key logged one before.
        self._secret_unreachable = ThrottledWarning(
            log,
            "page-token secret unreachable in Redis (%s): paging fails until its node "
            "answers (set GENSEARCH_MEMORY_PAGE_TOKEN_SECRET to not depend on it, "
            "docs/memory.md)",
            recovery="page-token secret read from Redis",
        )

    async def page_tokens(self) -> PageTokens:
        """The page-token signer. Without a configured secret, the one kept in Redis: fetched
        once and kept (``build_server`` asks at start, so paging does not depend on the
        node holding it after that); a failed fetch is not kept, the next call asks again."""
        if self._tokens is None:
            async with self._tokens_lock:
                if self._tokens is None:
                    try:
                        self._tokens = PageTokens(await self._store.shared_secret())
                    except Unavailable as err:
                        self._secret_unreachable(err)
                        raise
                    self._secret_unreachable.recovered()
        return self._tokens

    async def _cursor(self, token: str, kind: str, scope: str, owner: Owner) -> str | None:
        """The cursor a list's ``page_token`` carries; None for the first page."""
        if not token:
            return None
        raw = unwrap(token)  # before the key: a malformed token is refused even without it
        return (await self.page_tokens()).open(raw, kind, scope, owner.key)

    async def _next_token(self, kind: str, scope: str, cursor: str | None, owner: Owner) -> str:
        """The ``next_page_token`` for the page after ``cursor``; "" when none follows."""
        if cursor is None:
            return ""
        return (await self.page_tokens()).encode(kind, scope, cursor, owner.key)

    async def CreateConversation(
        self, request: pb.CreateConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateConversationResponse:
        new = self._new_conversation(request)
        record = await self._store.create_conversation(_owner(), new.name, new.retention)
        return pb.CreateConversationResponse(conversation=_conversation(record))

    def _new_conversation(
        self, request: pb.CreateConversationRequest, prefix: str = ""
    ) -> NewConversation:
        """A conversation to create, checked; the fields named after ``prefix`` (where
        the request holds them: CreateInteraction's ``new_conversation.``)."""
        s = self._settings
        return NewConversation(
            _name(request.name, f"{prefix}name", s.max_name_bytes),
            Retention(
                ttl_ms=(
                    self._ttl_ms(request.ttl, f"{prefix}ttl")
                    if request.HasField("ttl")
                    else s.default_conversation_ttl_seconds * 1000
                ),
                max_turns=(
                    _max_turns(request.max_turns, f"{prefix}max_turns")
                    if request.HasField("max_turns")
                    else s.default_conversation_max_turns
                ),
                summary_disabled=request.summary_disabled,
            ),
        )

    def _ttl_ms(self, ttl: duration_pb2.Duration, field: str) -> int:
        limit = self._settings.max_conversation_ttl_seconds
        duration_seconds(ttl, field)  # a valid Duration first; then its bounds, in ns
        ns = ttl.ToNanoseconds()
        # In ns: the seconds alone let a ttl past the limit by its nanos through.
        if ns < 0 or ns > limit * 1_000_000_000:
            raise InvalidArgument(
                f"{field} must be between 0 (no expiry) and {limit} s",
                field=field,
                reason="INVALID_TTL",
                metadata={
                    "max_seconds": str(limit),
                    "setting": _setting("max_conversation_ttl_seconds"),
                },
            )
        if 0 < ns < 1_000_000_000:
            raise InvalidArgument(
                f"{field} must be at least 1 s (or 0: no expiry)", field=field, reason="INVALID_TTL"
            )
        return ns // 1_000_000

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
        cursor = await self._cursor(request.page_token, _CONVERSATIONS, "", owner)
        page = await self._store.list_conversations(owner, size, cursor)
        token = await self._next_token(_CONVERSATIONS, "", page.next_cursor, owner)
        return pb.ListConversationsResponse(
            conversations=[_conversation(c) for c in page.items], next_page_token=token
        )

    async def UpdateConversation(
        self, request: pb.UpdateConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateConversationResponse:
        cid = _id(request.conversation_id, "conversation_id")
        paths = list(request.update_mask.paths) or _implied_paths(request)
        if not paths:
            # Nothing to change (AIP-134): the conversation as it is, not even touched (an
            # update counts as activity: it would move update_time and renew the ttl).
            record = await self._store.get_conversation(_owner(), cid)
            return pb.UpdateConversationResponse(conversation=_conversation(record))
        update = ConversationUpdate()
        for path in paths:
            if path == "name":
                update.name = _name(request.name, "name", self._settings.max_name_bytes)
            elif path == "ttl":
                update.ttl_ms = self._ttl_ms(request.ttl, "ttl")
            elif path == "max_turns":
                update.max_turns = _max_turns(request.max_turns)
            elif path == "summary_disabled":
                update.summary_disabled = request.summary_disabled
            else:
                raise refuse_path(path, pb.Conversation, _CONVERSATION_UPDATABLE)
        record = await self._store.update_conversation(_owner(), cid, update)
        return pb.UpdateConversationResponse(conversation=_conversation(record))

    async def UpdateConversationSummary(
        self, request: pb.UpdateConversationSummaryRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateConversationSummaryResponse:
        cid = _id(request.conversation_id, "conversation_id")
        text = _text(request.text, "text", self._settings.max_summary_bytes, "max_summary_bytes")
        if not text.strip():
            raise MissingField("text is required", field="text")
        expected = (
            _id(request.expected_through_interaction_id, "expected_through_interaction_id")
            if request.expected_through_interaction_id
            else ""
        )
        through = _id(request.through_interaction_id, "through_interaction_id")
        for field in (
            "summarised_turns",
            "prompt_tokens",
            "completion_tokens",
            "expected_unfolded_deletions",
        ):
            if getattr(request, field) < 0:
                raise InvalidArgument(
                    f"{field} must not be negative", field=field, reason="NEGATIVE_COUNT"
                )
        try:
            record = await self._store.update_summary(
                _owner(),
                cid,
                expected_through=expected,
                through=through,
                text=text,
                turns=request.summarised_turns,
                prompt_tokens=request.prompt_tokens,
                completion_tokens=request.completion_tokens,
                expected_deletions=(
                    request.expected_unfolded_deletions
                    if request.HasField("expected_unfolded_deletions")
                    else None
                ),
            )
        except SummaryConflict as conflict:
            raise Aborted(
                "the summary changed meanwhile: it now covers the turns up to "
                f"{conflict.current or '(none)'}; read the conversation and fold again",
                reason="SUMMARY_CHANGED",
                metadata={"through_interaction_id": conflict.current},
            ) from None
        return pb.UpdateConversationSummaryResponse(conversation=_conversation(record))

    async def DeleteConversation(
        self, request: pb.DeleteConversationRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteConversationResponse:
        cid = _id(request.conversation_id, "conversation_id")
        owner = _owner()
        await self._deleting(lambda: self._store.delete_conversation(owner, cid), owner, cid=cid)
        return pb.DeleteConversationResponse()

    async def _deleting(
        self,
        deletion: Callable[[], Awaitable[object]],
        owner: Owner,
        *,
        cid: str = "",
        iid: str = "",
    ) -> None:
        """Runs ``deletion`` (of the conversation ``cid`` or the turn ``iid``) with the
        search index's drop job written to the outbox before it (indexer.dropping): a
        replica killed at any point after the deletion ran leaves the job to a drain.
        Sent only after the deletion before, it was lost with a replica killed in
        between, and the entries stayed in the index until the sweep."""
        if self._indexer is None:
            await deletion()
            return
        await self._indexer.dropping(owner, deletion, cid=cid, iid=iid)

    async def CreateInteraction(
        self, request: pb.CreateInteractionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateInteractionResponse:
        s = self._settings
        _drop_unknown_fields(request)
        new: NewConversation | None = None
        if request.HasField("new_conversation"):
            # The turn starts its conversation, made with it in one atomic step.
            if request.conversation_id:
                raise InvalidArgument(
                    "give either conversation_id or new_conversation, not both",
                    field="new_conversation",
                )
            new = self._new_conversation(request.new_conversation, "new_conversation.")
            cid = ""
        else:
            cid = _id(request.conversation_id, "conversation_id")
        _text(request.input, "input", s.max_text_bytes, "max_text_bytes")
        _text(
            request.prompt_template,
            "prompt_template",
            s.max_prompt_template_bytes,
            "max_prompt_template_bytes",
        )
        _text(request.response, "response", s.max_text_bytes, "max_text_bytes")
        _text(request.origin, "origin", s.max_origin_bytes, "max_origin_bytes")
        request_id = check_request_id(
            _text(request.request_id, "request_id", s.max_request_id_bytes, "max_request_id_bytes")
        )
        if request.HasField("additional_info"):
            _check_additional_info(request.additional_info, s)
        stored_traces = traces.prepare(
            request.traces, s.max_traces, s.max_trace_bytes, s.max_value_depth
        )
        # Once the traces are checked: canonical JSON cannot carry an invalid Timestamp
        # or an infinite number, which they name (it was INTERNAL before their check).
        kept = _turn_fingerprint(request) if request_id else ""
        interaction = stored_interaction(request)
        _check_fits_a_page(interaction, s.page_bytes)
        owner = _owner()
        # The index job is written ahead beside the turn's own write (the two round trips
        # overlap), and awaited before the turn is acknowledged (indexer.stored), as soon
        # as the turn is known stored: an error after that (the walk of its turns' expiry
        # failing) leaves the job to the stored turn.
        indexer = self._indexer
        ahead = None if indexer is None else indexer.write_ahead(owner)

        async def index(turn: pb.Interaction) -> None:
            assert indexer is not None
            await indexer.stored(owner, turn, ahead)

        try:
            stored = await self._store.create_interaction(
                owner, cid, interaction, request_id, stored_traces, new, kept,
                beside=ahead, stored=None if indexer is None else index,
            )  # fmt: skip
        except ServiceError as err:
            # Refused: no turn under the job's id (abandon leaves a job handed to stored
            # alone). An outage may have stored it all the same: its job is left for a
            # drain, which indexes the turn or finds none.
            refused = not isinstance(err, Unavailable)
            if indexer is not None and ahead is not None and refused:
                indexer.abandon(ahead)
            raise
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
        after = ""
        if request.after_interaction_id:
            after = _id(request.after_interaction_id, "after_interaction_id")
        owner = _owner()
        # A token is one list's: its order and its lower bound are part of it (a plain
        # listing's scope stays the conversation alone, so tokens issued before read on).
        kind = _INTERACTIONS_OLDEST_FIRST if request.oldest_first else _INTERACTIONS
        scope = f"{cid}>{after}" if after else cid
        cursor = await self._cursor(request.page_token, kind, scope, owner)
        page = await self._store.list_interactions(
            owner,
            cid,
            size,
            cursor,
            self._settings.page_bytes,
            oldest_first=request.oldest_first,
            after=after,
        )
        token = await self._next_token(kind, scope, page.next_cursor, owner)
        answer = pb.ListInteractionsResponse(
            next_page_token=token, oldest_first=request.oldest_first
        )
        for data in page.items:
            answer.interactions.add().MergeFromString(data)
        return answer

    async def UpdateInteraction(
        self, request: pb.UpdateInteractionRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateInteractionResponse:
        _drop_unknown_fields(request)
        iid = _id(request.interaction.interaction_id, "interaction.interaction_id")
        keys = _update_paths(request)
        new_info = request.interaction.additional_info
        _check_additional_info(new_info, self._settings, "interaction.additional_info")
        settings = self._settings
        implied = not request.update_mask.paths

        def change(interaction: pb.Interaction) -> None:
            if implied:
                _refuse_fixed_changes(request.interaction, interaction)
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

        try:
            updated = await self._store.update_interaction(_owner(), iid, change)
        except NotFound:
            # The store names interaction_id; this request names it inside interaction.
            raise interaction_not_found(iid, "interaction.interaction_id") from None
        return pb.UpdateInteractionResponse(interaction=updated)

    async def DeleteInteraction(
        self, request: pb.DeleteInteractionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteInteractionResponse:
        """Deletes the turn as eviction does (store.delete_interaction), then drops it from
        the search index by the job eviction's and DeleteConversation's removals use (the
        outbox retries it; a search re-reads every hit, so it is never returned meanwhile)."""
        iid = _id(request.interaction_id, "interaction_id")
        owner = _owner()
        await self._deleting(lambda: self._store.delete_interaction(owner, iid), owner, iid=iid)
        return pb.DeleteInteractionResponse()

    async def ListInteractionTraces(
        self, request: pb.ListInteractionTracesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInteractionTracesResponse:
        iid = _id(request.interaction_id, "interaction_id")
        size = _page_size(request.page_size)
        owner = _owner()
        cursor = await self._cursor(request.page_token, _TRACES, iid, owner)
        after = int(cursor) if cursor is not None and cursor.isdigit() else -1
        stored = await self._store.get_interaction_traces(owner, iid)
        items, last = traces.page(stored, after, size, self._settings.page_bytes)
        token = await self._next_token(_TRACES, iid, None if last is None else str(last), owner)
        return pb.ListInteractionTracesResponse(traces=items, next_page_token=token)

    async def SearchInteractions(
        self, request: pb.SearchInteractionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.SearchInteractionsResponse:
        s = self._settings
        if self._indexer is None:
            # The client cannot turn it on: the message names the setting its operator
            # sets (it used to say search_index=off, which is no environment variable).
            setting = _setting("search_index")
            raise FailedPrecondition(
                f"interaction search is off on this memory service ({setting}=off); "
                f"its operator turns it on with {setting}=keyword or {setting}=hybrid",
                reason="SEARCH_DISABLED",
                metadata={"setting": setting},
            )
        query = _text(request.query, "query", s.max_search_query_bytes, "max_search_query_bytes")
        if not query.strip():
            raise MissingField("query is required", field="query")
        if request.limit < 0 or request.limit > s.max_search_limit:
            raise InvalidArgument(
                f"limit must be between 0 and {s.max_search_limit}",
                field="limit",
                reason="INVALID_LIMIT",
                metadata={"max": str(s.max_search_limit), "setting": _setting("max_search_limit")},
            )
        if request.mode not in pb.SearchMode.values():
            raise InvalidArgument(
                f"mode {request.mode} is not a SearchMode",
                field="mode",
                reason="INVALID_MODE",
            )
        limit = request.limit or min(DEFAULT_SEARCH_LIMIT, s.max_search_limit)
        owner = _owner()
        cid = ""
        if request.conversation_id:
            cid = _id(request.conversation_id, "conversation_id")
            await self._store.get_conversation(
                owner, cid, counted=False
            )  # NOT_FOUND unless the caller's
        hits = await self._indexer.search(owner, query, cid, request.mode, limit)
        return pb.SearchInteractionsResponse(hits=hits)

    async def CheckStorage(
        self, request: pb.CheckStorageRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckStorageResponse:
        summary = request.summary
        # A summary is always a conversation's: its id is required then.
        cid = (
            _id(request.conversation_id, "conversation_id")
            if request.conversation_id or summary
            else ""
        )
        if request.bytes < 0:
            raise InvalidArgument(
                "bytes must not be negative", field="bytes", reason="NEGATIVE_COUNT"
            )
        owner = _owner()
        claim = _claim(
            request, self._settings.max_claim_token_bytes, self._settings.max_claim_seconds
        )
        kept = _given_fingerprint(request.request_fingerprint)
        if request.request_id:
            if summary:
                raise InvalidArgument(
                    "request_id names a turn; a summary's check takes none",
                    field="request_id",
                    reason="REQUEST_ID_WITH_SUMMARY",
                )
            request_id = check_request_id(
                _text(
                    request.request_id,
                    "request_id",
                    self._settings.max_request_id_bytes,
                    "max_request_id_bytes",
                )
            )
            if request.release_claim:
                await self._store.release_request(owner, request_id, request.claim_token)
                return pb.CheckStorageResponse()
            stored = await self._store.stored_request(owner, request_id, kept)
            if stored is not None:
                return self._stored(stored, cid)
        usage = await self._store.check_storage(owner, cid, request.bytes, summary=summary)
        if claim:
            # Last, once the turn is known to fit: a refused check reserves nothing.
            held = await self._store.claim_request(owner, request.request_id, *claim, kept)
            if isinstance(held, pb.Interaction):
                return self._stored(held, cid)  # stored since it was looked up
            if not held:
                return pb.CheckStorageResponse(request_id_in_use=True)
        return pb.CheckStorageResponse(
            used_bytes=usage.used_bytes,
            limit_bytes=usage.limit_bytes,
            conversation_count=usage.conversations,
            max_conversations=usage.max_conversations,
            limits=self._limits(),
        )

    def _stored(self, stored: pb.Interaction, cid: str) -> pb.CheckStorageResponse:
        """CheckStorage's answer when the request_id names a stored turn."""
        if cid and stored.conversation_id != cid:
            raise InvalidArgument(
                "request_id was already used for an interaction of another conversation",
                field="request_id",
                reason="REQUEST_ID_REUSED",
            )
        # A retry of a turn already stored: it needs no room (its write would answer with
        # the stored turn, full or not).
        return pb.CheckStorageResponse(interaction=stored, limits=self._limits())

    def _limits(self) -> pb.InteractionLimits:
        """What CreateInteraction accepts, as configured: CheckStorage returns it so a
        client can fit a turn before its costly work (the gateway, before an Ask's LLM
        calls) instead of having the write refused after it."""
        s = self._settings
        return pb.InteractionLimits(
            max_text_bytes=s.max_text_bytes,
            max_prompt_template_bytes=s.max_prompt_template_bytes,
            max_origin_bytes=s.max_origin_bytes,
            max_additional_info_bytes=s.max_additional_info_bytes,
            max_traces=s.max_traces,
            max_trace_bytes=s.max_trace_bytes,
            max_interaction_bytes=s.page_bytes - _STORED_FIELDS_BYTES,
            max_name_bytes=s.max_name_bytes,
            max_summary_bytes=s.max_summary_bytes,
            max_request_id_bytes=s.max_request_id_bytes,
            max_value_depth=s.max_value_depth,
        )


# CreateInteraction's fields left out of a turn's content fingerprint (_turn_fingerprint).
_NOT_FINGERPRINTED = ("request_id", "request_fingerprint", "conversation_id", "new_conversation")


def _given_fingerprint(given: str) -> str:
    """What memory keeps of a client's request_fingerprint: its SHA-256, whatever its
    length ("" for none: nothing to compare)."""
    return GIVEN + hashlib.sha256(given.encode()).hexdigest() if given else ""


def _turn_fingerprint(request: pb.CreateInteractionRequest) -> str:
    """The fingerprint a turn is stored with under its request_id: the client's (an Ask's
    digest, from the gateway), else the request's own content, every field but the key
    and the conversation it goes to (conversation_id or new_conversation: checked as
    before, REQUEST_ID_REUSED for another conversation_id, and a retry that starts a
    conversation finds the turn wherever it is). Marked apart (store.GIVEN, CONTENT), so
    that a content fingerprint never equals a client's."""
    if request.request_fingerprint:
        return _given_fingerprint(request.request_fingerprint)
    content = fingerprint(request, _NOT_FINGERPRINTED)
    return CONTENT + content


def _claim(
    request: pb.CheckStorageRequest, max_token_bytes: int, max_seconds: int
) -> tuple[str, int] | None:
    """CheckStorage's claim_token and claim_seconds, checked: None without a claim."""
    if not request.claim_token and not request.release_claim:
        if request.claim_seconds:
            raise InvalidArgument("claim_seconds goes with a claim_token", field="claim_seconds")
        return None
    if not request.request_id:
        raise MissingField(
            "a claim reserves a request_id: request_id is required with claim_token",
            field="request_id",
        )
    token = _text(request.claim_token, "claim_token", max_token_bytes, "max_claim_token_bytes")
    if not token:
        raise MissingField("release_claim names its attempt's claim_token", field="claim_token")
    if request.release_claim:
        return None
    if not request.claim_seconds:
        raise MissingField(
            f"claim_seconds is required with claim_token (1 to {max_seconds})",
            field="claim_seconds",
        )
    if not 1 <= request.claim_seconds <= max_seconds:
        # The longest reservation (max_claim_seconds): the gateway claims up to its
        # MEMORY_MAX_CLAIM_SECONDS, documented to be at most this.
        raise out_of_range(
            f"claim_seconds must be between 1 and {max_seconds}",
            field="claim_seconds",
            bound=max_seconds,
            setting=_setting("max_claim_seconds"),
        )
    return token, request.claim_seconds


def _implied_paths(request: pb.UpdateConversationRequest) -> list[str]:
    """An UpdateConversation without a mask changes the fields it sets (AIP-134), and
    setting none changes nothing: to clear the name, a client names it in the mask. It
    used to be the name alone always (a request setting max_turns or ttl changed neither
    and wiped the name), then the name when none was set (a request that set nothing
    wiped it)."""
    return [
        path
        for path, given in (
            ("name", bool(request.name)),
            ("ttl", request.HasField("ttl")),
            ("max_turns", request.max_turns != 0),
            ("summary_disabled", request.summary_disabled),
        )
        if given
    ]


# What UpdateInteraction never changes. Without a mask, only additional_info is applied
# (replaced whole): a request also changing one of these answered OK without changing it,
# and wiped additional_info. Each must be unset or as stored (a read-modify-write sends the
# interaction back as read); server-kept fields (update_time, trace_count) are not compared.
_FIXED_FIELDS = ("conversation_id", "input", "prompt_template", "response", "origin")


def _refuse_fixed_changes(sent: pb.Interaction, stored: pb.Interaction) -> None:
    changed = [
        name
        for name in _FIXED_FIELDS
        if getattr(sent, name) and getattr(sent, name) != getattr(stored, name)
    ]
    if sent.HasField("create_time") and sent.create_time != stored.create_time:
        changed.append("create_time")
    same_id = sent.conversation_id.lower() == stored.conversation_id.lower()
    if changed and changed[0] == "conversation_id" and same_id:
        changed.pop(0)  # the same id, in capitals
    if changed:
        field = f"interaction.{changed[0]}"
        raise InvalidArgument(
            f"{field} differs from the stored interaction, and cannot be updated; only "
            "additional_info (or additional_info.<key>) may change",
            field=field,
            reason="FIELD_NOT_UPDATABLE",
        )


# What each Update*'s mask may name, for its refusals (update_masks.refuse_path).
_CONVERSATION_UPDATABLE = "name, ttl, max_turns, summary_disabled"
_INTERACTION_UPDATABLE = "additional_info, additional_info.<key>"


def _update_paths(request: pb.UpdateInteractionRequest) -> list[str] | None:
    """None: replace additional_info whole; else the top-level keys to set or remove."""
    paths = list(request.update_mask.paths) or [_ADDITIONAL_INFO]
    keys: list[str] = []
    whole = False
    for path in paths:
        if path == _ADDITIONAL_INFO:
            whole = True
        elif path.startswith(_ADDITIONAL_INFO + ".") and len(path) > len(_ADDITIONAL_INFO) + 1:
            key = path[len(_ADDITIONAL_INFO) + 1 :]
            if "." in key:
                # A FieldMask reads a.b as key b inside a: setting the top-level key "a.b"
                # instead (or removing it) would do what the caller did not ask.
                raise unsupported_path(
                    path,
                    "names a nested key; only top-level keys (additional_info.<key>) can "
                    "be set on their own",
                )
            keys.append(key)
        else:
            raise refuse_path(path, pb.Interaction, _INTERACTION_UPDATABLE)
    return None if whole else keys


def _drop_unknown_fields(request: Message) -> None:
    """Drops the fields of ``request`` (at every depth) its type does not declare, before
    any of it is checked or kept. additional_info and traces are stored as sent: with
    unknown fields (a client built from another .proto, or one padding on purpose) they
    kept bytes no JSON read shows, served back on every read, and a trace kept them past
    max_trace_bytes (the bound cut its own input and output instead)."""
    request.DiscardUnknownFields()


def _check_additional_info(info: Any, s: MemorySettings, field: str = "additional_info") -> None:
    size = info.ByteSize()
    if size > s.max_additional_info_bytes:
        raise InvalidArgument(
            f"{field} is {size} bytes serialized; the limit is {s.max_additional_info_bytes}",
            field=field,
            reason="FIELD_TOO_LARGE",
            metadata={
                "limit_bytes": str(s.max_additional_info_bytes),
                "setting": _setting("max_additional_info_bytes"),
            },
        )
    # After the size check: the walk is bounded by it.
    # Kept as sent and read back as JSON too: every Value must have a kind.
    check_value(info, field, s.max_value_depth, kind_required=True)


def _owner() -> Owner:
    # Every role includes reader, which may keep its own conversations: no role check.
    identity = current_identity()
    return Owner(identity.tenant, identity.user)


def _id(value: str, field: str) -> str:
    if not value:
        raise MissingField(f"{field} is required", field=field)
    parsed = parse_id(value)
    if parsed is None:
        raise InvalidArgument(
            f"{field} must be a UUID like 0190a6f2-8c4e-7b3a-9f1d-2e5c6a7b8c9d",
            field=field,
            reason="INVALID_ID",
        )
    return parsed


def _name(value: str, field: str, limit: int) -> str:
    """A conversation's name: a display string, so no control characters (they were
    stored as sent, and a NUL, a newline or an ESC sequence reached whoever listed it)."""
    return check_no_controls(_text(value, field, limit, "max_name_bytes"), field)


def _setting(name: str) -> str:
    """The environment variable of the memory setting ``name`` (a MemorySettings field)."""
    return f"GENSEARCH_MEMORY_{name.upper()}"


def _text(value: str, field: str, limit: int, setting: str | None = None) -> str:
    """``value`` when it fits ``limit`` UTF-8 bytes. ``setting`` names the setting that
    is the limit (none for a fixed one): a client then sees which bound it hit, and an
    operator which variable raises it, without parsing the message."""
    if over_utf8(value, limit):
        metadata = {"limit_bytes": str(limit)}
        if setting is not None:
            metadata["setting"] = _setting(setting)
        raise InvalidArgument(
            f"{field} is longer than {limit} bytes (UTF-8)",
            field=field,
            reason="FIELD_TOO_LARGE",
            metadata=metadata,
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
        "input": utf8_size(interaction.input),
        "prompt_template": utf8_size(interaction.prompt_template),
        "response": utf8_size(interaction.response),
        "additional_info": interaction.additional_info.ByteSize(),
    }
    largest = max(sizes, key=sizes.__getitem__)
    raise InvalidArgument(
        f"the interaction is {size} bytes serialized, more than a page holds "
        f"({max_page_bytes}); {largest} is the largest part ({sizes[largest]} bytes)",
        field=largest,
        reason="INTERACTION_TOO_LARGE",
    )


def _max_turns(value: int, field: str = "max_turns") -> int:
    if value < 0:
        raise InvalidArgument(
            f"{field} must not be negative (0: no limit)",
            field=field,
            reason="INVALID_MAX_TURNS",
        )
    return value


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
    conversation = pb.Conversation(
        conversation_id=record.conversation_id,
        name=record.name,
        user=record.user,
        create_time=_timestamp(record.create_ms),
        update_time=_timestamp(record.update_ms),
        interaction_count=record.interaction_count,
        unfolded_deletions=record.unfolded_deletions,
    )
    r, summary = record.retention, record.summary
    if record.expire_ms:
        conversation.expire_time.CopyFrom(_timestamp(record.expire_ms))
    if r.ttl_ms:
        conversation.ttl.FromMilliseconds(r.ttl_ms)
    conversation.max_turns = r.max_turns
    conversation.summary_disabled = r.summary_disabled
    if summary.through or summary.evicted_unsummarised:
        conversation.summary.CopyFrom(
            pb.ConversationSummary(
                text=summary.text,
                through_interaction_id=summary.through,
                summarised_turns=summary.turns,
                prompt_tokens=summary.prompt_tokens,
                completion_tokens=summary.completion_tokens,
                folds=summary.folds,
                evicted_unsummarised_turns=summary.evicted_unsummarised,
            )
        )
        if summary.update_ms:
            conversation.summary.update_time.CopyFrom(_timestamp(summary.update_ms))
    return conversation
