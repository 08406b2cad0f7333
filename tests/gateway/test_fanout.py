"""The bounded fan-out: concurrency, per-job errors, the budget, completion order."""

from __future__ import annotations

import asyncio

import grpc

from services.common.errors import Unavailable
from services.gateway.fanout import (
    Delta,
    DeltaBuffer,
    Emit,
    Job,
    Outcome,
    collect_outcomes,
    fan_out_stream,
)
from tests.support.tasks_made import tasks_made


def _sleeper(delay: float, value: str, tracker: list[int] | None = None) -> Job[str]:
    async def job(emit: Emit) -> str:
        if tracker is not None:
            tracker[0] += 1
            tracker[1] = max(tracker[1], tracker[0])
        try:
            await emit(value[:1])
            await asyncio.sleep(delay)
            return value
        finally:
            if tracker is not None:
                tracker[0] -= 1

    return job


async def test_concurrency_is_bounded_and_all_finish() -> None:
    tracker = [0, 0]
    jobs = {i: _sleeper(0.02, f"v{i}", tracker) for i in range(20)}
    outcomes = await collect_outcomes(fan_out_stream(jobs, max_concurrency=4, timeout=5))
    assert tracker[1] == 4
    assert [outcomes[i].value for i in range(20)] == [f"v{i}" for i in range(20)]


async def test_one_failure_does_not_fail_the_rest() -> None:
    async def boom(emit: Emit) -> str:
        raise Unavailable("generation is down", reason="BACKEND_DOWN")

    async def crash(emit: Emit) -> str:
        raise RuntimeError("secret internals")

    jobs: dict[int, Job[str]] = {0: _sleeper(0, "ok"), 1: boom, 2: crash}
    outcomes = await collect_outcomes(fan_out_stream(jobs, max_concurrency=8, timeout=5))
    assert outcomes[0].value == "ok" and outcomes[0].error is None
    err = outcomes[1].error
    assert err is not None and err.code == grpc.StatusCode.UNAVAILABLE
    assert err.reason == "BACKEND_DOWN" and err.number == 14
    crashed = outcomes[2].error
    assert crashed is not None and crashed.code == grpc.StatusCode.INTERNAL
    assert "secret" not in crashed.message


async def test_timeout_keeps_finished_results() -> None:
    # A 2 s budget against a job of a minute: a stall of a loaded process (a GC pass)
    # cannot end the fast jobs with the budget, as it could at 0.3 s, and the bound on the
    # wait tells the budget's end from the slow job's.
    jobs = {0: _sleeper(0.01, "fast"), 1: _sleeper(60, "slow"), 2: _sleeper(0.02, "fast2")}
    outcomes = await collect_outcomes(fan_out_stream(jobs, max_concurrency=8, timeout=2))
    assert outcomes[0].value == "fast" and outcomes[2].value == "fast2"
    # The budget ended the slow job, not its own end a minute later: no value, the
    # budget's status.
    assert outcomes[1].value is None
    err = outcomes[1].error
    assert err is not None and err.code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_queued_jobs_also_time_out() -> None:
    # One at a time: the first ends at 1 s, within the 1.5 s budget; the second would end at
    # 2 s. (Was 0.2 s jobs and 0.3 s: a 0.1 s stall of a loaded process, a GC pass, could
    # let the budget end the first job as well.)
    jobs = {i: _sleeper(1.0, str(i)) for i in range(4)}
    outcomes = await collect_outcomes(fan_out_stream(jobs, max_concurrency=1, timeout=1.5))
    done = [i for i, o in outcomes.items() if o.error is None]
    assert done == [0]
    assert all(outcomes[i].error is not None for i in (1, 2, 3))


async def test_stream_yields_in_completion_order_with_deltas() -> None:
    jobs = {0: _sleeper(0.15, "zero"), 1: _sleeper(0.01, "one"), 2: _sleeper(0.08, "two")}
    events = [e async for e in fan_out_stream(jobs, max_concurrency=8, timeout=5)]
    outcomes = [e.index for e in events if isinstance(e, Outcome)]
    assert outcomes == [1, 2, 0]
    deltas = [e for e in events if isinstance(e, Delta)]
    assert {d.index for d in deltas} == {0, 1, 2}
    # Each job's delta comes before its outcome.
    for delta in deltas:
        pos_delta = events.index(delta)
        pos_outcome = next(
            i for i, e in enumerate(events) if isinstance(e, Outcome) and e.index == delta.index
        )
        assert pos_delta < pos_outcome


async def test_unbounded_job_does_not_take_a_slot() -> None:
    tracker = [0, 0]
    jobs = {i: _sleeper(0.05, str(i), tracker) for i in range(3)}
    jobs[-1] = _sleeper(0.05, "grouped", tracker)
    outcomes = await collect_outcomes(
        fan_out_stream(jobs, max_concurrency=1, timeout=5, unbounded={-1})
    )
    assert tracker[1] == 2
    assert outcomes[-1].value == "grouped"


async def test_abandoning_the_stream_cancels_jobs() -> None:
    cancelled = asyncio.Event()

    async def slow(emit: Emit) -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    stream = fan_out_stream({0: _sleeper(0, "a"), 1: slow}, max_concurrency=4, timeout=None)
    async for event in stream:
        if isinstance(event, Outcome):
            break
    await stream.aclose()
    assert cancelled.is_set()


async def test_waiting_for_outcomes_makes_no_task_per_job() -> None:
    # One task per job and none per event: waiting with asyncio.wait_for made one more
    # task for every outcome and delta (Python 3.11), CPU spent per hit.
    with tasks_made() as made:
        jobs = {i: _sleeper(0.01 * (i % 3), f"v{i}") for i in range(20)}
        outcomes = await collect_outcomes(fan_out_stream(jobs, max_concurrency=None, timeout=5))
    assert [outcomes[i].value for i in range(20)] == [f"v{i}" for i in range(20)]
    assert len(made) == 20


async def _until_at_least(emitted: list[int], count: int) -> None:
    """Waits (polled, 20 s at most) until ``count`` deltas were emitted: after a fixed
    0.1 s, a loaded process could still be short of them and fail on a count that only
    comes later. Then the caller checks that no more come."""
    end = asyncio.get_running_loop().time() + 20
    while emitted[0] < count:
        assert asyncio.get_running_loop().time() < end, f"{emitted[0]} deltas, never {count}"
        await asyncio.sleep(0.01)


async def test_a_consumer_that_stops_reading_holds_the_jobs_back() -> None:
    """At most ``max_buffered`` deltas wait for the consumer (QA: a client reading a
    stream slowly left every hit's whole answer queued in the gateway)."""
    emitted = [0]

    async def chatty(emit: Emit) -> str:
        for _ in range(100):
            await emit("x")
            emitted[0] += 1
        return "done"

    stream = fan_out_stream({0: chatty, 1: chatty}, max_concurrency=None, timeout=5, max_buffered=4)
    first = await anext(stream)  # the consumer takes one delta, then reads nothing
    await _until_at_least(emitted, 5)
    await asyncio.sleep(0.1)  # room for any more to be emitted
    assert emitted[0] == 5  # the one taken and the four waiting; both jobs wait for room
    events = [first] + [e async for e in stream]
    assert sum(1 for e in events if isinstance(e, Delta)) == 200  # none lost
    outcomes = [e for e in events if isinstance(e, Outcome)]
    assert sorted(o.index for o in outcomes) == [0, 1]
    assert all(o.value == "done" for o in outcomes)


async def test_jobs_waiting_for_room_end_at_the_budget() -> None:
    async def chatty(emit: Emit) -> str:
        for _ in range(100):
            await emit("x")
        return "done"

    stream = fan_out_stream({0: chatty}, max_concurrency=None, timeout=0.2, max_buffered=2)
    await anext(stream)
    await asyncio.sleep(0.3)  # the consumer is away past the budget
    events = [e async for e in stream]
    outcome = events[-1]
    assert isinstance(outcome, Outcome) and outcome.error is not None
    assert outcome.error.status == "DEADLINE_EXCEEDED"


async def test_a_reader_that_stops_holds_one_generation_back() -> None:
    """StreamAsk's answer: at most ``max_buffered`` deltas wait for the reader (its queue
    was unbounded: a client that stopped reading left the whole answer queued)."""
    buffer = DeltaBuffer(4)
    emitted = [0]

    async def generate() -> None:
        for _ in range(100):
            await buffer.put("x")
            emitted[0] += 1

    generation = asyncio.ensure_future(generate())
    generation.add_done_callback(lambda _: buffer.close())
    assert await buffer.get() == "x"  # the reader takes one delta, then reads nothing
    await _until_at_least(emitted, 5)
    await asyncio.sleep(0.1)  # room for any more to be emitted
    assert emitted[0] == 5 and not generation.done()  # the one taken, four waiting
    texts = ["x"]
    while (text := await buffer.get()) is not None:
        texts.append(text)
    assert len(texts) == 100 and generation.done()  # none lost
    assert await buffer.get() is None  # the end stays the end


async def test_a_generation_ending_with_a_full_buffer_still_ends_it() -> None:
    """The end is never refused for room: the generation may finish (or fail, or be cut
    at the budget) with the reader's buffer full."""
    buffer = DeltaBuffer(2)
    await buffer.put("a")
    await buffer.put("b")
    buffer.close()
    assert [await buffer.get() for _ in range(3)] == ["a", "b", None]
