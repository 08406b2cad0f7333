"""``import_`` waits out the gateway's objects-written quota and resumes (real stack).

A second gateway in front of the stack's services lets its tenant write 10 objects per 8 s
window (``quota_gateway``). An import of 25 objects in messages of 5 is stopped by the
gateway at the first message that does not fit, waits for the window to free as RetryInfo
says, and sends only what the gateway did not pass on: every object is written once (the
objects carry no id, so an object sent twice would be stored twice), and each rejected
object's error keeps its position.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator, Collection

import pytest
from gensearch.client import AsyncGensearch, Gensearch, errors, types

from tests.cli.conftest import QuotaGateway, RunningStack

_names = itertools.count()
BAD = {2, 12, 17, 23}  # "n" not an int: rejected by retrieval, one object each


@pytest.fixture
async def client(running_stack: RunningStack) -> AsyncIterator[AsyncGensearch]:
    async with AsyncGensearch(running_stack.address, timeout=60) as c:
        yield c


@pytest.fixture
async def limited(quota_gateway: QuotaGateway) -> AsyncIterator[AsyncGensearch]:
    """A client of the gateway with the small quota."""
    async with AsyncGensearch(quota_gateway.address, timeout=60) as c:
        yield c


async def _numbers(client: AsyncGensearch) -> str:
    name = f"QuotaImport{next(_names)}"
    await client.collections.create(
        name, {"n": "int"}, vectorizer=types.Vectorizer(kind="none", dimensions=2)
    )
    return name


def _objects(count: int, bad: Collection[int] = ()) -> list[types.DataObject]:
    return [
        types.DataObject(properties={"n": f"bad {i}" if i in bad else i}, vector=[1.0, i / 100])
        for i in range(count)
    ]


async def _stored(client: AsyncGensearch, name: str) -> list[int]:
    """Every stored object's ``n``, sorted (each object once: no id repeats)."""
    hits = await client.collections.get(name).query.near_vector([1.0, 0.0], limit=100)
    assert len({hit.id for hit in hits.hits}) == len(hits.hits)
    return sorted(int(hit.properties["n"]) for hit in hits.hits)


async def test_an_import_waits_out_the_write_quota_and_writes_each_object_once(
    client: AsyncGensearch, limited: AsyncGensearch, quota_gateway: QuotaGateway
) -> None:
    name = await _numbers(client)
    quota_gateway.early_in_a_window(margin=6.0)
    sent: list[int] = []
    waits: list[tuple[float, errors.QuotaExceededError]] = []
    started = time.monotonic()
    result = await limited.collections.get(name).data.import_(
        _objects(25, BAD),
        batch_size=5,
        objects_per_call=15,  # a second stream, and a refusal inside each
        on_sent=sent.append,
        on_quota_wait=lambda seconds, err: waits.append((seconds, err)),
    )
    # 25 objects at 10 a window take at least three windows: the import waited, each
    # time for what RetryInfo said (the rest of the window) and a little jitter.
    assert waits, "the import was never stopped by the quota"
    for seconds, err in waits:
        assert err.metadata["quota"] == "objects_written_per_minute"
        assert err.retry_delay is not None and 0 < seconds <= err.retry_delay + 1.1
        assert seconds <= quota_gateway.window + 1.1
    assert time.monotonic() - started >= sum(seconds for seconds, _ in waits)
    # Every object went once: counted once, stored once, reported to on_sent once.
    assert (result.received, result.imported) == (25, 21)
    assert sum(sent) == 25
    assert await client.collections.get(name).count() == 21
    assert await _stored(client, name) == [i for i in range(25) if i not in BAD]
    # Each rejection at its position in what was passed, whichever part of a stream (sent
    # before the quota stopped it, or after the wait) carried it.
    assert sorted(e.index for e in result.errors) == sorted(BAD)
    assert not result.errors_truncated
    # With its reason, wherever it was rejected: object 2, in the first stream's first
    # message, was received before the quota stopped that stream, and came back in the
    # quota's error, not in an answer.
    assert all(e.field == "properties.n" and "n" in e.message for e in result.errors)
    assert not any("write this object alone" in e.message for e in result.errors)


async def test_the_import_raises_when_waiting_cannot_help_or_is_not_wanted(
    client: AsyncGensearch,
    limited: AsyncGensearch,
    quota_gateway: QuotaGateway,
    running_stack: RunningStack,
) -> None:
    name = await _numbers(client)
    data = limited.collections.get(name).data
    waits: list[float] = []

    def waited(seconds: float, err: errors.QuotaExceededError) -> None:
        waits.append(seconds)

    # A message larger than the whole quota never fits: no RetryInfo, raised at once.
    with pytest.raises(errors.QuotaExceededError) as caught:
        await data.import_(_objects(11), batch_size=11, on_quota_wait=waited)
    assert caught.value.retry_delay is None and not waits
    assert "send at most 10 objects" in caught.value.message
    assert await client.collections.get(name).count() == 0

    # wait_for_quota=False: the quota's error as before, with what the stream wrote
    # (through the blocking client, which passes the options on).
    quota_gateway.early_in_a_window(margin=7.0)
    with (
        Gensearch(quota_gateway.address, timeout=60) as blocking,
        pytest.raises(errors.QuotaExceededError) as caught,
    ):
        blocking.collections.get(name).data.import_(
            _objects(15, {3}), batch_size=5, wait_for_quota=False, on_quota_wait=waited
        )
    assert caught.value.retry_delay is not None and not waits
    assert caught.value.metadata["imported_count"] == "9"
    # The object rejected before the stop, with its reason, as an import's answer says it.
    [rejected] = caught.value.object_errors
    assert (rejected.index, rejected.field) == (3, "properties.n") and rejected.message
    assert await client.collections.get(name).count() == 9

    # The window is used up: a wait longer than the call's timeout is not begun.
    with pytest.raises(errors.QuotaExceededError):
        await data.import_(_objects(5), batch_size=5, timeout=1.0, on_quota_wait=waited)
    assert not waits
    assert await client.collections.get(name).count() == 9


async def test_an_import_waits_out_the_bytes_quota_too(
    client: AsyncGensearch, bytes_quota_gateway: QuotaGateway
) -> None:
    # 20 objects of ~500 bytes in messages of 2 (~1 KB), against 4 KiB a window: the
    # bytes quota, not the objects one, stops the import, which waits and resumes.
    name = f"QuotaBytes{next(_names)}"
    await client.collections.create(
        name, {"n": "int", "pad": "text"}, vectorizer=types.Vectorizer(kind="none", dimensions=2)
    )
    objects = [
        types.DataObject(properties={"n": i, "pad": "x" * 480}, vector=[1.0, i / 100])
        for i in range(20)
    ]
    bytes_quota_gateway.early_in_a_window(margin=6.0)
    waits: list[errors.QuotaExceededError] = []
    async with AsyncGensearch(bytes_quota_gateway.address, timeout=60) as limited:
        result = await limited.collections.get(name).data.import_(
            objects, batch_size=2, on_quota_wait=lambda _, err: waits.append(err)
        )
    assert waits and {e.metadata["quota"] for e in waits} == {"bytes_written_per_minute"}
    assert (result.received, result.imported, result.errors) == (20, 20, [])
    assert await _stored(client, name) == list(range(20))
