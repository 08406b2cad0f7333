"""A generative search whose search spent all but the call's last margin, against a cold
models cache whose ListModels does not answer, still returns its search results in time,
each hit DEADLINE_EXCEEDED: not the chassis' cut of the whole call (its results lost),
not a hang, not INTERNAL.

The search answers when the call has less than ``upstream_margin`` left, so the generation
budget is 0 (``room_before_cut``). The check of the request's models (ListModels, the
gateway's copy cold) then had ``budget or 2.0``: 2 s past the caller's deadline, and the
chassis ended the whole call ("the call's deadline ... was about to pass"). Now it takes
at most the budget (``models_check_seconds``; its rule is checked alone in
tests/common/test_deadline_margins.py), and this is the same end to end."""

from __future__ import annotations

import asyncio

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb

from services.common.call_deadline import margin, upstream_margin
from tests.gateway.conftest import ALICE, DIM, StackFactory, create_books
from tests.support.relay import Relay, serving

CALL_SECONDS = 5.0


class _Late(Relay):
    """Relays every unary method to the real service; the answer of ``method`` is held
    until ``until`` (an event-loop time; None: held for good)."""

    def __init__(self, method: str) -> None:
        super().__init__()
        self.method = method
        self.until: float | None = 0.0
        self.held = 0

    async def answer(self, method: str, answer: bytes) -> bytes:
        if method.endswith(f"/{self.method}"):
            self.held += 1
            if self.until is None:
                await asyncio.sleep(3600)
            else:
                await asyncio.sleep(self.until - asyncio.get_running_loop().time())
        return answer


async def test_a_search_that_spent_the_budget_against_a_cold_models_cache_returns_its_hits(
    stack_factory: StackFactory,
) -> None:
    search, models = _Late("Search"), _Late("ListModels")
    models.until = None  # the models check never gets an answer
    async with serving(search) as retrieval_addr, serving(models) as generation_addr:
        stack = await stack_factory(retrieval_addr=retrieval_addr, generation_addr=generation_addr)
        search.target = f"127.0.0.1:{stack.servers['retrieval'].port}"
        models.target = f"127.0.0.1:{stack.servers['generation'].port}"
        await create_books(stack, direct=True)
        loop = asyncio.get_running_loop()
        # The search answers when the call has less than upstream_margin (0.4 s) left, so
        # the generation budget is 0, and as early in that window as it can: the rest
        # of the call (the models check, the hits' failures, the reply) has until the
        # chassis' cut, margin (0.2 s) before the deadline, and a loaded machine's stalls
        # eat into that. The gateway's deadline falls a few ms after the client's (gRPC
        # sends the timeout rounded up): 0.04 s inside the window keeps the budget at 0.
        deadline = loop.time() + CALL_SECONDS
        search.until = deadline - (upstream_margin(CALL_SECONDS) - 0.04)
        assert upstream_margin(CALL_SECONDS) - 0.04 > margin(CALL_SECONDS) + 0.1
        response = await stack.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(
                collection="Books",
                near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
                limit=3,
                generate=gw_pb.Generate(single_prompt="Summarize {title}"),
            ),
            metadata=ALICE,
            timeout=CALL_SECONDS,
        )
    assert search.held == 1
    # The models cache was cold (a new stack), and its check got a moment only (1 ms):
    # its ListModels may end before it reaches the relay, so 0 is an answer as good as 1.
    assert models.held <= 1
    # The search's results, each hit out of generation time: the documented answer.
    assert len(response.hits) == 3
    for hit in response.hits:
        error = hit.generation.error
        assert error.status == grpc.StatusCode.DEADLINE_EXCEEDED.name, hit
        assert error.code == grpc.StatusCode.DEADLINE_EXCEEDED.value[0]
    assert stack.fake.chat_requests == []  # no model was asked, with no time to answer
