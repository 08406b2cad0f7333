"""When an upstream call may start: the provider's limits, tenants taking turns.

Every attempt of every call to a provider passes ``ProviderLimiter.acquire`` and holds the
``Permit`` it gets while its request runs. A call may start when

1. no ``Retry-After`` pause is running: a 429 stops every call of the provider for as long
   as the provider asked, not only the one that got it. The replica that got the 429 pauses
   at once; when the provider's declared limits are kept in Redis (``RedisLimits``) the
   pause is recorded there too, and the admit script refuses every replica's calls until it
   ends. A provider that declares no limits never asks Redis (no round trip per call), so
   its pause holds in the replica that got the 429 only, as it does without Redis or when
   Redis failed to record it;
2. fewer calls run here than the adaptive limit (``services.generation.adaptive``) allows;
3. the declared limits shared by every replica admit it (``services.generation.rate_buckets``).

Tenants waiting on the provider take turns (round robin): each call that leaves the head
of the queue hands the turn to the next tenant waiting, so one tenant's burst of hits
cannot hold another tenant's single call for the whole burst. A tenant's own calls wait
first-in first-out by their *first* arrival: a call retried after a 429 keeps its ticket
and so goes before that tenant's calls that came after it. Turns are taken within this
replica; replicas meet only in the shared limits. Only the call at the head of the queue
asks the shared limits (one Redis round trip at a time per provider and replica).
A wait the call's deadline cannot cover fails it at once with RESOURCE_EXHAUSTED instead
of sleeping into the deadline; the deadline passing in the queue is DEADLINE_EXCEEDED.
A call anywhere in the queue (not only its head) is refused at once, as it queues or as
soon as the wait is known, when a wait no call can avoid outlasts its deadline: this
replica's ``Retry-After`` pause (only ever extended), or the floor the shared limits last
answered the head (their pause, or the requests bucket's refill to one request: it only
refills, nothing but admissions takes from it), whatever the calls before it do. Nothing
less certain refuses a call early: how long the calls before it take cannot be known
(any of them may leave the queue, cancelled by its caller, without taking a turn), nor
the tokens bucket (costs differ, refunds come back), so a call that may still make it
keeps waiting.
A provider that declares nothing and is not being throttled admits at once, with no
Redis call and no await.

A slot freed by a *cancelled* call (its caller gone: a client's cancel, the gateway's
budget) is held for the provider's ``cancel_hold`` before the queue may take it, when
calls are waiting; a call that ends otherwise frees its slot at once. Cancellations of a
storm (many streams cancelled together) reach this service spread over up to hundreds of
milliseconds, while a freed slot went to the queue's head in the next loop pass: that
head, whose own cancellation was still on its way, sent its request, and its
cancellation, arriving, freed a slot for the next. Checking the call before it sends,
or one more loop pass, cannot see a cancellation that has not arrived (measured: 10-12
requests still sent of 12); the hold lets them arrive, and the queued calls they cancel
leave without a turn.
The held slot stays taken in the shared limits too (their slot in flight is given back
when the hold ends, not when the call ends): given back at once, the head of any
replica's queue took it from Redis, and with ``max_in_flight`` shared by replicas the
hold held nothing. A hold ends early, the slot free at once, when the queue empties (the
cancellations it waited for have come: nobody is left to keep it from) and when the
limiter closes. A held slot is not a running call: the adaptive limit is told of the
calls running, without the held ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from services.common.auth import current_tenant
from services.common.upstream_retry import Deadline
from services.generation.adaptive import AdaptiveLimit
from services.generation.metrics import CONCURRENCY_LIMIT, IN_FLIGHT, QUEUE_WAIT
from services.generation.rate_buckets import FLIGHT_FULL, SharedLimits, scope_of
from services.generation.settings import ProviderConfig
from services.generation.upstream import UpstreamFault

# How often the head of the queue asks again when the shared in-flight limit is full and
# no call of this replica ended (calls of other replicas end unseen).
FLIGHT_POLL = 0.05


@dataclass(order=True)
class Ticket:
    """A call's place in its tenant's queue, kept across its attempts."""

    arrived: float
    seq: int
    tenant: str = field(compare=False)


@dataclass(order=True)
class _Waiter:
    ticket: Ticket
    # The loop time the call's deadline ends.
    expires_at: float = field(compare=False)
    turn: asyncio.Event = field(compare=False, default_factory=asyncio.Event)


class _FairQueue:
    """The waiting calls by tenant, each tenant's in a heap by ticket; the tenants in turn
    order. The head is the first call of the tenant whose turn it is, passing over the
    tenants ``full`` says hold their share of calls in flight."""

    def __init__(self, full: Callable[[str], bool]) -> None:
        self._tenants: OrderedDict[str, list[_Waiter]] = OrderedDict()
        self._full = full

    def __bool__(self) -> bool:
        return bool(self._tenants)

    @property
    def head(self) -> _Waiter | None:
        for tenant, waiters in self._tenants.items():
            if not self._full(tenant):
                return waiters[0]
        return None

    def __iter__(self) -> Iterator[_Waiter]:
        for waiters in self._tenants.values():
            yield from waiters

    def add(self, waiter: _Waiter) -> None:
        """A tenant not waiting yet takes the last turn."""
        heapq.heappush(self._tenants.setdefault(waiter.ticket.tenant, []), waiter)

    def remove(self, waiter: _Waiter) -> bool:
        """False when ``waiter`` was not queued. The head's tenant, leaving, goes to the
        back of the turn order; any other keeps its turn."""
        tenant = waiter.ticket.tenant
        waiters = self._tenants.get(tenant, [])
        index = next((i for i, w in enumerate(waiters) if w is waiter), None)
        if index is None:
            return False
        was_head = self.head is waiter
        waiters.pop(index)
        heapq.heapify(waiters)
        if not waiters:
            del self._tenants[tenant]
        elif was_head:
            self._tenants.move_to_end(tenant)
        return True


class _Hold(NamedTuple):
    """A cancelled call's slot held from the queue: the timer that ends the hold, and what
    its release needs then."""

    timer: asyncio.TimerHandle
    tokens: float | None
    latency: float


class Permit:
    """One admitted attempt; ``release`` exactly once when it ends."""

    __slots__ = ("_limiter", "call_id", "cost", "started", "tenant", "waited")

    def __init__(
        self, limiter: ProviderLimiter, call_id: str, cost: float, waited: float, tenant: str
    ) -> None:
        self._limiter = limiter
        self.tenant = tenant
        self.call_id = call_id
        self.cost = cost
        self.waited = waited
        self.started = asyncio.get_running_loop().time()

    async def release(self, *, outcome: str, tokens: float | None = None) -> None:
        """``outcome``: ``ok``, ``overloaded`` (429, timeout), ``cancelled`` (the caller
        left: its slot is held a while, see the module) or ``failed`` (anything else).
        ``tokens``: what the call really used, when known."""
        await self._limiter._release(self, outcome, tokens)


class ProviderLimiter:
    """The queue of one provider (and API key) in this replica."""

    def __init__(
        self,
        config: ProviderConfig,
        scope: str,
        shared: SharedLimits | None,
        *,
        operator_url: bool = True,
    ) -> None:
        self.name = config.name
        self.scope = scope
        # One limiter per API key in use, but the gauges are per provider: in flight is
        # counted up and down by each, the limit published by the operator key's alone at
        # the operator's URL (``operator_url``). A caller's base_url has limiters of its
        # own under the same provider name: one 429 there set the provider's published
        # limit to 1 while the operator's endpoint still took 8.
        self._publishes_limit = operator_url and scope == scope_of(config.name, None)
        # A provider that declares no limits never asks them (no Redis round trip per call).
        self._shared = shared if shared is not None and shared.limits.any else None
        # How the provider counts tokens_per_minute (docs/generation.md#provider-limits).
        self._reserved = config.tokens_counted == "reserved"
        ceiling = config.concurrency_cap
        self.adaptive = config.adaptive
        self.limit = AdaptiveLimit(
            ceiling,
            latency_factor=config.latency_factor if config.adaptive else None,
            recovery=config.adaptive_recovery,
        )
        # One tenant's calls in flight here, at most ``max_in_flight_per_tenant``.
        self._per_tenant = config.max_in_flight_per_tenant
        self._cancel_hold = config.cancel_hold
        # The cancelled calls' slots held from the queue, counted in ``in_flight`` (and in
        # the shared limits) until their hold ends. Only while calls wait: emptied with the
        # queue, so a call arriving at an empty queue never meets one.
        self._held: dict[Permit, _Hold] = {}
        self._tenant_in_flight: dict[str, int] = {}
        self._queue = _FairQueue(self._tenant_full)
        self._seq = itertools.count()
        self.in_flight = 0
        self._paused_until = 0.0
        # Loop time before which the shared limits admit no call, whatever it costs (their
        # pause, their requests bucket), as the head last heard: only ever raised.
        self._floor = 0.0
        self._released = asyncio.Event()
        self._publish_limit()

    def ticket(self) -> Ticket:
        """A place for a call of the current caller's tenant (the chassis's identity)."""
        return Ticket(asyncio.get_running_loop().time(), next(self._seq), current_tenant())

    @property
    def idle(self) -> bool:
        return self.in_flight == 0 and not self._queue

    async def pause(self, seconds: float) -> None:
        """A 429 asked every call to wait ``seconds``: here at once, then in every replica
        sharing the declared limits (a pause is only ever extended)."""
        until = asyncio.get_running_loop().time() + seconds
        self._paused_until = max(self._paused_until, until)
        self._wake_hopeless()
        if self._shared is not None:
            await self._shared.pause(self.scope, seconds)

    @property
    def _current_limit(self) -> float:
        """The adaptive limit, or the fixed ceiling when the provider is not adaptive."""
        return self.limit.limit if self.adaptive else self.limit.ceiling

    def _allows(self) -> bool:
        return self.in_flight < self._current_limit

    def _tenant_full(self, tenant: str) -> bool:
        """Whether ``tenant`` holds its share of the calls in flight here."""
        share = self._per_tenant
        return share is not None and self._tenant_in_flight.get(tenant, 0) >= share

    def _publish_limit(self) -> None:
        if self._publishes_limit:
            CONCURRENCY_LIMIT.labels(self.name).set(self._current_limit)

    async def acquire(self, ticket: Ticket, cost: float, deadline: Deadline) -> Permit:
        loop = asyncio.get_running_loop()
        entered = loop.time()
        call_id = uuid.uuid4().hex
        tokens = self._shared.limits.tokens if self._shared is not None else None
        if tokens is not None and not self._reserved:
            # Counted as used: a call dearer than the whole bucket is charged the bucket,
            # and the permit keeps what was charged, so that its refund corrects that to
            # the real usage (from the estimate, the correction charged such a call far
            # less than it used). Counted as reserved, the provider takes the whole
            # estimate at once: so do the buckets (a debt the next calls wait for).
            cost = min(cost, tokens.capacity)
        if (
            not self._queue
            and self._shared is None
            and self._paused_until <= entered
            and self._allows()
            and not self._tenant_full(ticket.tenant)
        ):
            return self._admitted(call_id, cost, 0.0, ticket.tenant)
        waiter = _Waiter(ticket, deadline.expires_at)
        self._queue.add(waiter)
        try:
            async with asyncio.timeout_at(deadline.expires_at):
                await self._wait_for_admission(waiter, call_id, cost, deadline)
        except TimeoutError:
            raise UpstreamFault(
                "queue_timeout",
                f"the deadline passed while waiting {loop.time() - entered:.1f} s for the "
                "provider's limits",
            ) from None
        finally:
            self._leave(waiter)
        return self._admitted(call_id, cost, loop.time() - entered, ticket.tenant)

    def _admitted(self, call_id: str, cost: float, waited: float, tenant: str) -> Permit:
        self.in_flight += 1
        self._tenant_in_flight[tenant] = self._tenant_in_flight.get(tenant, 0) + 1
        IN_FLIGHT.labels(self.name).inc()
        QUEUE_WAIT.labels(self.name).observe(waited)
        if self._tenant_full(tenant):
            self._wake_head()  # the head may now be another tenant's call
        return Permit(self, call_id, cost, waited, tenant)

    def _leave(self, waiter: _Waiter) -> None:
        if self._queue.remove(waiter):
            if not self._queue and self._held:
                # Nobody waits any more: the cancellations the holds waited for came (or
                # the queue left otherwise), and a call arriving now is wanted.
                self._end_holds()
            self._wake_head()

    def _wake_head(self) -> None:
        head = self._queue.head
        if head is not None:
            head.turn.set()

    async def _wait_for_admission(
        self, waiter: _Waiter, call_id: str, cost: float, deadline: Deadline
    ) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._refuse_if_sure_to_miss(deadline)
            if self._queue.head is not waiter:
                waiter.turn.clear()
                await waiter.turn.wait()
                continue
            now = loop.time()
            if self._paused_until > now:
                await self._sleep(self._paused_until - now, deadline, "a 429's Retry-After")
                continue
            if not self._allows():
                # Until a call ends, or the limit recovers by itself (the recovery period
                # passing while every slot is held by long calls).
                self._released.clear()
                recovery = self.limit.until_recovery() if self.adaptive else None
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(recovery):
                        await self._released.wait()
                self._publish_limit()
                continue
            if self._shared is None:
                return
            asked = loop.time()
            try:
                answer = await self._shared.admit(self.scope, call_id, cost, deadline.remaining())
            except BaseException:
                # Cancelled (the client gave up) with the admission on its way: Redis may
                # run it all the same, and its slot in flight would count against every
                # replica until its lease ended (the deadline, plus slack).
                await self._forget_shared(call_id)
                raise
            # From when it was asked: the limits' clock read it later, never sooner.
            if asked + answer.floor > self._floor:
                self._floor = asked + answer.floor
                self._wake_hopeless()
            wait = answer.wait
            if wait == 0:
                return
            if wait == FLIGHT_FULL:
                self._released.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLIGHT_POLL):
                        await self._released.wait()
                continue
            await self._sleep(wait, deadline, "the provider's rate limits (or a 429's Retry-After)")

    async def _forget_shared(self, call_id: str) -> None:
        """Takes back the slot in flight an admission cut short may have taken in the shared
        limits (leaving an absent call is a no-op), shielded so that a second cancellation
        does not stop it. No tokens come back: whether the admission took any is not known,
        and giving back some it never took would let calls past the declared limit."""
        assert self._shared is not None
        # Run by the shared limits' releases: cancelled, a task the registry's close awaits
        # before closing Redis (closed under it, the slot stayed taken until its lease
        # ended). No refund: run twice (a cancel interrupted the first), it changes nothing.
        await self._shared.releases.run(
            functools.partial(self._shared.release, self.scope, call_id, 0.0)
        )

    def _wake_hopeless(self) -> None:
        """Queued calls whose deadline ends before anything can start learn it now, not
        when their turn comes (the head may be waiting for a slot: woken too)."""
        until = max(self._paused_until, self._floor)
        for waiter in self._queue:
            if waiter.expires_at <= until:
                waiter.turn.set()
                if waiter is self._queue.head:
                    self._released.set()

    def _refuse_if_sure_to_miss(self, deadline: Deadline) -> None:
        """A wait sure to outlast the deadline fails the call wherever it waits in the
        queue: nothing starts before this replica's pause ends, nor before the shared
        limits' floor, whatever the calls before it do."""
        now = asyncio.get_running_loop().time()
        paused, floor = self._paused_until - now, self._floor - now
        left = max(paused, floor)
        if left > 0 and left >= deadline.remaining():
            why = "a 429's Retry-After" if paused >= floor else "the provider's rate limits"
            raise UpstreamFault(
                "limit_wait",
                f"waiting at least {left:.1f} s for {why} would pass the deadline "
                f"({deadline.remaining():.1f} s left)",
                retry_after=left,
            )

    async def _sleep(self, seconds: float, deadline: Deadline, why: str) -> None:
        if seconds >= deadline.remaining():
            raise UpstreamFault(
                "limit_wait",
                f"waiting {seconds:.1f} s for {why} would pass the deadline "
                f"({deadline.remaining():.1f} s left)",
                retry_after=seconds,
            )
        await asyncio.sleep(seconds)

    async def _release(self, permit: Permit, outcome: str, tokens: float | None) -> None:
        loop = asyncio.get_running_loop()
        latency = loop.time() - permit.started
        IN_FLIGHT.labels(self.name).dec()  # no request runs: the gauge says so at once
        if outcome == "cancelled" and self._cancel_hold and self._queue:
            # Held, counted in flight here (and in its tenant's share, and in the shared
            # limits), so that the cancellations still on their way take the queued calls
            # they are for out of the queue before it moves (see the module). Not a lost
            # slot: it comes back when the hold ends, the queue empties or the limiter
            # closes, whatever happens meanwhile.
            timer = loop.call_later(self._cancel_hold, self._end_hold, permit)
            self._held[permit] = _Hold(timer, tokens, latency)
            return
        self._free(permit, outcome, latency)
        if self._shared is not None:
            # Run by the shared limits' releases, as ``_forget_shared``: a call cancelled
            # (its client gone, the shutdown's cut) releases in a task the registry's close
            # awaits before closing Redis. As a bare shielded task the close never knew of
            # it, closed the client under it, and the slot stayed taken until its lease
            # ended. Sent again after a cancel, without the refund: the first may have
            # given it back already, and tokens never taken would let calls past the limit.
            release = functools.partial(self._shared.release, self.scope, permit.call_id)
            await self._shared.releases.run(
                functools.partial(release, self._refund(permit, tokens)),
                again=functools.partial(release, 0.0),
            )

    def _end_hold(self, permit: Permit, *, publish: bool = True) -> None:
        """A held slot back: here at once, in the shared limits by a release task the
        registry's close awaits (no caller is left to run it in; the lease bounds it if
        the process dies first)."""
        hold = self._held.pop(permit, None)
        if hold is None:
            return
        hold.timer.cancel()
        self._free(permit, "cancelled", hold.latency, publish=publish)
        if self._shared is not None:
            self._shared.releases.start(
                self._shared.release(self.scope, permit.call_id, self._refund(permit, hold.tokens))
            )

    def _end_holds(self, *, publish: bool = True) -> None:
        for permit in list(self._held):
            self._end_hold(permit, publish=publish)

    def close(self) -> None:
        """Ends the holds at once (their slots back in the shared limits before Redis
        closes; no timer left to touch the gauges of a closed service). A call cancelled
        after the close frees its slot at once: no hold starts a timer past it."""
        self._cancel_hold = 0
        self._end_holds(publish=False)

    def _free(self, permit: Permit, outcome: str, latency: float, *, publish: bool = True) -> None:
        """``permit``'s slot back to the queue: its head (or the next tenant's) may go."""
        self.in_flight -= 1
        left = self._tenant_in_flight.get(permit.tenant, 0) - 1
        if left > 0:
            self._tenant_in_flight[permit.tenant] = left
        else:
            self._tenant_in_flight.pop(permit.tenant, None)
        # The calls that ran beside this one, this one included: held slots ran nothing.
        running = self.in_flight - len(self._held) + 1
        if outcome == "ok":
            self.limit.succeeded(latency, running)
        elif outcome == "overloaded":
            self.limit.overloaded(running)
        if publish:
            self._publish_limit()
        self._released.set()
        self._wake_head()  # its tenant's next call may be the head again, under its share

    def _refund(self, permit: Permit, tokens: float | None) -> float:
        """What goes back to the tokens bucket when a call ends (negative: what it owes).
        Counted as used, the estimate is corrected to the real usage both ways. Counted as
        reserved, the provider keeps what it reserved whatever the call used (a failure
        and a 429 too): nothing comes back, and only a usage above the charge (a call
        without max_tokens that answered long) is charged on top."""
        if tokens is None:
            return 0.0
        if self._reserved:
            return min(0.0, permit.cost - tokens)
        return permit.cost - tokens


class Limiters:
    """The queues of one provider, one per API key in use: a caller's own key has its own
    limits at the provider (the declared ones are assumed for every key)."""

    # Idle queues are dropped past this many (per-request keys come and go).
    MAX_IDLE = 1000

    def __init__(
        self, config: ProviderConfig, shared: SharedLimits | None, *, operator_url: bool = True
    ) -> None:
        """``operator_url``: False for a provider at a caller's base_url (its limit is not
        published)."""
        self._config = config
        self._shared = shared
        self._operator_url = operator_url
        self._by_scope: dict[str, ProviderLimiter] = {}

    def get(self, api_key: str | None) -> ProviderLimiter:
        scope = scope_of(self._config.name, api_key)
        limiter = self._by_scope.get(scope)
        if limiter is None:
            if len(self._by_scope) >= self.MAX_IDLE:
                self._by_scope = {s: q for s, q in self._by_scope.items() if not q.idle}
            limiter = self._by_scope[scope] = ProviderLimiter(
                self._config, scope, self._shared, operator_url=self._operator_url
            )
        return limiter

    def close(self) -> None:
        """Ends every queue's holds (``ProviderLimiter.close``)."""
        for limiter in self._by_scope.values():
            limiter.close()
