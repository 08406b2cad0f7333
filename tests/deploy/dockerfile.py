"""Just enough Dockerfile parsing for static checks (no Docker engine here)."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[tuple[str, str]] = field(default_factory=list)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        joined.append(current + line)
        current = ""
    result = []
    for line in joined:
        keyword, _, args = line.partition(" ")
        result.append((keyword.upper(), args.strip()))
    return result


def stages(path: Path) -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, args in instructions(path):
        if keyword == "FROM":
            match = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", args, re.I)
            assert match, args
            current = Stage(match[2] or f"stage{len(found)}", match[1])
            found[current.name] = current
        elif current is not None:
            current.instructions.append((keyword, args))
    return found


def lineage(path: Path, target: str) -> list[Stage]:
    """The target stage and the stages it is built FROM, nearest first."""
    all_stages = stages(path)
    chain = []
    name: str | None = target
    while name in all_stages:
        chain.append(all_stages[name])
        name = all_stages[name].base
    return chain


def copy_destinations(path: Path, target: str) -> dict[str, str]:
    """Build-context sources copied into the target image (not --from copies): src -> dest."""
    copies: dict[str, str] = {}
    for stage in reversed(lineage(path, target)):
        for keyword, args in stage.instructions:
            if keyword not in ("COPY", "ADD"):
                continue
            words = shlex.split(args)
            if any(w.startswith("--from=") for w in words):
                continue
            parts = [w for w in words if not w.startswith("--")]
            *sources, dest = parts
            for source in sources:
                copies[source.rstrip("/")] = dest.rstrip("/") if len(sources) == 1 else dest
    return copies


def value(path: Path, target: str, keyword: str) -> str | None:
    """The last value of an instruction (USER, CMD ...) in effect for the target."""
    for stage in lineage(path, target):
        for kw, args in reversed(stage.instructions):
            if kw == keyword:
                return args
    return None
