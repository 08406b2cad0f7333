"""StreamGenerativeSearch: hits first, per-hit results in completion order tagged with
their index, token deltas, the grouped result, then usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb

from tests.gateway.conftest import (
    ALICE,
    WITH_BODY,
    Stack,
    StackFactory,
    books_stream_search,
    create_books,
)
from tests.support.fake_openai import Behaviour


async def test_stream_order_and_tagging(stack: Stack) -> None:
    """Per-hit results come in the order their generations complete, each tagged with its
    hit. The test decides that order: every answer is held until the test releases it, the
    first request to arrive last, and the next only once the client has read the result
    before it. (Latencies of 0.3, 0.2, 0.1 and 0 s made it before: requests that arrived
    about 0.1 s apart on a loaded host finished together, and the fake's finishing order
    was not the order the gateway saw.)"""
    await create_books(stack, books=WITH_BODY)
    releases = [asyncio.Event() for _ in range(5)]  # four hits, the grouped task
    stack.fake.enqueue(*(Behaviour.held(release) for release in releases))
    call = stack.stub.StreamGenerativeSearch(
        books_stream_search(single_prompt="Title: {title}", grouped_task="Compare"),
        metadata=ALICE,
    )
    events = [await call.read()]
    await _until(lambda: len(stack.fake.chat_requests) == 5)
    # The queue hands the behaviours out in arrival order, as the requests are recorded.
    arrived = [r.json["messages"][-1]["content"] for r in stack.fake.chat_requests]
    per_hit = [i for i, content in enumerate(arrived) if content.startswith("Title: ")]
    assert len(per_hit) == 4
    released = []
    for i in reversed(per_hit):
        releases[i].set()
        released.append(arrived[i])
        # Bounded: a gateway that waited for another hit first would wait here for ever.
        event = await asyncio.wait_for(call.read(), 60)
        events.append(event)
        assert event.WhichOneof("event") == "hit_result", event
        assert event.hit_result.generation.result == arrived[i]  # the one just released
    for release in releases:
        release.set()  # the grouped task's
    while (event := await call.read()) is not grpc.aio.EOF:
        events.append(event)
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds == ["hits"] + ["hit_result"] * 4 + ["grouped", "done"]
    hits = events[0].hits.hits
    results = [e.hit_result for e in events[1:5]]
    assert sorted(r.hit_index for r in results) == [0, 1, 2, 3]
    for result in results:
        title = hits[result.hit_index].properties.fields["title"].string_value
        assert result.generation.result == f"Title: {title}"  # tagged with the right hit
    assert [r.generation.result for r in results] == released
    assert events[5].grouped.result.startswith("Compare")
    usage = events[-1].done.usage
    assert usage.total_tokens == sum(r.generation.usage.total_tokens for r in results) + (
        events[5].grouped.usage.total_tokens
    )


async def test_stream_token_deltas(stack: Stack) -> None:
    await create_books(stack, books=WITH_BODY)
    events = [
        e
        async for e in stack.stub.StreamGenerativeSearch(
            books_stream_search(
                single_prompt="Say {title} now", grouped_task="All", stream_tokens=True
            ),
            metadata=ALICE,
        )
    ]
    assert events[0].WhichOneof("event") == "hits"
    assert events[-1].WhichOneof("event") == "done"
    text: dict[int, str] = {}
    grouped_text = ""
    finished: set[int] = set()
    for event in events[1:-1]:
        kind = event.WhichOneof("event")
        if kind == "token":
            if event.token.grouped:
                grouped_text += event.token.delta
            else:
                assert event.token.hit_index not in finished  # deltas come before the result
                text[event.token.hit_index] = (
                    text.get(event.token.hit_index, "") + event.token.delta
                )
        elif kind == "hit_result":
            finished.add(event.hit_result.hit_index)
            assert text[event.hit_result.hit_index] == event.hit_result.generation.result
        elif kind == "grouped":
            assert grouped_text == event.grouped.result
    assert finished == {0, 1, 2, 3}
    assert all(len(t.split()) == 3 for t in text.values())
    # Exactly one grouped result, with text, after the last per-hit result.
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds.count("grouped") == 1
    last_hit = max(i for i, k in enumerate(kinds) if k == "hit_result")
    assert kinds.index("grouped") > last_hit
    assert grouped_text and grouped_text == events[kinds.index("grouped")].grouped.result


async def test_stream_missing_property_comes_right_after_hits(stack: Stack) -> None:
    await create_books(stack)
    request = books_stream_search(single_prompt="{body}")
    request.limit = 5
    events = [e async for e in stack.stub.StreamGenerativeSearch(request, metadata=ALICE)]
    hits = events[0].hits.hits
    first = events[1].hit_result
    assert hits[first.hit_index].properties.fields["title"].string_value == "Untitled draft"
    assert first.generation.error.reason == "MISSING_PROPERTY"
    assert sum(1 for e in events if e.WhichOneof("event") == "hit_result") == 5


async def test_a_slow_reader_gets_every_token_through_a_one_delta_buffer(
    stack_factory: StackFactory,
) -> None:
    """With STREAM_BUFFERED_DELTAS at 1 the hits wait for the client at every delta (they
    stop reading their generation streams meanwhile); nothing is lost or reordered."""
    stack = await stack_factory(stream_buffered_deltas=1)
    await create_books(stack, books=WITH_BODY)
    stack.fake.reply = lambda body: " ".join(f"w{i}" for i in range(40))
    call = stack.stub.StreamGenerativeSearch(
        books_stream_search(single_prompt="{title}", grouped_task="All", stream_tokens=True),
        metadata=ALICE,
    )
    text: dict[int, str] = {}
    results: dict[int, str] = {}
    async for event in call:
        kind = event.WhichOneof("event")
        if kind == "token":
            key = -1 if event.token.grouped else event.token.hit_index
            text[key] = text.get(key, "") + event.token.delta
            await asyncio.sleep(0.001)  # a client slower than the model
        elif kind == "hit_result":
            results[event.hit_result.hit_index] = event.hit_result.generation.result
        elif kind == "grouped":
            results[-1] = event.grouped.result
    expected = " ".join(f"w{i}" for i in range(40))
    assert results == {i: expected for i in (-1, 0, 1, 2, 3)}
    assert text == results


async def test_client_going_away_cancels_upstream_calls(stack: Stack) -> None:
    await create_books(stack, books=WITH_BODY)
    stack.fake.latency = 30
    call = stack.stub.StreamGenerativeSearch(
        books_stream_search(single_prompt="{title}"), metadata=ALICE
    )
    first = await call.read()
    assert first.WhichOneof("event") == "hits"  # type: ignore[union-attr]
    await _until(lambda: stack.fake.concurrent == 4)
    call.cancel()
    # The gateway cancels its generation calls, which abort their HTTP requests.
    await _until(lambda: stack.fake.disconnects == 4)
    assert stack.fake.concurrent == 0


async def _until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll a counter of the fake server (it offers no event for these); returns as soon
    as the condition holds (the limit was 5 s: little for a loaded machine)."""
    for _ in range(int(timeout / 0.02)):
        if condition():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_tokens_are_relayed_while_the_model_is_still_writing(stack: Stack) -> None:
    # Not a latency threshold: an ordering. The first token must reach the client before
    # the (slow) upstream stream has finished, i.e. nothing buffers the answer.
    await create_books(stack, books=WITH_BODY)
    # 0.5 s between chunks (was 0.15): the first token has seconds, not under one, to reach
    # the client before the upstream stream ends, however loaded the machine.
    stack.fake.chunk_delay = 0.5
    request = books_stream_search(single_prompt="Say {title} right now please", stream_tokens=True)
    request.limit = 1
    first_token_at = None
    async for event in stack.stub.StreamGenerativeSearch(request, metadata=ALICE):
        if event.WhichOneof("event") == "token" and first_token_at is None:
            first_token_at = time.perf_counter()
    chats = [r for r in stack.fake.requests if r.path.endswith("/chat/completions")]
    assert first_token_at is not None and len(chats) == 1
    assert chats[0].finished_at is not None
    assert first_token_at < chats[0].finished_at


async def test_a_slow_reader_gets_every_ask_token_through_a_one_delta_buffer(
    stack_factory: StackFactory,
) -> None:
    """StreamAsk's answer through STREAM_BUFFERED_DELTAS at 1 (its queue was unbounded):
    the generation waits for the client at every delta; nothing is lost or reordered."""
    stack = await stack_factory(stream_buffered_deltas=1)
    await create_books(stack, books=WITH_BODY)
    expected = " ".join(f"w{i}" for i in range(40))
    stack.fake.reply = expected
    text = ""
    answer = None
    async for event in stack.stub.StreamAsk(
        gw_pb.StreamAskRequest(collection="Books", llm_question="desert"), metadata=ALICE
    ):
        kind = event.WhichOneof("event")
        if kind == "delta":
            text += event.delta
            await asyncio.sleep(0.001)  # a client slower than the model
        elif kind == "answer":
            answer = event.answer
    assert answer is not None and answer.answer == expected
    assert text == expected
