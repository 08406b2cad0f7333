"""The cap on calls a server serves at once (``max_concurrent_rpcs``), held by the chassis.

grpc.aio has this cap built in (``maximum_concurrent_rpcs``), but its refusal is a bare
RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded") with no ErrorInfo, unlike every other
refusal of ours, and it counts health checks too, so a busy server failed its probes. The
chassis takes a slot when a call of one of our services starts and gives it back when the
call ends however it ends (answered, failed, cancelled, deadline passed, a stream closed
early); health checking and reflection are not wrapped by the chassis and take none. One
counter on the event loop: no lock needed, nothing to leak across processes.
"""

from __future__ import annotations

from services.common.errors import ResourceExhausted

REASON = "TOO_MANY_CONCURRENT_RPCS"


class CallSlots:
    def __init__(self, limit: int, setting: str) -> None:
        """``limit`` calls at once (0: no limit); ``setting`` is the variable that sets it,
        named in the refusal so an operator knows what to raise."""
        self.limit = limit
        self.setting = setting
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def take(self) -> None:
        """Takes a slot, or raises RESOURCE_EXHAUSTED when every slot is taken."""
        if self.limit and self._in_flight >= self.limit:
            raise ResourceExhausted(
                f"the server is serving its limit of {self.limit} calls at once "
                f"({self.setting}); retry shortly",
                reason=REASON,
                metadata={"limit": str(self.limit), "setting": self.setting},
            )
        self._in_flight += 1

    def give_back(self) -> None:
        self._in_flight -= 1

    def __enter__(self) -> CallSlots:
        self.take()  # a refusal leaves the block before it is entered: nothing to give back
        return self

    def __exit__(self, *exc: object) -> None:
        self.give_back()
