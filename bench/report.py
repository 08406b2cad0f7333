"""What the benchmarks share besides their processes: percentiles, median and range, the
machine line, the figures a benchmark hands to bench/headline.py, and tables.

A benchmark run with ``--summary`` measures only its headline figures and prints them as
the last line of its standard output, one JSON object::

    {"figures": [{"name": "gateway overhead p50", "value": 0.84, "unit": "ms"}, ...]}
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import platform
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from typing import Any


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile by nearest rank (q = 0.5: the median sample)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def median_range(values: Sequence[float], fmt: str = ".2f") -> str:
    """Median and range of several runs, ``fmt`` a format spec: "1.20 (1.10-1.45)"; one run
    is shown alone, as there is no range to give."""
    if len(values) == 1:
        return f"{values[0]:{fmt}}"
    low, high = min(values), max(values)
    return f"{statistics.median(values):{fmt}} ({low:{fmt}}-{high:{fmt}})"


async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
    """Seconds one awaited call took."""
    started = time.perf_counter()
    await fn()
    return time.perf_counter() - started


def machine() -> str:
    """When and where: UTC time, load average (1, 5, 15 min), cores, versions."""
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"{now}; load average {load} on {os.cpu_count()} cores; Python "
        f"{platform.python_version()}, grpcio {metadata.version('grpcio')}"
    )


@dataclass
class Figure:
    name: str
    value: float
    unit: str  # "ms", "x L", "objects/s", "%" ...
    target: str = ""  # the architecture's target, in words ("<= 2 ms")


class Figures:
    """The headline figures of one run, printed as JSON by ``--summary``."""

    def __init__(self) -> None:
        self.items: list[Figure] = []

    def add(self, name: str, value: float, unit: str, target: str = "") -> None:
        self.items.append(Figure(name, value, unit, target))

    def emit(self) -> None:
        print(json.dumps({"figures": [asdict(f) for f in self.items]}), flush=True)


def parse_figures(stdout: str) -> list[Figure]:
    """The figures a run printed as JSON at the end of its output: ``{"figures": [...]}`` as
    above, or any other JSON object, whose numbers become figures named by their path."""
    data = _last_json(stdout)
    if isinstance(data, dict) and isinstance(data.get("figures"), list):
        return [
            Figure(str(f["name"]), float(f["value"]), str(f.get("unit", "")), f.get("target", ""))
            for f in data["figures"]
        ]
    return [Figure(name, value, "") for name, value in _numbers(data, "")]


def _last_json(text: str) -> Any:
    """The JSON document that ends ``text``: its last line, or one spread over the last
    lines (from the last line that opens it)."""
    lines = text.rstrip().splitlines()
    for start in range(len(lines) - 1, -1, -1):
        if lines[start].lstrip().startswith(("{", "[")):
            with contextlib.suppress(ValueError):
                return json.loads("\n".join(lines[start:]))
    raise ValueError("no JSON at the end of the output")


def _numbers(data: Any, path: str) -> list[tuple[str, float]]:
    if isinstance(data, bool):
        return []
    if isinstance(data, int | float):
        return [(path or "value", float(data))]
    if isinstance(data, dict):
        items = list(data.items())
    elif isinstance(data, list):
        items = list(enumerate(data))
    else:
        return []
    return [n for key, value in items for n in _numbers(value, f"{path}.{key}".strip("."))]


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A terminal table: rich's when rich is installed, aligned plain text otherwise."""
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        return _plain(header, rows)
    grid = Table(box=box.SIMPLE_HEAD)
    for n, name in enumerate(header):
        grid.add_column(name, justify="left" if n == 0 else "right")
    for row in rows:
        grid.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=160, color_system=None).print(grid)
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines()).strip("\n")


def _plain(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = cells
        return "  ".join(
            [first.ljust(widths[0]), *(c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))]
        )

    out = [line(header), "  ".join("-" * w for w in widths)]
    return "\n".join(out + [line(r) for r in rows])


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
