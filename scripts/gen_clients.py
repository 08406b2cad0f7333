"""Regenerate the TypeScript and Go clients from protos/ (`make gen`), with buf's compiler
and local plugins only (nothing remote, nothing downloaded):

- TypeScript (clients/typescript/src/gen): protoc-gen-es from clients/typescript/node_modules
  (`npm ci --prefix clients/typescript` installs the version package-lock.json pins);
- Go (clients/go/gensearch): protoc-gen-go and protoc-gen-go-grpc on PATH (Debian:
  `apt-get install protoc-gen-go protoc-gen-go-grpc`).

A language whose plugin is missing is an error unless named in --skip, so `make gen`
never leaves one language silently stale; tests/common/test_codegen.py runs this with
--out to a scratch directory and compares.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT)
    parser.add_argument("--skip", action="append", choices=sorted(CLIENTS), default=[])
    args = parser.parse_args()
    for name in CLIENTS:
        if name not in args.skip:
            generate(name, args.out.resolve())


if __name__ == "__main__":
    main()
