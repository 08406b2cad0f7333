"""An Ask whose model does not answer before the call's deadline ends with the gateway's
own DEADLINE_EXCEEDED ("the question was not answered within its timeout"), as a
generative search's hit does, not with the chassis' generic cut ("the call's deadline
... was about to pass") nor a bare one.

Before, an Ask's turn had the whole call's time, and its generation calls what was left
of it (``time_left``): the turn's own timer fell after the chassis' cut, and a generation
call begun late in the turn (after a slow question rewrite) ended its upstream request
only its own short margin before the deadline, after that cut too. Now the turn ends
``upstream_margin`` before the call's deadline (``room_before_cut``, as a generative
search's budget) and its generation calls are given that budget plus generation's own
margin (``outlasting``), so the gateway's own timer reports.
"""

from __future__ import annotations

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb

from tests.gateway.conftest import ALICE, Stack, create_books
from tests.support.fake_openai import Behaviour
from tests.support.rpc import error_info, failure_of

CALL_SECONDS = 6.0
# The question rewrite answers late, so the answer's generation call begins with about
# 1.5 s of the call left: its own margin (a tenth of that) is shorter than the gateway's
# cut (a twentieth of the call's 6 s, 0.3 s capped at 0.2 s).
REWRITE_SECONDS = 4.5


async def _conversation_with_a_turn(stack: Stack) -> str:
    first = await stack.stub.Ask(
        gw_pb.AskRequest(
            collection="Books", llm_question="Tell me about desert planets", new_conversation=True
        ),
        metadata=ALICE,
        timeout=30,
    )
    return first.conversation_id


def _late_answer(stack: Stack) -> None:
    """The rewrite (the first chat request) answers after REWRITE_SECONDS; the answer
    never comes."""
    stack.fake.enqueue(
        Behaviour.ok("Dune desert spice year", latency=REWRITE_SECONDS), Behaviour.hang()
    )


def _the_gateways_own(err: grpc.aio.AioRpcError) -> None:
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, err
    info = error_info(err)  # not a bare "Deadline Exceeded"
    assert info.domain == "gensearch" and info.reason == "DEADLINE_EXCEEDED", info
    # The turn's own timer, not the chassis' backstop.
    assert "the question was not answered within its timeout" in (err.details() or ""), err
    assert "was about to pass" not in (err.details() or "")
    # The call's deadline set the budget, no field of the request.
    assert "field" not in info.metadata


async def test_an_ask_whose_late_answer_hangs_ends_with_the_gateways_own_deadline(
    stack: Stack,
) -> None:
    await create_books(stack)
    conversation = await _conversation_with_a_turn(stack)
    _late_answer(stack)
    err = await failure_of(
        stack.stub.Ask(
            gw_pb.AskRequest(
                collection="Books",
                llm_question="When was it written?",
                conversation_id=conversation,
            ),
            metadata=ALICE,
            timeout=CALL_SECONDS,
        )
    )
    _the_gateways_own(err)


async def test_a_stream_ask_whose_late_answer_hangs_ends_with_the_gateways_own_deadline(
    stack: Stack,
) -> None:
    await create_books(stack)
    conversation = await _conversation_with_a_turn(stack)
    _late_answer(stack)
    call = stack.stub.StreamAsk(
        gw_pb.StreamAskRequest(
            collection="Books", llm_question="When was it written?", conversation_id=conversation
        ),
        metadata=ALICE,
        timeout=CALL_SECONDS,
    )
    _the_gateways_own(await failure_of(call))
