"""A 429's Retry-After holds back every replica that shares the provider's limits in Redis:
calls sent to another replica during the pause reach the provider only after it ends (and
all succeed), a shorter Retry-After never ends a running pause early, and the pause key
shares the provider's hash tag (one slot on a Redis Cluster)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from gensearch.generation.v1 import generation_service_pb2 as pb

from services.common.redis_client import connect
from services.common.upstream_retry import Deadline
from services.devlaunch.processes import free_port
from services.devlaunch.redis_server import RedisProcess
from services.generation.admission import ProviderLimiter
from services.generation.rate_buckets import DeclaredLimits, RedisLimits
from services.generation.upstream import UpstreamFault
from tests.generation.conftest import Service, StartService, fake_provider, unreached_provider, user
from tests.support.fake_openai import Behaviour, FakeOpenAI
from tests.support.redis_cluster import LocalCluster
from tests.support.redis_outages import two_outages_log

PAUSE = 2  # seconds of Retry-After
# Declared limits far above what the tests send: only the pause holds calls back.
DECLARED = {"requests_per_minute": 60_000, "rate_window": 1.0, "rate_burst": 0.5}
PAUSE_KEY = "gensearch:limits:{p:fake}:pause"


LIMITS_LOGGER = "gensearch.generation.limits"


async def call(replica: Service, text: str) -> pb.GenerateResponse:
    reply: pb.GenerateResponse = await replica.stub.Generate(
        pb.GenerateRequest(messages=[user(text)]), timeout=30
    )
    return reply


async def _rate_limit_one_replica(
    fake: FakeOpenAI, replicas: list[Service]
) -> tuple[asyncio.Task[pb.GenerateResponse], float]:
    """Replica 0's call gets 429 with Retry-After; its task, and when the 429 was sent."""
    fake.enqueue(Behaviour.rate_limited(retry_after=PAUSE))
    first = asyncio.create_task(call(replicas[0], "refused first"))
    await fake.wait_for_requests(1)  # answered 429 as soon as it arrives
    return first, fake.chat_requests[0].received_at


async def _until_paused_in_redis(redis_url: str) -> None:
    redis = connect(redis_url, cluster=False, socket_timeout=5, connect_timeout=5)
    try:
        end = asyncio.get_running_loop().time() + 30  # returns as soon as it is there
        while asyncio.get_running_loop().time() < end:
            if await redis.exists(PAUSE_KEY):
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the replica that got the 429 never recorded the pause")
    finally:
        await redis.aclose()


async def test_a_429_on_one_replica_pauses_the_other_one_too(
    fake: FakeOpenAI, start_service: StartService, redis_server: RedisProcess
) -> None:
    provider = fake_provider(fake, max_concurrency=None, **DECLARED)
    replicas = [await start_service([provider], redis_url=redis_server.url) for _ in range(2)]
    first, refused_at = await _rate_limit_one_replica(fake, replicas)
    await _until_paused_in_redis(redis_server.url)

    later = [asyncio.create_task(call(replicas[1], f"later {i}")) for i in range(3)]
    await asyncio.sleep(PAUSE / 2)
    assert len(fake.chat_requests) == 1  # only the refused one, while the pause runs
    replies = await asyncio.gather(first, *later)

    assert [r.text for r in replies] == ["refused first"] + [f"later {i}" for i in range(3)]
    assert replies[0].attempts == 2
    assert all(r.attempts == 1 and r.wait_time.ToNanoseconds() > 0 for r in replies[1:])
    # Nothing reached the provider before the pause it asked for had ended (the Redis
    # clock and this process's differ by well under the 50 ms allowed).
    assert len(fake.chat_requests) == 5
    assert min(r.received_at for r in fake.chat_requests[1:]) >= refused_at + PAUSE - 0.05


async def test_without_redis_the_other_replica_is_not_paused(
    fake: FakeOpenAI, start_service: StartService
) -> None:
    """The control for the test above: each replica counting alone pauses alone."""
    provider = fake_provider(fake, max_concurrency=None, **DECLARED)
    replicas = [await start_service([provider]) for _ in range(2)]
    first, refused_at = await _rate_limit_one_replica(fake, replicas)
    later = [call(replicas[1], f"later {i}") for i in range(3)]
    replies = await asyncio.gather(first, *later)
    assert [r.text for r in replies] == ["refused first"] + [f"later {i}" for i in range(3)]
    assert max(r.received_at for r in fake.chat_requests[1:4]) < refused_at + PAUSE


async def test_a_shorter_retry_after_never_shortens_a_running_pause(
    redis_server: RedisProcess,
) -> None:
    declared = DeclaredLimits.of(unreached_provider(requests_per_minute=6000))
    redis = connect(redis_server.url, cluster=False, socket_timeout=5, connect_timeout=5)
    try:
        limits = RedisLimits(redis, declared, key_prefix="t")
        assert (await limits.admit("p:p", "a", 1, 10)).wait == 0
        # Pauses of 30 s and 40 s, each checked with 5 s to spare: with 5 s and 8 s checked
        # against 4 s and 7 s, a loaded machine slow by a second between a pause and its
        # check failed it.
        await limits.pause("p:p", 30)
        await limits.pause("p:p", 0.1)  # e.g. another replica's 429 asked for less
        await asyncio.sleep(0.2)
        assert (await limits.admit("p:p", "b", 1, 10)).wait > 25
        await limits.pause("p:p", 40)  # a longer one extends it
        assert (await limits.admit("p:p", "b", 1, 10)).wait > 35
        # The key goes when the pause ends; another scope was never paused. The end is
        # rounded up to a whole millisecond of the Redis clock, so the TTL can be 40001.
        assert 35000 < await redis.pttl("t:limits:{p:p}:pause") <= 40001
        assert (await limits.admit("p:q", "c", 1, 10)).wait == 0
    finally:
        await redis.aclose()


async def test_a_shorter_retry_after_never_shortens_the_local_pause() -> None:
    limiter = ProviderLimiter(unreached_provider(), "p", None)
    await limiter.pause(30)
    await limiter.pause(0.01)
    await asyncio.sleep(0.05)
    with pytest.raises(UpstreamFault) as caught:
        await limiter.acquire(limiter.ticket(), 1, Deadline(5))
    assert caught.value.kind == "limit_wait"


@pytest.mark.slow
async def test_the_shared_pause_works_on_a_redis_cluster(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "cluster")
    declared = DeclaredLimits.of(unreached_provider(requests_per_minute=6000, max_in_flight=4))
    try:
        await cluster.start()
        redis = connect(cluster.url, cluster=True, socket_timeout=5, connect_timeout=5)
        try:
            limits = RedisLimits(redis, declared, key_prefix="gensearch")
            assert (await limits.admit("p:fake", "a", 1, 10)).wait == 0
            await limits.pause("p:fake", 5)
            # Refused by the script (a cross-slot error would fall back to memory: admitted).
            assert (await limits.admit("p:fake", "b", 1, 10)).wait > 4
        finally:
            await redis.aclose()
        keys: list[bytes] = []
        for node in cluster.nodes:
            async with node.client() as client:
                keys += await client.keys("gensearch:limits:*")
        assert PAUSE_KEY.encode() in keys
        assert {k.split(b"}")[0] for k in keys} == {b"gensearch:limits:{p:fake"}
    finally:
        cluster.stop()


async def test_a_pause_redis_fails_to_record_still_holds_in_this_replica() -> None:
    config = unreached_provider(requests_per_minute=6000)
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    redis = connect(url, cluster=False, socket_timeout=0.2, connect_timeout=0.2)
    try:
        limiter = ProviderLimiter(
            config, "p:p", RedisLimits(redis, DeclaredLimits.of(config), key_prefix="t")
        )
        await limiter.pause(30)  # Redis failed: logged, not raised
        with pytest.raises(UpstreamFault) as caught:
            await limiter.acquire(limiter.ticket(), 1, Deadline(5))
        assert caught.value.kind == "limit_wait"
    finally:
        await redis.aclose()


async def test_a_redis_outage_is_one_line_its_end_another(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis back is a line too (before, none); a second outage within 30 s of the first's
    warning adds nothing (a flapping Redis is two lines every 30 s at most)."""
    declared = DeclaredLimits.of(unreached_provider(requests_per_minute=6000))
    redis = connect(redis_server.url, cluster=False, socket_timeout=1, connect_timeout=1)
    caplog.set_level(logging.INFO, logger=LIMITS_LOGGER)
    limits = RedisLimits(redis, declared, key_prefix="t")
    node = f"{redis_server.host}:{redis_server.port}"  # the lines name Redis's node

    async def admitted(name: str) -> None:
        # Admitted at once: counted in Redis, or while it is down in this process alone.
        assert (await limits.admit("p:p", name, 1, 10)).wait == 0

    try:
        await admitted("first")
        await two_outages_log(
            redis_server,
            admitted,
            caplog,
            LIMITS_LOGGER,
            [
                "provider limits counted in this process only, Redis failed: ConnectionError"
                f" at node {node}",
                f"provider limits counted in Redis again (node {node})",
            ],
        )
    finally:
        await redis.aclose()


async def test_one_dead_cluster_node_is_one_line_and_its_end_another(
    own_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """One Redis Cluster master down: the scopes of the other masters are counted in Redis
    all along, and that is not the dead master's recovery. Before, every such admission
    logged 'provider limits counted in Redis again' and the dead master's next failure the
    warning again (every 30 s), naming no node."""
    declared = DeclaredLimits.of(unreached_provider(requests_per_minute=6000))
    redis = connect(own_cluster.url, cluster=True, socket_timeout=2, connect_timeout=1)
    limits = RedisLimits(redis, declared, key_prefix="t")
    victim = own_cluster.nodes[2]
    address = f"127.0.0.1:{victim.port}"
    scopes = [f"p:p{n}" for n in range(200)]
    dead = next(s for s in scopes if own_cluster.node_for(limits.keys(s)[0]) is victim)
    alive = next(s for s in scopes if own_cluster.node_for(limits.keys(s)[0]) is not victim)

    def lines(level: int) -> list[str]:
        return [
            r.getMessage() for r in caplog.records if r.name == LIMITS_LOGGER and r.levelno == level
        ]

    caplog.set_level(logging.INFO, logger=LIMITS_LOGGER)
    try:
        for scope in (dead, alive):  # the script loaded on every master while all are up
            await limits.admit(scope, "warm", 1, 10)
        own_cluster.kill(victim)
        for i in range(4):
            assert (await limits.admit(dead, f"d{i}", 1, 10)).wait == 0  # in process
            assert (await limits.admit(alive, f"a{i}", 1, 10)).wait == 0
        assert lines(logging.INFO) == []
        assert lines(logging.WARNING) == [
            "provider limits counted in this process only, Redis failed: ConnectionError"
            f" at node {address}"
        ]

        await own_cluster.restart(victim)
        await limits.admit(alive, "a", 1, 10)
        assert lines(logging.INFO) == []
        for i in range(600):  # until the client finds the node again (no timing asserted)
            await limits.admit(dead, f"back{i}", 1, 10)
            if lines(logging.INFO):
                break
            await asyncio.sleep(0.1)
        assert lines(logging.INFO) == [f"provider limits counted in Redis again (node {address})"]
    finally:
        await redis.aclose()
