"""Keeping the search index in step with Redis, and searching it.

Redis is the truth; the index (``search_index.py``) is derived from it and may lag:

- Writes to the index run *after* the Redis write, in background tasks: they never delay a
  turn nor fail it. A job that fails (index unreachable, model error) is put in an outbox
  in Redis (``store.outbox_*``) and retried every ``search_retry_seconds`` by every
  replica until it succeeds; a retried "index" job reads the interaction from Redis again,
  so one deleted meanwhile is not brought back.
- The outbox is bounded: at most ``outbox_max_jobs`` jobs, ``outbox_jobs_per_tenant`` of
  one tenant. A job past either is dropped (counted, never an error: the turn is stored
  already), and left for the sweep: a dropped "index" job notes its owner, whose recent
  turns the next sweep indexes; a dropped removal is what the sweep does for every entry
  Redis no longer holds. Not backpressure: indexing must never delay a turn, and a
  tenant writing faster than the index takes its turns would only wait longer and longer.
- Every hit is re-read from Redis before it is returned, as the caller: a turn deleted or
  expired (retention) but still in the index, or one indexed after its conversation was
  deleted, is never returned, and its entries are removed from the index on the way.

- An "index" job is in the outbox before its turn is acknowledged (``stored``), due a
  retry period later, and taken out once the index holds the turn: a replica killed
  (``kill -9``) between the Redis write and the index write leaves it there, for the next
  drain of any replica. It was lost with the replica before, and the turn never found by
  search if the index knew none of its owner's turns (the sweep walks known owners only).
- A deletion's drop job is in the outbox before the deletion runs (``dropping``), and
  taken out once the index dropped the entries: a replica killed between the deletion
  and the drop (the call acknowledged or not, the deletion's marks removed or not) leaves
  it for the next drain. It was only in the replica's memory before, and the entries
  stayed until the sweep (hourly by default). A drain runs a drop job only once what it
  names is gone from Redis: one written ahead of a deletion that never ran (the call
  failed first) drops nothing. Every deletion goes this one way: the calls, the resume
  of an interrupted DeleteConversation (``deletions.py``) and a search hit found gone;
  the resume and the hit sent theirs from memory only before, lost with a replica killed
  before it ran.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.call_deadline import context_past_the_call
from services.common.errors import NotFound, ServiceError, Unavailable
from services.common.logs import ThrottledWarning
from services.common.tasks import cancel_and_wait
from services.memory.metrics import OUTBOX_FULL, SEARCH_JOBS_DROPPED, TENANT_SHARE
from services.memory.search_index import InteractionIndex
from services.memory.store import MISSED_BATCH, MemoryStore, Owner

log = logging.getLogger("gensearch.memory.indexer")

T = TypeVar("T")

_INDEX = "index"
_DROP_INTERACTION = "drop-interaction"
_DROP_CONVERSATION = "drop-conversation"
_DRAIN_BATCH = 100
_SWEEP_PAGE = 256
# A page of turns read while catching up (the store's page budget, in bytes).
_CATCH_UP_PAGE_BYTES = 4 * 1024 * 1024
# How long ``close`` lets jobs under way finish before it cancels what still runs.
CLOSE_WAIT_SECONDS = 5.0
# Index jobs running at once in one replica; beyond, a job goes straight to the outbox
# (memory stays bounded when turns come faster than the model embeds them).
MAX_RUNNING_JOBS = 256
# A dropped job is logged at most once per this many seconds (a flood drops thousands;
# the metric counts every one).
_DROP_LOG_SECONDS = 60.0
# A job the outbox refuses is not kept for a drain: one written ahead still runs from this
# replica's memory when a running slot is free (``_spawn``; lost with the replica), else
# it is dropped, as is one a drain would retry; the sweep catches up.
_DROPPED_FULL = (
    "search index job not kept in the outbox: it is full "
    "(GENSEARCH_MEMORY_SEARCH_OUTBOX_MAX_JOBS); the sweep catches up what it loses"
)
_DROPPED_SHARE = (
    "search index job not kept in the outbox: its tenant holds its share "
    "(GENSEARCH_MEMORY_SEARCH_OUTBOX_JOBS_PER_TENANT); the sweep catches up what it loses"
)
# How many candidates to rank per result asked for: room for stale entries the Redis check
# drops.
_CANDIDATES_PER_HIT = 2


class Indexer:
    def __init__(
        self,
        store: MemoryStore,
        index: InteractionIndex,
        retry_seconds: float,
        sweep_seconds: float = 3600.0,
        jobs_per_tenant: int = 0,
        *,
        outbox_max_jobs: int = 100_000,
        outbox_jobs_per_tenant: int = 0,
        close_wait_seconds: float = CLOSE_WAIT_SECONDS,
    ):
        """``jobs_per_tenant``: the most of one tenant's jobs running at once (0: no bound
        but ``MAX_RUNNING_JOBS``). ``outbox_max_jobs``: the most jobs waiting in the outbox
        (all replicas'), ``outbox_jobs_per_tenant`` of one tenant (0: no share)."""
        self._store = store
        self._index = index
        self._retry = retry_seconds
        # The index down (its Qdrant server unreachable, say): one WARNING per outage
        # (again every 30 s while it lasts) and one INFO line when it answers again. Each
        # stored turn, each retry and each search logged a WARNING of its own before.
        # Named by where the index is: the embedded engine's directory (under
        # GENSEARCH_DATA_DIR) or the Qdrant server's setting. The embedded case named the
        # server's setting, empty there. (The path's own % signs are not the error's.)
        where = index.where.replace("%", "%%")
        self._outage = ThrottledWarning(
            log,
            "search index unavailable (%s): turns wait in the outbox and SearchInteractions "
            f"answers UNAVAILABLE until it answers ({where})",
            recovery="search index reachable again",
        )
        # A retried "index" job reads its turn from memory's own Redis first: that read
        # failing is Redis's outage (a Redis Cluster node down, say, the outbox's node
        # up), not the index's. It was logged as the line above, naming the Qdrant setting.
        self._turn_unreadable = ThrottledWarning(
            log,
            "search index jobs cannot read their turns (%s): they wait in the outbox until "
            "Redis answers (GENSEARCH_MEMORY_REDIS_URL)",
            recovery="search index jobs read their turns again",
        )
        # Memory's own Redis down: the outbox cannot be read, one WARNING per outage (again
        # every 30 s while it lasts), as the store's own line; it was one every retry period
        # (5 s by default) beside the store's.
        self._unreadable = ThrottledWarning(
            log,
            "search outbox unreadable (%s): stored turns wait to be indexed until Redis "
            "answers (GENSEARCH_MEMORY_REDIS_URL)",
            recovery="search outbox readable again",
        )
        self._sweep_every = sweep_seconds
        self._tasks: set[asyncio.Task[Any]] = set()
        # Tenant -> its jobs running now. Without a share, a tenant writing turns faster
        # than the index takes them held every running job, and every other tenant's new
        # turns went to the outbox behind its backlog (drained a batch per retry period):
        # not found by search for as long as that backlog lasted.
        self._per_tenant = jobs_per_tenant
        self._running: dict[str, int] = {}
        self._running_total = 0
        # Written-ahead jobs running here (outbox member -> how many): a drain finding one
        # due (embedding slower than a retry period, under load) moves it on instead of
        # running it a second time beside itself.
        self._ahead: dict[str, int] = {}
        # The outbox was one queue with no bound: a tenant writing turns faster than the
        # index took them grew it without end (Redis memory), and filled it for everyone.
        self._outbox_max = outbox_max_jobs
        self._outbox_share = outbox_jobs_per_tenant
        self._drop_logged = -_DROP_LOG_SECONDS
        self._drainer: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._close_wait = close_wait_seconds
        self._closed = False

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._drainer = loop.create_task(self._drain_forever())
        self._sweeper = loop.create_task(self._sweep_forever())

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for task in (self._drainer, self._sweeper):
            if task is not None:
                await cancel_and_wait(task)
        # Jobs under way finish (they are usually short); what fails waits in the outbox.
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self._close_wait)
        # What still runs is cancelled, not left running: an outbox write may wait a slot
        # move out (GENSEARCH_MEMORY_SLOT_MOVE_WAIT_SECONDS) and a job chains index work
        # and outbox writes. Left pending, such a task ran on against the closed index and
        # Redis client, logged "search index job lost" (an ERROR, for a job already in the
        # outbox) and held its running slot. A job cancelled here is safe where it was
        # written ahead: a drain of any replica runs it; one not written ahead (the outbox
        # refused it, or Redis did not take it) is left to the sweep, as a killed replica's.
        ended = await asyncio.gather(
            *(cancel_and_wait(task) for task in list(self._tasks)), return_exceptions=True
        )
        for err in ended:
            if isinstance(err, Exception):  # a job's own failure, as it ended meanwhile
                log.warning("search index job failed at close", extra={"error": _describe(err)})
        await self._index.close()

    async def idle(self) -> None:
        """Waits for the jobs started so far (tests, shutdown)."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    # -- jobs ---------------------------------------------------------------------------
    def write_ahead(self, owner: Owner) -> WriteAhead:
        """A write ahead of ``owner``'s next turn's index job, for the store to start
        beside the turn's own write (``MemoryStore.create_interaction``'s ``beside``),
        then given to ``stored`` (or to ``abandon`` when the turn was not written)."""
        return WriteAhead(self, owner)

    def _start_job_ahead(self, job: list[str], reserve: bool = False) -> asyncio.Task[bool | None]:
        return self._awaited(self._write_job_ahead(job, reserve))

    def _outliving(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``work`` as a task of its own, held until done (``idle``, ``close``), run past
        the call that started it: that call's deadline (its cutoff, which a task copies
        with its creator's context) is not the job's, and the store's wait for a slot
        move would give up at once once it had passed."""
        return self._held(
            asyncio.get_running_loop().create_task(work, context=context_past_the_call())
        )

    def _awaited(self, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """``work`` the call that starts it awaits before it answers (a write ahead), as a
        task of its own (shielded by the call: a caller gone away still leaves it to end),
        held until done, within that call's deadline: its wait for a slot move
        (``_redis_waiting``) must not keep the caller past it."""
        return self._held(asyncio.get_running_loop().create_task(work))

    def _held(self, task: asyncio.Task[T]) -> asyncio.Task[T]:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stored(
        self, owner: Owner, interaction: pb.Interaction, ahead: WriteAhead | None = None
    ) -> None:
        """Indexes a turn just stored, in the background, its job written ahead to the
        outbox first (awaited: the caller acknowledges the turn after this). The write
        ahead runs to its end even if the caller goes away (shielded); the job then waits
        for a drain instead of running here.

        ``ahead``: the job already written beside the turn's write (one round trip less
        before the acknowledgement), used when it names this turn; else (the turn written
        under another id, or a request_id's earlier turn) it is taken out again and the
        job written now. A turn write slower than half a retry period writes the job again:
        the job, due a retry period after it was sent, may have been drained meanwhile
        (any replica's, on a clock ahead of this one's) before the turn existed, and a
        drain dropping the job of a turn it does not find, the turn would be left without
        one. ``ahead`` is settled here: a later ``abandon`` of it (the call failed after
        the turn was stored) leaves the stored turn's job alone.

        Written again only when the first write was queued (True): one Redis did not take
        (None) put nothing in the outbox, so no drain can have taken it out. A second try
        could succeed, but it came only after a slow failure (a fast one was never tried
        again): the one that had already waited out a slot move or a socket timeout. It
        waited that out a second time before the acknowledgement and logged a second
        WARNING. The job runs from this replica's memory all the same (``_spawn``, queued
        for retry if it fails); only a replica killed before it ran loses it, as any job
        Redis did not take ahead."""
        job = [_INDEX, owner.tenant, owner.user, interaction.interaction_id]
        if ahead is not None and ahead.names(interaction.interaction_id):
            ahead.settled = True  # the stored turn's job: never abandoned after this
            assert ahead.task is not None
            queued = await asyncio.shield(ahead.task)
            if queued is True and time.monotonic() - ahead.started > self._retry / 2:
                queued = await asyncio.shield(self._start_job_ahead(job))
        else:
            if ahead is not None:
                self.abandon(ahead)
                ahead.settled = True  # taken out once: not again by a later abandon
            queued = await asyncio.shield(self._start_job_ahead(job))
        self._spawn(job, interaction, queued)

    def abandon(self, ahead: WriteAhead) -> None:
        """The turn ``ahead`` wrote the job of was not written (under its id): the job is
        taken out of the outbox, in the background, once its write is done (left there, a
        drain would find no turn and drop it; meanwhile it would hold a place of the
        outbox's bounds). Nothing for one ``stored`` took for its turn (``settled``): the
        turn is stored, and its job (running, or waiting in the outbox) is its index's."""
        if ahead.task is None or ahead.settled:
            return
        job, task = ahead.job, ahead.task

        async def take_out() -> None:
            if await task:
                await self._done_ahead(job)

        self._outliving(take_out())

    async def dropping(
        self,
        owner: Owner,
        deletion: Callable[[], Awaitable[object]],
        *,
        cid: str = "",
        iid: str = "",
        reserve: bool = True,
    ) -> object:
        """Runs ``deletion`` (of the conversation ``cid`` or of the turn ``iid``) with its
        drop job written to the outbox first, and answers what it answered: the one way
        every deletion sends the index its drop (DeleteConversation, DeleteInteraction,
        the resume of an interrupted deletion, a search hit found gone). A replica killed
        at any point after the deletion ran leaves the job to a drain, which drops the
        entries only if what it names is gone (``_apply``). ``deletion`` answering False
        (the resume's: nothing it deleted) leaves the job to that drain; raising NotFound
        runs the drop all the same (what it names is gone). Neither takes the job out as
        its own: it may be a racing deletion's as well, whose replica was killed before its
        drop ran.
        ``reserve``: the job may use the outbox's reserve for deletions (past its bounds,
        up to twice its most jobs); a search hit found gone does not (it frees nothing)."""
        ahead = await self._deleting(owner, cid=cid, iid=iid, reserve=reserve)
        try:
            done = await deletion()
        except NotFound:
            # Gone, whoever deleted it: the drop runs here all the same (of nothing, for an
            # id that never was). The job may be a racing deletion's as well (a client's
            # retry on another replica that found this call's job there, deleted, and was
            # killed before its drop ran): taken out as this call's own, it was lost, and
            # the index kept the deleted turn until the sweep.
            await self._deleted(ahead)
            raise
        if done is False:
            # The resume's: nothing it deleted (done already, or a conversation never
            # deleted). The job stays for a drain, which drops the entries only if what it
            # names is gone: it may be a racing deletion's too (a client's retry that found
            # it there, finished the deletion and was killed before its drop). Taken out
            # here as the resume's own, it was lost, and the index kept every turn.
            return done
        await self._deleted(ahead)
        return done

    def drop_gone(self, owner: Owner, iid: str) -> None:
        """Drops the entries of the turn ``iid``, found gone from Redis (a search hit), in
        the background, through ``dropping`` (a deletion already done)."""

        async def gone() -> bool:
            return True

        self._outliving(self.dropping(owner, gone, iid=iid, reserve=False))

    async def _deleting(
        self, owner: Owner, *, cid: str = "", iid: str = "", reserve: bool
    ) -> DropAhead:
        """Writes the drop job of a deletion to the outbox, due a retry period from now,
        before the deletion runs (awaited, one round trip). A deletion that fails otherwise
        (it may have run in part) leaves the job to a drain."""
        op, ident = (_DROP_CONVERSATION, cid) if cid else (_DROP_INTERACTION, iid)
        job = [op, owner.tenant, owner.user, ident]
        started = time.monotonic()
        # Shielded: a call cancelled meanwhile still knows whether the job is there.
        queued = await asyncio.shield(self._start_job_ahead(job, reserve))
        return DropAhead(job, queued, started, reserve)

    async def _write_job_ahead(self, job: list[str], reserve: bool) -> bool | None:
        """Puts ``job`` (a turn's index job, or a deletion's drop) in the outbox, due a
        retry period from now: True queued (there already too, for a drop job that of a
        deletion killed before its drop), False refused by its bounds (counted, its owner
        noted for the sweep), None when Redis did not take it (the job runs all the same,
        as before write-ahead). ``reserve``: a deletion's drop, which may use the outbox's
        reserve."""
        due = time.time_ns() // 1_000_000 + int(self._retry * 1000)
        try:
            return await self._add(json.dumps(job), job, due, deletion=reserve) > 0
        except ServiceError as err:
            log.warning(
                "search index job not written ahead: a crash before it runs loses it",
                extra={"job": job[0], "error": _describe(err)},
            )
            return None

    async def _deleted(self, ahead: DropAhead) -> None:
        """The deletion ``ahead`` was written for is done: its drop runs here, in the
        background, and is taken out of the outbox once the index did it. A deletion
        slower than half a retry period writes the job again (awaited): a drain may have
        found what it names still there, before the deletion ran, and taken it out
        (``stored``'s reason, for a turn not written yet). Only a job that was queued: one
        Redis did not take was in no outbox to take out of (``stored`` says why it is not
        tried again)."""
        queued = ahead.queued
        if queued is True and time.monotonic() - ahead.started > self._retry / 2:
            queued = await asyncio.shield(self._start_job_ahead(ahead.job, ahead.reserve))
        self._spawn(ahead.job, None, queued)

    def _spawn(
        self, job: list[str], interaction: pb.Interaction | None = None, ahead: bool | None = None
    ) -> None:
        """``ahead``: what ``_write_job_ahead`` did with ``job`` (None: not written ahead)."""
        tenant = job[1]
        running = self._running.get(tenant, 0)
        # Jobs running, not those on their way to the outbox (a Redis write each).
        if self._running_total >= MAX_RUNNING_JOBS or (
            self._per_tenant and running >= self._per_tenant
        ):
            if ahead is not None:
                return  # in the outbox already, or refused by it (counted once)
            coroutine = self._defer(job)
        else:
            coroutine = self._run(job, interaction, ahead)
            self._running[tenant] = running + 1
            self._running_total += 1
        self._outliving(coroutine)

    async def _run(
        self, job: list[str], interaction: pb.Interaction | None, ahead: bool | None = None
    ) -> None:
        member = json.dumps(job)
        if ahead:
            self._ahead[member] = self._ahead.get(member, 0) + 1
        try:
            await self._apply(job, interaction)
        except Exception as err:
            self._failed(err, job)
            # Queued for retry (its write-ahead entry only moves its due time); one the
            # outbox refused ahead was counted and its owner noted for the sweep already.
            if ahead is not False:
                await self._defer(job)
        else:
            if ahead:
                await self._done_ahead(job)
        finally:
            if ahead:
                if self._ahead[member] > 1:
                    self._ahead[member] -= 1
                else:
                    del self._ahead[member]
            self._running_total -= 1
            left = self._running.get(job[1], 0) - 1
            if left > 0:
                self._running[job[1]] = left
            else:
                self._running.pop(job[1], None)  # no entry left per tenant ever seen

    async def _done_ahead(self, job: list[str]) -> None:
        """Takes a job done out of the outbox. Failing that, a drain does it once more
        (the index's writes are idempotent: point ids derive from the turn's)."""
        try:
            await self._store.outbox_remove(json.dumps(job), job[1])
        except ServiceError as err:
            log.warning(
                "search index job done but left in the outbox: it runs again",
                extra={"job": job[0], "error": _describe(err)},
            )

    async def _defer(self, job: list[str]) -> None:
        """Puts ``job`` in the outbox, for the retry loop."""
        due = time.time_ns() // 1_000_000 + int(self._retry * 1000)
        try:
            await self._queue(json.dumps(job), job, due)
        except ServiceError as err:
            log.error(
                "search index job lost: neither the index nor Redis took it",
                extra={"job": job[0], "error": _describe(err)},
            )

    async def _queue(self, member: str, job: list[str], due_ms: int) -> bool:
        """Queues ``job`` (``member`` its JSON) under the outbox's bounds; past them it is
        dropped, counted, for the sweep (False)."""
        return await self._add(member, job, due_ms) > 0

    async def _add(
        self, member: str, job: list[str], due_ms: int, *, deletion: bool = False
    ) -> int:
        """``_queue``, answering as ``store.outbox_add``: 1 queued (there already: only
        its due time moved), 0 or -1 refused (counted, logged). ``deletion``: a drop
        written ahead of its deletion, which has a reserve past the bounds."""
        queued = await self._store.outbox_add(
            member,
            due_ms,
            Owner(job[1], job[2]),
            max_jobs=self._outbox_max,
            per_tenant=self._outbox_share,
            index=job[0] == _INDEX,
            deletion=deletion,
        )
        if queued > 0:
            return queued
        reason = OUTBOX_FULL if queued == 0 else TENANT_SHARE
        SEARCH_JOBS_DROPPED.labels(reason).inc()
        now = time.monotonic()
        if now - self._drop_logged >= _DROP_LOG_SECONDS:
            self._drop_logged = now
            # Which bound, by its setting: a tenant's share full is not the outbox full.
            log.warning(
                _DROPPED_FULL if queued == 0 else _DROPPED_SHARE,
                extra={"job": job[0], "reason": reason},
            )
        return queued

    def _failed(self, err: Exception, job: list[str]) -> None:
        """Logs a failed job's outage: Redis's when its turn could not be read, else the
        index's."""
        if isinstance(err, _TurnUnreadable):
            cause = err.__cause__ or err
            self._turn_unreadable(
                cause, extra={"job": job[0], "error": _describe(cause)}, node=err.node
            )
        else:
            self._outage(err, extra={"job": job[0], "error": _describe(err)})

    async def _apply(
        self, job: list[str], interaction: pb.Interaction | None, *, drained: bool = False
    ) -> None:
        """``drained``: a job taken from the outbox, a drop of which runs only once what it
        names is gone from Redis (``dropping`` writes it before the deletion runs)."""
        op, tenant, user, ident = job
        owner = Owner(tenant, user)
        if drained and op != _INDEX and await self._still_there(owner, op, ident):
            return  # its deletion never ran (the call failed first): nothing to drop
        if op == _INDEX:
            if interaction is None:
                # A retry: what Redis holds now (nothing if the turn is gone).
                try:
                    found = (await self._store.get_interactions(owner, [ident]))[0]
                except Exception as err:
                    raise _TurnUnreadable(self._store.node(owner)) from err
                # Per Redis node: a turn read on another Cluster master is not the end of
                # the dead one's outage (each such read logged it, and the warning again).
                self._store.answered(self._turn_unreadable, owner)
                if found is None:
                    return
                interaction = found
            await self._index.add(owner, interaction)
        elif op == _DROP_INTERACTION:
            await self._index.remove_interaction(owner, ident)
        elif op == _DROP_CONVERSATION:
            await self._index.remove_conversation(owner, ident)
        self._outage.recovered()

    async def _still_there(self, owner: Owner, op: str, ident: str) -> bool:
        """Whether the conversation or turn a drop job names is still the owner's in Redis."""
        try:
            if op == _DROP_INTERACTION:
                return (await self._store.interactions_exist(owner, [ident]))[0]
            try:
                await self._store.get_conversation(owner, ident, counted=False)
            except NotFound:
                return False
            return True
        except Exception as err:
            raise _TurnUnreadable(self._store.node(owner)) from err

    async def drain(self) -> int:
        """Tries the outbox's due jobs once; how many succeeded."""
        await self._adopt_legacy()
        done = 0
        now = time.time_ns() // 1_000_000
        for member in await self._store.outbox_due(now, _DRAIN_BATCH):
            job = _parse(member)
            if job is None:  # not ours: drop it
                log.error("bad outbox entry dropped")
                await self._store.outbox_remove(member, "")
                continue
            if member in self._ahead:  # running here: due again a period later
                await self._queue(member, job, now + int(self._retry * 1000))
                continue
            try:
                await self._apply(job, None, drained=True)
            except Exception as err:
                self._failed(err, job)
                # Already queued: only its due time moves, never refused.
                await self._queue(member, job, now + int(self._retry * 1000))
                continue
            await self._store.outbox_remove(member, job[1])
            done += 1
        return done

    async def _adopt_legacy(self) -> None:
        """Jobs left in the outbox of before the bound join the bounded one (due now)."""
        members = await self._store.legacy_outbox(_DRAIN_BATCH)
        now = time.time_ns() // 1_000_000
        for member in members:
            job = _parse(member)
            if job is not None:
                await self._queue(member, job, now)
        await self._store.forget_legacy_outbox(members)

    async def _drain_forever(self) -> None:
        while True:
            await asyncio.sleep(self._retry)
            try:
                await self.drain()
            except Exception as err:  # Redis down: next time
                self._unreadable(err, extra={"error": _describe(err)})
            else:
                self._unreadable.recovered()

    async def sweep(self, since_ms: int | None = None) -> int:
        """One pass over the whole index: entries whose turn Redis no longer holds
        (deleted, evicted or expired by retention, whatever did it) are removed; how many.
        Entries are only ever written after their turn, so a live turn is never swept.

        With ``since_ms``, it also catches up: the turns made since then by every owner
        the index knows, and missing from it (their job lost with a killed replica), are
        indexed."""
        if since_ms is None:
            return await self._sweep(set())
        removed = await self._sweep(set(), since_ms)
        await self._catch_up_missed(since_ms)
        return removed

    async def _catch_up_missed(self, since_ms: int) -> None:
        """Catches up the owners whose index job the full outbox refused: the index may
        know none of their turns yet. Taken off their set a batch at a time (SPOP), as
        many as it held when this began (owners noted meanwhile wait for the next sweep);
        those of a batch not caught up are put back if this does not finish: failed, or
        cancelled (the replica shutting down)."""
        left = await self._store.outbox_missed_count()
        while left > 0:
            count = min(left, MISSED_BATCH)
            left -= count
            pending = await self._store.outbox_take_missed(count)
            if not pending:
                return
            try:
                while pending:
                    await self.catch_up(pending[0], since_ms)
                    pending.pop(0)
            except BaseException:
                await asyncio.shield(self._store.outbox_note_missed(pending))
                raise

    async def _sweep(self, owners: set[Owner], since_ms: int | None = None) -> int:
        removed = 0
        offset: str | None = None
        while True:
            points, offset = await self._index.scroll(offset, _SWEEP_PAGE)
            by_owner: dict[Owner, dict[str, list[str]]] = {}
            for point in points:
                owner = Owner(str(point.payload.get("t", "")), str(point.payload.get("u", "")))
                iid = str(point.payload.get("i", ""))
                by_owner.setdefault(owner, {}).setdefault(iid, []).append(point.id)
            owners.update(by_owner)
            stale: list[str] = []
            for owner, entries in by_owner.items():
                iids = list(entries)
                found = await self._store.interactions_exist(owner, iids)
                for iid, exists in zip(iids, found, strict=True):
                    if not exists:
                        stale.extend(entries[iid])
            if stale:
                await self._index.remove_entries(stale)
                removed += len(stale)
            if offset is None:
                break
        if since_ms is not None:
            for owner in owners:
                await self.catch_up(owner, since_ms)
        return removed

    async def catch_up(self, owner: Owner, since_ms: int) -> int:
        """Indexes the owner's turns created since ``since_ms`` that the index lacks; how
        many. Walks only recent activity: conversations newest-updated first, and in each
        its turns newest first, both stopping at ``since_ms``."""
        added = 0
        cursor: str | None = None
        while True:
            page = await self._store.list_conversations(owner, _SWEEP_PAGE, cursor)
            recent = [c for c in page.items if c.update_ms >= since_ms]
            for conversation in recent:
                added += await self._catch_up_conversation(
                    owner, conversation.conversation_id, since_ms
                )
            if len(recent) < len(page.items) or page.next_cursor is None:
                return added
            cursor = page.next_cursor

    async def _catch_up_conversation(self, owner: Owner, cid: str, since_ms: int) -> int:
        added = 0
        cursor: str | None = None
        while True:
            try:
                page = await self._store.list_interactions(
                    owner, cid, _SWEEP_PAGE, cursor, _CATCH_UP_PAGE_BYTES
                )
            except NotFound:  # deleted meanwhile
                return added
            turns = [pb.Interaction.FromString(data) for data in page.items]
            recent = [t for t in turns if t.create_time.ToMilliseconds() >= since_ms]
            present = await self._index.indexed([t.interaction_id for t in recent])
            for turn in recent:
                if turn.interaction_id not in present:
                    await self._index.add(owner, turn)
                    added += 1
            if len(recent) < len(turns) or page.next_cursor is None:
                return added
            cursor = page.next_cursor

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_every)
            try:
                await self.sweep_once()
            except Exception as err:  # Redis or the index down: next period
                log.warning("search index sweep failed", extra={"error": _describe(err)})

    async def sweep_once(self) -> bool:
        """The periodic sweep, if no other replica runs it this period: False when one
        does. Raises what failed it (the next period tries again).

        Its catch-up looks back to where the last sweep that finished began, kept in Redis
        (``store.sweep_since``), and at least two periods (a sweep that did not run, no
        replica up, is covered). Two periods from now was all it looked back before: an
        owner left in, or put back into, the outbox's missed set by sweeps failing two
        periods in a row had turns older than that, never indexed."""
        # One replica a period: the others find the lock taken.
        if not await self._store.try_lock("search-sweep", int(self._sweep_every * 1000)):
            return False
        started = time.time_ns() // 1_000_000
        floor = started - int(2 * self._sweep_every * 1000)
        since = min(await self._store.sweep_since(floor), floor)
        removed = await self.sweep(since)
        await self._store.sweep_done(started)
        log.info("search index swept", extra={"removed": removed, "since_ms": since})
        return True

    # -- search -------------------------------------------------------------------------
    async def search(
        self, owner: Owner, query: str, cid: str, mode: int, limit: int
    ) -> list[pb.InteractionHit]:
        try:
            hits = await self._index.search(owner, query, cid, mode, limit * _CANDIDATES_PER_HIT)
        except ServiceError:
            raise
        except Exception as err:  # the engine or the model failed: not the caller's doing
            self._outage(err, extra={"error": _describe(err)})
            raise Unavailable(
                "the interaction search index is unavailable; try again later",
                reason="SEARCH_INDEX_UNAVAILABLE",
            ) from None
        # A search failing warned as the jobs do, so its answering ends the outage too: with
        # no turn stored meanwhile (a read-mostly tenant, say) nothing else ever said so.
        self._outage.recovered()
        found = await self._store.get_interactions(owner, [h.interaction_id for h in hits])
        out: list[pb.InteractionHit] = []
        for hit, interaction in zip(hits, found, strict=True):
            if interaction is None:
                # Gone from Redis (deleted, expired) but not yet from the index.
                self.drop_gone(owner, hit.interaction_id)
                continue
            if len(out) < limit:
                out.append(pb.InteractionHit(interaction=interaction, score=hit.score))
        return out


class _TurnUnreadable(Exception):
    """A retried index job could not read its turn from Redis (the cause: why) on ``node``,
    the Redis node of the turn's owner (None: not known)."""

    def __init__(self, node: str | None) -> None:
        super().__init__(node)
        self.node = node


class DropAhead:
    """A deletion's drop job written to the outbox before the deletion runs
    (``Indexer._deleting``): ``queued`` True queued, False refused by the outbox's bounds,
    None not taken by Redis; ``started`` the time.monotonic() it was sent; ``reserve`` it
    may use the outbox's reserve for deletions."""

    def __init__(self, job: list[str], queued: bool | None, started: float, reserve: bool) -> None:
        self.job = job
        self.queued = queued
        self.started = started
        self.reserve = reserve


class WriteAhead:
    """A turn's index job written to the outbox beside the turn's own write
    (``Indexer.write_ahead``): called by the store with the turn's id just before the
    write is sent (``MemoryStore.create_interaction``'s ``beside``; the first call only)."""

    def __init__(self, indexer: Indexer, owner: Owner) -> None:
        self._indexer = indexer
        self._owner = owner
        self.job: list[str] = []
        self.task: asyncio.Task[bool | None] | None = None
        self.started = 0.0  # time.monotonic() when the job was sent
        self.settled = False  # the job is the stored turn's (Indexer.stored): kept

    def __call__(self, iid: str) -> None:
        if self.task is not None:
            return
        self.job = [_INDEX, self._owner.tenant, self._owner.user, iid]
        self.started = time.monotonic()
        self.task = self._indexer._start_job_ahead(self.job)

    def names(self, iid: str) -> bool:
        """Whether the job written (or on its way) is that of the turn ``iid``."""
        return self.task is not None and self.job[3] == iid


def _parse(member: str) -> list[str] | None:
    """An outbox member as the job it holds; None: not one of ours."""
    try:
        job = json.loads(member)
    except ValueError:
        return None
    if not (isinstance(job, list) and len(job) == 4 and all(isinstance(x, str) for x in job)):
        return None
    return job


def _describe(err: BaseException) -> Any:
    return (str(err) or type(err).__name__)[:300]
