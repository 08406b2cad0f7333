"""The benchmarks' LLM endpoint: tests/support/fake_openai.py served from its own process.

    .venv/bin/python bench/fake_llm.py --latency 0.2 [--jitter 0.1] [--port 0]
        [--rate-limit R --rate-window W]   # a provider taking R requests per W seconds
        [--reply-chars N]                  # answers padded to N characters (large replies)

Prints its port on the first line of stdout once it listens, then serves until SIGTERM.
Every answer waits ``latency`` x uniform(1 - jitter, 1 + jitter) seconds, and its first
word is ``time.perf_counter()`` taken when the answer is made, right before the first
bytes of it are written: CLOCK_MONOTONIC, which every process of a Linux machine shares,
so a client in another process can tell how long the first token took to reach it
(``first_token_gap``).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.fake_openai import FakeOpenAI  # noqa: E402

TAIL = "and the rest of a short answer"


def stamped(body: dict[str, Any]) -> str:
    return f"{time.perf_counter():.6f} {TAIL}"


def padded(chars: int) -> Any:
    """``stamped``, padded with words to ``chars`` characters (an answer of that size)."""

    def reply(body: dict[str, Any]) -> str:
        text = stamped(body)
        filler = " lorem" * max(0, (chars - len(text)) // 6)
        return text + filler

    return reply


def first_token_gap(first_delta: str, received: float) -> float:
    """Seconds from the fake making an answer to a client reading its first token."""
    return received - float(first_delta.split()[0])


async def serve(
    latency: float,
    jitter: float,
    port: int,
    rate_limit: int | None,
    rate_window: float,
    reply_chars: int = 0,
) -> None:
    fake = FakeOpenAI(
        latency=latency,
        latency_jitter=jitter,
        reply=padded(reply_chars) if reply_chars else stamped,
        record=False,
        port=port,
        rate_limit=rate_limit,
        rate_window=rate_window,
    )
    await fake.start()
    print(fake.port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--latency", type=float, default=0.2, help="seconds before answering")
    parser.add_argument("--jitter", type=float, default=0.1, help="spread of the latency")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--rate-limit", type=int, help="429 past this many requests a window")
    parser.add_argument("--rate-window", type=float, default=60.0, help="seconds")
    parser.add_argument("--reply-chars", type=int, default=0, help="pad answers to this size")
    args = parser.parse_args()
    asyncio.run(
        serve(
            args.latency,
            args.jitter,
            args.port,
            args.rate_limit,
            args.rate_window,
            args.reply_chars,
        )
    )


if __name__ == "__main__":
    main()
