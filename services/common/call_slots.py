"""The cap on calls a server serves at once (``max_concurrent_rpcs``), and on those one
tenant holds of them (``max_concurrent_rpcs_per_tenant``), held by the chassis.

grpc.aio has the first cap built in (``maximum_concurrent_rpcs``), but its refusal is a
bare RESOURCE_EXHAUSTED ("Concurrent RPC limit exceeded") with no ErrorInfo, unlike every
other refusal of ours, and it counts health checks too, so a busy server failed its probes.
The chassis takes a slot when a call of one of our services starts and gives it back when
the call ends however it ends (answered, failed, cancelled, deadline passed, a stream
closed early); health checking and reflection are not wrapped by the chassis and take none.
Counters on the event loop: no lock needed, nothing to leak across processes.

The tenant's share is what keeps one tenant's flood from taking every slot: without it a
tenant opening ``max_concurrent_rpcs`` slow calls (streams whose provider is slow, imports
that trickle) left every other tenant's call refused. The tenants' Redis quota
(``QUOTA_CONCURRENT_CALLS``) bounds the same across replicas, but only with a Redis, and
its check is a round trip during which the call already holds a server slot; the share is
taken right after authentication, with no wait between it and the server's slot, so a
tenant's refused calls never hold a slot another tenant could have had.
"""

from __future__ import annotations

from services.common.errors import ResourceExhausted

REASON = "TOO_MANY_CONCURRENT_RPCS"
# Both refusals share the reason; metadata ``scope`` tells a client which one it met
# without reading ``setting``: ``server`` (every slot taken: back off, any tenant) or
# ``tenant`` (the caller's own share: its other calls are what hold it).


class CallSlots:
    def __init__(
        self, limit: int, setting: str, per_tenant: int = 0, per_tenant_setting: str = ""
    ) -> None:
        """``limit`` calls at once (0: no limit), ``per_tenant`` of them at most held by one
        tenant (0: no share but the whole); ``setting`` and ``per_tenant_setting`` are the
        variables that set them, named in the refusal so an operator knows what to raise."""
        self.limit = limit
        self.setting = setting
        self.per_tenant = per_tenant
        self.per_tenant_setting = per_tenant_setting
        self._in_flight = 0
        self._tenants: dict[str, int] = {}

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def held_by(self, tenant: str) -> int:
        return self._tenants.get(tenant, 0)

    def take(self) -> None:
        """Takes a slot, or raises RESOURCE_EXHAUSTED when every slot is taken."""
        if self.limit and self._in_flight >= self.limit:
            raise ResourceExhausted(
                f"the server is serving its limit of {self.limit} calls at once "
                f"({self.setting}); retry shortly",
                reason=REASON,
                metadata={"limit": str(self.limit), "setting": self.setting, "scope": "server"},
            )
        self._in_flight += 1

    def give_back(self) -> None:
        self._in_flight -= 1

    def call(self) -> CallSlot:
        """The slot of one call: the server's, taken as the block is entered; its
        tenant's, taken by ``CallSlot.take_for`` once the caller is known. Both are given
        back when the block is left."""
        return CallSlot(self)

    def _take_for(self, tenant: str) -> None:
        held = self._tenants.get(tenant, 0)
        if self.per_tenant and held >= self.per_tenant:
            # Not the other tenants' count: what they do is none of this caller's business.
            raise ResourceExhausted(
                f"the caller's tenant already has its share of {self.per_tenant} calls at "
                f"once on this server ({self.per_tenant_setting}); retry shortly",
                reason=REASON,
                metadata={
                    "limit": str(self.per_tenant),
                    "setting": self.per_tenant_setting,
                    "scope": "tenant",
                },
            )
        self._tenants[tenant] = held + 1

    def _give_back_for(self, tenant: str) -> None:
        held = self._tenants[tenant] - 1
        if held:
            self._tenants[tenant] = held
        else:
            del self._tenants[tenant]  # a tenant that called once holds no entry for ever

    def __enter__(self) -> CallSlots:
        self.take()  # a refusal leaves the block before it is entered: nothing to give back
        return self

    def __exit__(self, *exc: object) -> None:
        self.give_back()


class CallSlot:
    """One call's hold on the server's slots (see ``CallSlots.call``)."""

    def __init__(self, slots: CallSlots) -> None:
        self._slots = slots
        self._tenant: str | None = None

    def take_for(self, tenant: str) -> None:
        """Counts the call against ``tenant``'s share, or raises RESOURCE_EXHAUSTED naming
        the share's setting when the tenant holds all of it."""
        self._slots._take_for(tenant)
        self._tenant = tenant

    def __enter__(self) -> CallSlot:
        self._slots.take()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tenant is not None:
            self._slots._give_back_for(self._tenant)
            self._tenant = None
        self._slots.give_back()
