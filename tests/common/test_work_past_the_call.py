"""Work a call starts that must outlive it (a slot's release, a turn's index job, a
summary, a background cache store) is not bounded by that call's deadline.

A task copies the context of the code that creates it, and the chassis keeps the served
call's cutoff in a ContextVar (``call_deadline.call_cutoff``). Such work used to carry it:
memory's wait for a slot move (``_redis_waiting``) then gave up at once, UNAVAILABLE, as
soon as the call that started the work had passed its deadline, and ``room_before_cut``
counted its margin from that call's time. ``context_of_no_call`` reset only the call's
secrets."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from contextvars import Context
from typing import Any, cast

from redis.exceptions import TryAgainError

from services.common.call_deadline import DeadlineLimit, call_cutoff, context_past_the_call
from services.common.logs import context_of_no_call, hide_in_this_call, redact
from services.common.releases import Releases
from services.gateway.background import WorkQueue
from services.memory.store import StoreWarnings, _redis_waiting

CALL_SECONDS = 0.2  # the short deadline of the call that starts the work


class _Arriving:
    """What the chassis reads of a call as it arrives: the seconds left."""

    def __init__(self, remaining: float) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float:
        return self.remaining


def _arrive() -> None:
    """The chassis' first step of a served call with CALL_SECONDS left: its cutoff set in
    the current context, as in ``server.py``'s handler wrapper."""
    cutoff = DeadlineLimit(0.001, "MIN_DEADLINE").cutoff(cast(Any, _Arriving(CALL_SECONDS)))
    assert cutoff is not None and call_cutoff() is cutoff


async def _store_call_after_the_calls_deadline(call_gone: asyncio.Event) -> str:
    """What a release or an index job of memory does: waits until the call that started it
    has passed its deadline, then sends a Redis call that a slot move refuses twice
    (TRYAGAIN, as Redis answers mid-reshard) before it runs."""
    await call_gone.wait()
    refusals = 2

    async def command() -> str:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot")
        return "ran"

    return cast(str, await _redis_waiting(StoreWarnings(), command, key=None, wait=30.0))


async def _run_call(body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``body`` run as a served call's task, with its cutoff (its own context)."""

    async def call() -> None:
        _arrive()
        await body()

    await asyncio.create_task(call())


async def test_a_release_a_call_starts_waits_out_a_slot_move_past_the_calls_deadline() -> None:
    # The production path: a caller being cancelled (its client gave up) hands its
    # release to ``Releases``, which runs it as a task of its own. Before, that task held
    # the call's cutoff, and the slot move's refusal after it was UNAVAILABLE at once.
    releases = Releases()
    call_gone = asyncio.Event()
    outcome: list[str] = []

    async def release() -> None:
        outcome.append(await _store_call_after_the_calls_deadline(call_gone))

    async def body() -> None:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        try:
            await releases.run(release)
        except asyncio.CancelledError:
            task.uncancel()

    await _run_call(body)
    await asyncio.sleep(CALL_SECONDS * 1.5)
    call_gone.set()
    await releases.settle(30.0)
    assert outcome == ["ran"]


async def test_a_summary_queued_by_a_call_is_not_bound_by_the_calls_deadline() -> None:
    # The gateway's background queue (summaries): a job runs in the context of the call
    # that queued it, for its lines; before, with that call's cutoff too.
    call_gone = asyncio.Event()
    outcome: list[object] = []

    async def runner(job: str) -> None:
        outcome.append((job, call_cutoff()))
        outcome.append(await _store_call_after_the_calls_deadline(call_gone))

    queue: WorkQueue[str] = WorkQueue(
        runner, name="summaries", size=4, per_tenant=4, workers=1, drain_timeout=30.0
    )

    async def body() -> None:
        assert queue.submit("tenant", "fold")

    try:
        await _run_call(body)
        await asyncio.sleep(CALL_SECONDS * 1.5)
        call_gone.set()
        await queue.idle()
    finally:
        await queue.drain()
    assert outcome == [("fold", None), "ran"]


async def test_the_contexts_past_a_call_drop_its_cutoff_and_only_one_its_secrets() -> None:
    seen: dict[str, tuple[object, str]] = {}
    key = "caller-key-of-this-call"

    def look(name: str) -> None:
        seen[name] = (call_cutoff(), redact(f"key {key}"))

    async def body() -> None:
        hide_in_this_call(key)
        contexts: dict[str, Context] = {
            "past": context_past_the_call(),
            "none": context_of_no_call(),
        }
        for name, context in contexts.items():
            context.run(look, name)
        look("call")

    await _run_call(body)
    assert seen["call"][0] is not None  # the call itself keeps its cutoff
    assert seen["call"][1] == "key [REDACTED]"
    # Work past the call: no cutoff; its lines still hide the caller's key.
    assert seen["past"] == (None, "key [REDACTED]")
    # A queue's workers, serving every call: nothing of this one.
    assert seen["none"] == (None, f"key {key}")
