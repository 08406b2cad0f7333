"""The bytes of requests a server holds for its calls at once, all tenants together
(``max_request_bytes_in_flight``), counted by the chassis.

Each request is bounded by its method's limit (``request_size.py``), but nothing bounded
how many a server held: a thousand calls each carrying a 16 MiB ImportObjects batch are
16 GiB, far past any replica's container memory limit (deploy/), and the OOM kill fails
every tenant's calls. A unary request counts from when the chassis has it until its call
ends; a client stream's message from when the servicer takes it until it asks for the next
one (or the call ends). A request that would take the server past the bound while others
are held is refused, RESOURCE_EXHAUSTED with a RetryInfo (reason
``REQUEST_BYTES_IN_FLIGHT``), before the servicer sees it; a stream's message is refused
into the servicer, as a silent stream's STREAM_IDLE is. A request while none is held
always goes (its method's limit bounds it), so none is refused for ever.

gRPC reads a whole message before the chassis sees it, and grpcio exposes no resource
quota to bound that: a refused request was read once and is dropped at once; what the
bound keeps from piling up is requests held by calls being served (docs/operations.md
#process-memory). One counter on the event loop: no lock, nothing shared across processes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from services.common.errors import ResourceExhausted

REASON = "REQUEST_BYTES_IN_FLIGHT"
# When a refused caller may try again: calls holding requests before it most likely ended.
RETRY_AFTER_SECONDS = 1.0


class Sized:
    """A parsed request message with the size it had on the wire."""

    __slots__ = ("message", "size")

    def __init__(self, message: Any, size: int) -> None:
        self.message = message
        self.size = size


def sized(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``deserializer``, its result wrapped with the message's size (the chassis unwraps
    it: only a deserializer sees the bytes gRPC read)."""

    def deserialize(data: bytes) -> Sized:
        return Sized(deserializer(data), len(data))

    return deserialize


def unsized(request: Any) -> tuple[Any, int]:
    """A request as the servicer takes it, and its size (0 when not measured)."""
    if isinstance(request, Sized):
        return request.message, request.size
    return request, 0


class RequestBytes:
    def __init__(self, limit: int, setting: str) -> None:
        """``limit`` bytes of requests held at once (0: no limit); ``setting`` is the
        variable that sets it, named in the refusal."""
        self.limit = limit
        self.setting = setting
        self._held = 0

    @property
    def held(self) -> int:
        return self._held

    def hold(self) -> Held:
        """What one call holds of the bound."""
        return Held(self)

    def take(self, size: int) -> None:
        held = self._held
        if self.limit and held and held + size > self.limit:
            # Neither the message nor the metadata says what is held: the other calls'
            # requests, other tenants' among them (to the byte, what they were sending).
            raise ResourceExhausted(
                f"this request ({size} bytes) would take the requests the server holds "
                f"(all calls together) past {self.limit} bytes ({self.setting}); retry "
                "shortly",
                reason=REASON,
                metadata={
                    "limit_bytes": str(self.limit),
                    "size_bytes": str(size),
                    "setting": self.setting,
                },
                retry_after=RETRY_AFTER_SECONDS,
            )
        self._held = held + size

    def give_back(self, size: int) -> None:
        self._held -= size


class Held:
    """The request (or a stream's current message) one call holds."""

    __slots__ = ("_ledger", "_size")

    def __init__(self, ledger: RequestBytes) -> None:
        self._ledger = ledger
        self._size = 0

    def take(self, size: int) -> None:
        """Counts a request of ``size`` bytes, or raises RESOURCE_EXHAUSTED (RetryInfo)."""
        self._ledger.take(size)
        self._size += size

    def release(self) -> None:
        """The request is done with. Safe to call again."""
        if self._size:
            self._ledger.give_back(self._size)
            self._size = 0
