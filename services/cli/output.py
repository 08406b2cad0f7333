"""What the CLI prints: aligned tables and prose for people, JSON for scripts.

Results go to stdout; progress, notes and errors go to stderr, so ``--json`` output can be
piped straight into ``jq``.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from google.protobuf import json_format
from google.protobuf.message import Message


def message_dict(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def dump_json(value: Any, stream: TextIO | None = None, *, line: bool = False) -> None:
    """Indented JSON; ``line=True``: one compact line (JSON Lines, for streamed events)."""
    out = stream or sys.stdout
    indent = None if line else 2
    out.write(json.dumps(value, indent=indent, ensure_ascii=False, default=str))
    out.write("\n")
    out.flush()


def one_line(text: str, width: int) -> str:
    """Whitespace collapsed, cut to ``width`` with an ellipsis."""
    flat = " ".join(str(text).split())
    if len(flat) <= width:
        return flat
    if width <= 1:
        return flat[: max(width, 0)]
    return flat[: width - 1] + "…"


def terminal_width() -> int:
    return max(shutil.get_terminal_size((120, 24)).columns, 40)


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[Any]],
    stream: TextIO | None = None,
    width: int | None = None,
) -> None:
    """An aligned table; the widest columns shrink until the table fits the terminal."""
    out = stream or sys.stdout
    if not rows:
        out.write("(none)\n")
        return
    cells = [[one_line("" if v is None else str(v), 10_000) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    budget = (width or terminal_width()) - 2 * (len(headers) - 1)
    while sum(widths) > budget:
        widest = max(range(len(widths)), key=lambda i: widths[i])
        if widths[widest] <= max(len(headers[widest]), 8):
            break
        widths[widest] -= 1
    out.write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    out.write("\n")
    for row in cells:
        line = "  ".join(one_line(c, w).ljust(w) for c, w in zip(row, widths, strict=True))
        out.write(line.rstrip() + "\n")
    out.flush()


def note(text: str) -> None:
    """A remark for people, never part of the parseable output."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


class Progress:
    """A plain-text progress bar with a rate, on stderr.

    On a terminal it redraws one line; otherwise (CI logs, pipes) it prints a line every few
    seconds so logs stay short.
    """

    def __init__(self, total: int | None, label: str = "importing", unit: str = "objects"):
        self.total = total
        self.label = label
        self.unit = unit
        self.done = 0
        self.started = time.perf_counter()
        self._last_draw = 0.0
        self._tty = sys.stderr.isatty()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.perf_counter()
        if now - self._last_draw >= (0.1 if self._tty else 5.0):
            self._last_draw = now
            self._draw(final=False)

    def finish(self, done: int | None = None) -> None:
        if done is not None:
            self.done = done
        self._draw(final=True)

    def _draw(self, final: bool) -> None:
        if self.total:
            filled = int(30 * min(self.done, self.total) / self.total)
            bar = "[" + "#" * filled + "." * (30 - filled) + "]"
            count = f"{self.done}/{self.total} {self.unit}"
        else:
            bar, count = "", f"{self.done} {self.unit}"
        text = f"{self.label} {bar} {count}  {self.rate:,.0f} {self.unit}/s  {self.elapsed:.1f}s"
        if self._tty:
            sys.stderr.write("\r" + text + ("\n" if final else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()
