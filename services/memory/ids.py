"""Time-ordered ids (UUIDv7, RFC 9562).

The 74 bits after the millisecond timestamp start random and are incremented for every
further id in the same millisecond, so the ids one process makes are strictly increasing
and sort like their creation time, as strings too (lower-case hex, fixed width).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable

_TAIL_BITS = 74
_TAIL_MAX = (1 << _TAIL_BITS) - 1
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class UUIDv7Generator:
    def __init__(self, clock: Callable[[], int] = time.time_ns) -> None:
        self._clock = clock  # ns since the epoch
        self._lock = threading.Lock()
        self._ms = 0
        self._tail = 0

    def new(self) -> tuple[str, int]:
        """A new id and its millisecond timestamp."""
        with self._lock:
            now = self._clock() // 1_000_000
            if now > self._ms:
                self._ms = now
                # Top bit clear: room for ~2^73 increments within one millisecond.
                self._tail = int.from_bytes(os.urandom(10), "big") >> 7
            else:
                # Same millisecond, or the clock stepped back: keep counting up.
                self._tail += 1
                if self._tail > _TAIL_MAX:
                    self._ms += 1
                    self._tail = int.from_bytes(os.urandom(10), "big") >> 7
            ms, tail = self._ms, self._tail
        value = (
            (ms << 80)
            | (0x7 << 76)
            | ((tail >> 62) << 64)  # rand_a: 12 bits
            | (0b10 << 62)  # variant
            | (tail & ((1 << 62) - 1))  # rand_b: 62 bits
        )
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}", ms

    def advance_past(self, uuid7: str) -> None:
        """The next id made sorts after ``uuid7`` (another replica's, made on a clock
        ahead of this one's)."""
        value = int(uuid7.replace("-", ""), 16)
        ms = value >> 80
        tail = (((value >> 64) & 0xFFF) << 62) | (value & ((1 << 62) - 1))
        with self._lock:
            if (ms, tail) > (self._ms, self._tail):
                self._ms, self._tail = ms, tail


def parse_id(value: str) -> str | None:
    """The canonical (lower-case) form of a UUID string, or None if it is not one."""
    if len(value) != 36 or not UUID_RE.fullmatch(value):
        return None
    return value.lower()


def timestamp_ms(uuid7: str) -> int:
    return int(uuid7[:8] + uuid7[9:13], 16)
