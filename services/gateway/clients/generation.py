"""The generation service, as the gateway calls it.

LLM calls are metered here (the per-tenant quota, wired in ``__main__``): one call is
admitted before each Generate and StreamGenerate (``before_generate``, which raises to
refuse it); the generation service then says how many upstream calls it really made
(``upstream_calls``: retries, fallback pairs, a corrective retry), on its reply or its
error, and the calls beyond the one admitted are charged after the fact
(``after_generate``). They are never refused: they were made already. The tenant is the
caller's, not the task's: a summary fold runs in a background worker.

Calls in flight are bounded here too, over every request of this gateway
(``generation_max_in_flight``; docs/gateway.md#generation-calls-in-flight). Each Generate
and StreamGenerate takes a slot before it is sent, tenants waiting for one in turn
(``services/common/fair_slots.py``; first come first served within a tenant), and holds it
until it ends; a call that could get one only with less than ``MIN_CALL_SECONDS`` of its
deadline left fails at once with RESOURCE_EXHAUSTED / ``GENERATION_IN_FLIGHT_WAIT``. Without
the bound a fan-out of more calls than a generation replica accepts at once failed the
excess: its process refused them (TOO_MANY_CONCURRENT_RPCS) and its HTTP/2 connection reset
them (REFUSED_STREAM), which grpc-python does not queue. A call refused either way never
ran, so it is sent again after a short backoff while its deadline allows, keeping its slot
(several gateways can still fill one replica together). Time a call waited here, for a
slot or after a refusal, is added to the ``wait_time`` it reports; refusals are not
``attempts`` (nothing went upstream).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from gensearch.generation.v1 import generation_service_pb2 as gen_pb
from gensearch.generation.v1 import generation_service_pb2_grpc as gen_grpc
from google.protobuf import duration_pb2

from services.common import call_slots
from services.common.auth import Authenticator
from services.common.egress import EMBEDDING_KEY_HEADER, RERANK_KEY_HEADER
from services.common.errors import (
    DOWNSTREAM_UNAVAILABLE,
    WAIT_MS,
    ResourceExhausted,
    ServiceError,
    Unavailable,
    metadata_count,
    upstream_calls,
)
from services.common.fair_slots import FairSlots
from services.common.server import tenant_share
from services.common.shutdown_cut import REASON as SHUTDOWN_REASON
from services.gateway.clients.base import ServiceClient, refused_stream
from services.gateway.clients.caller import Caller, Metadata
from services.gateway.clients.channel import GENERATION_SERVICE
from services.gateway.metrics import GENERATION_REFUSED, GENERATION_WAITING
from services.gateway.request_parts import refusal_at, setting_at_fault
from services.gateway.settings import GatewaySettings

SETTING = "GENSEARCH_GATEWAY_GENERATION_MAX_IN_FLIGHT"
PER_TENANT_SETTING = "GENSEARCH_GATEWAY_GENERATION_MAX_IN_FLIGHT_PER_TENANT"
#: A call that found no free slot in time (RESOURCE_EXHAUSTED).
IN_FLIGHT_WAIT = "GENERATION_IN_FLIGHT_WAIT"
#: The generation service's connection refused the call: HTTP/2 REFUSED_STREAM, its
#: ``GENSEARCH_GENERATION_MAX_CONCURRENT_STREAMS`` reached (RESOURCE_EXHAUSTED).
TOO_MANY_STREAMS = "TOO_MANY_CONCURRENT_STREAMS"
STREAMS_SETTING = "GENSEARCH_GENERATION_MAX_CONCURRENT_STREAMS"
#: Refusals of a call that never ran: safe to send again.
REFUSED = frozenset({call_slots.REASON, TOO_MANY_STREAMS})
#: A slot that frees, or a retry due, with less than this left of a call's deadline is no
#: use: the call fails at once, saying why, instead of running out of time at the
#: generation service (the fan-out gives its calls its budget plus generation's own
#: margin, call_deadline.outlasting).
MIN_CALL_SECONDS = 0.5
#: Pause before a refused call is sent again: doubling from the first to the last, each
#: drawn between half and all of it (so refused calls do not come back together).
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 1.0
#: Generation's refusal of messages longer than its GENSEARCH_GENERATION_MAX_PROMPT_CHARS
#: (field ``messages``; metadata ``max_chars``, ``chars``, ``setting``).
PROMPT_TOO_LONG = "PROMPT_TOO_LONG"
#: The channel's own UNAVAILABLE (from_rpc_error): no replica answered.
NO_REPLICA = DOWNSTREAM_UNAVAILABLE

R = TypeVar("R")
#: A StreamGenerate call that was not refused: its messages, and the first (None: none came).
_Opened = tuple[AsyncIterator[gen_pb.StreamGenerateResponse], gen_pb.StreamGenerateResponse | None]


@dataclass(frozen=True)
class CallerFields:
    """The caller's fields a generation request was built from, named in place of
    generation's own when it refuses them (``caller_fields_refused``): the caller never
    sent ``messages``, ``max_tokens``, ``provider`` or ``model``. None: that field is the
    gateway's own (a question rewrite's prompt, a summary's), or cannot be told (a
    fallback chain's ``model``), named as it came. ``provider_setting`` /
    ``model_setting``: the gateway's setting that chose the provider / model (empty: the
    request or the collection did), blamed in place of the caller."""

    prompt: str | None = None
    max_tokens: str | None = None
    provider: str | None = None
    model: str | None = None
    provider_setting: str = ""
    model_setting: str = ""


#: A call none of whose fields is the caller's (a test's, a relay's).
OWN_FIELDS = CallerFields()


@dataclass
class _Waited:
    """Seconds one call spent waiting in the gateway: for a slot, after refusals; and
    ``cut_calls``, the LLM requests of a try cut by its replica's shutdown, sent again
    (charged with the call's outcome: the second try's count replaces the cut's)."""

    seconds: float = 0.0
    cut_calls: int = 0

    def add_to(self, duration: duration_pb2.Duration) -> None:
        if self.seconds > 0:
            duration.FromNanoseconds(duration.ToNanoseconds() + int(self.seconds * 1e9))

    def note(self, err: ServiceError) -> None:
        """``err``'s ErrorInfo ``wait_ms`` includes the gateway's wait."""
        if self.seconds > 0:
            before = metadata_count(err.metadata, WAIT_MS) or 0
            err.metadata[WAIT_MS] = str(before + round(self.seconds * 1000))


class GenerationClient(ServiceClient):
    service = "generation"
    proto_service = GENERATION_SERVICE
    stub_class = gen_grpc.GenerationServiceStub

    #: Awaited with the caller's tenant before each Generate and StreamGenerate (the
    #: per-tenant LLM quota); it raises to refuse the call.
    before_generate: Callable[[str], Awaitable[None]] | None = None
    #: Awaited with the upstream calls a Generate or StreamGenerate made beyond the first,
    #: and the caller's tenant, once they are known (only when there were any).
    after_generate: Callable[[int, str], Awaitable[None]] | None = None

    def __init__(
        self,
        target: str,
        settings: GatewaySettings,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        super().__init__(target, settings, interceptors)
        self.max_in_flight = settings.generation_max_in_flight
        # Waiters take turns by tenant (asyncio's semaphore served them first come, first
        # served: one tenant's queue of calls held every other tenant's behind all of it).
        # And one tenant holds at most its share of them, so slots are left for the others
        # however long its calls run.
        self._share(settings.generation_share())

    def _share(self, share: int) -> None:
        self.max_in_flight_per_tenant = min(share or self.max_in_flight, self.max_in_flight)
        self._slots = (
            FairSlots(self.max_in_flight, self.max_in_flight_per_tenant)
            if self.max_in_flight
            else None
        )

    def share_among(self, authenticator: Authenticator, share: int) -> str | None:
        """Holds each tenant to ``share`` of the slots, or to none where the gateway knows
        one tenant or none (tenant_share, as for the call share): a share there held the
        only tenant to part of the slots, for no one. Returns why it is off (None: on).
        Called once, before the first call."""
        share, off = tenant_share(share, authenticator)
        self._share(share)
        return off

    def metadata(self, caller: Caller) -> Metadata:
        # The caller's own provider keys go to the generation service only; not the keys
        # for a collection's embeddings or rerank endpoint (the retrieval service's): an
        # LLM provider named "embedding" or "rerank" took them for its own.
        keys = tuple(
            (k, v)
            for k, v in caller.provider_keys
            if k not in (EMBEDDING_KEY_HEADER, RERANK_KEY_HEADER)
        )
        return caller.identity + keys

    def map_error(self, err: grpc.aio.AioRpcError) -> ServiceError:
        if refused_stream(err):
            return ResourceExhausted(
                "the generation service refused the call: the gateway's connection to it "
                f"carries its limit of calls at once ({STREAMS_SETTING}); retry shortly",
                reason=TOO_MANY_STREAMS,
                metadata={"service": self.service, "setting": STREAMS_SETTING},
            )
        return super().map_error(err)

    async def _charge_extra(self, calls: int, caller: Caller, waited: _Waited) -> None:
        """Charges the ``calls`` of the call's outcome and those of a try cut by shutdown
        (once), beyond the one admitted before the first try. That one is either try's:
        a second try that made no request (refused unrun) leaves it to the cut try's,
        which were charged on top of it before."""
        extra = max(calls + waited.cut_calls - 1, 0)
        waited.cut_calls = 0
        if self.after_generate is not None and extra > 0:
            await self.after_generate(extra, caller.tenant)

    @contextlib.asynccontextmanager
    async def _slot(
        self, tenant: str, deadline: float | None, waited: _Waited
    ) -> AsyncIterator[None]:
        """Holds one of the ``generation_max_in_flight`` slots while the block runs;
        ``tenant``'s calls take turns for them with other tenants'."""
        slots = self._slots
        if slots is None:
            yield
            return
        if slots.locked(tenant):
            loop = asyncio.get_running_loop()
            started = loop.time()
            wait = None if deadline is None else deadline - MIN_CALL_SECONDS - started
            try:
                with GENERATION_WAITING.track_inprogress():
                    await asyncio.wait_for(
                        slots.acquire(tenant), None if wait is None else max(wait, 0)
                    )
            except TimeoutError:
                waited.seconds += loop.time() - started
                if slots.at_share(tenant):
                    raise ResourceExhausted(
                        f"the caller's tenant has its share of {self.max_in_flight_per_tenant} "
                        f"generation calls in flight in this gateway ({PER_TENANT_SETTING}) "
                        "and none ended in time for this call's deadline; retry shortly, "
                        "with a longer deadline, or fewer calls at once",
                        reason=IN_FLIGHT_WAIT,
                        metadata={
                            "limit": str(self.max_in_flight_per_tenant),
                            "setting": PER_TENANT_SETTING,
                        },
                    ) from None
                raise ResourceExhausted(
                    f"the gateway has its limit of {self.max_in_flight} generation calls in "
                    f"flight ({SETTING}) and none ended in time for this call's deadline; "
                    "retry shortly, with a longer deadline, or raise the setting",
                    reason=IN_FLIGHT_WAIT,
                    metadata={"limit": str(self.max_in_flight), "setting": SETTING},
                ) from None
            waited.seconds += loop.time() - started
        else:
            await slots.acquire(tenant)  # free: no wait
        try:
            yield
        finally:
            slots.release(tenant)

    async def _backoff(
        self, err: ResourceExhausted, pause: float, deadline: float | None, waited: _Waited
    ) -> bool:
        """After the refusal ``err``, sleeps ``pause`` before the call goes again; False (no
        sleep) when ``err`` is no refusal, or the deadline would not leave
        ``MIN_CALL_SECONDS`` after the pause."""
        if err.reason not in REFUSED:
            return False
        GENERATION_REFUSED.labels(err.reason).inc()
        loop = asyncio.get_running_loop()
        if deadline is not None and loop.time() + pause > deadline - MIN_CALL_SECONDS:
            return False
        await asyncio.sleep(pause)
        waited.seconds += pause
        return True

    async def _unrefused(
        self,
        send: Callable[[float | None], Awaitable[R]],
        deadline: float | None,
        waited: _Waited,
    ) -> R:
        """``send(timeout)``, sent again while the generation service refuses it unrun,
        and once when the replica that ran it was shutting down (``_again_after_cut``):
        the LLM requests the cut try made (its ``upstream_calls``) are then kept in
        ``waited``, charged with the call's outcome (``_charge_extra``)."""
        loop = asyncio.get_running_loop()
        backoff = FIRST_BACKOFF
        cut: Unavailable | None = None  # the replica's SHUTTING_DOWN, once sent again
        while True:
            timeout = None if deadline is None else max(deadline - loop.time(), 0.001)
            try:
                return await send(timeout)
            except ResourceExhausted as err:
                pause = random.uniform(backoff / 2, backoff)
                if not await self._backoff(err, pause, deadline, waited):
                    raise
                backoff = min(backoff * 2, MAX_BACKOFF)
            except Unavailable as err:
                if cut is not None:
                    if err.reason == NO_REPLICA:
                        # No other replica took it (one replica, or all stopping): the
                        # cut says what happened, the channel's failure does not, and
                        # its count is the call's (charged from it, not twice).
                        waited.cut_calls = 0
                        raise cut from None
                    raise
                if not self._again_after_cut(err, deadline):
                    raise
                # Counted where it is sent again (the predicate above only decides).
                GENERATION_REFUSED.labels(SHUTDOWN_REASON).inc()
                # All of them: the call admitted before the first try is the second's.
                waited.cut_calls = upstream_calls(err.metadata)
                cut = err

    @staticmethod
    def _again_after_cut(err: Unavailable, deadline: float | None) -> bool:
        """Whether a call the generation service ended SHUTTING_DOWN (its replica going
        away, shutdown_cut.py) is sent again: yes, once, while the deadline leaves
        ``MIN_CALL_SECONDS``. Safe: nothing of it reached the caller (a stream is sent
        again only while its first message has not come), and round-robin sends it to
        another replica, the stopping one's connection having gone away (GOAWAY) at the
        start of its grace period. Before, the hit failed UNAVAILABLE, though any other
        replica would have answered it."""
        if err.reason != SHUTDOWN_REASON:
            return False
        left = None if deadline is None else deadline - asyncio.get_running_loop().time()
        return left is None or left >= MIN_CALL_SECONDS

    @staticmethod
    def _deadline(timeout: float | None) -> float | None:
        return None if timeout is None else asyncio.get_running_loop().time() + timeout

    async def generate(
        self,
        request: gen_pb.GenerateRequest,
        caller: Caller,
        timeout: float | None,
        *,
        fields: CallerFields = OWN_FIELDS,
    ) -> gen_pb.GenerateResponse:
        """``fields``: the caller's fields the gateway built ``request`` from, named in
        place of generation's own when it refuses one (``caller_fields_refused``)."""
        deadline = self._deadline(timeout)
        waited = _Waited()
        try:
            async with self._slot(caller.tenant, deadline, waited):
                if self.before_generate is not None:
                    await self.before_generate(caller.tenant)

                async def send(left: float | None) -> gen_pb.GenerateResponse:
                    response: gen_pb.GenerateResponse = await self.unary(
                        "Generate", request, caller, left
                    )
                    return response

                response = await self._unrefused(send, deadline, waited)
        except ServiceError as err:
            waited.note(err)
            await self._charge_extra(upstream_calls(err.metadata), caller, waited)
            raise caller_fields_refused(err, fields) from None
        waited.add_to(response.wait_time)
        await self._charge_extra(response.upstream_calls, caller, waited)
        return response

    async def stream_generate(
        self,
        request: gen_pb.StreamGenerateRequest,
        caller: Caller,
        timeout: float | None,
        *,
        fields: CallerFields = OWN_FIELDS,
    ) -> AsyncIterator[gen_pb.StreamGenerateResponse]:
        """As ``generate``, streamed."""
        deadline = self._deadline(timeout)
        waited = _Waited()
        try:
            async with self._slot(caller.tenant, deadline, waited):
                if self.before_generate is not None:
                    await self.before_generate(caller.tenant)

                async def send(left: float | None) -> _Opened:
                    # A call is refused before its first message, so only the wait for that
                    # message is sent again; a failure after it is the stream's own.
                    chunks = self.stream("StreamGenerate", request, caller, left)
                    return chunks, await anext(chunks, None)

                chunks, chunk = await self._unrefused(send, deadline, waited)
                while chunk is not None:
                    if chunk.HasField("wait_time"):  # the last message
                        waited.add_to(chunk.wait_time)
                    if chunk.upstream_calls:
                        # The last message: charged before it is passed on, so a reader that
                        # stops at it leaves nothing uncounted.
                        await self._charge_extra(chunk.upstream_calls, caller, waited)
                    yield chunk
                    chunk = await anext(chunks, None)
        except ServiceError as err:
            waited.note(err)
            await self._charge_extra(upstream_calls(err.metadata), caller, waited)
            raise caller_fields_refused(err, fields) from None
        finally:
            if waited.cut_calls:
                # The reader stopped before the last message (the count), or it had none:
                # the cut try's requests are known all the same, and were left uncharged.
                # The try that streamed made one at least (the admitted one covers it).
                await self._charge_extra(1, caller, waited)

    async def list_models(self, caller: Caller, timeout: float | None) -> gen_pb.ListModelsResponse:
        return await self.unary("ListModels", gen_pb.ListModelsRequest(), caller, timeout)


#: ErrorInfo metadata of a refused name a gateway setting chose: the variable of the bound
#: generation held it to (its own ``setting``; ``setting`` then names the gateway's).
BOUND_SETTING = "bound_setting"


def caller_fields_refused(err: ServiceError, fields: CallerFields) -> ServiceError:
    """``err`` naming the caller's field when it is generation's refusal (INVALID_ARGUMENT)
    of a field of the request the gateway built: ``messages`` as ``fields.prompt``
    (``prompt_refused``), ``max_tokens`` as ``fields.max_tokens``
    (``max_tokens_refused``), ``provider`` and ``model`` as where they came from
    (``choice_refused``)."""
    if err.code != grpc.StatusCode.INVALID_ARGUMENT:
        return err
    if err.field == "max_tokens":
        return max_tokens_refused(err, fields.max_tokens)
    if err.field == "provider":
        return choice_refused(err, "provider", fields.provider, fields.provider_setting)
    if err.field == "model":
        return choice_refused(err, "model", fields.model, fields.model_setting)
    return prompt_refused(err, fields.prompt)


def choice_refused(err: ServiceError, what: str, field: str | None, setting: str) -> ServiceError:
    """``err``, generation's refusal of the ``provider`` or ``model`` (``what``) the gateway
    sent, naming the ``field`` it came from instead: the request's own
    (INVALID_ARGUMENT), the collection's stored one (``collection.generative.…``,
    FAILED_PRECONDITION, ``refusal_at``), or, when a gateway ``setting`` chose it, that
    setting (``setting_at_fault``: FAILED_PRECONDITION, metadata ``setting``). Chiefly an
    upstream's own 404 model_not_found (an endpoint that does not check its models) and a
    choice the gateway could not check while ListModels did not answer. A name the setting
    chose is the operator's whatever generation's reason, which (or the name's form: too
    long for generation's own bound, spaces, control characters): the caller sent no name
    and can only work around it. A variable generation named as the bound it broke
    (metadata ``setting``, e.g. GENSEARCH_GENERATION_MAX_MODEL_CHARS) is kept as
    ``bound_setting``. Reason, metadata, retry_after and details are kept, with
    ``service``: generation."""
    if field is None:
        return err
    # Prefixed with the caller's field (ServiceError), as generation's was with its own.
    said = err.message.removeprefix(f"{what}: ")
    metadata = dict(err.metadata)
    if setting:
        renamed: ServiceError = setting_at_fault(said, what, setting, field, err.reason)
        bound = metadata.pop("setting", None)
        if bound is not None:
            metadata[BOUND_SETTING] = bound
    else:
        renamed = refusal_at(field)(said, field=field, reason=err.reason)
    renamed.metadata = {**metadata, **renamed.metadata, "service": "generation"}
    renamed.retry_after = err.retry_after
    renamed.details = err.details
    return renamed


def max_tokens_refused(err: ServiceError, max_tokens_field: str | None) -> ServiceError:
    """``err``, generation's refusal of the ``max_tokens`` the gateway sent, naming the
    caller's ``max_tokens_field`` instead: ``generate.max_tokens``, Ask's ``max_tokens``,
    or ``collection.generative.max_tokens`` when the collection's stored default set it
    (then FAILED_PRECONDITION, as the gateway's own checks of it: ``refusal_at``). Chiefly
    PROVIDER_TOKEN_LIMIT_EXCEEDED (a prompt plus max_tokens that can never fit a
    provider's tokens_per_minute window), which only generation can tell; reason and
    metadata are kept, with ``service``: generation."""
    if max_tokens_field is None or err.field != "max_tokens":
        return err
    renamed = refusal_at(max_tokens_field)(
        # Prefixed with the caller's field (ServiceError), as generation's message was
        # with its own when it did not name it.
        err.message.removeprefix("max_tokens: "),
        field=max_tokens_field,
        reason=err.reason,
        metadata={**err.metadata, "field": max_tokens_field, "service": "generation"},
        retry_after=err.retry_after,
    )
    renamed.details = err.details
    return renamed


def prompt_refused(err: ServiceError, prompt_field: str | None) -> ServiceError:
    """``err``, or, when it is generation's refusal (INVALID_ARGUMENT) of the messages the
    gateway rendered from the caller's ``prompt_field``, the same refusal naming that
    field: the caller never sent ``messages``. Too long (PROMPT_TOO_LONG: metadata
    ``max_chars``, ``chars``, ``setting``) and past a provider's context window
    (CONTEXT_WINDOW_EXCEEDED: the gateway's own guard fits a prompt to the window it
    knows, which may not be the one generation checks) alike. Code, reason and metadata
    are kept, with ``service``: generation. Other codes pass as they came."""
    if (
        prompt_field is None
        or err.field != "messages"
        or err.code != grpc.StatusCode.INVALID_ARGUMENT
    ):
        return err
    m = err.metadata
    if err.reason == PROMPT_TOO_LONG:
        message = (
            f"the prompt is {m.get('chars', '?')} characters; the generation service takes "
            f"at most {m.get('max_chars', '?')} ({m.get('setting', '?')})"
        )
    else:
        message = err.message.removeprefix("messages: ")
        message = f"the prompt rendered from {prompt_field} is refused: {message}"
    renamed = type(err)(
        message,
        field=prompt_field,
        reason=err.reason,
        metadata={**m, "field": prompt_field, "service": "generation"},
        retry_after=err.retry_after,
    )
    renamed.details = err.details
    return renamed
