"""What the CLI prints: aligned tables and prose for people, JSON for scripts.

Results go to stdout; progress, notes and errors go to stderr, so ``--json`` output can be
piped straight into ``jq``.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from gensearch.client.types import exact_structured
from google.protobuf import json_format
from google.protobuf.message import Message
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TextColumn,
)
from rich.progress import Progress as RichProgress
from rich.text import Text


def message_dict(message: Message, types: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The API's JSON form (proto field names), with the numbers of ``int`` properties
    (``types``: the collection's property name -> data type) as integers: a ``Struct``
    holds every number as a double, so 1965 would print as 1965.0. A generation's
    ``structured`` answer gets its own numbers back from the JSON text it was parsed from
    (``"year": 1965``, as the table output shows it, not ``1965.0``)."""
    value = json_format.MessageToDict(message, preserving_proto_field_name=True)
    if types:
        _integers(value, types)
    _exact_structured(value)
    return value


def inline_types(objects: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Property name -> ``int`` for the names an inline object gives an integer: with no
    collection there is no schema, and the objects given come back through a ``Struct``
    (``{"year": 1972}`` would print as ``1972.0``). Only whole numbers are printed as
    integers, so another object's ``1979.5`` stays as it is."""
    return {
        name: "int"
        for obj in objects
        for name, number in obj.items()
        if isinstance(number, int) and not isinstance(number, bool)
    }


def _exact_structured(value: Any) -> None:
    if isinstance(value, list):
        for item in value:
            _exact_structured(item)
    elif isinstance(value, dict):
        structured, text = value.get("structured"), value.get("result")
        if isinstance(structured, dict) and isinstance(text, str):
            value["structured"] = exact_structured(text, structured)
        for key, inner in value.items():
            if key != "structured":
                _exact_structured(inner)


def _integers(value: Any, types: Mapping[str, str]) -> None:
    if isinstance(value, list):
        for item in value:
            _integers(item, types)
    elif isinstance(value, dict):
        for key, inner in value.items():
            if key == "properties" and isinstance(inner, dict):
                for name, number in inner.items():
                    integral = isinstance(number, float) and number.is_integer()
                    if integral and types.get(name) == "int":
                        inner[name] = int(number)
            else:
                _integers(inner, types)


def _default(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value)


# Control characters in what the CLI prints for people, each made a visible character of
# the same width (tables are aligned before they are written): stored objects, names and
# model output are anyone's text, and a raw ESC or BEL there drove the reader's terminal
# (an object titled "\x1b]0;…\x07\x1b[31m…" retitled the window and coloured the table).
# C0 controls become their Unicode "control pictures" (ESC is ␛), DEL ␡, C1 controls �;
# a carriage return is dropped (it could overwrite the line before it; CRLF stays a line
# break). Tab and line feed pass. --json output is left alone: JSON escapes C0 itself.
VISIBLE_CONTROLS: dict[int, str | None] = {
    **{c: chr(0x2400 + c) for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)},
    0x0D: None,
    0x7F: "\u2421",
    **{c: "\ufffd" for c in range(0x80, 0xA0)},
}


def printable(text: str) -> str:
    return text.translate(VISIBLE_CONTROLS)


class PrintableStream:
    """A text stream that writes through ``printable`` (``sys.stdout`` of a command)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        self.stream.write(printable(text))
        return len(text)

    def __getattr__(self, name: str) -> Any:  # flush, isatty, fileno, encoding …
        return getattr(self.stream, name)


def dump_json(value: Any, stream: TextIO | None = None, *, line: bool = False) -> None:
    """Indented JSON; ``line=True``: one compact line (JSON Lines, for streamed events)."""
    out = stream or sys.stdout
    indent = None if line else 2
    out.write(json.dumps(value, indent=indent, ensure_ascii=False, default=_default))
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


class _Rate(ProgressColumn):
    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        # Up to finish(), not to the last advance: the bar advances as batches go out,
        # and the last one can sit in the server for seconds (the demo's 40 passages went
        # out in 0.03 s and were embedded in 2.9 s: the bar said 1,373 passages/s above a
        # summary of 13.6). task.elapsed stops with the task, at finish().
        elapsed = task.elapsed
        rate = task.completed / elapsed if elapsed else 0.0
        return Text(f"{rate:,.0f} {self.unit}/s")


class _Elapsed(ProgressColumn):
    """rich's TimeElapsedColumn, stopped at finish() rather than at the last advance (as
    _Rate)."""

    def render(self, task: Task) -> Text:
        seconds = int(task.elapsed or 0)
        return Text(
            f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}", "progress.elapsed"
        )


def command_name() -> str:
    """How the user runs this CLI, for the commands it suggests: ``gensearch`` when that
    name on PATH is this installation's, else this installation's script by path
    (``.venv/bin/gensearch`` after ``make run``, which does not activate the venv: a
    suggested bare ``gensearch`` was "command not found" there)."""
    script = Path(sys.prefix) / "bin" / "gensearch"
    found = shutil.which("gensearch")
    if not script.is_file() or (found and Path(found).resolve() == script.resolve()):
        return "gensearch"
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script)


class Progress:
    """A progress bar with a rate, on stderr (rich).

    Redrawn by time (10 times a second on a terminal), however the work advances; a
    non-terminal (CI logs, pipes) gets only the final line.
    """

    def __init__(self, total: int | None, label: str = "importing", unit: str = "objects"):
        self.total = total
        self.unit = unit
        self._bar = RichProgress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn() if total else TextColumn("{task.completed}"),
            TextColumn(unit),
            _Rate(unit),
            _Elapsed(),
            console=Console(stderr=True),
            refresh_per_second=10,
        )
        self._label = label
        self._waiting = False
        self._task = self._bar.add_task(label, total=total)
        self._bar.start()
        self._open = True

    @property
    def done(self) -> int:
        return int(self._bar.tasks[0].completed)

    def advance(self, count: int) -> None:
        if self._waiting:
            self._waiting = False
            self._bar.update(self._task, description=self._label)
        self._bar.advance(self._task, count)

    def say(self, text: str, *, waiting: bool = False) -> None:
        """A line above the bar (on a non-terminal: the line alone); ``waiting``: the bar
        says "waiting" instead of its label until it advances again."""
        self._bar.console.print(text, markup=False, highlight=False)
        if waiting and not self._waiting:
            self._waiting = True
            indent = self._label[: len(self._label) - len(self._label.lstrip())]
            self._bar.update(self._task, description=f"{indent}waiting")

    def finish(self, done: int | None = None) -> None:
        if not self._open:
            return
        self._open = False
        if done is not None:
            self._bar.update(self._task, completed=done)
        if self._waiting:
            self._waiting = False
            self._bar.update(self._task, description=self._label)
        self._bar.stop_task(self._task)
        self._bar.stop()

    def abort(self) -> None:
        """Stop without a last line: the error that stopped the work says it all. Transient,
        so a terminal's bar is cleared, and nothing at all is printed on a pipe (no empty
        line above the one-line error)."""
        if self._open:
            self._open = False
            self._bar.update(self._task, visible=False)
            self._bar.live.transient = True
            # The display alone: Progress.stop also prints a newline on a pipe (ending the
            # final line it printed there), and with nothing printed that is a blank line.
            self._bar.live.stop()


MISSING_LLM_KEY = "MISSING_PROVIDER_API_KEY"
# What the CLI's user does about an error the service words for any gRPC client.
KEY_HINTS = {
    "MISSING_CREDENTIALS": "--api-key KEY or GENSEARCH_API_KEY",
    "INVALID_API_KEY": "check --api-key or GENSEARCH_API_KEY",
}
# The call's own deadline ran out waiting for the provider: the CLI's deadline (and, for
# `ask`, the server's 30 s answer budget) is --timeout. Not UPSTREAM_FIRST_BYTE_TIMEOUT:
# that is the provider's first-byte setting, which no flag of the caller's changes.
DEADLINE_HINTS = {
    "UPSTREAM_TIMEOUT": "a longer deadline with --timeout SECONDS",
    "PROVIDER_QUEUE_TIMEOUT": "a longer deadline with --timeout SECONDS",
}
_PROVIDER_IN_MESSAGE = re.compile(r"provider '([^']+)'")


def key_hint(reason: str, provider: str = "", message: str = "") -> str:
    """What to append to an error the CLI prints when a key was missing or wrong: how the
    CLI sends one (the service speaks of gRPC metadata, which a CLI user sends only through
    ``--api-key`` and ``--llm-key``); when the provider outlasted the call's deadline: the
    flag that extends it; "" for any other error."""
    if reason in KEY_HINTS:
        return f"; with gensearch: {KEY_HINTS[reason]}"
    if reason in DEADLINE_HINTS:
        return f"; with gensearch: {DEADLINE_HINTS[reason]}"
    if reason != MISSING_LLM_KEY:
        return ""
    if not provider:
        named = _PROVIDER_IN_MESSAGE.search(message)
        provider = named.group(1) if named else "PROVIDER"
    return f"; with gensearch: --llm-key {provider}=KEY"
