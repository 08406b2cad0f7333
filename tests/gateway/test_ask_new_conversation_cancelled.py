"""An Ask into a new conversation that ends (its client gone, its deadline passed) while
memory creates that conversation: memory may create it all the same, after the gateway
has stopped waiting for its id. The conversation must not stay behind, empty, in the
user's list. Through real gRPC, memory on a real Redis behind a loopback relay that holds
back CreateConversation's answer, the loopback fake LLM."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc

from tests.gateway.conftest import ALICE, AS_ALICE, Stack, StackFactory, create_books
from tests.support.relay import Relay


class _HoldCreate(Relay):
    """Relays to the real memory service; CreateConversation's answer, once memory has
    made the conversation, is held until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.created = asyncio.Event()
        self.release = asyncio.Event()

    async def answer(self, method: str, answer: bytes) -> bytes:
        if method.endswith("/CreateConversation"):
            self.created.set()
            await asyncio.wait_for(self.release.wait(), 10)
        return answer


async def _relayed(stack_factory: StackFactory, relay: _HoldCreate) -> Stack:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    server.add_generic_rpc_handlers((relay,))
    await server.start()
    stack = await stack_factory(memory_addr=f"127.0.0.1:{port}")
    stack.servers["relay"] = server  # type: ignore[assignment]
    relay.target = f"127.0.0.1:{stack.servers['memory'].port}"
    await create_books(stack)
    return stack


async def _listed(stack: Stack) -> list[str]:
    listed = await stack.memory.ListConversations(mem_pb.ListConversationsRequest(), metadata=ALICE)
    return [c.conversation_id for c in listed.conversations]


async def _none_left(stack: Stack) -> list[str]:
    """The user's conversations once the gateway's clean-up has had its time (it runs
    after the Ask has ended); [] at once when nothing is left. Polled for up to 30 s (was
    about 5 s): a loaded machine may be slower to it."""
    end = asyncio.get_running_loop().time() + 30
    while True:
        left = await _listed(stack)
        if not left or asyncio.get_running_loop().time() > end:
            return left
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("how", ["client gone", "deadline"])
async def test_a_new_conversation_made_as_the_ask_ended_is_not_left_behind(
    stack_factory: StackFactory, how: str
) -> None:
    """Before: the gateway's CreateConversation call was cancelled with the Ask; memory had
    made the conversation, its id never reached the gateway, and the empty conversation
    stayed in Alice's list."""
    relay = _HoldCreate()
    stack = await _relayed(stack_factory, relay)
    request = gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True)
    timeout = 3.0 if how == "deadline" else 30.0
    asking = asyncio.ensure_future(stack.stub.Ask(request, metadata=ALICE, timeout=timeout))
    await asyncio.wait_for(relay.created.wait(), 20)  # memory has made it; no answer yet
    if how == "client gone":
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
    else:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await asking
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.sleep(0.2)  # the gateway has seen the Ask end
    relay.release.set()  # memory's answer, with the id, arrives only now
    assert await _none_left(stack) == []
    # The user's next Ask into a new conversation is stored as usual.
    answer = await stack.stub.Ask(request, metadata=ALICE, timeout=20)
    assert await _listed(stack) == [answer.conversation_id]


async def test_a_conversation_made_long_after_the_deadline_is_not_left_behind(
    stack_factory: StackFactory,
) -> None:
    """Memory answers CreateConversation more than 2 s after the Ask's deadline. Before:
    the gateway's create call had the Ask's deadline plus 2 s, so it gave up then, and
    the conversation memory made all the same stayed in Alice's list, empty. Now the
    clean-up waits for the id up to GENSEARCH_GATEWAY_ASK_CLEANUP_SECONDS (default 30)."""
    relay = _HoldCreate()
    stack = await _relayed(stack_factory, relay)
    request = gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True)
    loop = asyncio.get_running_loop()
    start = loop.time()
    asking = asyncio.ensure_future(stack.stub.Ask(request, metadata=ALICE, timeout=3.0))
    await asyncio.wait_for(relay.created.wait(), 20)  # memory has made it; no answer yet
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await asking
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # At least 2 s past the Ask's deadline (the old grace) before memory answers: a lower
    # bound only, any later is the same case.
    await asyncio.sleep(max(0.0, start + 3.0 + 3.0 - loop.time()))
    relay.release.set()
    assert await _none_left(stack) == []


async def test_a_gateway_stopping_finishes_the_clean_up_first(
    stack_factory: StackFactory,
) -> None:
    """The gateway stops (a rolling deploy) while memory still creates the conversation
    of an Ask that ended. Before: the downstream channels closed under the clean-up, which
    never learned the id, and the conversation stayed. Now the stop waits for it (up to
    ASK_CLEANUP_SECONDS)."""
    relay = _HoldCreate()
    stack = await _relayed(stack_factory, relay)
    request = gw_pb.AskRequest(collection="Books", llm_question="desert?", new_conversation=True)
    asking = asyncio.ensure_future(stack.stub.Ask(request, metadata=ALICE, timeout=30))
    await asyncio.wait_for(relay.created.wait(), 20)  # memory has made it; no answer yet
    asking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asking
    stopping = asyncio.ensure_future(stack.gateway.stop(0))
    # A stop that does not wait for the clean-up is over by then (a lower bound only: on a
    # slower machine this test may pass on the old code, never fail on the new).
    await asyncio.wait({stopping}, timeout=2)
    relay.release.set()
    await stopping
    # Memory itself now, the gateway gone.
    port = stack.servers["memory"].port
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        memory = mem_grpc.MemoryServiceStub(channel)
        listed = await memory.ListConversations(
            mem_pb.ListConversationsRequest(), metadata=AS_ALICE
        )
    assert list(listed.conversations) == []
