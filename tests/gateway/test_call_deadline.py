"""Short deadlines end with our DEADLINE_EXCEEDED and its ErrorInfo, not gRPC's bare one.

Reproduced before: with a hanging embeddings endpoint behind a `near_text` search, every
gateway RPC ran until its deadline, and the client's own gRPC ended it with a bare
DEADLINE_EXCEEDED ("Deadline Exceeded", or "Stream removed" on a stream), no ErrorInfo;
a call arriving with next to no time left started its work all the same. Now the chassis
refuses a call with less than ``min_deadline`` left (DEADLINE_TOO_SHORT) and ends one
still working just before its deadline (DEADLINE_EXCEEDED), both with ErrorInfo
(services/common/call_deadline.py). A deadline already past in the client never reaches
a server: gRPC ends it there, bare, and nothing can be added (docs/operations.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from grpc_status import rpc_status

from tests.client.test_readme import tool
from tests.gateway.conftest import (
    ALICE,
    AS_ALICE,
    DIM,
    Stack,
    StackFactory,
    create_books,
    create_embedded,
    started_calls,
)
from tests.support.rpc import error_info, failure_of

GATEWAY = "gensearch.gateway.v1.GatewayService"


def _calls(stack: Stack, collection: str, **query: Any) -> dict[str, Callable[[float], Any]]:
    """Each gateway RPC that searches, and a search forwarded to retrieval, with a
    timeout."""
    generate = gw_pb.Generate(single_prompt="Summarize {title}")
    return {
        "GenerativeSearch": lambda t: stack.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(collection=collection, generate=generate, **query),
            metadata=ALICE,
            timeout=t,
        ),
        "StreamGenerativeSearch": lambda t: stack.stub.StreamGenerativeSearch(
            gw_pb.StreamGenerativeSearchRequest(collection=collection, generate=generate, **query),
            metadata=ALICE,
            timeout=t,
        ),
        "Ask": lambda t: stack.stub.Ask(
            gw_pb.AskRequest(collection=collection, llm_question="Which one?"),
            metadata=ALICE,
            timeout=t,
        ),
        "StreamAsk": lambda t: stack.stub.StreamAsk(
            gw_pb.StreamAskRequest(collection=collection, llm_question="Which one?"),
            metadata=ALICE,
            timeout=t,
        ),
        "Search": lambda t: stack.retrieval.Search(
            ret_pb.SearchRequest(collection=collection, **query), metadata=ALICE, timeout=t
        ),
    }


async def test_a_call_arriving_with_too_little_time_is_refused_at_once(
    stack_factory: StackFactory,
) -> None:
    # A minimum far above the call's timeout makes "too short" certain, however slow the
    # machine: the refusal comes back within the call's 5 s.
    stack = await stack_factory(shared={"min_deadline": 30.0})
    await create_books(stack, direct=True)
    near = {"near_vector": ret_pb.NearVector(vector=[0.5] * DIM)}
    for name, call in _calls(stack, "Books", **near).items():
        err = await failure_of(call(5.0))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (name, err)
        info = error_info(err)
        assert info.reason == "DEADLINE_TOO_SHORT" and info.domain == "gensearch", name
        assert info.metadata["setting"] == "GENSEARCH_GATEWAY_MIN_DEADLINE", name
        assert info.metadata["min_ms"] == "30000"
        assert info.metadata["remaining_ms"].isdecimal(), info
        assert "GENSEARCH_GATEWAY_MIN_DEADLINE" in (err.details() or "")
    assert stack.fake.chat_requests == []  # no work was started
    # A service behind the gateway holds its own minimum the same way.
    err = await failure_of(
        stack.retrieval_direct.ListCollections(
            ret_pb.ListCollectionsRequest(), metadata=AS_ALICE, timeout=5.0
        )
    )
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info = error_info(err)
    assert info.reason == "DEADLINE_TOO_SHORT"
    assert info.metadata["setting"] == "GENSEARCH_RETRIEVAL_MIN_DEADLINE"


async def test_a_deadline_passing_during_the_work_ends_with_error_info(
    stack_factory: StackFactory,
) -> None:
    stack = await stack_factory()
    await create_embedded(stack)
    # The embeddings endpoint answers nothing: each search's first step waits until the
    # deadline (retrieval's own embed timeout is 30 s).
    stack.fake.latency = 3600.0
    calls = _calls(stack, "Embedded", near_text=ret_pb.NearText(text="spice"))
    errors = await asyncio.gather(*(failure_of(call(4.0)) for call in calls.values()))
    for name, err in zip(calls, errors, strict=True):
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED, (name, err)
        info = error_info(err)  # not gRPC's bare "Deadline Exceeded"
        assert info.reason == "DEADLINE_EXCEEDED" and info.domain == "gensearch", (name, info)
        assert info.metadata["timeout_ms"].isdecimal(), (name, info)
        assert info.metadata["remaining_ms"].isdecimal(), (name, info)


async def test_a_deadline_already_past_never_reaches_the_gateway(stack: Stack) -> None:
    """Nothing can be added: the client's gRPC fails the call without sending it."""
    before = started_calls(GATEWAY, "GenerativeSearch")
    err = await failure_of(
        stack.stub.GenerativeSearch(
            gw_pb.GenerativeSearchRequest(collection="Books"), metadata=ALICE, timeout=-1.0
        )
    )
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert rpc_status.from_call(err) is None  # type: ignore[arg-type]
    assert started_calls(GATEWAY, "GenerativeSearch") == before


# What a Go client (here grpcurl, `-max-time`) sends for a deadline ~285 years away: the
# header "2500000H". gRPC allows up to 99999999 hours.
FAR_DEADLINE_SECONDS = "9e9"


async def test_a_deadline_centuries_away_reaches_the_services_behind(stack: Stack) -> None:
    """A deadline a client set far away (here 9e9 s, from a Go client; gRPC's grpc-timeout
    carries up to 99999999 hours) is no deadline in practice. Before, the gateway passed
    what was left of it to its own calls, which grpc-python cannot send past ~7.5e9 s: the
    call to memory (retrieval, generation) failed at once, and the client read
    DEADLINE_EXCEEDED, DOWNSTREAM_TIMEOUT, "the memory service did not answer in time"."""
    await create_books(stack)
    port = stack.gateway.port
    forwarded = {
        "gensearch.memory.v1.MemoryService/CreateConversation": '{"name": "far"}',
        "gensearch.retrieval.v1.RetrievalService/GetCollection": '{"name": "Books"}',
        "gensearch.generation.v1.GenerationService/Generate": (
            '{"messages": [{"role": "ROLE_USER", "content": "hi"}]}'
        ),
        f"{GATEWAY}/GenerativeSearch": (
            '{"collection": "Books", "near_vector": {"vector": [1, 0, 0, 0]}, "limit": 1,'
            ' "generate": {"single_prompt": "{title}"}}'
        ),
    }
    for method, body in forwarded.items():
        process = await asyncio.create_subprocess_exec(
            tool("grpcurl"), "-plaintext", "-max-time", FAR_DEADLINE_SECONDS,
            "-H", f"{ALICE[0][0]}: {ALICE[0][1]}", "-d", body, f"127.0.0.1:{port}", method,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode == 0, (method, err.decode())
        assert out.strip().startswith(b"{"), (method, out)
