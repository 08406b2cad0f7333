"""A real Redis Cluster on loopback for tests: three masters, no replicas, same binary as
the standalone server (``redis-server`` or the bundled ``valkey-server``).

Each node has its own directory holding its ``nodes.conf`` (cluster config file) and its
append-only file (fsync always), so a node killed with SIGKILL and started again keeps its
node id, its slots and every acknowledged write. Slots are assigned by hand
(``CLUSTER ADDSLOTSRANGE``) and the nodes introduced with ``CLUSTER MEET``, so no
``redis-cli`` is needed. ``cluster-require-full-coverage no``: with one master down, the
others keep serving their own slots (with replicas, Redis would fail over instead).

Processes are tracked by pid (``subprocess.Popen``), never found by name. Starting and
killing are synchronous (no event loop needed, so a session fixture can own the cluster);
waiting for the cluster is async, so a test's own services keep running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from services.devlaunch.processes import die_with_parent, free_port
from services.devlaunch.redis_server import find_binary
from tests.support.processes import listening_ports, owned_ports_known

NODE_TIMEOUT_MS = 2000


@dataclass
class Node:
    port: int
    bus_port: int
    data_dir: Path
    first_slot: int
    last_slot: int
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None, "node not started"
        return self.process.pid

    def owns(self, slot: int) -> bool:
        return self.first_slot <= slot <= self.last_slot

    def client(self) -> aioredis.Redis:
        return aioredis.Redis(port=self.port, socket_timeout=2, socket_connect_timeout=1)


class LocalCluster:
    def __init__(
        self,
        base_dir: Path,
        masters: int = 3,
        *,
        appendfsync: str = "always",
        binary: str | None = None,
    ) -> None:
        self.binary = binary or find_binary()
        self.appendfsync = appendfsync
        share = REDIS_CLUSTER_HASH_SLOTS // masters
        self.nodes = [
            Node(
                port=free_port(),
                bus_port=free_port(),
                data_dir=base_dir / f"node{n}",
                first_slot=n * share,
                last_slot=REDIS_CLUSTER_HASH_SLOTS - 1 if n == masters - 1 else (n + 1) * share - 1,
            )
            for n in range(masters)
        ]

    @property
    def url(self) -> str:
        """The URL the memory service is given: one node; the client discovers the rest."""
        return f"redis://127.0.0.1:{self.nodes[0].port}"

    def node_for(self, key: str) -> Node:
        slot = key_slot(key.encode())
        return next(node for node in self.nodes if node.owns(slot))

    async def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            self.start_node(node)
        for node in self.nodes:
            await self._started(node, timeout)
        for node in self.nodes:
            async with node.client() as client:
                await client.execute_command(
                    "CLUSTER", "ADDSLOTSRANGE", node.first_slot, node.last_slot
                )
        async with self.nodes[0].client() as first:
            for node in self.nodes[1:]:
                await first.execute_command(
                    "CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port
                )
        await self.wait_ok(timeout)

    async def _started(self, node: Node, timeout: float, tries: int = 3) -> None:
        """Waits for a new ``node`` to answer. Its ports were picked free a moment before it
        bound them: one taken meanwhile (a parallel test's server) makes it exit at once
        (seen on a loaded CI machine), so it starts again on new ports, a few times."""
        for tried in range(1, tries + 1):
            try:
                await until(lambda n=node: _ping(n), timeout, f"node {node.port} did not start")
                return
            except AssertionError:  # _ping: the node exited
                if tried == tries:
                    raise
            node.port, node.bus_port = free_port(), free_port()
            shutil.rmtree(node.data_dir, ignore_errors=True)  # nodes.conf names the old port
            self.start_node(node)

    def start_node(self, node: Node) -> None:
        """Starts (or restarts) ``node`` with its directory, config file and AOF."""
        node.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--bind", "127.0.0.1",
            "--port", str(node.port),
            "--cluster-enabled", "yes",
            "--cluster-port", str(node.bus_port),
            "--cluster-config-file", "nodes.conf",  # in --dir
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
            "--cluster-require-full-coverage", "no",
            "--dir", str(node.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
            "--logfile", "",
            "--loglevel", "warning",
        ]  # fmt: skip
        node.process = subprocess.Popen(
            die_with_parent(args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self, node: Node) -> None:
        """SIGKILL by pid: what a crash looks like."""
        os.kill(node.pid, signal.SIGKILL)
        assert node.process is not None
        node.process.wait()

    async def restart(self, node: Node, timeout: float = 30.0) -> None:
        self.start_node(node)
        await until(lambda: _ping(node), timeout, f"node {node.port} did not restart")
        await self.wait_ok(timeout)

    async def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node sees every node, every slot served and the cluster state ok."""

        async def all_ok() -> bool:
            for node in self.nodes:
                async with node.client() as client:
                    text = (await client.execute_command("CLUSTER", "INFO")).decode()
                info = dict(line.split(":", 1) for line in text.split() if ":" in line)
                if (
                    info.get("cluster_state") != "ok"
                    or int(info.get("cluster_known_nodes", 0)) != len(self.nodes)
                    or int(info.get("cluster_slots_ok", 0)) != REDIS_CLUSTER_HASH_SLOTS
                ):
                    return False
            return True

        await until(all_ok, timeout, "the cluster did not reach cluster_state:ok")

    async def node_id(self, node: Node) -> str:
        async with node.client() as client:
            return (await client.execute_command("CLUSTER", "MYID")).decode()  # type: ignore[no-any-return]

    async def migrate_slot(
        self,
        slot: int,
        source: Node,
        target: Node,
        *,
        batch: int = 1,
        between: Callable[[], Awaitable[None]] | None = None,
        first: Sequence[str] = (),
    ) -> int:
        """Moves ``slot`` from ``source`` to ``target`` the way ``redis-cli --cluster
        reshard`` does: IMPORTING on the target, MIGRATING on the source, MIGRATE of its
        keys ``batch`` at a time (``between`` awaited after each batch, so traffic meets
        the slot half moved: MOVED, ASK and TRYAGAIN), then SETSLOT NODE everywhere.
        ``first``: keys moved before the rest (one batch), to pick the half-moved state.
        Returns the number of keys moved. The nodes' own ranges are not changed: a test
        that migrates uses a cluster of its own."""
        source_id, target_id = await self.node_id(source), await self.node_id(target)
        moved = 0
        async with source.client() as src, target.client() as dst:
            await dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            await src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            if first:
                await src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *first
                )
                moved += len(first)
                if between is not None:
                    await between()
            while keys := await src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                await src.execute_command(
                    "MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", *keys
                )
                moved += len(keys)
                if between is not None:
                    await between()
            # The target first (redis-cli's order): once it owns the slot, no window where
            # neither node answers for it.
            await dst.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            await src.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        for node in self.nodes:
            if node not in (source, target):
                async with node.client() as client:
                    await client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        return moved

    async def flush(self) -> None:
        for node in self.nodes:
            async with node.client() as client:
                await client.flushall()

    def stop(self) -> None:
        """SIGTERM every node (each flushes its AOF), then wait for them."""
        running = [n.process for n in self.nodes if n.process and n.process.poll() is None]
        for process in running:
            process.terminate()
        for process in running:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def _ping(node: Node) -> bool:
    """The node answers, and it is ours: its ports were picked free a moment before it
    bound them, and another process's Redis (a parallel test's) may hold one by then; that
    one would answer too, while ours failed to bind and exited."""
    assert node.process is not None and node.process.poll() is None, (
        f"node {node.port} exited with {node.process and node.process.returncode}"
    )
    if owned_ports_known() and not {node.port, node.bus_port} <= listening_ports(node.pid):
        return False
    async with node.client() as client:
        return bool(await client.ping())  # type: ignore[misc]


async def until(check: Callable[[], Awaitable[bool]], timeout: float, message: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        with contextlib.suppress(aioredis.RedisError, OSError):
            if await check():
                return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(message)
        await asyncio.sleep(0.1)
