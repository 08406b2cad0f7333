"""Regenerate the Python code in gen/ from protos/ (`make gen`).

Messages get grpcio-tools' `.pyi` stubs; services get mypy-protobuf's typed gRPC stubs
(sync and async). The proto package equals the Python import path
(`gensearch.memory.v1`), so generated imports need no rewriting.

Only our own protos (protos/gensearch/) become Python here: the vendored google.rpc and
grpc.health protos (scripts/vendor_protos.py) are for other languages' clients, and in
Python the googleapis-common-protos and grpcio-health-checking packages provide them.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
NAMESPACE_INIT = '__path__ = __import__("pkgutil").extend_path(__path__, __name__)\n'


def _plugin(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = exe if exe.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: install the dev extra (mypy-protobuf)")
    return str(found)


def generate(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    protos = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "gensearch").rglob("*.proto"))
    well_known = Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
        f"--mypy_grpc_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # Regular packages (not namespace packages) so mypy and hatch see them plainly.
    for proto in protos:
        pkg = (out / proto).parent
        while pkg != out:
            (pkg / "__init__.py").touch()
            pkg = pkg.parent
    # ...except that `gensearch` itself is shared with the hand-written client
    # (clients/python/gensearch/client): a pkgutil-style namespace package joins the two.
    (out / "gensearch" / "__init__.py").write_text(NAMESPACE_INIT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "gen")
    out: Path = parser.parse_args().out
    if out == ROOT / "gen" and (out / "gensearch").exists():
        shutil.rmtree(out / "gensearch")
    generate(out)


if __name__ == "__main__":
    main()
