"""The generated clients run against the whole stack of tests/gateway (real memory on
Redis, retrieval on the embedded Qdrant engine, generation on the loopback fake LLM, the
gateway in front), and Node with the TypeScript client's pinned packages."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway.conftest import fake, shared_redis, stack_factory

__all__ = ["fake", "shared_redis", "stack_factory"]

ROOT = Path(__file__).resolve().parents[2]
TYPESCRIPT = ROOT / "clients" / "typescript"


def _missing(reason: str) -> None:
    # Node.js 20 is a requirement (README): in CI a missing Node is a failure, as for kubectl.
    if os.environ.get("CI") and not os.environ.get("GENSEARCH_ALLOW_SKIP_NODE"):
        pytest.fail(reason + " (set GENSEARCH_ALLOW_SKIP_NODE=1 to skip deliberately)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def node() -> str:
    found = shutil.which("node")
    if found is None:
        _missing("node is not installed: the TypeScript client cannot run")
    assert found is not None
    if not (TYPESCRIPT / "node_modules" / ".bin" / "tsc").exists():
        _missing("clients/typescript/node_modules is missing: `npm ci --prefix clients/typescript`")
    return found


@pytest.fixture(scope="session")
def typescript_build(node: str) -> Path:
    """Type-checks and compiles clients/typescript/src (examples and generated code) to
    dist/: a type error in either fails here."""
    tsc = TYPESCRIPT / "node_modules" / "typescript" / "bin" / "tsc"
    proc = subprocess.run(
        [node, str(tsc), "-p", "tsconfig.json"],
        cwd=TYPESCRIPT, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, f"tsc failed:\n{proc.stdout}{proc.stderr}"
    return TYPESCRIPT / "dist"
