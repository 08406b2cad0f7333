"""Releases of Redis slots (a quota's concurrent-call slot, a provider's slot in flight)
that must outlive the call that started them, and that the service's close awaits.

A call cancelled while it frees a slot (its client gave up, the shutdown cut, gRPC's
cancel at the end of the grace period) would lose the release with it: the slot stayed
taken, for every replica, until its lease ended. So a release a cancel reaches runs as a
task of its own, shielded from the call's cancellation. And that task must end before the
service closes its Redis client: closed under it (or the process gone), the release was
lost the same way. ``settle`` waits for the pending ones, as long as ``settle_wait`` says:
each is one Redis command, which the client's own timeouts bound.

A call nothing cancels (nearly all of them) releases in its own task: a task and a shield
for every call's release cost a task per quota-admitted call, for the rare one cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from services.common.call_deadline import context_past_the_call
from services.common.tasks import cancel_and_wait

log = logging.getLogger("gensearch.releases")


def settle_wait(socket_timeout: float, connect_timeout: float) -> float:
    """How long a close waits for the pending releases: each is one Redis command, which
    the client's timeouts bound (a connection, then its answer), twice for one sent again
    after a redirect or a reconnect. They run at once, so this bounds them all. Not the
    grace period: that came before, and a second one made the pod's budget
    (terminationGracePeriodSeconds) grow by as much, for a wait of a second at most."""
    return 2 * (connect_timeout + socket_timeout)


class Releases:
    """Releases a cancel reached, run apart from their call and awaited by ``settle``."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Task[None]] = set()

    def _start(self, release: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        # Past the call: its deadline's cutoff is not the release's.
        task = asyncio.create_task(release, context=context_past_the_call())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)
        return task

    def start(self, release: Coroutine[Any, Any, None]) -> None:
        """Runs ``release`` as a task of its own, awaited by ``settle``: for a release no
        call is left to run (a timer's, a close's)."""
        self._start(release)

    async def run(
        self,
        release: Callable[[], Coroutine[Any, Any, None]],
        again: Callable[[], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        """Runs ``release()`` to its end, whatever cancels the caller meanwhile: the caller
        is cancelled at once, the release goes on (and ``settle`` awaits it).

        In the caller's own task while nothing cancels it: no task of its own on the
        usual path. A caller already being cancelled (its release is where gRPC's second
        cancel, at the end of the grace period, lands) starts it as a shielded task at
        once. A cancel that interrupts it in the caller starts it again in such a task, so
        ``release`` must be safe to run twice (a ZREM of the call's member, the provider's
        release without refund): the first may have reached Redis. ``again``, when given,
        is what is sent then instead (a provider's release without the refund the first
        may have given back already)."""
        caller = asyncio.current_task()
        cancels = caller.cancelling() if caller is not None else 0
        if cancels:
            await asyncio.shield(self._start(release()))
            return
        try:
            await release()
        except asyncio.CancelledError:
            self._start((again or release)())
            raise
        if caller is not None and caller.cancelling() > cancels:
            # A cancel the release swallowed (Python 3.11 loses one landing as a Redis
            # command's wait_for completes, services/common/tasks.py): the caller is
            # cancelled all the same, as it was when it waited on the shield.
            raise asyncio.CancelledError

    async def settle(self, timeout: float) -> None:
        """Waits for the pending releases, at most ``timeout`` seconds (``settle_wait``:
        past it Redis is not answering, and the leases free the slots).
        Those still pending then are cancelled, and ended before this returns: left
        running, each went on against the Redis client closed right after (or hung on a
        Redis that does not answer) past the service's close, a task nobody awaited."""
        if not self._pending:
            return
        # Said before the wait: a close that stalls (up to ``timeout``) says what for.
        log.info(
            "waiting for releases of Redis slots before closing",
            extra={"releases": len(self._pending), "timeout": timeout},
        )
        _, left = await asyncio.wait(set(self._pending), timeout=max(timeout, 0.0))
        if left:
            log.warning(
                "releases of Redis slots still pending at close: their leases free them",
                extra={"releases": len(left)},
            )
            await asyncio.gather(*(cancel_and_wait(task) for task in left), return_exceptions=True)
