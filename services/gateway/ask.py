"""Conversational search: recent turns, a standalone query, retrieval, an answer with
citations, and the turn stored so the conversation can go on.

Memory is read before anything else, so an unreachable memory service or someone else's
conversation stops the call before any LLM work; the turn is written last, in one
idempotent call, so a failure leaves nothing half stored.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format, struct_pb2

from services.common.errors import (
    DeadlineExceeded,
    InvalidArgument,
    ServiceError,
    from_rpc_error,
)
from services.gateway.catalog import Catalog, CollectionInfo
from services.gateway.clients import Caller, Downstream
from services.gateway.conversation import (
    Turn,
    cited_numbers,
    clean_rewrite,
    recent_turns,
    rewrite_messages,
)
from services.gateway.generator import Options, add_usage, complete
from services.gateway.metrics import TRIMMED
from services.gateway.models import ModelCatalog
from services.gateway.prompting import (
    DEFAULT_SYSTEM_PROMPT,
    PROMPT_TEMPLATE,
    ContextHit,
    context_window_for,
    fit_prompt,
)
from services.gateway.settings import GatewaySettings

log = logging.getLogger("gensearch.gateway.ask")

AskLike = gw_pb.AskRequest | gw_pb.StreamAskRequest
T = TypeVar("T")
_TEXT_QUERIES = ("near_text", "keyword", "hybrid")
_NAME_CHARS = 120
# Largest page memory serves.
_MEMORY_PAGE = 100


class AskService:
    def __init__(
        self,
        downstream: Downstream,
        catalog: Catalog,
        models: ModelCatalog,
        settings: GatewaySettings,
    ):
        self._downstream = downstream
        self._catalog = catalog
        self._models = models
        self._settings = settings

    # -- entry points ----------------------------------------------------------------------
    def budget(self, request: AskLike, call_remaining: float | None) -> float:
        s = self._settings
        if request.HasField("timeout"):
            budget = request.timeout.seconds + request.timeout.nanos / 1e9
            if budget <= 0 or budget > s.max_ask_timeout:
                raise InvalidArgument(
                    f"timeout must be in (0, {s.max_ask_timeout}] seconds", field="timeout"
                )
        else:
            budget = s.ask_timeout
        if call_remaining is not None:
            budget = min(budget, call_remaining)
        return budget

    async def ask(
        self, request: gw_pb.AskRequest, caller: Caller, call_remaining: float | None
    ) -> gw_pb.AskResponse:
        budget = self.budget(request, call_remaining)
        deadline = asyncio.get_running_loop().time() + budget
        answer = gw_pb.AskResponse()
        try:
            async with asyncio.timeout(budget):
                async for event in self.events(request, caller, deadline, stream=False):
                    if event.HasField("answer"):
                        answer = event.answer
        except TimeoutError:
            raise _deadline(budget) from None
        return answer

    async def stream(
        self, request: gw_pb.StreamAskRequest, caller: Caller, call_remaining: float | None
    ) -> AsyncIterator[gw_pb.StreamAskResponse]:
        budget = self.budget(request, call_remaining)
        deadline = asyncio.get_running_loop().time() + budget
        async for event in self.events(request, caller, deadline, stream=True):
            yield event

    # -- the steps -------------------------------------------------------------------------
    def _validate(self, request: AskLike) -> None:
        s = self._settings
        if not request.collection:
            raise InvalidArgument("collection is required", field="collection")
        if not request.llm_question.strip():
            raise InvalidArgument("llm_question is required", field="llm_question")
        if len(request.llm_question) > s.max_prompt_chars:
            raise InvalidArgument(
                f"llm_question is longer than {s.max_prompt_chars} characters",
                field="llm_question",
            )
        if request.conversation_id and request.new_conversation:
            raise InvalidArgument(
                "give either conversation_id or new_conversation, not both",
                field="new_conversation",
            )
        if request.HasField("context_size") and not 0 <= request.context_size <= s.max_context_size:
            raise InvalidArgument(
                f"context_size must be between 0 and {s.max_context_size}", field="context_size"
            )
        if request.HasField("interaction_size") and not (
            0 <= request.interaction_size <= s.max_interaction_size
        ):
            raise InvalidArgument(
                f"interaction_size must be between 0 and {s.max_interaction_size}",
                field="interaction_size",
            )
        if request.HasField("temperature") and not 0 <= request.temperature <= 2:
            raise InvalidArgument("temperature must be between 0 and 2", field="temperature")
        if request.HasField("max_tokens") and request.max_tokens < 1:
            raise InvalidArgument("max_tokens must be at least 1", field="max_tokens")
        for name in ("system_prompt", "user_instructions"):
            if len(getattr(request, name)) > s.max_prompt_chars:
                raise InvalidArgument(
                    f"{name} is longer than {s.max_prompt_chars} characters", field=name
                )

    async def events(
        self, request: AskLike, caller: Caller, deadline: float, *, stream: bool
    ) -> AsyncIterator[gw_pb.StreamAskResponse]:
        self._validate(request)
        s = self._settings
        question = request.llm_question.strip()
        context_size = (
            request.context_size if request.HasField("context_size") else s.ask_context_size
        )
        interaction_size = (
            request.interaction_size
            if request.HasField("interaction_size")
            else s.ask_interaction_size
        )

        # Memory first (with the collection alongside): nothing is generated for a
        # conversation we cannot read, or may not.
        info_call = self._catalog.get(request.collection, caller, _left(deadline))
        if request.conversation_id:
            history_call = self._history(
                request.conversation_id, interaction_size, caller, deadline
            )
            found = await self._within(
                deadline, asyncio.gather(history_call, info_call, return_exceptions=True)
            )
            for item in found:
                if isinstance(item, BaseException):
                    raise item
            history, info = found[0], found[1]
            assert isinstance(history, list)
            turns_newest_first: list[Turn] = history
        else:
            turns_newest_first, info = [], await self._within(deadline, info_call)
        assert isinstance(info, CollectionInfo)
        turns = recent_turns(turns_newest_first, interaction_size)
        context_fields = self._context_fields(request, info)
        options = self._options(request, info)
        usage = gen_pb.Usage()

        rewritten = ""
        rewrite = request.rewrite_query if request.HasField("rewrite_query") else s.rewrite_query
        if turns and rewrite:
            rewritten = await self._rewrite(turns, question, options, caller, deadline, usage)
        query_text = rewritten or question

        hits: list[ret_pb.Hit] = []
        if context_size > 0:
            search = self._search_request(request, info, query_text, context_size)
            hits = await self._within(deadline, self._search(search, caller, deadline))
        yield gw_pb.StreamAskResponse(
            context=gw_pb.AskContextEvent(
                hits=hits, rewritten_query=rewritten, conversation_id=request.conversation_id
            )
        )

        window, model_name = await self._context_window(options, caller, deadline)
        answer_tokens = min(options.max_tokens or s.answer_reserve_tokens, window // 2)
        system_prompt = (
            request.system_prompt or info.generative.system_prompt or DEFAULT_SYSTEM_PROMPT
        )
        instructions = request.user_instructions or info.generative.user_instructions
        context_hits = [
            ContextHit(hit.id, json_format.MessageToDict(hit.properties)) for hit in hits
        ]
        prompt = fit_prompt(
            system_prompt=system_prompt,
            turns=turns,
            hits=context_hits,
            context_fields=context_fields,
            user_instructions=instructions,
            question=question,
            context_window=window,
            answer_tokens=answer_tokens,
        )
        if prompt.trimmed_turns:
            TRIMMED.labels("history_turns").inc(prompt.trimmed_turns)
        if prompt.trimmed_hits:
            TRIMMED.labels("hits").inc(prompt.trimmed_hits)
        if prompt.notes:
            log.info(
                "prompt trimmed to fit the context window",
                extra={"model": model_name, "window": window, "trimmed": prompt.notes},
            )

        deltas: asyncio.Queue[str | None] = asyncio.Queue()
        generation = asyncio.ensure_future(
            self._within(
                deadline,
                complete(
                    self._downstream,
                    caller,
                    options,
                    prompt.messages,
                    timeout=_left(deadline),
                    emit=deltas.put_nowait if stream else None,
                ),
            )
        )
        generation.add_done_callback(lambda _: deltas.put_nowait(None))
        try:
            while (delta := await deltas.get()) is not None:
                yield gw_pb.StreamAskResponse(delta=delta)
            result = await generation
        finally:
            generation.cancel()
        add_usage(usage, result.usage)
        answer = result.result
        used = context_hits[: prompt.hits_used]
        citations = [
            gw_pb.Citation(number=n, id=used[n - 1].id) for n in cited_numbers(answer, len(used))
        ]
        response = gw_pb.AskResponse(
            answer=answer,
            citations=citations,
            hits=hits,
            usage=usage,
            conversation_id=request.conversation_id,
            rewritten_query=rewritten,
            trimmed=gw_pb.Trimmed(history_turns=prompt.trimmed_turns, hits=prompt.trimmed_hits),
            model=result.model or options.model,
        )
        if request.debug:
            response.prompt.extend(prompt.messages)
        if request.conversation_id or request.new_conversation:
            template = PROMPT_TEMPLATE.replace("{system_prompt}", system_prompt).replace(
                "{user_instructions}", instructions
            )
            info_struct = _additional_info(hits, citations, usage, rewritten, response)
            conversation_id, interaction_id = await self._within(
                deadline,
                self._store(request, question, template, response, info_struct, caller, deadline),
            )
            response.conversation_id = conversation_id
            response.interaction_id = interaction_id
        yield gw_pb.StreamAskResponse(answer=response)

    async def _within(self, deadline: float, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError:
            raise _deadline(None) from None

    async def _history(
        self, conversation_id: str, size: int, caller: Caller, deadline: float
    ) -> list[Turn]:
        """The conversation's ``size`` newest turns, newest first (memory's order); reading
        the conversation first makes a missing or foreign one NOT_FOUND even when
        ``size`` is 0."""
        memory = self._downstream.memory

        async def newest() -> list[Turn]:
            turns: list[Turn] = []
            token = ""
            while len(turns) < size:
                page = await memory.ListInteractions(
                    mem_pb.ListInteractionsRequest(
                        conversation_id=conversation_id,
                        page_size=min(size - len(turns), _MEMORY_PAGE),
                        page_token=token,
                    ),
                    metadata=caller.identity,
                    timeout=_left(deadline),
                )
                turns.extend(Turn(i.input, i.response) for i in page.interactions)
                token = page.next_page_token
                if not token or not page.interactions:
                    break
            return turns[:size]

        get = memory.GetConversation(
            mem_pb.GetConversationRequest(conversation_id=conversation_id),
            metadata=caller.identity,
            timeout=_left(deadline),
        )
        try:
            if size == 0:
                await get
                return []
            _, turns = await asyncio.gather(get, newest())
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, "memory") from None
        return turns

    def _context_fields(self, request: AskLike, info: CollectionInfo) -> list[str]:
        fields = list(request.context_field_list)
        unknown = [f for f in fields if f not in info.properties]
        if unknown:
            raise InvalidArgument(
                f"unknown property {unknown[0]!r} in context_field_list",
                field="context_field_list",
                reason="UNKNOWN_PROPERTY",
                metadata={"property": unknown[0]},
            )
        return fields or list(info.generative.context_fields) or info.text_properties

    def _options(self, request: AskLike, info: CollectionInfo) -> Options:
        return Options.resolve(request, request.llm_model, info.generative, self._settings)

    async def _rewrite(
        self,
        turns: list[Turn],
        question: str,
        options: Options,
        caller: Caller,
        deadline: float,
        usage: gen_pb.Usage,
    ) -> str:
        rewrite_options = Options(options.provider, options.model, 0.0, 64)
        try:
            result = await self._within(
                deadline,
                complete(
                    self._downstream,
                    caller,
                    rewrite_options,
                    rewrite_messages(turns, question),
                    timeout=_left(deadline),
                ),
            )
        except DeadlineExceeded:
            raise
        except ServiceError as err:
            # Retrieval with the question as asked beats no answer; the answer call will
            # report a generation outage on its own.
            log.warning("question rewriting failed", extra={"reason": err.reason})
            return ""
        add_usage(usage, result.usage)
        return clean_rewrite(result.result, question)

    def _search_request(
        self, request: AskLike, info: CollectionInfo, text: str, limit: int
    ) -> ret_pb.SearchRequest:
        search = ret_pb.SearchRequest(collection=request.collection, limit=limit)
        kind = request.WhichOneof("query")
        if kind is not None:
            query = getattr(search, kind)
            query.CopyFrom(getattr(request, kind))
            if kind in _TEXT_QUERIES and not query.text:
                query.text = text
        elif info.has_vectorizer:
            search.hybrid.text = text
        else:
            # No embedder to turn the question into a vector: keyword search alone.
            search.keyword.text = text
        if request.HasField("filter"):
            search.filter.CopyFrom(request.filter)
        return search

    async def _search(
        self, search: ret_pb.SearchRequest, caller: Caller, deadline: float
    ) -> list[ret_pb.Hit]:
        try:
            response = await self._downstream.retrieval.Search(
                search, metadata=caller.identity, timeout=_left(deadline)
            )
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, "retrieval") from None
        return list(response.hits)

    async def _context_window(
        self, options: Options, caller: Caller, deadline: float
    ) -> tuple[int, str]:
        s = self._settings
        name, fallback = options.model, s.default_context_window
        # None when generation cannot tell: that only costs a default context window.
        provider = await self._models.provider(options.provider, caller, min(_left(deadline), 2.0))
        if provider is not None:
            name = name or provider.default_model
            if provider.context_window > 0 and (
                not options.model or options.model == provider.default_model
            ):
                fallback = provider.context_window
        return context_window_for(name, s.context_windows, fallback), name

    async def _store(
        self,
        request: AskLike,
        question: str,
        template: str,
        response: gw_pb.AskResponse,
        additional_info: struct_pb2.Struct,
        caller: Caller,
        deadline: float,
    ) -> tuple[str, str]:
        memory = self._downstream.memory
        conversation_id, created = request.conversation_id, False
        try:
            if request.new_conversation:
                made = await memory.CreateConversation(
                    mem_pb.CreateConversationRequest(name=_title(question)),
                    metadata=caller.identity,
                    timeout=_left(deadline),
                )
                conversation_id, created = made.conversation.conversation_id, True
            stored = await memory.CreateInteraction(
                mem_pb.CreateInteractionRequest(
                    conversation_id=conversation_id,
                    input=question,
                    prompt_template=template,
                    response=response.answer,
                    origin=response.model or "unknown",
                    additional_info=additional_info,
                    # Retries (channel policy) of this write land once.
                    request_id=uuid.uuid4().hex,
                ),
                metadata=caller.identity,
                timeout=_left(deadline),
            )
        except grpc.aio.AioRpcError as err:
            if created:
                await self._forget(conversation_id, caller)
            raise from_rpc_error(err, "memory") from None
        except BaseException:
            if created:
                await self._forget(conversation_id, caller)
            raise
        return conversation_id, stored.interaction.interaction_id

    async def _forget(self, conversation_id: str, caller: Caller) -> None:
        """Best effort: do not leave an empty conversation behind a failed turn."""
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            await self._downstream.memory.DeleteConversation(
                mem_pb.DeleteConversationRequest(conversation_id=conversation_id),
                metadata=caller.identity,
                timeout=2.0,
            )


def _left(deadline: float) -> float:
    return max(deadline - asyncio.get_running_loop().time(), 0.001)


def _deadline(budget: float | None) -> DeadlineExceeded:
    detail = f" of {budget:g} s" if budget is not None else ""
    return DeadlineExceeded(f"the question was not answered within its timeout{detail}")


def _title(question: str) -> str:
    line = " ".join(question.split())
    return line if len(line) <= _NAME_CHARS else line[: _NAME_CHARS - 1] + "…"


def _additional_info(
    hits: list[ret_pb.Hit],
    citations: list[gw_pb.Citation],
    usage: gen_pb.Usage,
    rewritten: str,
    response: gw_pb.AskResponse,
) -> struct_pb2.Struct:
    data: dict[str, Any] = {
        "hit_ids": [hit.id for hit in hits],
        "citations": [{"number": c.number, "id": c.id} for c in citations],
        "usage": {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
            "estimated": usage.estimated,
        },
        "rewritten_query": rewritten,
        "trimmed": {
            "history_turns": response.trimmed.history_turns,
            "hits": response.trimmed.hits,
        },
    }
    info = struct_pb2.Struct()
    info.update(data)
    return info
