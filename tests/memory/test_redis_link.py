"""The pipelined Redis link against a real Redis: replies reach their own callers, errors
stay with their command, and a frozen, killed or restarted Redis is survived."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from services.devlaunch.processes import free_port
from services.devlaunch.redis_server import RedisProcess, find_binary
from services.memory.redis_link import LinkError, LinkTimeout, RedisLink, ReplyError, Script


async def test_concurrent_commands_get_their_own_replies(redis_server: RedisProcess) -> None:
    link = RedisLink(redis_server.url)
    admin = aioredis.Redis.from_url(redis_server.url)
    try:
        await link.execute("PING")
        before = (await admin.info("stats"))["total_reads_processed"]
        sets = await asyncio.gather(*(link.execute("SET", f"k{n}", n) for n in range(300)))
        after = (await admin.info("stats"))["total_reads_processed"]
        assert sets == [b"OK"] * 300
        # The first SET goes out alone; the 299 issued while its reply is outstanding
        # are held and sent in one write, so Redis reads a handful of times, not 300.
        assert after - before < 20, after - before
        gets = await asyncio.gather(*(link.execute("GET", f"k{n}") for n in range(300)))
        assert gets == [str(n).encode() for n in range(300)]
        # One bad command fails alone, in the middle of a burst.
        results = await asyncio.gather(
            link.execute("GET", "k1"),
            link.execute("INCR", "k1", "too", "many"),
            link.execute("HGET", "k2", "field"),  # wrong type
            link.execute("GET", "k3"),
            return_exceptions=True,
        )
        assert results[0] == b"1"
        assert isinstance(results[1], ReplyError) and "wrong number" in str(results[1])
        assert isinstance(results[2], ReplyError) and str(results[2]).startswith("WRONGTYPE")
        assert results[3] == b"3"
    finally:
        await link.close()
        await admin.aclose()


async def test_a_lone_caller_never_waits_for_a_batch(redis_server: RedisProcess) -> None:
    link = RedisLink(redis_server.url, batch_window=0.2)
    loop = asyncio.get_running_loop()
    try:
        # Overlapping callers teach the link to batch ...
        await asyncio.gather(*(_worker(link, f"w{n}", 5) for n in range(8)))
        # ... but once they are gone, one caller at a time is never held for the window.
        await asyncio.sleep(0.3)
        started = loop.time()
        for n in range(20):
            assert await link.execute("ECHO", str(n)) == str(n).encode()
        assert loop.time() - started < 1.0  # 20 waits for the window would take 4 s
    finally:
        await link.close()


async def test_overlapping_callers_share_writes(redis_server: RedisProcess) -> None:
    """Callers that come and go at random, as RPCs do, still share writes under load; a
    batch that does not fill up goes out when its window ends."""
    link = RedisLink(redis_server.url, batch_window=0.02)
    admin = aioredis.Redis.from_url(redis_server.url)
    workers, rounds = 16, 30
    try:
        await link.execute("PING")
        before = (await admin.info("stats"))["total_reads_processed"]
        async with asyncio.timeout(20):
            await asyncio.gather(*(_worker(link, f"v{n}", rounds) for n in range(workers)))
        reads = (await admin.info("stats"))["total_reads_processed"] - before
        # ~37 here; without the window ~135, as most commands find nothing on the wire.
        assert reads < workers * rounds / 8, reads
    finally:
        await link.close()
        await admin.aclose()


async def _worker(link: RedisLink, key: str, rounds: int) -> None:
    """Increments ``key`` ``rounds`` times with short random pauses, checking each reply."""
    for n in range(1, rounds + 1):
        assert await link.execute("INCR", key) == n
        await asyncio.sleep(random.random() / 1000)


async def test_resp3_in_the_url_still_speaks_resp2(redis_server: RedisProcess) -> None:
    link = RedisLink(f"{redis_server.url}?protocol=3")
    try:
        await link.execute("HSET", "h", "f", "v")
        assert await link.execute("HGETALL", "h") == [b"f", b"v"]  # RESP3 would be a map
    finally:
        await link.close()


async def test_a_command_that_cannot_be_encoded_fails_alone(redis_server: RedisProcess) -> None:
    link = RedisLink(redis_server.url)
    try:
        with pytest.raises(TypeError):
            await link.execute("SET", "k", None)
        assert await link.execute("ECHO", "next") == b"next"
    finally:
        await link.close()


async def test_a_cancelled_caller_does_not_shift_the_replies(redis_server: RedisProcess) -> None:
    link = RedisLink(redis_server.url)
    try:
        await link.execute("SET", "a", "1")
        for _ in range(20):
            gone = asyncio.ensure_future(link.execute("GET", "a"))
            await asyncio.sleep(0)
            gone.cancel()
            assert await link.execute("ECHO", "mine") == b"mine"
    finally:
        await link.close()


async def test_scripts_are_loaded_again_after_script_flush(redis_server: RedisProcess) -> None:
    link = RedisLink(redis_server.url)
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    try:
        assert await link.script(script, ["n"], [2]) == 2
        await link.execute("SCRIPT", "FLUSH")
        # Concurrent callers all hit NOSCRIPT, load it and still run exactly once each.
        await asyncio.gather(*(link.script(script, ["n"], [1]) for _ in range(30)))
        assert await link.execute("GET", "n") == b"32"
        with pytest.raises(ReplyError):
            await link.script(Script("return redis.call('NOPE')"), [], [])
    finally:
        await link.close()


async def test_a_frozen_redis_times_out_then_the_link_recovers(
    redis_server: RedisProcess,
) -> None:
    link = RedisLink(redis_server.url, command_timeout=0.3)
    pid = redis_server._proc.pid  # type: ignore[union-attr]
    try:
        await link.execute("PING")
        os.kill(pid, signal.SIGSTOP)
        try:
            waiting = [asyncio.ensure_future(link.execute("INCR", "c")) for _ in range(5)]
            started = asyncio.get_running_loop().time()
            results = await asyncio.gather(*waiting, return_exceptions=True)
            waited = asyncio.get_running_loop().time() - started
        finally:
            os.kill(pid, signal.SIGCONT)
        assert all(isinstance(r, LinkTimeout) for r in results), results
        assert 0.25 < waited < 2.0
        assert await link.execute("PING") == b"PONG"
    finally:
        await link.close()


async def test_a_killed_redis_fails_fast_and_the_link_recovers(
    redis_server: RedisProcess,
) -> None:
    link = RedisLink(redis_server.url, connect_timeout=0.5)
    try:
        await link.execute("SET", "kept", "yes")
        await redis_server.kill()
        with pytest.raises(LinkError):
            await link.execute("GET", "kept")
        with pytest.raises(LinkError, match="could not connect"):
            await link.execute("GET", "kept")
        await redis_server.start()
        assert await link.execute("GET", "kept") == b"yes"
    finally:
        await link.close()


async def test_nothing_listening_is_a_link_error() -> None:
    link = RedisLink(f"redis://127.0.0.1:{free_port()}", connect_timeout=0.5)
    with pytest.raises(LinkError, match="could not connect"):
        await link.execute("PING")
    await link.close()


async def test_credentials_and_database_from_the_url(redis_server: RedisProcess) -> None:
    admin = aioredis.Redis.from_url(redis_server.url)
    await admin.execute_command("ACL", "SETUSER", "tester", "on", ">s3cret", "~*", "+@all")
    host = f"127.0.0.1:{redis_server.port}"
    good = RedisLink(f"redis://tester:s3cret@{host}/3")
    bad = RedisLink(f"redis://tester:wrong@{host}/0")
    try:
        assert await good.execute("ACL", "WHOAMI") == b"tester"
        await good.execute("SET", "in-three", "x")
        assert await admin.get("in-three") is None
        assert await aioredis.Redis.from_url(f"redis://{host}/3").get("in-three") == b"x"
        with pytest.raises(LinkError, match=r"could not connect.*(invalid|WRONGPASS)"):
            await bad.execute("PING")
    finally:
        await good.close()
        await bad.close()
        await admin.execute_command("ACL", "DELUSER", "tester")
        await admin.aclose()


async def test_close_fails_waiting_calls_and_refuses_new_ones(
    redis_server: RedisProcess,
) -> None:
    link = RedisLink(redis_server.url)
    await link.execute("PING")
    waiting = asyncio.ensure_future(link.execute("BLPOP", "never", 5))
    await asyncio.sleep(0.05)
    await link.close()
    with pytest.raises(LinkError):
        await waiting
    with pytest.raises(LinkError, match="closed"):
        await link.execute("PING")


async def test_the_embedded_server_listens_on_a_private_unix_socket(
    redis_server: RedisProcess,
) -> None:
    url = redis_server.socket_url
    path = Path(url.removeprefix("unix://").split("?")[0])
    assert _is_private_socket(path)
    link = RedisLink(url)
    try:
        await link.execute("SET", "via", "socket")
        tcp = RedisLink(redis_server.url)
        assert await tcp.execute("GET", "via") == b"socket"
        await tcp.close()
    finally:
        await link.close()
    await redis_server.stop()
    assert not _exists(path.parent)


def _is_private_socket(path: Path) -> bool:
    return path.is_socket() and path.parent.stat().st_mode & 0o077 == 0


def _exists(path: Path) -> bool:
    return path.exists()


async def test_tls_is_dialled_by_redis_py_and_spoken_by_the_link(tmp_path: Path) -> None:
    """rediss:// goes through redis-py's TLS dial; the link then speaks on the TLS
    transport it took over (commands, a concurrent burst, an error reply)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = await asyncio.create_subprocess_exec(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
        "-keyout", str(key), "-out", str(cert),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert await made.wait() == 0
    port = free_port()
    server = await asyncio.create_subprocess_exec(
        find_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
        "--tls-cert-file", str(cert), "--tls-key-file", str(key),
        "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
        "--save", "", "--appendonly", "no", "--dir", str(tmp_path),
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    link = RedisLink(f"rediss://127.0.0.1:{port}?ssl_ca_certs={cert}", connect_timeout=0.5)
    try:
        for _ in range(50):  # until the server listens
            try:
                assert await link.execute("PING") == b"PONG"
                break
            except LinkError:
                await asyncio.sleep(0.1)
        else:
            pytest.fail("the TLS Redis did not come up")
        values = await asyncio.gather(*(link.execute("ECHO", "x" * n) for n in range(200)))
        assert values == [b"x" * n for n in range(200)]
        with pytest.raises(ReplyError):
            await link.execute("NOSUCHCOMMAND")
        assert await link.execute("ECHO", "after") == b"after"
    finally:
        await link.close()
        server.terminate()
        await server.wait()
