"""The store on redis-py: scripts Redis forgot are loaded again, a write whose reply was
lost is never sent twice, a frozen Redis times out and the store recovers, TLS, and
UpdateInteraction's compare-and-set sees a write that landed after its read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redis.cluster
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.auth import DEFAULT_TENANT
from services.common.errors import Aborted, NotFound, Unavailable
from services.common.redis_client import connect
from services.devlaunch.processes import free_port
from services.devlaunch.redis_server import RedisProcess, find_binary
from services.memory import keys
from services.memory.store import UPDATE_ATTEMPTS, MemoryStore, Owner
from tests.memory.conftest import Memory

ALICE = Owner(DEFAULT_TENANT, "alice")


async def test_scripts_are_loaded_again_after_script_flush(memory: Memory) -> None:
    """NOSCRIPT (a restarted or flushed Redis) means the script did not run: redis-py
    loads it and runs it, once per call, however many calls hit it at once."""
    store = MemoryStore(memory.redis)
    conv = await store.create_conversation(ALICE, "n")
    await memory.redis.script_flush()
    made = await asyncio.gather(
        *(
            store.create_interaction(ALICE, conv.conversation_id, pb.Interaction(input=str(n)), "")
            for n in range(20)
        )
    )
    page = await store.list_interactions(ALICE, conv.conversation_id, 100, None, 1 << 20)
    assert len(page.items) == len(made) == 20
    assert (await store.get_conversation(ALICE, conv.conversation_id)).interaction_count == 20


async def test_an_update_landing_between_the_read_and_the_write_is_detected(
    memory: Memory,
) -> None:
    """Another writer gets in after the store read the interaction: the compare-and-set
    sees it, so the change is applied again on top of that write (nothing is lost); a
    writer that gets in every time ends the update with ABORTED, CONCURRENT_UPDATE."""
    store = MemoryStore(memory.redis)
    conv = await store.create_conversation(ALICE, "n")
    made = await store.create_interaction(
        ALICE, conv.conversation_id, pb.Interaction(input="q"), ""
    )
    key = keys.interaction(store.tag(ALICE), made.interaction_id)
    url = memory.settings.redis_url.get_secret_value()
    # A client of its own, synchronous: it writes while ``change`` runs, i.e. between the
    # store's read and its compare-and-set.
    rival = (
        redis.cluster.RedisCluster.from_url(url)
        if memory.settings.redis_cluster
        else redis.Redis.from_url(url)
    )
    seen: list[str] = []

    def rival_writes(origin: str) -> None:
        theirs = pb.Interaction()
        theirs.CopyFrom(made)
        theirs.origin = origin
        rival.hset(key, "data", theirs.SerializeToString())

    def change_once_beaten(interaction: pb.Interaction) -> None:
        seen.append(interaction.origin)
        if len(seen) == 1:
            rival_writes("rival")
        interaction.additional_info["mine"] = True

    try:
        updated = await store.update_interaction(ALICE, made.interaction_id, change_once_beaten)
        assert seen == ["", "rival"]  # read again after the rival's write
        stored = await store.get_interaction(ALICE, made.interaction_id)
        assert stored == updated
        assert stored.origin == "rival" and stored.additional_info["mine"] is True

        def change_always_beaten(interaction: pb.Interaction) -> None:
            seen.append(interaction.origin)
            rival_writes(f"rival {len(seen)}")
            interaction.additional_info["lost"] = True

        seen.clear()
        with pytest.raises(Aborted) as raised:
            await store.update_interaction(ALICE, made.interaction_id, change_always_beaten)
        assert raised.value.reason == "CONCURRENT_UPDATE"
        assert len(seen) == UPDATE_ATTEMPTS
        stored = await store.get_interaction(ALICE, made.interaction_id)
        assert stored.origin == f"rival {UPDATE_ATTEMPTS}" and "lost" not in stored.additional_info
    finally:
        rival.close()


class _CuttingProxy:
    """Loopback TCP proxy in front of Redis that, when armed, lets one reply reach the
    proxy and then cuts the client's connection instead of delivering it: the command ran
    in Redis, and the client cannot know (redis-py's own tests do this, test_cwe_404.py)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.armed = False
        self.cuts = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def to_redis() -> None:
            while data := await reader.read(65536):
                up_writer.write(data)
                await up_writer.drain()

        async def to_client() -> None:
            while data := await up_reader.read(65536):
                if self.armed:
                    self.armed = False
                    self.cuts += 1
                    writer.transport.abort()
                    return
                writer.write(data)
                await writer.drain()

        with contextlib.suppress(OSError):
            await asyncio.wait(
                [asyncio.create_task(to_redis()), asyncio.create_task(to_client())],
                return_when=asyncio.FIRST_COMPLETED,
            )
        writer.close()
        up_writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()


async def test_a_turn_whose_conversation_is_gone_reads_as_gone_everywhere(
    memory: Memory,
) -> None:
    """A turn key that outlives its conversation hash (expiry: up to one ttl longer) is
    gone for every read that derives the hash from it, now that each runs again with the
    hash declared before taking it as missing (lua/read.lua's declare_first): NOT_FOUND,
    "not stored", a free request_id, no search hit."""
    store = MemoryStore(memory.redis)
    cid = (await store.create_conversation(ALICE, "o")).conversation_id
    iid = (
        await store.create_interaction(ALICE, cid, pb.Interaction(input="o"), "o", b"traces")
    ).interaction_id
    tag = store.tag(ALICE)
    assert await memory.redis.delete(keys.conversation(tag, cid)) == 1
    for read in (
        store.get_interaction_data(ALICE, iid),
        store.get_interaction_traces(ALICE, iid),
        store.update_interaction(ALICE, iid, lambda i: None),
    ):
        with pytest.raises(NotFound):
            await read
    assert await store.stored_request(ALICE, "o") is None
    assert await store.claim_request(ALICE, "o", "token", 30) is True
    assert await store.get_interactions(ALICE, [iid]) == [None]
    assert await store.interactions_exist(ALICE, [iid]) == [False]


async def test_a_write_whose_reply_is_lost_is_not_sent_again(redis_server: RedisProcess) -> None:
    proxy = _CuttingProxy(redis_server.port)
    port = await proxy.start()
    store = MemoryStore(
        connect(f"redis://127.0.0.1:{port}", cluster=False, socket_timeout=2, connect_timeout=1)
    )
    try:
        await store.load_scripts()  # so the reply cut below is that of the write itself
        conv = await store.create_conversation(ALICE, "n")
        proxy.armed = True
        with pytest.raises(Unavailable):
            await store.create_interaction(ALICE, conv.conversation_id, pb.Interaction(), "")
        assert proxy.cuts == 1
        # It ran once in Redis and was not sent again (redis-py's default would retry).
        page = await store.list_interactions(ALICE, conv.conversation_id, 10, None, 1 << 20)
        assert len(page.items) == 1
    finally:
        await store.close()
        await proxy.close()


async def test_a_frozen_redis_times_out_then_the_store_recovers(
    redis_server: RedisProcess, caplog: pytest.LogCaptureFixture
) -> None:
    store = MemoryStore(
        connect(redis_server.url, cluster=False, socket_timeout=0.3, connect_timeout=0.3)
    )
    pid = redis_server.pid
    assert pid is not None
    try:
        conv = await store.create_conversation(ALICE, "n")
        os.kill(pid, signal.SIGSTOP)
        try:
            with (
                caplog.at_level(logging.WARNING, "gensearch.memory.store"),
                pytest.raises(Unavailable) as caught,
            ):
                # Bounded, not timed: without the client's 0.3 s socket timeout the call
                # would wait for the frozen server for good. (It asserted under 2 s, which a
                # loaded machine's late timer can miss; the timeout logged below is what
                # shows the client's own timeout ended it.)
                await asyncio.wait_for(store.get_conversation(ALICE, conv.conversation_id), 30)
            assert caught.value.message == "memory store unavailable; try again"
            # What redis-py said is logged, not sent to the caller: its socket timeout.
            assert any("imeout" in getattr(r, "error", "") for r in caplog.records)
        finally:
            os.kill(pid, signal.SIGCONT)
        assert (await store.get_conversation(ALICE, conv.conversation_id)).name == "n"
    finally:
        await store.close()


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A TLS-only server on loopback, or a skip saying why there cannot be one."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = free_port()
    server = subprocess.Popen(
        [find_binary(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key),
         "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        try:
            output, _ = server.communicate(timeout=0.5)
        except subprocess.TimeoutExpired:
            yield port, cert  # still running: it listens with TLS
            return
        # Exited at once: a server built without TLS says so ("Failed finding TLS support").
        last = (output.decode(errors="replace").strip().splitlines() or ["(nothing)"])[-1]
        said = last.rpartition(" # ")[2][:120]  # the message, without pid and timestamp
        pytest.skip(f"{find_binary()} lacks TLS support (it said: {said})")
    finally:
        if server.poll() is None:
            server.terminate()
            server.wait()


async def test_tls_is_dialled_by_redis_py(tls_redis: tuple[int, Path]) -> None:
    port, cert = tls_redis
    store = MemoryStore(
        connect(
            f"rediss://127.0.0.1:{port}?ssl_ca_certs={cert}",
            cluster=False,
            socket_timeout=2,
            connect_timeout=1,
        )
    )
    try:
        for _ in range(50):  # until it listens
            with contextlib.suppress(Unavailable):
                conv = await store.create_conversation(ALICE, "over tls")
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the TLS server did not answer")
        got = await store.get_conversation(ALICE, conv.conversation_id)
        assert got.name == "over tls"
    finally:
        await store.close()
