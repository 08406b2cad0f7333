"""Regenerate the TypeScript and Go clients from protos/ (`make gen`), with buf's compiler
and local plugins only (nothing remote, nothing downloaded):

- TypeScript (clients/typescript/src/gen): protoc-gen-es from clients/typescript/node_modules
  (`npm ci --prefix clients/typescript` installs the version package-lock.json pins);
- Go (clients/go/gensearch): protoc-gen-go and protoc-gen-go-grpc on PATH (Debian:
  `apt-get install protoc-gen-go protoc-gen-go-grpc`).

A language whose plugin is missing is an error unless named in --skip, so `make gen`
never leaves one language silently stale; tests/common/test_codegen.py runs this with
--out to a scratch directory and compares.

Each client's list of ErrorInfo reasons (the `Reason` constants of
clients/typescript/src/rpcError.ts and clients/go/rpcerror/rpcerror.go) is written too,
whatever --skip says, from the Python client's error classes (one per reason): only the
list between its file's markers is rewritten, the rest of the file is hand-written.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUF = Path(sys.executable).parent / "buf"


@dataclass(frozen=True)
class Client:
    template: str  # buf.gen.yaml, relative to the repository root
    output: str  # the directory the generator owns, relative to the repository root
    plugins: tuple[str, ...]  # plugin executables: paths relative to the root, or names on PATH
    generate_paths: tuple[str, ...] = ()  # restrict to these proto paths (default: all)
    hint: str = ""


CLIENTS = {
    "typescript": Client(
        template="clients/typescript/buf.gen.yaml",
        output="clients/typescript/src/gen",
        plugins=("clients/typescript/node_modules/.bin/protoc-gen-es",),
        hint="run `npm ci --prefix clients/typescript`",
    ),
    "go": Client(
        template="clients/go/buf.gen.yaml",
        output="clients/go/gensearch",
        plugins=("protoc-gen-go", "protoc-gen-go-grpc"),
        # google.rpc and grpc.health come with genproto and grpc-go.
        generate_paths=("protos/gensearch",),
        hint="apt-get install protoc-gen-go protoc-gen-go-grpc",
    ),
}


def missing_plugins(client: Client) -> list[str]:
    return [
        plugin
        for plugin in client.plugins
        if not ((ROOT / plugin).exists() if "/" in plugin else shutil.which(plugin))
    ]


def generate(name: str, out: Path) -> None:
    """Generate client ``name`` into ``out`` (the repository root or a scratch copy of its
    layout): only ``out / client.output`` is written, after being emptied."""
    client = CLIENTS[name]
    missing = missing_plugins(client)
    if missing:
        raise SystemExit(f"{name}: {', '.join(missing)} not found: {client.hint}")
    target = out / client.output
    if target.exists():
        shutil.rmtree(target)
    paths = [arg for path in client.generate_paths for arg in ("--path", path)]
    subprocess.run(
        [str(BUF), "generate", "--template", client.template, "-o", str(out), *paths],
        cwd=ROOT,
        check=True,
    )


@dataclass(frozen=True)
class ReasonList:
    path: str  # the hand-written file holding the list, relative to the repository root
    start: str  # the text just before the list's first line
    end: str  # the text just after its last line
    line: Callable[[str, int], str]  # a reason and the longest reason's length -> its line


def _go_name(reason: str) -> str:
    """QUOTA_EXCEEDED -> QuotaExceeded."""
    return reason.title().replace("_", "")


REASON_LISTS = (
    ReasonList(
        path="clients/typescript/src/rpcError.ts",
        start="export const Reason = {\n",
        end="} as const;",
        line=lambda reason, _: f'  {reason}: "{reason}",\n',
    ),
    ReasonList(
        path="clients/go/rpcerror/rpcerror.go",
        start="const (\n",
        end=")\n",
        # Aligned as gofmt aligns a const block: names padded to the longest.
        line=lambda reason, width: f'\t{_go_name(reason):<{width}} Reason = "{reason}"\n',
    ),
)


def python_reasons() -> list[str]:
    """Every ErrorInfo reason the Python client has a class for, sorted."""
    from gensearch.client import errors

    found: set[str] = set()
    classes = [errors.GensearchError]
    while classes:
        cls = classes.pop()
        classes.extend(cls.__subclasses__())
        if cls.__dict__.get("error_reason"):
            found.add(cls.error_reason)
    return sorted(found)


def write_reasons(out: Path) -> None:
    """Each ReasonList's file under ``out`` (the repository root or a scratch copy of its
    layout): the repository's file with its list replaced by ``python_reasons()``."""
    reasons = python_reasons()
    width = max(len(_go_name(reason)) for reason in reasons)
    for listing in REASON_LISTS:
        source = (ROOT / listing.path).read_text()
        head, rest = source.split(listing.start, 1)
        tail = rest[rest.index(listing.end) :]
        body = "".join(listing.line(reason, width) for reason in reasons)
        target = out / listing.path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(head + listing.start + body + tail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    parser.add_argument("--skip", action="append", choices=sorted(CLIENTS), default=[])
    args = parser.parse_args()
    for name in CLIENTS:
        if name not in args.skip:
            generate(name, args.out.resolve())
    write_reasons(args.out.resolve())


if __name__ == "__main__":
    main()
