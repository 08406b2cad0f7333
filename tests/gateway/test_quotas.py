"""Per-tenant quotas counted in Redis hold across gateway replicas (issue 12).

Two gateways share one real Redis and the same downstream services; a tenant over its
quota on either gets RESOURCE_EXHAUSTED with ErrorInfo (QUOTA_EXCEEDED, the quota named)
and RetryInfo, while other tenants go on. The objects-written quota refuses a write that
does not fit whole, before anything of it reaches retrieval (CountObjects says so).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
import pytest
from gensearch.gateway.v1 import gateway_service_pb2 as gw_pb
from gensearch.gateway.v1 import gateway_service_pb2_grpc as gw_grpc
from gensearch.retrieval.v1 import retrieval_service_pb2 as ret_pb
from gensearch.retrieval.v1 import retrieval_service_pb2_grpc as ret_grpc
from google.protobuf import struct_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from redis.asyncio import Redis

from services.common.logs import ACCESS_LOGGER, json_formatter
from services.common.redis_client import connect
from services.common.server import GrpcServer
from services.devlaunch.redis_server import RedisProcess
from services.gateway.__main__ import build_server as build_gateway
from tests.gateway.conftest import ALICE, BOB, DIM, Stack, StackFactory, create_books, vector
from tests.support.rpc import error_info, import_answer, retry_delay


def _search(**generate: Any) -> gw_pb.GenerativeSearchRequest:
    return gw_pb.GenerativeSearchRequest(
        collection="Books",
        near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
        limit=3,
        generate=gw_pb.Generate(**generate),
    )


class Replicas:
    """Two gateways in front of one stack, counting quotas in one Redis."""

    def __init__(self, stack: Stack, second: GrpcServer, channel: grpc.aio.Channel) -> None:
        self.stack = stack
        self.second = second
        self.channel = channel
        self.a = stack.stub
        self.b: Any = gw_grpc.GatewayServiceStub(channel)
        self.b_retrieval: Any = ret_grpc.RetrievalServiceStub(channel)


@pytest.fixture
async def replicas_factory(stack_factory: StackFactory, shared_redis: RedisProcess) -> Any:
    made: list[Replicas] = []

    async def make(books: list[dict[str, Any]] | None = None, **quotas: Any) -> Replicas:
        # Redis gets the stack's PATIENT_REDIS timeouts: quotas fail open, so a reply late
        # on a loaded machine let through a call a test expects refused.
        stack = await stack_factory(
            redis_url=shared_redis.url, quota_key_prefix=f"q-{uuid.uuid4().hex[:8]}", **quotas
        )
        # alice and bob are each alone in a tenant of their own: each gets the collection.
        await create_books(stack, books=books)
        await create_books(stack, books=books, metadata=BOB)
        second = await build_gateway(stack.gateway.settings.model_copy(), port=0)  # type: ignore[arg-type]
        port = await second.start()
        replicas = Replicas(stack, second, grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        made.append(replicas)
        if any(name.endswith("_per_minute") and limit for name, limit in quotas.items()):
            await _early_in_a_minute(shared_redis.url)  # the test's counts in one window
        return replicas

    yield make
    for replicas in made:
        await replicas.channel.close()
        await replicas.second.stop(0)


async def test_concurrent_calls_quota_holds_across_replicas(replicas_factory: Any) -> None:
    r = await replicas_factory(quota_concurrent_calls=2)
    r.stack.fake.latency = 1.0
    request = _search(single_prompt="{title}")
    # Alice's two slow calls on replica A fill her quota ...
    slow = [asyncio.ensure_future(r.a.GenerativeSearch(request, metadata=ALICE)) for _ in "ab"]
    await r.stack.fake.wait_for_requests(1)
    # ... so replica B refuses her third, before it reaches any service.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.b.GenerativeSearch(request, metadata=ALICE, timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(caught.value)
    assert info.reason == "QUOTA_EXCEEDED"
    assert info.metadata["quota"] == "concurrent_calls"
    assert info.metadata["limit"] == "2"
    assert 0 < retry_delay(caught.value) <= 5
    # Bob is another tenant: his quota is his own.
    r.stack.fake.latency = 0.0
    assert len((await r.b.GenerativeSearch(request, metadata=BOB, timeout=5)).hits) == 3
    # Health is never counted, even for a tenant at its quota.
    health = health_pb2_grpc.HealthStub(r.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    for done in await asyncio.gather(*slow):
        assert all(not h.generation.error.status for h in done.hits)
    # Finished calls gave their slots back.
    assert len((await r.b.GenerativeSearch(request, metadata=ALICE, timeout=5)).hits) == 3


async def test_llm_calls_per_minute_quota_holds_across_replicas(replicas_factory: Any) -> None:
    r = await replicas_factory(quota_llm_calls_per_minute=4)
    # Three hits and a grouped call: four LLM calls, all within the quota (replica A).
    first = await r.a.GenerativeSearch(
        _search(single_prompt="{title}", grouped_task="Compare"), metadata=ALICE, timeout=10
    )
    assert all(not h.generation.error.status for h in first.hits)
    assert not first.grouped.error.status
    # The same minute on replica B: every LLM call is refused, each hit saying why.
    second = await r.b.GenerativeSearch(
        _search(single_prompt="{title}", grouped_task="Compare"), metadata=ALICE, timeout=10
    )
    errors = [h.generation.error for h in second.hits] + [second.grouped.error]
    assert {e.status for e in errors} == {"RESOURCE_EXHAUSTED"}
    assert {e.reason for e in errors} == {"QUOTA_EXCEEDED"}
    assert len(r.stack.fake.chat_requests) == 4
    # Bob's minute is his own.
    third = await r.b.GenerativeSearch(_search(single_prompt="{title}"), metadata=BOB, timeout=10)
    assert all(not h.generation.error.status for h in third.hits)


async def test_an_llm_call_over_quota_carries_retry_info(replicas_factory: Any) -> None:
    r = await replicas_factory(quota_llm_calls_per_minute=1)
    stream = r.b.StreamGenerativeSearch(
        gw_pb.StreamGenerativeSearchRequest(
            collection="Books",
            near_vector=ret_pb.NearVector(vector=[0.5] * DIM),
            limit=2,
            generate=gw_pb.Generate(grouped_task="Compare"),
        ),
        metadata=ALICE,
        timeout=10,
    )
    assert [event async for event in stream]
    # The quota is used: Ask's answer is refused as a whole, with when to try again.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await r.a.Ask(
            gw_pb.AskRequest(llm_question="Which book?", collection="Books"),
            metadata=ALICE,
            timeout=10,
        )
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(caught.value).metadata["quota"] == "llm_calls_per_minute"
    assert 0 < retry_delay(caught.value) <= 60


# --- objects written per minute ---


async def _early_in_a_minute(redis_url: str, margin: float = 10.0) -> None:
    """Waits, when fewer than ``margin`` seconds of the quotas' current one-minute window
    (on Redis' clock) are left, for the next one: a test's writes then all count in one
    window, never cut in two by a reset."""
    redis = connect(redis_url, cluster=False, socket_timeout=2, connect_timeout=2)
    try:
        seconds, micros = await redis.time()
    finally:
        await redis.aclose()
    left = 60 - (seconds % 60 + micros / 1e6)
    if left < margin:
        await asyncio.sleep(left + 0.1)


def _objects(count: int, first: int = 0) -> list[ret_pb.DataObject]:
    objects = []
    for i in range(first, first + count):
        props = struct_pb2.Struct()
        props.update({"title": f"Written {i}"})
        objects.append(ret_pb.DataObject(properties=props, vector=vector(i)))
    return objects


def _upsert(count: int, first: int = 0) -> ret_pb.UpsertObjectsRequest:
    return ret_pb.UpsertObjectsRequest(collection="Books", objects=_objects(count, first))


async def _count(stub: Any, metadata: Any) -> int:
    reply = await stub.CountObjects(
        ret_pb.CountObjectsRequest(collection="Books"), metadata=metadata, timeout=5
    )
    return int(reply.count)


def _assert_over_objects_quota(err: grpc.aio.AioRpcError, limit: int) -> dict[str, str]:
    """The refusal of a write over the objects-written quota: its ErrorInfo metadata."""
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    info = error_info(err)
    assert info.reason == "QUOTA_EXCEEDED"
    assert info.metadata["quota"] == "objects_written_per_minute"
    assert info.metadata["limit"] == str(limit)
    assert 0 < retry_delay(err) <= 60  # the rest of the minute
    return dict(info.metadata)


@pytest.fixture
async def writes(replicas_factory: Any, shared_redis: RedisProcess) -> Replicas:
    """Two replicas, a quota of 7 objects written a minute, alice's and bob's collections
    empty (their creation wrote nothing), and the minute's window young enough for a test."""
    r: Replicas = await replicas_factory(books=[], quota_objects_written_per_minute=7)
    await _early_in_a_minute(shared_redis.url)
    return r


async def test_an_upsert_over_the_objects_quota_writes_nothing(writes: Replicas) -> None:
    retrieval = writes.stack.retrieval  # replica A
    ids = (await retrieval.UpsertObjects(_upsert(5), metadata=ALICE, timeout=5)).ids
    assert len(ids) == 5
    # Three more do not fit in the two left: refused whole, none of them written ...
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await retrieval.UpsertObjects(_upsert(3, 5), metadata=ALICE, timeout=5)
    _assert_over_objects_quota(caught.value, 7)
    assert await _count(retrieval, ALICE) == 5
    # ... nor counted: the two left still fit, exactly.
    assert len((await retrieval.UpsertObjects(_upsert(2, 5), metadata=ALICE, timeout=5)).ids) == 2
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await retrieval.UpsertObjects(_upsert(1, 7), metadata=ALICE, timeout=5)
    _assert_over_objects_quota(caught.value, 7)
    assert await _count(retrieval, ALICE) == 7
    # Deletes are not counted: one goes through at the full quota.
    await retrieval.DeleteObjects(
        ret_pb.DeleteObjectsRequest(collection="Books", ids=ids[:1]), metadata=ALICE, timeout=5
    )
    assert await _count(retrieval, ALICE) == 6


async def test_an_upsert_over_the_bytes_quota_writes_nothing_and_counts_no_objects(
    replicas_factory: Any, shared_redis: RedisProcess
) -> None:
    """Objects alone did not bound a tenant's writes: 60000 objects a minute of 15 KB of
    text each (within the objects quota) cost retrieval ~80 CPU-seconds a minute, and 4
    such writers took another tenant's 8 ms search to 2 s."""
    big = "x" * 3000

    def heavy(count: int, first: int) -> ret_pb.UpsertObjectsRequest:
        request = _upsert(count, first)
        for obj in request.objects:
            obj.properties["title"] = big
        return request

    size = heavy(1, 0).ByteSize()  # about one object's bytes
    r: Replicas = await replicas_factory(
        books=[], quota_objects_written_per_minute=7, quota_bytes_written_per_minute=4 * size
    )
    await _early_in_a_minute(shared_redis.url)
    retrieval = r.stack.retrieval
    assert len((await retrieval.UpsertObjects(heavy(2, 0), metadata=ALICE, timeout=5)).ids) == 2
    # Three more objects fit the objects quota (2 + 3 <= 7), not the bytes left (2 objects').
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await retrieval.UpsertObjects(heavy(3, 2), metadata=ALICE, timeout=5)
    err = caught.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.details()
    info = error_info(err)
    assert info.reason == "QUOTA_EXCEEDED"
    assert info.metadata["quota"] == "bytes_written_per_minute"
    assert info.metadata["limit"] == str(4 * size)
    assert 0 < retry_delay(err) <= 60
    assert await _count(retrieval, ALICE) == 2
    # Small objects still fit the five objects left: the refused write counted none.
    assert len((await retrieval.UpsertObjects(_upsert(5, 10), metadata=ALICE, timeout=5)).ids) == 5
    prefix = r.stack.gateway.settings.quota_key_prefix  # type: ignore[attr-defined]
    redis = Redis.from_url(shared_redis.url)
    try:
        [key] = [k async for k in redis.scan_iter(match=f"{prefix}:quota:*:write-bytes")]
        counted = int(await redis.hget(key, "n"))  # type: ignore[misc]
        assert 2 * size < counted < 3 * size  # two heavy writes' and the small one's
        # A write over the objects quota gives back the bytes it was charged first.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await retrieval.UpsertObjects(heavy(1, 20), metadata=ALICE, timeout=5)
        assert error_info(caught.value).metadata["quota"] == "objects_written_per_minute"
        assert int(await redis.hget(key, "n")) == counted  # type: ignore[misc]
    finally:
        await redis.aclose()
    # Bob's quotas are his own.
    assert len((await retrieval.UpsertObjects(heavy(2, 0), metadata=BOB, timeout=5)).ids) == 2


async def _stream(
    messages: Sequence[ret_pb.ImportObjectsRequest],
) -> AsyncIterator[ret_pb.ImportObjectsRequest]:
    for message in messages:
        yield message


async def test_an_import_stops_at_the_message_over_the_objects_quota(writes: Replicas) -> None:
    messages = [
        ret_pb.ImportObjectsRequest(collection="Books", objects=_objects(3)),
        ret_pb.ImportObjectsRequest(objects=_objects(3, 3)),
        ret_pb.ImportObjectsRequest(objects=_objects(3, 6)),  # 9 > 7: refused
        ret_pb.ImportObjectsRequest(objects=_objects(1, 9)),  # would fit: never sent
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await writes.stack.retrieval.ImportObjects(_stream(messages), metadata=ALICE, timeout=10)
    # The two messages before it are written, and the error says so (as retrieval says
    # what a stream that failed there imported), so the client knows where to resume.
    metadata = _assert_over_objects_quota(caught.value, 7)
    assert (metadata["received_count"], metadata["imported_count"]) == ("6", "6")
    assert "(message 2; 6 objects imported before it)" in (caught.value.details() or "")
    assert await _count(writes.b_retrieval, ALICE) == 6
    # The refused message was not counted: one more object fits, on either replica.
    await writes.b_retrieval.UpsertObjects(_upsert(1, 20), metadata=ALICE, timeout=5)
    assert await _count(writes.b_retrieval, ALICE) == 7


async def test_an_import_stopped_at_the_quota_says_why_earlier_objects_were_rejected(
    writes: Replicas,
) -> None:
    first, second = _objects(3), _objects(3, 3)
    first[1].vector[:] = [1.0]  # wrong dimensions: rejected by retrieval, stream position 1
    second[2].vector[:] = [1.0]  # and 5
    messages = [
        ret_pb.ImportObjectsRequest(collection="Books", objects=first),
        ret_pb.ImportObjectsRequest(objects=second),
        ret_pb.ImportObjectsRequest(objects=_objects(3, 6)),  # 9 > 7: refused
    ]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await writes.stack.retrieval.ImportObjects(_stream(messages), metadata=ALICE, timeout=10)
    metadata = _assert_over_objects_quota(caught.value, 7)
    assert (metadata["received_count"], metadata["imported_count"]) == ("6", "4")
    assert metadata["rejected_indexes"] == "1,5"
    # Each rejected object's error, as a finished import's answer would list it: the
    # answer retrieval gave the gateway, as an ImportObjectsResponse detail.
    answer = import_answer(caught.value)
    assert (answer.received_count, answer.imported_count) == (6, 4)
    assert [(e.index, e.field) for e in answer.errors] == [(1, "vector"), (5, "vector")]
    assert all(e.message for e in answer.errors) and not answer.errors_truncated


async def test_the_objects_quota_is_per_tenant_and_shared_by_replicas(writes: Replicas) -> None:
    await writes.stack.retrieval.UpsertObjects(_upsert(4), metadata=ALICE, timeout=5)  # A
    await writes.b_retrieval.UpsertObjects(_upsert(3, 4), metadata=ALICE, timeout=5)  # B
    # Alice has written her 7 this minute, across the two replicas: neither takes more.
    for retrieval in (writes.stack.retrieval, writes.b_retrieval):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await retrieval.UpsertObjects(_upsert(1, 7), metadata=ALICE, timeout=5)
        _assert_over_objects_quota(caught.value, 7)
    # Bob is another tenant: his 7 are his own, on either replica.
    await writes.b_retrieval.UpsertObjects(_upsert(6), metadata=BOB, timeout=5)
    await writes.stack.retrieval.UpsertObjects(_upsert(1, 6), metadata=BOB, timeout=5)
    assert await _count(writes.b_retrieval, ALICE) == 7
    assert await _count(writes.b_retrieval, BOB) == 7


async def test_a_write_larger_than_the_whole_objects_quota_never_fits(writes: Replicas) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await writes.stack.retrieval.UpsertObjects(_upsert(8), metadata=ALICE, timeout=5)
    err = caught.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_info(err).metadata["quota"] == "objects_written_per_minute"
    # Waiting would not help: no RetryInfo, and the message says what would.
    with pytest.raises(AssertionError, match="no RetryInfo"):
        retry_delay(err)
    assert "send at most 7 objects per request or message" in (err.details() or "")
    assert await _count(writes.stack.retrieval, ALICE) == 0


async def test_calls_racing_the_last_llm_calls_of_a_minute_never_pass_it(
    replicas_factory: Any,
) -> None:
    """Guard (held): eight searches of three hits at once, split over two replicas, race a
    quota of five LLM calls a minute: exactly five calls reach the model, every other hit
    is QUOTA_EXCEEDED, none fails otherwise."""
    r = await replicas_factory(quota_llm_calls_per_minute=5)
    calls = [
        (r.a if i % 2 else r.b).GenerativeSearch(
            _search(single_prompt="{title}"), metadata=ALICE, timeout=20
        )
        for i in range(8)
    ]
    hits = [h for done in await asyncio.gather(*calls) for h in done.hits]
    answered = [h for h in hits if not h.generation.error.status]
    refused = [h.generation.error.reason for h in hits if h.generation.error.status]
    assert len(answered) == 5 and refused == ["QUOTA_EXCEEDED"] * 19
    assert len(r.stack.fake.chat_requests) == 5


async def test_the_refusals_access_lines_name_their_reasons(
    writes: Replicas, caplog: pytest.LogCaptureFixture
) -> None:
    """An operator tells a tenant's quota from the server's cap, and a wrong key from a
    missing one, by the access line's ``reason`` (it had the code alone); the wrong key
    itself is never in the line."""
    retrieval = writes.stack.retrieval
    wrong_key = "key-alice-WRONG-0123456789"
    with caplog.at_level(logging.INFO, logger=ACCESS_LOGGER):
        await retrieval.UpsertObjects(_upsert(7), metadata=ALICE, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as over:
            await retrieval.UpsertObjects(_upsert(1, 7), metadata=ALICE, timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await retrieval.CountObjects(
                ret_pb.CountObjectsRequest(collection="Books"),
                metadata=(("authorization", f"Bearer {wrong_key}"),),
                timeout=5,
            )
    assert error_info(over.value).reason == "QUOTA_EXCEEDED"
    assert error_info(refused.value).reason == "INVALID_API_KEY"
    formatter = json_formatter("gateway")
    refusals = [
        json.loads(formatter.format(record))
        for record in caplog.records
        if record.name == ACCESS_LOGGER and getattr(record, "code", "OK") != "OK"
    ]
    assert [
        (line["method"].rsplit("/", 1)[1], line["code"], line["reason"]) for line in refusals
    ] == [
        ("UpsertObjects", "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
        ("CountObjects", "UNAUTHENTICATED", "INVALID_API_KEY"),
    ]
    assert wrong_key not in caplog.text and all(wrong_key not in str(line) for line in refusals)
