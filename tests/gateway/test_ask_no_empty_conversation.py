"""An Ask with new_conversation never leaves an empty conversation in the user's list:
memory makes the conversation with its first turn, in one atomic step (CreateInteraction's
new_conversation), so a model that fails, memory failing under the write, a gateway
killed mid-Ask or attempts at once with one request_id leave nothing half made. Before,
the gateway made the conversation first and deleted it in a background clean-up when the
turn was not stored: a clean-up that could not reach memory (or a gateway killed) left
the conversation behind, empty. Through real gRPC, memory on a real Redis behind a
loopback relay, the loopback fake LLM."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc

from services.gateway import turns
from tests.gateway.conftest import ALICE, AS_ALICE, Stack, StackFactory, create_books
from tests.gateway.test_ask_idempotency import _race
from tests.support.fake_openai import Behaviour
from tests.support.relay import Relay

_WRITES = ("/CreateConversation", "/CreateInteraction", "/DeleteConversation")


class _Memory(Relay):
    """Memory as the gateway reaches it. ``failing``: methods answered UNAVAILABLE (with
    ``made``, once memory has done them: the answer is lost, not the write); ``hang``:
    the method is never sent on, and from then on nothing reaches memory (the gateway is
    killed there); ``no_claims``: CheckStorage's claim is dropped (a memory service
    older than it)."""

    def __init__(
        self,
        *,
        failing: tuple[str, ...] = (),
        made: bool = False,
        hang: str = "",
        no_claims: bool = False,
    ) -> None:
        super().__init__()
        self.failing = failing
        self.made = made
        self.hang = hang
        self.no_claims = no_claims
        self.dead = False
        self.hung = asyncio.Event()

    def request(self, method: str, request: bytes) -> bytes:
        if self.no_claims and method.endswith("/CheckStorage"):
            check = mem_pb.CheckStorageRequest.FromString(request)
            for field in ("claim_token", "claim_seconds", "release_claim"):
                check.ClearField(field)
            return check.SerializeToString()
        return request

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        method: str = details.method  # type: ignore[attr-defined]
        relayed = super().service(details)
        assert relayed is not None
        forward = relayed.unary_unary

        async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            if self.dead:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the gateway is gone")
            if self.hang and method.endswith(self.hang):
                self.dead = True
                self.hung.set()
                await asyncio.Event().wait()  # until the caller gives up
            if method.endswith(self.failing):
                if self.made:
                    await forward(request, context)
                await context.abort(grpc.StatusCode.UNAVAILABLE, "memory failed")
            answer: bytes = await forward(request, context)
            return answer

        return grpc.unary_unary_rpc_method_handler(handle)


async def _stack(stack_factory: StackFactory, relay: _Memory) -> Stack:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers((relay,))
    await server.start()
    stack = await stack_factory(memory_addr=f"127.0.0.1:{port}")
    stack.servers["relay"] = server  # type: ignore[assignment]
    relay.target = f"127.0.0.1:{stack.servers['memory'].port}"
    await create_books(stack)
    stack.fake.reply = "The desert planet is Arrakis [1]."
    return stack


async def _conversations(stack: Stack) -> list[tuple[str, int]]:
    """Alice's conversations and their turns, from memory itself (not through the
    gateway, which may be stopped, nor the relay, which may refuse), once the gateway's
    background work (its clean-ups, when it had them) has ended."""
    await turns.cleaned_up()
    port = stack.servers["memory"].port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        memory = mem_grpc.MemoryServiceStub(channel)
        listed = await memory.ListConversations(
            mem_pb.ListConversationsRequest(), metadata=AS_ALICE
        )
    return [(c.conversation_id, c.interaction_count) for c in listed.conversations]


def _ask(**fields: Any) -> gw_pb.AskRequest:
    return gw_pb.AskRequest(
        collection="Books", llm_question="desert?", new_conversation=True, **fields
    )


@pytest.mark.parametrize("request_id", ["", "k"])
async def test_an_ask_whose_model_fails_leaves_no_conversation(
    stack_factory: StackFactory, request_id: str
) -> None:
    stack = await _stack(stack_factory, _Memory())
    stack.fake.fail_next(1, Behaviour.error(400))
    with pytest.raises(grpc.aio.AioRpcError):
        await stack.stub.Ask(_ask(request_id=request_id), metadata=ALICE, timeout=30)
    assert await _conversations(stack) == []


@pytest.mark.parametrize("made", [False, True], ids=["write refused", "answer lost"])
async def test_memory_failing_under_the_write_leaves_no_empty_conversation(
    stack_factory: StackFactory, made: bool
) -> None:
    """Memory fails every write once the Ask is answered (when the write is made but its
    answer lost, the conversation holds its turn: not empty). Before: the conversation
    was made, the turn's write failed, and so did the clean-up's delete: it stayed,
    empty."""
    stack = await _stack(stack_factory, _Memory(failing=_WRITES[1:], made=made))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(_ask(), metadata=ALICE, timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    left = await _conversations(stack)
    assert all(turns_held >= 1 for _, turns_held in left), left
    if not made:
        assert left == []


@pytest.mark.parametrize("request_id", ["", "k"])
async def test_a_gateway_killed_before_the_write_leaves_no_conversation(
    stack_factory: StackFactory, request_id: str
) -> None:
    """The gateway dies as it sends the turn's write (nothing of it reaches memory from
    then on: no clean-up can run), the Ask cancelled and the gateway stopped. Before: the
    conversation made a step earlier stayed, empty."""
    relay = _Memory(hang="/CreateInteraction")
    stack = await _stack(stack_factory, relay)
    asking = asyncio.ensure_future(
        stack.stub.Ask(_ask(request_id=request_id), metadata=ALICE, timeout=30)
    )
    await asyncio.wait_for(relay.hung.wait(), 20)
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    await stack.gateway.stop(0)
    assert await _conversations(stack) == []


async def test_attempts_at_once_with_one_key_make_one_conversation(
    stack_factory: StackFactory,
) -> None:
    """Two attempts with one request_id at once on a memory without claims (both pay for
    an answer), memory refusing deletes: one conversation, holding one turn, and both
    answer with it. Before: the attempt whose write lost had made a conversation of its
    own, which its clean-up could not delete."""
    stack = await _stack(stack_factory, _Memory(failing=("/DeleteConversation",), no_claims=True))
    answers = iter(["first answer [1]", "second answer [1]"])
    stack.fake.reply = lambda body: next(answers)
    both = await _race(stack, _ask(request_id="k", rewrite_query=False), 2)
    assert all(isinstance(a, gw_pb.AskResponse) for a in both), both
    assert len({(a.conversation_id, a.interaction_id) for a in both}) == 1, both
    assert await _conversations(stack) == [(both[0].conversation_id, 1)]


async def test_a_late_write_keeps_its_turn(stack_factory: StackFactory) -> None:
    """Memory stores the turn after the Ask's deadline (its answer comes too late): the
    conversation holds the turn, and the client's retry with its request_id replays it."""

    class _Late(_Memory):
        async def answer(self, method: str, answer: bytes) -> bytes:
            if method.endswith("/CreateInteraction") and not self.hung.is_set():
                self.hung.set()
                await asyncio.sleep(30)  # cancelled when the gateway gives up
            return answer

    stack = await _stack(stack_factory, _Late())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.Ask(_ask(request_id="late"), metadata=ALICE, timeout=5)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    [(cid, count)] = await _conversations(stack)
    assert count == 1
    replay = await stack.stub.Ask(_ask(request_id="late"), metadata=ALICE, timeout=30)
    assert replay.replayed and replay.conversation_id == cid
    assert await _conversations(stack) == [(cid, 1)]


async def test_a_streamed_ask_makes_its_conversation_with_the_turn(
    stack_factory: StackFactory,
) -> None:
    """StreamAsk the same way: memory refusing the write ends the stream with its error
    and leaves no conversation; stored, the answer event names the conversation, which
    holds the turn (the context event, sent before it exists, names none)."""
    relay = _Memory(failing=("/CreateInteraction",))
    stack = await _stack(stack_factory, relay)
    request = gw_pb.StreamAskRequest(
        collection="Books", llm_question="desert?", new_conversation=True, request_id="s"
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE, timeout=30)]
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await _conversations(stack) == []
    relay.failing = ()
    events = [e async for e in stack.stub.StreamAsk(request, metadata=ALICE, timeout=30)]
    assert events[0].context.conversation_id == ""
    cid = events[-1].answer.conversation_id
    assert cid and await _conversations(stack) == [(cid, 1)]
