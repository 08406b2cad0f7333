"""The README's headline figures, measured afresh: ``make bench``.

Runs each headline benchmark several times, each run a fresh process with fresh service
processes (``bench/<name>.py --summary``), and prints one table: every figure's median,
its range over the runs, the number of runs and the target, with the date and the load
average of the machine, so a figure is always regenerated, never copied.

    .venv/bin/python bench/headline.py [--runs 3] [--only fanout,retrieval,memory] [--markdown]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.report import Figure, machine, markdown, parse_figures, table  # noqa: E402

RUN_TIMEOUT = 600.0  # seconds one run of one benchmark may take
BENCHES = ("fanout", "retrieval", "memory")
# bench/memory.py belongs to the memory service's work: it is used when it can print its
# figures (--summary, the protocol of bench/report.py, or --json), and shown as missing
# otherwise.
SUMMARY_FLAGS = ("--summary", "--json")


@dataclass
class Series:
    unit: str
    target: str = ""
    values: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)


async def summary_flag(name: str) -> str | None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / f"{name}.py"),
        "--help",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    usage = (await proc.communicate())[0].decode()
    return next((flag for flag in SUMMARY_FLAGS if flag in usage), None)


async def commit() -> str:
    """The checked-out commit (and whether the tree has changes), to say what was measured."""
    try:
        proc = await asyncio.create_subprocess_exec(
            "git", "describe", "--always", "--dirty", cwd=ROOT,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
    except OSError:
        return "unknown"
    out = (await proc.communicate())[0].decode().strip()
    return out if proc.returncode == 0 and out else "unknown"


async def run_once(name: str, flag: str) -> list[Figure]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / f"{name}.py"),
        flag,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"bench/{name}.py {flag} took over {RUN_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        tail = err.decode(errors="replace")[-2000:]
        raise RuntimeError(f"bench/{name}.py {flag} exited with {proc.returncode}:\n{tail}")
    return parse_figures(out.decode())


def number(value: float, unit: str) -> str:
    return (
        f"{value:,.0f}" if unit in {"objects/s", "%", ""} and abs(value) >= 10 else f"{value:.2f}"
    )


def shown(unit: str, *values: float) -> str:
    """``values`` (one, or a low and a high) with their unit once."""
    text = " \u2013 ".join(number(v, unit) for v in values)  # an en dash: values may be < 0
    return f"{text} {unit}".rstrip()


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each benchmark")
    parser.add_argument("--only", default=",".join(BENCHES), help="which benchmarks")
    parser.add_argument("--markdown", action="store_true", help="a Markdown table too")
    args = parser.parse_args()
    started, header_line = time.monotonic(), machine()
    series: dict[str, Series] = {}
    missing: list[str] = []
    for name in args.only.split(","):
        flag = await summary_flag(name)
        if flag is None:
            missing.append(name)
            print(f"bench/{name}.py: no --summary or --json option yet; skipped", flush=True)
            continue
        for run in range(1, args.runs + 1):
            load = os.getloadavg()[0]
            print(f"bench/{name}.py {flag}: run {run}/{args.runs} (load {load:.2f})", flush=True)
            for figure in await run_once(name, flag):
                entry = series.setdefault(figure.name, Series(figure.unit, figure.target))
                entry.values.append(figure.value)
                entry.loads.append(load)
    rows = []
    for figure_name, entry in series.items():
        low, high = min(entry.values), max(entry.values)
        rows.append(
            [
                figure_name,
                shown(entry.unit, statistics.median(entry.values)),
                shown(entry.unit, low, high),
                str(len(entry.values)),
                entry.target or "—",
                shown("", min(entry.loads), max(entry.loads)),
            ]
        )
    rows += [
        [f"TODO: {name} (bench/{name}.py has no --summary/--json)", "—", "—", "0", "—", "—"]
        for name in missing
    ]
    header = ["figure", "median", "range (min \u2013 max)", "runs", "target", "load (1 min)"]
    minutes = (time.monotonic() - started) / 60
    finished = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    title = (
        f"gensearch headline figures ({args.runs} run{'s' * (args.runs != 1)} each, "
        f"bench/headline.py, commit {await commit()})\n"
        f"started {header_line}\nfinished {minutes:.1f} min later, load average {finished}"
    )
    print()
    print(title)
    print(table(header, rows))
    if args.markdown:
        print()
        print(markdown(header, rows))


if __name__ == "__main__":
    asyncio.run(main())
