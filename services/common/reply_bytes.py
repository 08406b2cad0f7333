"""The bytes of replies a server holds for one tenant at once
(``max_reply_bytes_in_flight_per_tenant``), counted by the chassis.

One reply is bounded by the send limit (``max_message_bytes``), but nothing bounded how
many a tenant had in flight: 16 concurrent 60 MB GetObjects of one tenant held about
800 MB in gateway and retrieval, memory every tenant of those replicas shares. A reply
counts from when the chassis has serialized it until gRPC has sent it: a unary reply until
its call is done (gRPC's done callback), a stream's message until the stream is asked for
the next one (gRPC has sent it) or ends. A reply that would take its tenant past the bound
while the tenant has others in flight is refused, RESOURCE_EXHAUSTED with a RetryInfo
(reason ``RESPONSE_BYTES_IN_FLIGHT``), and dropped at once: waiting would hold the very
bytes the bound is about. A tenant's first reply always goes (the send limit bounds it),
so no reply is refused for ever; other tenants count against their own bound. One counter
per tenant on the event loop: no lock, nothing shared across processes.

The per-tenant bound alone did not bound the process: 256 MiB per tenant times a few busy
tenants passed a replica's container memory limit (deploy/), and the OOM kill failed every
tenant's calls. So all tenants' replies together are bounded too
(``max_reply_bytes_in_flight``): a reply past it while any reply is in flight is refused
the same way (``setting`` names the process-wide variable; no ``held_bytes``, nor a number
in the message: the total is mostly other tenants' bytes), and a reply while none is in
flight always goes.

A reply's size is known only once it is built, which takes the call's work (the gateway's
calls to retrieval, generation and memory) and several copies of it. So a call whose
tenant's bound, or the server's, is already full (held at or past it: no reply but an empty
one could go) is refused the same way before its work (``refuse_if_full``): it neither calls the
services behind it nor builds a reply only to drop it, and a write (an upsert, a delete) is
not done behind a refusal. The refusal says what is held, not what the reply would have
been (no ``size_bytes``). The replies in flight may be read while a call works; a call
refused up front for that retries after the RetryInfo delay, as one refused after its work.
"""

from __future__ import annotations

from services.common.errors import ResourceExhausted

REASON = "RESPONSE_BYTES_IN_FLIGHT"
# When a refused caller may try again: the replies in flight before it are then most
# likely sent (a reply is written as fast as its client reads).
RETRY_AFTER_SECONDS = 1.0


class ReplyBytes:
    def __init__(
        self, limit: int, setting: str, total_limit: int = 0, total_setting: str = ""
    ) -> None:
        """``limit`` bytes of replies in flight per tenant and ``total_limit`` for all
        tenants together (0: no limit); ``setting`` and ``total_setting`` are the variables
        that set them, named in a refusal."""
        self.limit = limit
        self.setting = setting
        self.total_limit = total_limit
        self.total_setting = total_setting
        self._held: dict[str, int] = {}
        self._total = 0

    @property
    def bounded(self) -> bool:
        return bool(self.limit or self.total_limit)

    def held(self, tenant: str) -> int:
        return self._held.get(tenant, 0)

    @property
    def total(self) -> int:
        """Bytes of replies in flight, all tenants together."""
        return self._total

    def hold(self, tenant: str) -> Holding:
        """What one call holds of its tenant's bound: a reply at a time."""
        return Holding(self, tenant)

    def refuse_if_full(self, tenant: str) -> None:
        """Raises RESOURCE_EXHAUSTED (RetryInfo) when ``tenant``'s bound, or the server's, is
        already full: any reply but an empty one would be refused. Called before the work."""
        held = self._held.get(tenant, 0)
        if self.limit and held and held >= self.limit:
            raise refusal(
                f"the caller's tenant has {held} bytes of replies in flight, as many as "
                f"{self.limit} allows ({self.setting}); retry once they are read",
                self.limit,
                held,
                None,
                self.setting,
            )
        total = self._total
        if self.total_limit and total and total >= self.total_limit:
            raise refusal(
                "the server's replies in flight (all tenants together) are at "
                f"{self.total_limit} bytes ({self.total_setting}); retry shortly",
                self.total_limit,
                None,
                None,
                self.total_setting,
            )

    def take(self, tenant: str, size: int) -> None:
        held = self._held.get(tenant, 0)
        if self.limit and held and held + size > self.limit:
            raise refusal(
                f"the caller's tenant has {held} bytes of replies in flight; this one "
                f"({size} bytes) would pass {self.limit} "
                f"({self.setting}); retry once they are read",
                self.limit,
                held,
                size,
                self.setting,
            )
        total = self._total
        if self.total_limit and total and total + size > self.total_limit:
            raise refusal(
                f"this reply ({size} bytes) would take the server's replies in flight (all "
                f"tenants together) past {self.total_limit} bytes ({self.total_setting}); "
                "retry shortly",
                self.total_limit,
                None,
                size,
                self.total_setting,
            )
        self._held[tenant] = held + size
        self._total = total + size

    def give_back(self, tenant: str, size: int) -> None:
        self._total -= size
        left = self._held.get(tenant, 0) - size
        if left > 0:
            self._held[tenant] = left
        else:
            self._held.pop(tenant, None)  # no entry left behind per tenant ever seen


class Holding:
    """The reply one call has in flight (none, or the last one taken)."""

    __slots__ = ("_bytes", "_size", "_tenant")

    def __init__(self, ledger: ReplyBytes, tenant: str) -> None:
        self._bytes = ledger
        self._tenant = tenant
        self._size = 0

    def take(self, size: int) -> None:
        """Counts a reply of ``size`` bytes, or raises RESOURCE_EXHAUSTED (RetryInfo)."""
        self._bytes.take(self._tenant, size)
        self._size += size

    def release(self, *_: object) -> None:
        """The replies taken are sent (or never will be). Safe to call again; takes any
        arguments, so it can be gRPC's done callback."""
        if self._size:
            self._bytes.give_back(self._tenant, self._size)
            self._size = 0


def refusal(
    message: str, limit: int, held: int | None, size: int | None, setting: str
) -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for bytes in flight (one tenant's, or all) past ``limit`` (``setting``):
    this reason, a RetryInfo, and the sizes as ErrorInfo metadata (``size``: None when the
    call is refused before its reply is built). ``held``: the caller's tenant's own bytes,
    None for the bound of all tenants together: what the others hold is theirs, and a
    refusal naming the total told a tenant, to the byte, what other tenants were being
    sent."""
    metadata = {"limit_bytes": str(limit)}
    if held is not None:
        metadata["held_bytes"] = str(held)
    if size is not None:
        metadata["size_bytes"] = str(size)
    metadata["setting"] = setting
    return ResourceExhausted(
        message, reason=REASON, metadata=metadata, retry_after=RETRY_AFTER_SECONDS
    )
