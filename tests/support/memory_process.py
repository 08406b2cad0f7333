"""The memory service as a process of its own, for tests that kill it (``kill -9``) and
start another replica on the same Redis and data: only a real process dies mid-call."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from tests.support.processes import start_serving

ROOT = Path(__file__).resolve().parents[2]
MEMORY = "gensearch.memory.v1.MemoryService"


async def start_memory(
    data_dir: Path, *, redis_url: str | None = None, **settings: str
) -> tuple[asyncio.subprocess.Process, str]:
    """``python -m services.memory`` on free ports with its data in ``data_dir``, once it
    serves: the process and its address. ``redis_url`` None: its own embedded Redis.
    ``settings`` are memory's, by name (``search_index="keyword"`` is
    ``GENSEARCH_MEMORY_SEARCH_INDEX``); none of the caller's own GENSEARCH_ variables
    reach it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENSEARCH_")}
    env.update(
        GENSEARCH_DATA_DIR=str(data_dir),
        GENSEARCH_MEMORY_PORT="0",
        GENSEARCH_MEMORY_METRICS_PORT="0",
    )
    if redis_url is not None:
        env["GENSEARCH_MEMORY_REDIS_URL"] = redis_url
    env.update({f"GENSEARCH_MEMORY_{name.upper()}": value for name, value in settings.items()})
    return await start_serving("services.memory", env, service=MEMORY, cwd=ROOT)


async def kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL ``proc`` (if still there) and reap it."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()
