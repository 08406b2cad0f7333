"""A service's exit sends the spans still queued, waiting for the collector at most
OTEL_BSP_EXPORT_TIMEOUT in all (at least 1 s; services/common/tracing.py, ``flush_at_exit``).

The SDK's own shutdown gave every queued batch a whole export timeout, for up to 30 s:
with a collector that does not answer (down, or its packets dropped by a network policy)
a busy service's exit after its drain took 30 s, past the pod's termination budget
(measured: 30.4 s after SIGTERM, memory after 3,000 calls; 10.4 s with the bound)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb
from gensearch.memory.v1 import memory_service_pb2_grpc as pb_grpc

from services.common.tracing import MIN_FLUSH_SECONDS, flush_timeout
from tests.support.otlp_collector import Collector
from tests.support.processes import owned_ports_known, wait_serving

ROOT = Path(__file__).resolve().parents[2]
MEMORY = "gensearch.memory.v1.MemoryService"
GIVEN_UP = "spans still queued at exit were not exported"

pytestmark = pytest.mark.skipif(not owned_ports_known(), reason="needs /proc to find ports")


@pytest.fixture
def silent_collector() -> Iterator[int]:
    """A port that takes connections and never answers (a collector whose packets a
    network policy drops looks the same to the exporter: every export waits its timeout)."""
    with socket.socket() as hole:
        hole.bind(("127.0.0.1", 0))
        hole.listen(64)
        yield hole.getsockname()[1]


async def _memory_exit_log(tmp_path: Path, collector_port: int, **otel: str) -> str:
    """Starts memory exporting to ``collector_port``, makes five calls (each a span: they
    are refused, having no credentials), stops it with SIGTERM; what it logged."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GENSEARCH_", "OTEL_"))}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "gen")]),
        GENSEARCH_DATA_DIR=str(tmp_path),
        GENSEARCH_MEMORY_PORT="0",
        GENSEARCH_MEMORY_METRICS_PORT="0",
        # Only the gateway may call: the test's calls, without it, are refused.
        GENSEARCH_INTERNAL_TOKEN="flush-test-internal-token",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{collector_port}",
        OTEL_EXPORTER_OTLP_INSECURE="true",
        **otel,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "services.memory", cwd=ROOT, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        port = await wait_serving("127.0.0.1:0", proc, service=MEMORY)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.MemoryServiceStub(channel)
            for _ in range(5):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.GetConversation(pb.GetConversationRequest(conversation_id="c"))
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 120)
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode(errors="replace")[-2000:]
    return stderr.decode(errors="replace")


async def test_a_collector_that_never_answers_holds_the_exit_the_flush_timeout(
    tmp_path: Path, silent_collector: int
) -> None:
    # One span a batch: at SIGTERM four or five exports are still to go, each waiting out
    # its 2 s timeout; the SDK waited for all of them (and the log said nothing).
    log = await _memory_exit_log(
        tmp_path,
        silent_collector,
        OTEL_EXPORTER_OTLP_TIMEOUT="2",
        OTEL_BSP_EXPORT_TIMEOUT="2000",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="1",
    )
    lines = [line for line in log.splitlines() if GIVEN_UP in line]
    assert len(lines) == 1, log[-2000:]
    assert "within 2 s (OTEL_BSP_EXPORT_TIMEOUT)" in lines[0]


async def test_a_slow_collector_gets_every_batch_queued_at_exit(
    tmp_path: Path, collector: tuple[Collector, int]
) -> None:
    """A collector that answers each export in 0.4 s, one span a batch: the five batches
    queued at exit take 2 s, each well within its 1 s export timeout. Before, the flush
    was bounded by one export timeout (1 s) for the whole queue: spans lost and the
    WARNING, from a collector that works."""
    received, port = collector
    received.delay = 0.4
    log = await _memory_exit_log(
        tmp_path,
        port,
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="1",
        OTEL_BSP_SCHEDULE_DELAY="60000",
    )
    names = [span.name for _, span in received.spans()]
    assert names.count("/gensearch.memory.v1.MemoryService/GetConversation") == 5, log[-2000:]
    assert GIVEN_UP not in log


def test_the_flush_timeout_is_the_batch_processors_and_never_0() -> None:
    # Unset: 10 s, what the pods' termination budgets count (it was the SDK's 30 s, past
    # them wherever only deploy/base/config.env's 10000 was missing).
    assert flush_timeout({}) == 10.0
    assert flush_timeout({"OTEL_BSP_EXPORT_TIMEOUT": "12000"}) == 12.0
    # 0 (a value the variable may take) would drop every span queued, even those a
    # collector takes at once: at least MIN_FLUSH_SECONDS.
    assert flush_timeout({"OTEL_BSP_EXPORT_TIMEOUT": "0"}) == MIN_FLUSH_SECONDS > 0
    # One export's timeout bounds one batch, not the flush.
    assert flush_timeout({"OTEL_EXPORTER_OTLP_TIMEOUT": "2"}) == 10.0


async def test_spans_queued_at_exit_reach_a_collector_that_answers(
    tmp_path: Path, collector: tuple[Collector, int]
) -> None:
    received, port = collector
    # Nothing is sent before the exit: the batch waits a minute.
    log = await _memory_exit_log(tmp_path, port, OTEL_BSP_SCHEDULE_DELAY="60000")
    names = [span.name for _, span in received.spans()]
    assert names.count("/gensearch.memory.v1.MemoryService/GetConversation") == 5
    assert GIVEN_UP not in log
