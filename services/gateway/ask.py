"""Conversational search, one turn: recent turns, a standalone query, retrieval, an answer
with citations, and the turn stored so the conversation can go on.

Memory is read before anything else, so an unreachable memory service, someone else's
conversation or an owner whose memory has no room for the turn (CheckStorage, a
best-effort guard) stops the call before any LLM work; the turn is written last, in one
idempotent call (a new conversation made by memory with it, in the same atomic step), so
a failure leaves nothing half stored and no empty conversation. The request's checks live in
``ask_request``, the reads and writes of turns in ``turns``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format
from opentelemetry import trace

from services.common.call_deadline import outlasting
from services.common.errors import (
    UPSTREAM_CALLS,
    DeadlineExceeded,
    InvalidArgument,
    ServiceError,
    seconds_text,
    upstream_calls,
)
from services.common.tracing import CACHE_HIT
from services.common.turn_size import fit_utf8
from services.gateway import (
    ask_request,
    ask_traces,
    chunks,
    citations,
    condense,
    generation_cache,
    history_budget,
    memory_limits,
    rerank,
)
from services.gateway.ask_cache import SemanticAnswers, replay
from services.gateway.ask_request import AskLike
from services.gateway.ask_traces import TurnTraces
from services.gateway.backends import Backends
from services.gateway.catalog import CollectionInfo
from services.gateway.clients import Caller
from services.gateway.conversation import Turn, recent_turns
from services.gateway.deadline import time_left
from services.gateway.fanout import DeltaBuffer
from services.gateway.generator import Options, Spent, complete
from services.gateway.metrics import TRIMMED
from services.gateway.prompting import (
    DEFAULT_SYSTEM_PROMPT,
    AskPrompt,
    ContextHit,
)
from services.gateway.turns import (
    Claim,
    History,
    RequestIdInUse,
    Room,
    additional_info,
    check_replay,
    check_room,
    cleaned_up,
    read_history,
    replay_events,
    replayed,
    store_turn,
    stored_template,
)

log = logging.getLogger("gensearch.gateway.ask")

T = TypeVar("T")


class AskService:
    def __init__(self, backends: Backends) -> None:
        self._b = backends
        self._semantic = SemanticAnswers(backends)

    async def idle(self) -> None:
        """Returns once the background work queued so far (semantic cache stores) is
        done."""
        await self._semantic.idle()

    async def drain(self) -> None:
        """At shutdown, before the downstream channels close: the queued stores, and the
        clean-ups of Asks that ended (a request_id to let go), for up to
        ASK_CLEANUP_SECONDS; cut by the channels closing, they left a key held until its
        time ran out."""
        await self._semantic.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(cleaned_up(), self._b.settings.ask_cleanup_seconds)

    # -- entry points ----------------------------------------------------------------------
    async def ask(
        self, request: gw_pb.AskRequest, caller: Caller, call_remaining: float | None
    ) -> gw_pb.AskResponse:
        budget = ask_request.budget(request, self._b.settings, call_remaining)
        deadline = asyncio.get_running_loop().time() + budget
        answer = gw_pb.AskResponse()
        try:
            async with asyncio.timeout(budget):
                async for event in self.events(request, caller, deadline, stream=False):
                    if event.HasField("answer"):
                        answer = event.answer
        except TimeoutError:
            raise _deadline(budget, ask_request.budget_field(request, budget)) from None
        except DeadlineExceeded as err:
            raise _named(err, request, budget, deadline) from None
        return answer

    async def stream(
        self, request: gw_pb.StreamAskRequest, caller: Caller, call_remaining: float | None
    ) -> AsyncIterator[gw_pb.StreamAskResponse]:
        budget = ask_request.budget(request, self._b.settings, call_remaining)
        deadline = asyncio.get_running_loop().time() + budget
        try:
            async for event in self.events(request, caller, deadline, stream=True):
                yield event
        except DeadlineExceeded as err:
            raise _named(err, request, budget, deadline) from None

    # -- the turn --------------------------------------------------------------------------
    async def events(
        self, request: AskLike, caller: Caller, deadline: float, *, stream: bool
    ) -> AsyncIterator[gw_pb.StreamAskResponse]:
        # With the client's request_id, memory reserves it for this attempt (turns.Claim)
        # as it is checked, so attempts at once pay for one answer: the others are
        # REQUEST_ID_IN_USE. An attempt that ends without its turn stored lets it go.
        claim = (
            Claim.of(
                request.request_id,
                self._b.settings.ask_cleanup_seconds,
                self._b.settings.memory_max_claim_seconds,
            )
            if request.conversation_id or request.new_conversation
            else None
        )
        try:
            async for event in self._turn(request, caller, deadline, claim, stream=stream):
                yield event
        except RequestIdInUse:
            raise  # another attempt's hold: not this one's to end
        except BaseException:
            if claim is not None:
                claim.release(self._b.clients.memory, caller)
            raise

    async def _turn(
        self,
        request: AskLike,
        caller: Caller,
        deadline: float,
        claim: Claim | None,
        *,
        stream: bool,
    ) -> AsyncIterator[gw_pb.StreamAskResponse]:
        params = ask_request.validate(request, self._b.settings)
        question = params.question
        # With the client's key, what a retry must repeat: memory refuses the key reused
        # for another request (REQUEST_ID_REUSED) instead of replaying the wrong turn.
        fingerprint = ask_request.request_fingerprint(request) if request.request_id else ""

        # Memory first (with the collection alongside): nothing is generated for a
        # conversation we cannot read, or may not.
        s = self._b.settings
        use_summary = s.summary_enabled and not request.summary_disabled
        history, info, room = await self._history_and_collection(
            request, params, caller, deadline, use_summary, claim, fingerprint
        )
        if room.stored is not None:
            # A retry of a turn already stored (the client never saw its answer): that
            # turn, with no LLM call, no search and no write.
            check_replay(room.stored, question)
            for event in replay_events(replayed(room.stored), stream=stream):
                yield event
            return
        if isinstance(info, BaseException):
            raise info
        limits = room.limits
        # What the caller sent that memory would not store: refused now, naming the Ask's
        # field, not after the answer is paid for (memory_limits.py).
        memory_limits.check_ask(
            request,
            question,
            stored_template(request.system_prompt, request.user_instructions),
            limits,
        )
        turns = recent_turns(history.turns, params.interaction_size)
        context_fields = ask_request.context_fields(request, info)
        ask_request.check_searchable(request, info, params.context_size)
        # Checked before any LLM work; None: hits go to the prompt as they are.
        expand_budget = chunks.budget_for(request, info, self._b.settings)
        options = Options.resolve(
            request, request.llm_model, info.generative, s, prefix="", model_field="llm_model"
        )
        # Every provider and model of the chain (the request's, else the collection's)
        # before any LLM call, the question rewrite's included.
        await self._b.models.check_choices(
            options, caller, min(time_left(deadline), 2.0), prefix=""
        )
        spent = Spent()  # tokens and upstream calls, of the rewrite and the answer
        traces = TurnTraces(self._b.settings.ask_trace_bytes)

        # The semantic answer cache (ask_cache.py): never with a conversation.
        semantic = self._semantic.plan(request, info, options)
        if semantic.policy.mode.reads:
            cached = await self._semantic.lookup(request, semantic, caller, time_left(deadline))
            # On the Ask's server span (current here): a hit makes no call to show it.
            trace.get_current_span().set_attribute(CACHE_HIT, cached is not None)
            if cached is not None:
                for event in replay(cached, stream=stream):
                    yield event
                return

        window, model_name, provider = await self._b.models.context_window(
            options,
            s.context_windows,
            s.default_context_window,
            caller,
            min(time_left(deadline), 2.0),
        )
        tokenizer = self._b.tokenizers.for_model(provider, model_name)
        answer_tokens = min(options.max_tokens or s.answer_reserve_tokens, window // 2)
        # A collection's blank one (retrieval stores it as given) counts as unset: the
        # generation service refuses a blank message, and the caller cannot fix it.
        collection_prompt = info.generative.system_prompt
        system_prompt = request.system_prompt or (
            collection_prompt if collection_prompt.strip() else ""
        )
        system_prompt = system_prompt or DEFAULT_SYSTEM_PROMPT
        instructions = request.user_instructions or info.generative.user_instructions

        def fitted(hits: list[ContextHit]) -> Awaitable[AskPrompt]:
            return history_budget.fit(
                tokenizer,
                system_prompt=system_prompt,
                summary=history.summary,
                turns=turns,
                hits=hits,
                context_fields=context_fields,
                user_instructions=instructions,
                question=question,
                context_window=window,
                answer_tokens=answer_tokens,
                max_chars=s.max_rendered_prompt_chars,
            )

        rewrite = condense.unchanged()
        if turns and params.rewrite:
            # The turns the budget holds before any context is retrieved.
            before = await fitted([])
            recent = turns[len(turns) - before.turns_used :] if before.turns_used else []
            if recent:
                rewrite = await self._rewrite(
                    recent, question, options, caller, deadline, spent, traces
                )
        rewritten = rewrite.query

        hits: list[ret_pb.Hit] = []
        if params.context_size > 0:
            # A question may be longer than a search takes; its beginning is what an
            # embedder, keyword search or reranker weighs anyway. Cut here, so the rerank
            # query (the question, when the caller names none) is cut with it: a longer one
            # was refused naming rerank.query, a field the caller never set.
            query = rewrite.search_text(question)[: self._b.settings.ask_search_text_chars]
            search = ask_request.search_request(request, info, query, params.context_size)
            rerank.apply(search, request, info, query)
            step = traces.start(
                mem_pb.STEP_RETRIEVAL,
                {"collection": request.collection, "query": query, "limit": params.context_size},
            )
            try:
                found = await self._within(
                    deadline,
                    self._b.clients.retrieval.search(search, caller, time_left(deadline)),
                )
            except InvalidArgument as err:
                raise ask_request.question_refused(err, request) from None
            hits = list(found.hits)
            step.done(
                {
                    "hits": ask_traces.hits(hits),
                    "embed_ms": found.embed_ms,
                    "query_ms": found.query_ms,
                }
            )
        yield gw_pb.StreamAskResponse(
            context=gw_pb.AskContextEvent(
                hits=hits,
                rewritten_query=rewritten,
                conversation_id=request.conversation_id,
                rewrite_method=condense.method_value(rewrite),
                rewrite_rejection=condense.rejection_value(rewrite),
            )
        )

        expansion: chunks.Expansion | None = None
        if expand_budget is not None:
            expansion = await self._within(
                deadline,
                chunks.expand(
                    hits,
                    info,
                    request.expand_context,
                    budget=expand_budget,
                    text_fields=context_fields,
                    retrieval=self._b.clients.retrieval,
                    caller=caller,
                    timeout=time_left(deadline),
                ),
            )
            context_hits = expansion.context_hits()
        else:
            context_hits = [
                ContextHit(hit.id, json_format.MessageToDict(hit.properties)) for hit in hits
            ]
        prompt = await fitted(context_hits)
        history.note_left_out(prompt)
        _note_trimming(prompt, model_name, window)

        generating = traces.start(
            mem_pb.STEP_GENERATION,
            {
                "provider": options.provider,
                "model": options.model,
                "messages": ask_traces.messages(prompt.messages),
            },
        )
        first_token_ms: float | None = None
        # At most STREAM_BUFFERED_DELTAS wait for the client: a slow reader holds the
        # generation back instead of the whole answer queueing here (was unbounded).
        deltas = DeltaBuffer(s.stream_buffered_deltas)
        generation = asyncio.ensure_future(
            self._within(
                deadline,
                complete(
                    self._b.clients.generation,
                    caller,
                    options,
                    prompt.messages,
                    timeout=_generation_timeout(deadline),
                    emit=deltas.put if stream else None,
                    # As the gateway's own limit on the prompt (history_budget) names it.
                    prompt_field="llm_question",
                    max_tokens_field=options.max_tokens_field,
                ),
            )
        )
        generation.add_done_callback(lambda _: deltas.close())
        try:
            while (delta := await deltas.get()) is not None:
                if first_token_ms is None:
                    first_token_ms = generating.since_start_ms()
                yield gw_pb.StreamAskResponse(delta=delta)
            result = await generation
        except ServiceError as err:
            # The error tells the whole Ask's upstream calls, as an answer would: the
            # rewrite's too, all of them charged.
            if made := spent.upstream_calls + upstream_calls(err.metadata):
                err.metadata[UPSTREAM_CALLS] = str(made)
            raise
        finally:
            generation.cancel()
        spent.add(result)
        answer = result.result
        generated: dict[str, object] = {
            "provider": result.provider,
            "model": result.model,
            "fallback_index": result.fallback_index,
            "finish_reason": result.finish_reason,
            "usage": ask_traces.usage(result.usage),
            "answer_chars": len(answer),
            "streamed": stream,
        }
        if first_token_ms is not None:
            generated["first_token_ms"] = first_token_ms
        generating.done(generated)
        used = [(hit.id, hit.properties) for hit in context_hits[: prompt.hits_used]]
        # Off the event loop: even bounded (max_citation_checks), a long answer over long
        # hits is CPU work other tenants' calls should not wait behind.
        verified = await asyncio.to_thread(
            citations.verify,
            answer,
            used,
            context_fields,
            s.citation_min_support,
            s.max_citation_checks,
        )
        checked = citations.to_event(verified)
        if expansion is not None:
            chunks.annotate(checked.citations, expansion)
        if stream:
            yield gw_pb.StreamAskResponse(citations=checked)
        response = gw_pb.AskResponse(
            answer=answer,
            citations=checked.citations,
            sentences=checked.sentences,
            citation_coverage=checked.citation_coverage,
            dropped_citations=checked.dropped_citations,
            rewrite_method=condense.method_value(rewrite),
            rewrite_rejection=condense.rejection_value(rewrite),
            hits=hits,
            usage=spent.usage,
            upstream_calls=spent.upstream_calls,
            conversation_id=request.conversation_id,
            rewritten_query=rewritten,
            trimmed=gw_pb.Trimmed(history_turns=prompt.trimmed_turns, hits=prompt.trimmed_hits),
            model=result.model or options.model,
            provider=result.provider,
            fallback_index=result.fallback_index,
            summary_used=prompt.summary_used,
            history_tokens=prompt.history_tokens,
            history_budget_tokens=prompt.history_budget,
            attempts=result.attempts,
            wait_time=result.wait_time,
        )
        if expansion is not None:
            response.passages.extend(expansion.protos(prompt.hits_used))
        if request.debug:
            response.prompt.extend(prompt.messages)
        if request.conversation_id or request.new_conversation:
            template = stored_template(system_prompt, instructions)
            stored_answer, cut = fit_utf8(response.answer, self._b.settings.ask_answer_bytes)
            interaction = mem_pb.CreateInteractionRequest(
                input=question,
                prompt_template=template,
                response=stored_answer,
                origin=response.model or "unknown",
                additional_info=additional_info(
                    hits, list(checked.citations), spent.usage, rewritten, response
                ),
                traces=traces.traces,
            )
            if cut:
                interaction.additional_info["response_truncated"] = True
            if limits is not None:
                # What the gateway made (answer, traces, additional_info…) cut to what
                # memory accepts: it never fails the Ask.
                memory_limits.fit_turn(interaction, limits)
            stored = await self._within(
                deadline,
                store_turn(
                    self._b.clients.memory,
                    request.conversation_id,
                    interaction,
                    caller,
                    deadline,
                    limits,
                    request.request_id,
                    fingerprint,
                ),
            )
            if request.request_id and (
                stored.input != interaction.input or stored.response != interaction.response
            ):
                # Another attempt with the client's key stored its turn first (both ran
                # at once): that turn is the answer, as a later retry would get it.
                check_replay(stored, question)
                paid = replayed(stored)
                paid.usage.CopyFrom(spent.usage)
                paid.upstream_calls = spent.upstream_calls
                yield gw_pb.StreamAskResponse(answer=paid)
                return
            response.conversation_id = stored.conversation_id
            response.interaction_id = stored.interaction_id
            if use_summary:
                # After the turn is stored, in the background: never delays the answer.
                history_budget.fold_after_turn(
                    self._b.summarizer,
                    history,
                    turns,
                    prompt,
                    (response.interaction_id, question, response.answer),
                    conversation_id=response.conversation_id,
                    caller=caller,
                    options=options,
                    window=window,
                    tokenizer=tokenizer,
                    interaction_size=params.interaction_size,
                    summary_tokens=s.summary_max_tokens + 16,
                )
        # An Ask that searched and found nothing is not kept: its answer has no source
        # to check at lookup (retrieval serves such an entry as built from no object), so
        # the first import that gives the question a match would not reach it, and the
        # tenant would get "no results" for the TTL. One that searched for nothing
        # (context_size 0) depends on no object and is kept.
        found_nothing = not hits and params.context_size > 0
        if (
            semantic.policy.mode.writes
            and not found_nothing
            and generation_cache.worth_keeping(response.answer, result.finish_reason)
        ):
            # Queued: made in the background, after the answer is out. Its sources: every
            # hit it shows, and the chunks its prompt held.
            sources = list(hits)
            if expansion is not None:
                for passage in expansion.passages[: prompt.hits_used]:
                    sources.extend(passage.chunks)
            self._semantic.store(request, semantic, response, sources, caller)
        yield gw_pb.StreamAskResponse(answer=response)

    # -- the steps -------------------------------------------------------------------------
    async def _within(self, deadline: float, awaitable: Awaitable[T]) -> T:
        try:
            async with asyncio.timeout_at(deadline):
                return await awaitable
        except TimeoutError:
            raise _deadline(None) from None

    async def _history_and_collection(
        self,
        request: AskLike,
        params: ask_request.AskParams,
        caller: Caller,
        deadline: float,
        use_summary: bool,
        claim: Claim | None,
        fingerprint: str,
    ) -> tuple[History, CollectionInfo | BaseException, Room]:
        """The conversation's newest turns (newest first) and the collection, read at once;
        and, for a turn that will be stored, whether memory has room for it (the owner's
        storage, or its conversation count for a new conversation): a full owner is
        refused here, before any LLM call, not after paying for an answer memory refuses.
        Third: memory's answer (turns.Room): what it accepts in a turn, when it says, and
        the turn already stored under the client's request_id. A collection that cannot
        be read is returned, not raised: a stored turn is replayed without it."""
        memory = self._b.clients.memory
        info_call = self._b.catalog.get(request.collection, caller, time_left(deadline))
        history_call = (
            read_history(
                memory,
                request.conversation_id,
                params.interaction_size,
                self._b.settings.ask_history_chars,
                caller,
                deadline,
                use_summary=use_summary,
            )
            if request.conversation_id
            else _value(History([]))
        )
        room_call = (
            check_room(
                memory,
                request.conversation_id,
                params.question,
                stored_template(request.system_prompt, request.user_instructions),
                caller,
                deadline,
                request.request_id,
                claim,
                fingerprint,
            )
            if request.conversation_id or request.new_conversation
            else _value(Room())
        )
        history, room, info = await self._within(
            deadline, asyncio.gather(history_call, room_call, info_call, return_exceptions=True)
        )
        # The memory errors first: a conversation we may not read says so before anything,
        # then a turn memory would not store.
        for item in (history, room):
            if isinstance(item, BaseException):
                raise item
        assert isinstance(history, History) and isinstance(room, Room)
        if room.stored is None and isinstance(info, BaseException):
            raise info
        assert isinstance(info, CollectionInfo | BaseException)
        return history, info, room

    async def _rewrite(
        self,
        turns: list[Turn],
        question: str,
        options: Options,
        caller: Caller,
        deadline: float,
        spent: Spent,
        traces: TurnTraces,
    ) -> condense.Rewrite:
        """The standalone query: the model's rewrite if it passes the checks in
        ``condense``, else the deterministic fallback (also when the call fails).

        The primary (provider, model) alone, never the fallback chain: a failed rewrite
        already has a fallback that costs no call and no time (the deterministic query),
        the prompt is shaped for the primary model, and time a chain spent here would be
        taken from the answer, which does fall back."""
        prompt = condense.rewrite_prompt(options.provider, options.model, turns, question)
        rewrite_options = options.primary(0.0, prompt.max_tokens)
        step = traces.start(
            mem_pb.STEP_QUESTION_REWRITE,
            {
                "question": question,
                "model": options.model,
                "messages": ask_traces.messages(prompt.messages),
            },
        )
        try:
            result = await self._within(
                deadline,
                complete(
                    self._b.clients.generation,
                    caller,
                    rewrite_options,
                    prompt.messages,
                    timeout=_generation_timeout(deadline),
                ),
            )
        except DeadlineExceeded:
            raise
        except ServiceError as err:
            # Retrieval with the fallback query beats no answer; the answer call will
            # report a generation outage on its own.
            log.warning(
                "question rewriting failed",
                # A gateway setting that chose an unknown model or provider: the operator's
                # to fix (clients.generation.choice_refused).
                extra={"reason": err.reason, "setting": err.metadata.get("setting", "")},
            )
            spent.upstream_calls += upstream_calls(err.metadata)  # made, and charged
            rewrite = condense.failed(question, turns)
            step.done({"query": rewrite.query, "method": rewrite.method.value, "error": err.reason})
            return rewrite
        spent.add(result)
        rewrite = condense.decide(result.result, question, turns)
        if rewrite.rejection is not None:
            log.info(
                "model rewrite rejected; using the fallback query",
                extra={"rejection": rewrite.rejection.value},
            )
        step.done(
            {
                "query": rewrite.query,
                "method": rewrite.method.value,
                "rejection": rewrite.rejection.value if rewrite.rejection else "",
                "reply": result.result,
                "usage": ask_traces.usage(result.usage),
            }
        )
        return rewrite


def _generation_timeout(deadline: float) -> float:
    """The deadline of a generation call of the turn (the rewrite, the answer): the turn's
    time left and generation's own margin (``call_deadline.outlasting``), so its upstream
    request ends with the turn, whose own timer (``_within``, the whole turn's in ``ask``)
    then reports. The turn ends ``upstream_margin`` before the chassis' cut of the call
    (``ask_request.budget``), as a generative search's hits do; given the turn's time
    left alone, a generation call begun late in the turn ended its request its own short
    margin before the deadline, after that cut, and the caller read its generic message."""
    return outlasting(time_left(deadline))


async def _value(value: T) -> T:
    return value


def _note_trimming(prompt: AskPrompt, model: str, window: int) -> None:
    for what, count in (("history_turns", prompt.trimmed_turns), ("hits", prompt.trimmed_hits)):
        if count:
            TRIMMED.labels(what).inc(count)
    if prompt.notes:
        log.info(
            "prompt trimmed to fit the context window",
            extra={"model": model, "window": window, "trimmed": prompt.notes},
        )


# How early before the turn's deadline a step may end out of time for that deadline: the
# services behind the gateway stop a little before the time they are given (retrieval's
# embeddings and rerank, call_deadline.upstream_margin, a tenth of it, at most 0.4 s) so
# their answer still arrives. (Generation's calls are given the turn's time plus that
# margin, ``_generation_timeout``: theirs end with the turn.)
_EARLY_SECONDS = 0.5


def _named(err: DeadlineExceeded, request: AskLike, budget: float, deadline: float) -> ServiceError:
    """A step that ran out of time (its own timer, or a service behind it said so, e.g.
    UPSTREAM_TIMEOUT) as the turn's budget ran out: when the request's ``timeout`` set
    that budget, the failure names the field (reason and metadata kept), as the whole
    turn's timer does; otherwise ``err`` as it is."""
    field = ask_request.budget_field(request, budget)
    left = deadline - asyncio.get_running_loop().time()
    if field is None or err.field or left > min(_EARLY_SECONDS, budget * 0.2):
        return err
    return DeadlineExceeded(
        f"{field} of {seconds_text(budget)} s ran out: {err.message}",
        field=field,
        reason=err.reason,
        metadata=err.metadata,
        retry_after=err.retry_after,
    )


def _deadline(budget: float | None, field: str | None = None) -> DeadlineExceeded:
    """``field``: the request field that set ``budget`` (``timeout``), named as any error
    about a client's field is; None when the call's deadline (or the default) set it."""
    detail = f" of {seconds_text(budget)} s" if budget is not None else ""
    if field is not None:
        return DeadlineExceeded(
            f"the question was not answered within {field}{detail}: a longer one leaves "
            "the search and the model time",
            field=field,
        )
    return DeadlineExceeded(f"the question was not answered within its timeout{detail}")
