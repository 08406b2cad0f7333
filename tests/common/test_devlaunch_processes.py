"""A Redis started by a service dies with it, even when the service is SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from services.devlaunch.redis_server import RedisProcess

    async def main():
        redis = RedisProcess(Path(sys.argv[1]))
        await redis.start()
        print(redis.pid, flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] != "Z"


async def test_embedded_redis_dies_with_a_killed_parent(tmp_path: Path) -> None:
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", SCRIPT, str(tmp_path), stdout=asyncio.subprocess.PIPE
    )
    assert parent.stdout is not None
    line = await asyncio.wait_for(parent.stdout.readline(), 30)
    redis_pid = int(line)
    assert _alive(redis_pid)
    parent.send_signal(signal.SIGKILL)
    await parent.wait()
    # Redis is now init's child, not ours: nothing to wait on but polling.
    for _ in range(200):
        if not _alive(redis_pid):
            break
        await asyncio.sleep(0.05)
    assert not _alive(redis_pid), "redis outlived the process that started it"
