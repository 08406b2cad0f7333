"""A conversation's turns in memory: the recent ones read before an answer, the new one
stored after it (in one idempotent write, so a failure leaves nothing half stored)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from google.protobuf import json_format, struct_pb2

from services.common.call_deadline import context_past_the_call
from services.common.control_chars import without_controls
from services.common.errors import Aborted, InvalidArgument, ServiceError
from services.common.well_known import struct
from services.gateway import ask_traces
from services.gateway.clients import Caller, MemoryClient
from services.gateway.conversation import Turn
from services.gateway.deadline import time_left
from services.gateway.memory_limits import fit_name, fit_request_id
from services.gateway.prompting import PROMPT_TEMPLATE, AskPrompt

_NAME_CHARS = 120
# Largest page memory serves.
_MEMORY_PAGE = 100


@dataclass
class History:
    """The newest turns read (newest first, memory's order), and how many of the
    ``size`` asked for were left out because they would not fit the character budget.

    With the summary in use, only turns newer than the ones it covers; ``summary`` is then
    its text, and ``older_unsummarised`` says that turns older than those read are
    covered by no summary yet (a fold is due)."""

    turns: list[Turn]
    left_out: int = 0
    conversation: mem_pb.Conversation | None = None
    summary: str = ""
    older_unsummarised: bool = False

    @property
    def summary_on(self) -> bool:
        return self.conversation is not None and not self.conversation.summary_disabled

    def note_left_out(self, prompt: AskPrompt) -> None:
        """Counts the turns left unread as trimmed, beside those the prompt dropped."""
        if self.left_out:
            prompt.trimmed_turns += self.left_out
            prompt.notes.append(f"left the {self.left_out} oldest turn(s) of history unread")


async def read_history(
    memory: MemoryClient,
    conversation_id: str,
    size: int,
    max_chars: int,
    caller: Caller,
    deadline: float,
    *,
    use_summary: bool = True,
) -> History:
    """The conversation's ``size`` newest turns, as many as fit ``max_chars`` characters
    (questions and answers): a conversation of huge turns leaves its older ones out rather
    than fail the question (the prompt keeps fewer still, to fit the model's window).
    With ``use_summary`` and the conversation's summary on, turns the summary covers are
    not history (the summary stands for them); one turn more than ``size`` is read to
    learn whether older ones still wait for the summary. Reading the conversation first
    makes a missing or foreign one NOT_FOUND even when ``size`` is 0."""

    async def newest(wanted: int) -> list[Turn]:
        turns: list[Turn] = []
        token = ""
        chars = 0
        while len(turns) < wanted:
            page = await memory.list_interactions(
                mem_pb.ListInteractionsRequest(
                    conversation_id=conversation_id,
                    page_size=min(wanted - len(turns), _MEMORY_PAGE),
                    page_token=token,
                ),
                caller,
                time_left(deadline),
            )
            for i in page.interactions:
                chars += len(i.input) + len(i.response)
                if chars > max_chars:
                    return turns
                turns.append(Turn(i.input, i.response, i.interaction_id))
            token = page.next_page_token
            if not token or not page.interactions:
                break
        return turns[:wanted]

    get = memory.get_conversation(conversation_id, caller, time_left(deadline))
    if size == 0:
        return History([], conversation=await get)
    conversation, read = await asyncio.gather(get, newest(size + 1))
    on = use_summary and not conversation.summary_disabled
    through = conversation.summary.through_interaction_id if on else ""
    kept: list[Turn] = []
    boundary = older = False
    for turn in read:
        if through and turn.interaction_id <= through:
            boundary = True
            break
        if len(kept) == size:
            older = True
            break
        kept.append(turn)
    else:
        older = conversation.interaction_count > len(read)
    left_out = 0 if boundary else max(0, min(size, conversation.interaction_count) - len(kept))
    return History(
        kept,
        left_out,
        conversation,
        summary=conversation.summary.text if on else "",
        older_unsummarised=on and older,
    )


def stored_template(system_prompt: str, user_instructions: str) -> str:
    """The prompt_template a turn is stored with."""
    return PROMPT_TEMPLATE.replace("{system_prompt}", system_prompt).replace(
        "{user_instructions}", user_instructions
    )


@dataclass(frozen=True)
class Room:
    """Memory's answer to CheckStorage: what it accepts in a turn (None from a memory
    service that does not say), and the turn already stored with the Ask's request_id
    (None: none, or a memory service that does not look)."""

    limits: mem_pb.InteractionLimits | None = None
    stored: mem_pb.Interaction | None = None


class RequestIdInUse(Aborted):
    """ABORTED / REQUEST_ID_IN_USE with RetryInfo: another attempt with the Ask's
    request_id is running and has not stored its turn; a retry once it has replays it."""

    def __init__(self) -> None:
        super().__init__(
            "request_id is in use by another attempt of this turn, still running; retry "
            "once it has ended to get its answer",
            field="request_id",
            reason="REQUEST_ID_IN_USE",
            retry_after=IN_USE_RETRY_SECONDS,
        )


# The RetryInfo of REQUEST_ID_IN_USE: an answer takes seconds; the retry replays it.
IN_USE_RETRY_SECONDS = 1.0


@dataclass
class Claim:
    """An Ask attempt's reservation of its request_id in memory (CheckStorage's
    claim_token): attempts at once with one key pay for one answer."""

    request_id: str
    token: str
    # Seconds past the Ask's deadline it lasts: its clean-up's time.
    grace: float
    # The longest reservation asked for (memory_max_claim_seconds, at most memory's
    # max_claim_seconds).
    max_seconds: int
    # Asked of memory (it may hold the key from then on).
    sent: bool = False

    @classmethod
    def of(cls, request_id: str, grace: float, max_seconds: int) -> Claim | None:
        return cls(request_id, uuid.uuid4().hex, grace, max_seconds) if request_id else None

    def seconds(self, deadline: float) -> int:
        """Until the attempt may still store its turn: then a gateway gone without a word
        (killed) no longer holds the key."""
        return max(1, min(self.max_seconds, math.ceil(time_left(deadline) + self.grace)))

    def release(self, memory: MemoryClient, caller: Caller) -> None:
        """The attempt failed, its turn not stored: the key is let go in the background
        (the Ask may be ending, cancelled), so the client's retry runs at once. Memory
        lets it go only if this attempt still holds it (a stored turn ended the hold)."""
        if self.sent:
            _in_background(self._release(memory, caller))

    async def _release(self, memory: MemoryClient, caller: Caller) -> None:
        with contextlib.suppress(ServiceError, asyncio.CancelledError):
            await memory.check_storage(
                "",
                0,
                caller,
                self.grace,
                request_id=self.request_id,
                claim_token=self.token,
                release_claim=True,
            )


async def check_room(
    memory: MemoryClient,
    conversation_id: str,
    question: str,
    request_template: str,
    caller: Caller,
    deadline: float,
    request_id: str = "",
    claim: Claim | None = None,
    fingerprint: str = "",
) -> Room:
    """Before any LLM call: RESOURCE_EXHAUSTED, as storing the turn would be, when memory
    has no room for it in ``conversation_id`` (or in a new conversation when empty);
    else what memory accepts in a turn (None from a memory service that does not say).

    The turn is counted as far as it is known now, its question and its prompt template
    (``request_template``: the request's own system prompt and instructions; a
    collection's defaults would only add), so an owner memory would refuse is refused
    here; one with room for less than the whole turn still is when it is stored. A
    best-effort guard: the write checks again, atomically (docs/gateway.md).

    With the client's ``request_id``: the turn memory already stored with it, if any (its
    retry needs no room; one in another conversation than ``conversation_id``, or stored
    for another request than the Ask's ``fingerprint``, is memory's REQUEST_ID_REUSED).
    With ``claim``, the key is reserved for this attempt:
    RequestIdInUse when another attempt holds it (a memory service older than claims
    reserves nothing: attempts at once then both answer, one turn stored)."""
    known = mem_pb.Interaction(input=question, prompt_template=request_template).ByteSize()
    if claim is not None:
        claim.sent = True
    answer = await memory.check_storage(
        conversation_id,
        known,
        caller,
        time_left(deadline),
        request_id=request_id,
        request_fingerprint=fingerprint if request_id else "",
        claim_token=claim.token if claim else "",
        claim_seconds=claim.seconds(deadline) if claim else 0,
    )
    if answer is None:
        return Room()
    if answer.request_id_in_use:
        raise RequestIdInUse()
    return Room(
        answer.limits if answer.HasField("limits") else None,
        answer.interaction if request_id and answer.HasField("interaction") else None,
    )


async def store_turn(
    memory: MemoryClient,
    conversation_id: str,
    interaction: mem_pb.CreateInteractionRequest,
    caller: Caller,
    deadline: float,
    limits: mem_pb.InteractionLimits | None = None,
    client_request_id: str = "",
    fingerprint: str = "",
) -> mem_pb.Interaction:
    """Store ``interaction`` in ``conversation_id``, or, when that is empty, in a new
    conversation named after its input, made by memory with the turn in one atomic step
    (CreateInteraction's new_conversation): no conversation exists unless its first turn
    was stored, so a failed or cut Ask needs no clean-up. The interaction as memory holds
    it. With memory's ``limits``, the name and the request_id the gateway makes are cut to
    them; the client's ``client_request_id`` (checked before any LLM call) is sent as it
    is, and the interaction returned may then be another attempt's, stored first with it
    (memory answers a write with the turn already stored with the key, which could be
    this attempt's own write retried by the channel, so the caller compares what it
    holds). The Ask's ``fingerprint`` goes with the client's key: memory keeps it with
    the turn, and refuses the key with another (REQUEST_ID_REUSED), where this attempt's
    answer, whatever it is, would not tell."""
    if conversation_id:
        interaction.conversation_id = conversation_id
    else:
        interaction.new_conversation.name = fit_name(title(interaction.input), limits)
    # Retries (channel policy) of this write land once.
    interaction.request_id = client_request_id or fit_request_id(uuid.uuid4().hex, limits)
    # The gateway's own key names its one write: it is the fingerprint too (memory need
    # not digest the turn's content, traces and all, to compare a channel's retry).
    interaction.request_fingerprint = fingerprint if client_request_id else interaction.request_id
    return await memory.create_interaction(interaction, caller, time_left(deadline))


# The Asks' background work (a failed attempt letting its request_id go), kept referenced
# until it ends.
_BACKGROUND: set[asyncio.Future[None]] = set()


async def cleaned_up() -> None:
    """Returns once the background work started so far on this event loop (and any it
    started) has ended. (Another loop's, left pending when it closed, never ends.)"""
    loop = asyncio.get_running_loop()
    while running := {task for task in _BACKGROUND if task.get_loop() is loop}:
        await asyncio.wait(running)


def _in_background(work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
    """``work`` runs to its end whoever awaited it (a reference is kept meanwhile), past
    the call that started it: the call's deadline (its cutoff) is not its own."""
    task = asyncio.create_task(work, context=context_past_the_call())
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task


def title(question: str) -> str:
    # The question is free text and kept as asked; the name made from it is a display
    # string, which memory refuses with control characters (an ESC or NUL that split()
    # leaves would fail the Ask naming new_conversation.name, a field it never sent).
    line = " ".join(without_controls(question).split())
    return line if len(line) <= _NAME_CHARS else line[: _NAME_CHARS - 1] + "…"


def additional_info(
    hits: list[ret_pb.Hit],
    citations: list[gw_pb.Citation],
    usage: gen_pb.Usage,
    rewritten: str,
    response: gw_pb.AskResponse,
) -> struct_pb2.Struct:
    """What a reader of the stored turn may want beside the answer."""
    data: dict[str, Any] = {
        "hit_ids": [hit.id for hit in hits],
        "citations": [{"number": c.number, "id": c.id} for c in citations],
        "usage": ask_traces.usage(usage),
        "rewritten_query": rewritten,
        "rewrite_method": gw_pb.RewriteMethod.Name(response.rewrite_method),
        "citation_coverage": response.citation_coverage,
        "trimmed": {
            "history_turns": response.trimmed.history_turns,
            "hits": response.trimmed.hits,
        },
    }
    return struct(data)


# What reading an entry of a stored additional_info raises when it no longer has the shape
# ``additional_info`` gave it (a citation without its number: KeyError).
_UNREADABLE = (TypeError, ValueError, AttributeError, LookupError)


def replayed(stored: mem_pb.Interaction) -> gw_pb.AskResponse:
    """The answer of an Ask whose turn ``stored`` was already stored under its
    request_id: what the stored interaction holds (``additional_info`` as written by
    ``additional_info`` above, unless a client changed it since: what does not read as
    such is left out)."""
    info = json_format.MessageToDict(stored.additional_info)
    response = gw_pb.AskResponse(
        answer=stored.response,
        conversation_id=stored.conversation_id,
        interaction_id=stored.interaction_id,
        model=stored.origin,
        replayed=True,
    )
    with contextlib.suppress(*_UNREADABLE):
        response.hits.extend(ret_pb.Hit(id=str(i)) for i in info.get("hit_ids", []))
    with contextlib.suppress(*_UNREADABLE):
        response.citations.extend(
            gw_pb.Citation(number=int(c["number"]), id=str(c["id"]))
            for c in info.get("citations", [])
        )
    with contextlib.suppress(*_UNREADABLE):
        response.rewritten_query = str(info.get("rewritten_query", ""))
    with contextlib.suppress(*_UNREADABLE):
        response.rewrite_method = gw_pb.RewriteMethod.Value(str(info.get("rewrite_method")))  # type: ignore[assignment]
    with contextlib.suppress(*_UNREADABLE):
        response.citation_coverage = float(info.get("citation_coverage", 0.0))
    with contextlib.suppress(*_UNREADABLE):
        trimmed = info.get("trimmed", {})
        response.trimmed.history_turns = int(trimmed.get("history_turns", 0))
        response.trimmed.hits = int(trimmed.get("hits", 0))
    return response


def replay_events(answer: gw_pb.AskResponse, *, stream: bool) -> list[gw_pb.StreamAskResponse]:
    """A replayed turn as the events of an Ask: its context, its answer as one delta and
    its citations when streaming, the answer."""
    events = [
        gw_pb.StreamAskResponse(
            context=gw_pb.AskContextEvent(
                hits=answer.hits,
                rewritten_query=answer.rewritten_query,
                conversation_id=answer.conversation_id,
                rewrite_method=answer.rewrite_method,
            )
        )
    ]
    if stream:
        if answer.answer:
            events.append(gw_pb.StreamAskResponse(delta=answer.answer))
        events.append(
            gw_pb.StreamAskResponse(
                citations=gw_pb.CitationsEvent(
                    citations=answer.citations, citation_coverage=answer.citation_coverage
                )
            )
        )
    events.append(gw_pb.StreamAskResponse(answer=answer))
    return events


def check_replay(stored: mem_pb.Interaction, question: str) -> None:
    """INVALID_ARGUMENT / REQUEST_ID_REUSED when the turn stored under the request's
    request_id asked another question (memory has checked the conversation, and the
    request's fingerprint when the turn has one: a turn stored before memory kept them,
    or by a memory service older than them, is compared by its question alone)."""
    if stored.input != question:
        raise InvalidArgument(
            "request_id was already used for a turn with another llm_question; a retry "
            "sends the same question, a new turn a new request_id",
            field="request_id",
            reason="REQUEST_ID_REUSED",
        )
