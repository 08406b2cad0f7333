"""The rolling summary: turns that fall out of the history a prompt can carry are folded
into a summary of the conversation by the LLM, after the turn is stored.

Folding never delays an answer: ``Summarizer.submit`` puts a job on a bounded queue
(``background.WorkQueue``, shared fairly by tenants; full: the job is dropped and counted;
the next turn of that conversation submits another) and a few workers fold in the
background. Stopping the gateway drains the queue (``drain``, within
``summary_drain_timeout``).

One replica folds one conversation at a time (a job submitted while its conversation's
fold runs is held back, then queued when that fold ends, also once the gateway is
stopping: the drain runs it; held back, it is not counted in ``SUMMARY_QUEUE``). Several
replicas may fold one conversation at once: memory's UpdateConversationSummary is a
compare-and-set on the interaction the summary covers up to, so the slower writer gets
ABORTED and drops its fold (the summary it would have replaced already moved on).

A fold takes the oldest pending turns first, at most ``summary_max_read_turns`` of them:
memory counts every turn up to the last one folded as summarised, so a turn it skipped
would never be in the summary (``_unsummarised``). It reads those turns alone (memory's
ListInteractions oldest first, after the summary's end), so a long backlog costs each
fold no more reads than a short one. Mid-upgrade (a memory older than those fields, or
replicas of two versions refusing each other's page tokens) a fold reads as before them:
newest first from the newest turn, counted in ``SUMMARY_READ_FALLBACKS``.

Before each LLM call the fold asks memory whether the summary it will write fits the
owner's storage (CheckStorage with ``summary``: the accounting UpdateConversationSummary
applies), so an owner whose memory is full costs no call; the text is cut to memory's
``max_summary_bytes`` when memory says it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb

from services.common.call_deadline import context_past_the_call
from services.common.errors import ServiceError
from services.common.turn_size import fit_utf8
from services.gateway.background import WorkQueue
from services.gateway.clients import Caller, GenerationClient, MemoryClient
from services.gateway.conversation import SYSTEM, USER, Turn
from services.gateway.generator import Options, complete
from services.gateway.metrics import (
    SUMMARY_FOLDS,
    SUMMARY_QUEUE,
    SUMMARY_READ_FALLBACKS,
    SUMMARY_TOKENS,
)
from services.gateway.settings import GatewaySettings
from services.gateway.tokens import Tokenizer

log = logging.getLogger("gensearch.gateway.summary")

_PAGE = 100
_OVERHEAD = 16  # message framing and the prompt's fixed lines
_MESSAGE_OVERHEAD = 4
# UTF-8 bytes a summary token is counted as when checking room before the call: the
# summary may be summary_max_tokens long.
_SUMMARY_BYTES_PER_TOKEN = 4

SUMMARY_SYSTEM_PROMPT = (
    "You keep a running summary of a conversation between a user and an assistant. "
    "Merge the new turns into the current summary. Keep facts, names, numbers, decisions, "
    "open questions and the user's stated preferences; drop pleasantries and repetition. "
    "Write plain prose of at most {words} words. Reply with the updated summary alone."
)


@dataclass(frozen=True)
class FoldJob:
    """Fold the turns of ``conversation_id`` that the next prompt will not carry and no
    summary covers yet: all but the newest ``keep_turns`` that fit ``keep_tokens`` (the
    last prompt's history budget less room for the summary) and the conversation's
    max_turns. Decided in the background from what is stored then, the new turn
    included, so the next prompt finds the turns it leaves out already summarised."""

    caller: Caller
    conversation_id: str
    keep_turns: int
    keep_tokens: int
    options: Options
    window: int
    tokenizer: Tokenizer


def fold_messages(summary: str, turns: Sequence[Turn], words: int) -> list[gen_pb.Message]:
    transcript = "\n".join(f"User: {t.question}\nAssistant: {t.answer}" for t in turns)
    return [
        gen_pb.Message(role=SYSTEM, content=SUMMARY_SYSTEM_PROMPT.format(words=words)),
        gen_pb.Message(
            role=USER,
            content=(
                f"Current summary:\n{summary or '(none yet)'}\n\n"
                f"New turns, oldest first:\n{transcript}\n\nUpdated summary:"
            ),
        ),
    ]


# Memory's answers that leave a fold nothing to write into, each a normal race with the
# owner (the conversation deleted or expired, its summary turned off, the owner's storage
# filled meanwhile): counted ``skipped`` with an INFO line, not ``failed`` with a WARNING
# as if memory had been away.
_SKIPPED = {
    "CONVERSATION_NOT_FOUND": "the conversation is gone",
    "SUMMARY_DISABLED": "the conversation's summary is off",
    "OWNER_STORAGE_FULL": "the owner's memory is full",
}


def _skip(reason: str) -> bool:
    """Counts and says a fold skipped when ``reason`` (memory's ``ServiceError``'s, or the
    fold's own read) is one of ``_SKIPPED``; False otherwise (the caller counts its
    failure). Every memory refusal reaches the fold as a ``ServiceError`` (the client maps
    each gRPC status), so none is logged with a traceback."""
    why = _SKIPPED.get(reason)
    if why is None:
        return False
    SUMMARY_FOLDS.labels("skipped").inc()
    log.info(f"summary fold skipped: {why}", extra={"reason": reason})
    return True


# Memory's refusal of a page token (services/memory/page_token.py). Mid-upgrade, replicas
# of two versions serve one list's pages: an older one refuses a token of a list read
# oldest first or after a position (a list it does not know), a newer one refuses an older
# one's token for such a list. A plain listing (newest first, no position) has the same
# token in both versions, so the fold reads that way instead (``_unsummarised``).
_TOKEN_REFUSED = "INVALID_PAGE_TOKEN"


class Summarizer:
    def __init__(
        self, memory: MemoryClient, generation: GenerationClient, settings: GatewaySettings
    ) -> None:
        self._memory = memory
        self._generation = generation
        self._s = settings
        self._jobs = WorkQueue(
            self._run,
            name="summary",
            size=settings.summary_queue_size,
            per_tenant=settings.summary_queue_per_tenant,
            workers=settings.summary_workers,
            drain_timeout=settings.summary_drain_timeout,
        )
        # Conversations with a job queued, and with one running. A turn stored while its
        # conversation's fold runs leaves its job in ``_again`` (the newest one, with the
        # context of its call) until that fold ends: two folds of one conversation at once
        # read the same summary, and one of them always loses the compare-and-set, its
        # LLM calls spent (and charged to the tenant's quota) for nothing.
        self._pending: set[tuple[str, str, str]] = set()
        self._running: set[tuple[str, str, str]] = set()
        self._again: dict[tuple[str, str, str], tuple[FoldJob, contextvars.Context]] = {}

    def submit(self, job: FoldJob) -> bool:
        """Queues ``job`` unless one for the same conversation waits in the queue already
        (not yet started: it will read the state this job would); while one of that
        conversation runs, ``job`` waits for its end, then is queued (one fold of a
        conversation at a time). False (and counted) when the queue is full or the gateway
        is stopping."""
        key = (job.caller.tenant, job.caller.user, job.conversation_id)
        if key in self._pending:
            return True
        if key in self._running and not self._jobs.closed:
            self._again[key] = (job, context_past_the_call())
            return True
        if self._jobs.closed:
            SUMMARY_FOLDS.labels("dropped").inc()
            return False
        return self._queue(key, job, self._jobs.submit)

    def _queue(
        self, key: tuple[str, str, str], job: FoldJob, put: Callable[[str, FoldJob], bool]
    ) -> bool:
        """``job`` put on the queue by ``put`` (``WorkQueue.submit``, or ``requeue`` for a
        job held back), counted dropped when refused."""
        if not put(job.caller.tenant, job):
            SUMMARY_FOLDS.labels("dropped").inc()
            log.warning(
                "summary queue full (or the tenant's share of it): fold dropped "
                "(the next turn will ask again)"
            )
            return False
        self._pending.add(key)
        SUMMARY_QUEUE.set(self._jobs.waiting())
        return True

    async def drain(self) -> None:
        """Stop taking jobs, finish the queued ones within the drain timeout, stop."""
        await self._jobs.drain()

    async def _run(self, got: FoldJob) -> None:
        # Queued no more: a turn stored from now on leaves its own job for after this one,
        # which sees it (one that only waited in the queue needs none: this job reads the
        # state now).
        key = (got.caller.tenant, got.caller.user, got.conversation_id)
        self._pending.discard(key)
        self._running.add(key)
        try:
            await asyncio.wait_for(self.fold(got), self._s.summary_timeout)
        except TimeoutError:
            SUMMARY_FOLDS.labels("failed").inc()
            log.warning("summary fold timed out")
        except ServiceError as err:  # memory or generation answered so, or could not serve
            if not _skip(err.reason):
                SUMMARY_FOLDS.labels("failed").inc()
                log.warning("summary fold failed", extra={"reason": err.reason})
        except Exception:  # a bug: counted here; the queue's worker survives it either way
            SUMMARY_FOLDS.labels("failed").inc()
            log.exception("summary fold failed")
        finally:
            self._running.discard(key)
            again = self._again.pop(key, None)
            if again is not None and self._cut_by_the_drain():
                # The drain's timeout cancelled this fold (or the drain is over): its
                # workers are stopping, and a job queued now would wait forever, counted
                # neither folded nor dropped, SUMMARY_QUEUE never back to 0.
                SUMMARY_FOLDS.labels("dropped").inc()
                log.warning("summary fold dropped: the gateway stopped before it could run")
            elif again is not None:
                # In its own call's context, as if submitted now; queued also when the
                # gateway began stopping meanwhile: the drain runs it (this job is not
                # done yet, so the drain waits for it), as it would have had it been
                # queued at once.
                again[1].run(self._queue, key, again[0], self._jobs.requeue)
            SUMMARY_QUEUE.set(self._jobs.waiting())

    def _cut_by_the_drain(self) -> bool:
        """Whether the running fold ends because the drain gave up on it: its task is
        being cancelled (only the drain's timeout cancels a worker's job), or the drain is
        over already."""
        task = asyncio.current_task()
        return self._jobs.stopped or (task is not None and task.cancelling() > 0)

    async def fold(self, job: FoldJob) -> None:
        """Folds the job's pending turns, in batches that fit the model, oldest first."""
        timeout = self._s.summary_timeout
        # Deleted or expired meanwhile (skipped), or memory away (failed): counted in _run.
        conversation = await self._memory.get_conversation(job.conversation_id, job.caller, timeout)
        if conversation.summary_disabled:
            # Turned off since the turn that queued this job (queued only with it on).
            _skip("SUMMARY_DISABLED")
            return
        summary = conversation.summary.text
        through = conversation.summary.through_interaction_id
        keep = job.keep_turns
        if conversation.max_turns:
            keep = min(keep, conversation.max_turns)
        pending = await self._unsummarised(job, through, keep)
        words = max(50, self._s.summary_max_tokens * 3 // 4)
        # The primary (provider, model) alone, not the turn's fallback chain: batches are
        # sized to the primary's window (a fallback model's may be smaller, and the
        # generation service refuses a chain whose pair cannot hold the prompt), and a
        # failed fold costs nothing but time: the next turn folds what is still pending.
        options = job.options.primary(0.0, self._s.summary_max_tokens)
        while pending:
            batch = await self._batch(job, summary, pending)
            pending = pending[len(batch) :]
            room = await self._room(job, timeout)
            if room is None:
                return
            try:
                result = await complete(
                    self._generation,
                    job.caller,
                    options,
                    fold_messages(summary, batch, words),
                    timeout=timeout,
                )
            except ServiceError as err:
                SUMMARY_FOLDS.labels("failed").inc()
                log.warning(
                    "summary fold: generation failed",
                    # A gateway setting that chose an unknown model or provider: the
                    # operator's to fix (clients.generation.choice_refused).
                    extra={"reason": err.reason, "setting": err.metadata.get("setting", "")},
                )
                return
            SUMMARY_TOKENS.labels("prompt").inc(result.usage.prompt_tokens)
            SUMMARY_TOKENS.labels("completion").inc(result.usage.completion_tokens)
            text = result.result.strip()
            if not text:
                SUMMARY_FOLDS.labels("failed").inc()
                log.warning("summary fold: the model answered nothing")
                return
            if room.HasField("limits"):  # what memory stores, as it says (else as before)
                text = fit_utf8(text, room.limits.max_summary_bytes)[0]
            request = mem_pb.UpdateConversationSummaryRequest(
                conversation_id=job.conversation_id,
                text=text,
                expected_through_interaction_id=through,
                through_interaction_id=batch[-1].interaction_id,
                summarised_turns=len(batch),
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                # Read before the turns were: a turn deleted since (its words may be in
                # this summary) makes the update ABORTED, the fold dropped.
                expected_unfolded_deletions=conversation.unfolded_deletions,
            )
            try:
                await self._memory.update_conversation_summary(request, job.caller, timeout)
            except ServiceError as err:
                # ABORTED: another fold (another replica) got there first; its summary
                # stands, and the next turn folds whatever is still pending.
                if _skip(err.reason):
                    return
                outcome = "conflict" if err.reason == "SUMMARY_CHANGED" else "failed"
                SUMMARY_FOLDS.labels(outcome).inc()
                if outcome == "failed":
                    log.warning("summary fold: not stored", extra={"reason": err.reason})
                return
            SUMMARY_FOLDS.labels("folded").inc()
            summary, through = text, batch[-1].interaction_id

    async def _room(self, job: FoldJob, timeout: float) -> mem_pb.CheckStorageResponse | None:
        """Before a fold's LLM call: whether memory has room for the summary it will
        write (as long as ``summary_max_tokens`` allows, counted as UpdateConversationSummary
        counts it: its growth over the current one). None, counted as ``skipped``, when the
        owner's storage is full; memory's answer otherwise (an empty one from a memory
        without CheckStorage). A guard: the write still decides."""
        expected = self._s.summary_max_tokens * _SUMMARY_BYTES_PER_TOKEN
        try:
            checked = await self._memory.check_storage(
                job.conversation_id, expected, job.caller, timeout, summary=True
            )
        except ServiceError as err:
            if not _skip(err.reason):
                raise  # memory away: the fold fails, counted in _run
            return None
        return checked if checked is not None else mem_pb.CheckStorageResponse()

    async def _unsummarised(self, job: FoldJob, through: str, keep: int) -> list[Turn]:
        """The oldest ``summary_max_read_turns`` turns newer than ``through`` that the next
        prompt will not carry, oldest first: the newest ``keep`` turns stay if they fit
        ``job.keep_tokens``; once one does not, it and every older one are pending.

        The oldest pending turns, since UpdateConversationSummary marks every turn up to
        the last one folded as covered (a fold that took the newest ones counted the older
        turns it never read as summarised). Bounded reads find them, however long the
        backlog: the newest turns after ``through``, newest first, down to the first one
        the prompt does not keep, read with up to ``summary_max_read_turns`` more (at most
        ``keep`` + 1 + that many turns: when they reach ``through``, they hold every
        pending turn, the usual case, one read); else the turns right after ``through``,
        oldest first, up to that one and at most ``summary_max_read_turns`` of them. A
        fold used to read the conversation newest first down to ``through``: every turn of
        a backlog, on every turn's fold until it caught up (a long one could outlast
        ``summary_timeout`` and never advance). A memory that does not list oldest first
        (older than the field, mid-upgrade) gets that walk still (``_walk_down``), and so
        does one whose replicas are of two versions and refuse each other's page tokens
        (``_TOKEN_REFUSED``): the fold then reads as before the fields, from the start
        (counted, an INFO line: a normal step of an upgrade, not a failure)."""
        try:
            newest, pending = await self._newest_pending(job, through, keep)
            if newest is None:
                return []
            if pending is None:
                pending = await self._oldest_pending(job, through, newest)
                if pending is None:
                    SUMMARY_READ_FALLBACKS.labels("order_ignored").inc()
        except ServiceError as err:
            if err.reason != _TOKEN_REFUSED:
                raise
            SUMMARY_READ_FALLBACKS.labels("page_token_refused").inc()
            log.info(
                "summary fold: memory refused the page token of another version (replicas "
                "of two versions, mid-upgrade); reading newest first, as before",
                extra={"reason": err.reason},
            )
            # Refused again (replicas with different page-token secrets, say): a failure.
            newest, pending = await self._newest_pending(job, through, keep, plain=True)
            if newest is None:
                return []
        if pending is None:
            pending = await self._walk_down(job, through, newest)
        return pending

    async def _list(
        self, job: FoldJob, token: str, after: str, size: int = _PAGE, oldest_first: bool = False
    ) -> mem_pb.ListInteractionsResponse:
        return await self._memory.list_interactions(
            mem_pb.ListInteractionsRequest(
                conversation_id=job.conversation_id,
                page_size=size,
                page_token=token,
                oldest_first=oldest_first,
                after_interaction_id=after,
            ),
            job.caller,
            self._s.summary_timeout,
        )

    async def _newest_pending(
        self, job: FoldJob, through: str, keep: int, plain: bool = False
    ) -> tuple[str | None, list[Turn] | None]:
        """The id of the newest turn newer than ``through`` that the next prompt will not
        carry (None: every such turn is kept), newest first the first turn past the
        ``keep`` newest or past ``job.keep_tokens``; and, when the read that found it
        reached ``through`` (or the first turn), the oldest ``summary_max_read_turns``
        pending turns it holds, oldest first (None: more lie beyond it). ``plain``: read
        as a memory older than after_interaction_id lists, from the newest turn."""
        limit = self._s.summary_max_read_turns
        kept = used = 0
        token = ""
        while True:
            # The turns still to keep, the first not kept, and as many pending as a fold
            # takes: a backlog that short is read whole here.
            size = min(_PAGE, keep - kept + 1 + limit)
            page = await self._list(job, token, "" if plain else through, size)
            turns = [i for i in page.interactions if not through or i.interaction_id > through]
            # A memory without the bound lists on past ``through``: that is its end too.
            whole = not page.next_page_token or len(turns) < len(page.interactions)
            counts = await job.tokenizer.count([t for i in turns for t in (i.input, i.response)])
            for n, i in enumerate(turns):
                cost = counts[2 * n] + counts[2 * n + 1] + 2 * _MESSAGE_OVERHEAD
                if kept < keep and used + cost <= job.keep_tokens:
                    kept += 1
                    used += cost
                    continue
                if not whole:
                    return i.interaction_id, None
                oldest = [Turn(t.input, t.response, t.interaction_id) for t in reversed(turns[n:])]
                return i.interaction_id, oldest[:limit]
            if whole or not turns:
                return None, None
            token = page.next_page_token

    async def _oldest_pending(self, job: FoldJob, through: str, newest: str) -> list[Turn] | None:
        """The turns after ``through`` up to ``newest``, oldest first, at most
        ``summary_max_read_turns``: read oldest first from ``through`` on, no further
        (None when memory lists newest first only)."""
        limit = self._s.summary_max_read_turns
        pending: list[Turn] = []
        token = ""
        while len(pending) < limit:
            page = await self._list(
                job, token, through, min(_PAGE, limit - len(pending)), oldest_first=True
            )
            if not page.oldest_first:
                return None
            for i in page.interactions:
                if i.interaction_id > newest:  # a turn the prompt keeps, and all after it
                    return pending
                pending.append(Turn(i.input, i.response, i.interaction_id))
            token = page.next_page_token
            if not token or not page.interactions:
                break
        return pending

    async def _walk_down(self, job: FoldJob, through: str, newest: str) -> list[Turn]:
        """``_oldest_pending`` for a memory that lists newest first only: newest first down
        to ``through`` (or the conversation's first turn), holding the oldest
        ``summary_max_read_turns`` turns up to ``newest``. A plain listing, with no
        position: the one whose page tokens replicas of either version take."""
        oldest: deque[Turn] = deque(maxlen=self._s.summary_max_read_turns)
        token = ""
        while True:
            page = await self._list(job, token, "")
            for i in page.interactions:
                if through and i.interaction_id <= through:
                    return list(reversed(oldest))
                if i.interaction_id <= newest:
                    # Newest to oldest: a full deque drops its newest, leaving the oldest.
                    oldest.append(Turn(i.input, i.response, i.interaction_id))
            token = page.next_page_token
            if not token or not page.interactions:
                return list(reversed(oldest))

    async def _batch(self, job: FoldJob, summary: str, pending: list[Turn]) -> list[Turn]:
        """The oldest pending turns whose fold prompt fits the model's window (at least
        one, cut to fit if it alone is too long)."""
        budget = job.window - self._s.summary_max_tokens - _OVERHEAD
        fixed = sum(await job.tokenizer.count([SUMMARY_SYSTEM_PROMPT, summary]))
        room = budget - fixed
        candidates = pending[: self._s.summary_max_batch_turns]
        counts = await job.tokenizer.count(
            [t for turn in candidates for t in (turn.question, turn.answer)]
        )
        batch: list[Turn] = []
        used = 0
        for i, turn in enumerate(candidates):
            cost = counts[2 * i] + counts[2 * i + 1] + 4
            if batch and used + cost > room:
                break
            if not batch and cost > room:
                # One turn larger than the model's window: its start, within the room.
                chars = max(200, room * 3)
                turn = Turn(
                    turn.question[: chars // 2], turn.answer[: chars // 2], turn.interaction_id
                )
            batch.append(turn)
            used += cost
        return batch
