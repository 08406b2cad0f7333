"""What the log redactor costs in a call holding many caller keys: hiding a new key, and
redacting one record of that call.

    .venv/bin/python bench/redaction.py [--keys 256] [--key-bytes 1024] [--rounds 7]

Gives one call (services/common/logs.py, ``hide_in_this_call``) ``--keys`` keys of
``--key-bytes`` random key characters, then times, median of ``--rounds`` rounds of CPU time
(``time.process_time``): hiding a new key in it, and ``redact`` of a typical log line (~200
bytes) and of a 10 KB one (an upstream's error body: line breaks, JSON escapes, base64 and
hex runs), neither holding a secret, which is what nearly every record is.
"""

from __future__ import annotations

import argparse
import base64
import random
import statistics
import string
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "gen")]

from services.common.logs import hide_in_this_call, redact  # noqa: E402

KEY_CHARS = string.ascii_letters + string.digits + "-_"
TYPICAL = (
    "search of collection 'docs' took 41.7 ms: 12 hits, reranked by cohere/rerank-v3.5, "
    "request 7f3c9a2e-5b1d-4e8f-9a0c-1d2e3f4a5b6c from tenant acme (user alice) at "
    "https://retrieval.internal:50051/gensearch.retrieval.v1.RetrievalService/Search"
)


def _key(rng: random.Random, size: int) -> str:
    return "sk-" + "".join(rng.choices(KEY_CHARS, k=size - 3))


def _long_line(rng: random.Random) -> str:
    """~10 KB of an upstream's error body quoted in a log record."""
    parts = []
    while sum(map(len, parts)) < 10_000:
        parts.append(
            rng.choice(
                (
                    '{"error": {"message": "The model \\u0060gpt-x\\u0060 does not exist",\n',
                    ' "type": "invalid_request_error", "param": null, "code": "model"}}\n',
                    f"trace {rng.getrandbits(128):032x} span {rng.getrandbits(64):016x}\n",
                    base64.b64encode(rng.randbytes(48)).decode() + "\n",
                    "at /srv/app/services/generation/openai_api.py line 212 in _complete\n",
                )
            )
        )
    return "".join(parts)


def _cpu_per_call(call: Callable[[str], object], args: list[str]) -> float:
    start = time.process_time()
    for arg in args:
        call(arg)
    return (time.process_time() - start) / len(args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=256)
    parser.add_argument("--key-bytes", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    rng = random.Random(42)
    for _ in range(args.keys):
        hide_in_this_call(_key(rng, args.key_bytes))
    long_line = _long_line(rng)
    assert redact(TYPICAL) == TYPICAL  # nothing in them is a secret: all of it is scanned
    rounds: dict[str, list[float]] = {"register": [], "typical": [], "long": []}
    for _ in range(args.rounds):
        fresh = [_key(rng, args.key_bytes) for _ in range(20)]
        rounds["register"].append(_cpu_per_call(hide_in_this_call, fresh))
        rounds["typical"].append(_cpu_per_call(redact, [TYPICAL] * 200))
        rounds["long"].append(_cpu_per_call(redact, [long_line] * 20))
    print(f"{args.keys} keys of {args.key_bytes} bytes; CPU per call, median of {args.rounds}:")
    print(f"  register a new key     {statistics.median(rounds['register']) * 1e3:9.3f} ms")
    print(f"  redact a typical line  {statistics.median(rounds['typical']) * 1e3:9.3f} ms")
    print(
        f"  redact a {len(long_line) // 1000} KB line     "
        f"{statistics.median(rounds['long']) * 1e3:9.3f} ms"
    )


if __name__ == "__main__":
    main()
