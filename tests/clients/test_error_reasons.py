"""The TypeScript and Go clients name the same ErrorInfo reasons as the Python client's
error classes (which tests/client/test_client.py keeps complete against services/): a
reason added there gets its constant in clients/typescript/src/rpcError.ts and
clients/go/rpcerror/rpcerror.go from `make gen` (scripts/gen_clients.py)."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.gen_clients import python_reasons

ROOT = Path(__file__).resolve().parents[2]


def test_the_typescript_client_names_every_reason() -> None:
    source = (ROOT / "clients" / "typescript" / "src" / "rpcError.ts").read_text()
    body = source.split("export const Reason = {", 1)[1].split("} as const;", 1)[0]
    pairs = re.findall(r'^\s+([A-Z_]+): "([A-Z_]+)",$', body, re.M)
    assert all(key == value for key, value in pairs), pairs
    assert len(pairs) == len(body.strip().splitlines())  # nothing the pattern missed
    assert {value for _, value in pairs} == set(python_reasons())


def test_the_go_client_names_every_reason() -> None:
    source = (ROOT / "clients" / "go" / "rpcerror" / "rpcerror.go").read_text()
    body = source.split("const (", 1)[1].split("\n)", 1)[0]
    pairs = re.findall(r"^\t([A-Za-z]+)\s+Reason = \"([A-Z_]+)\"$", body, re.M)
    assert len(pairs) == len(body.strip().splitlines())
    # The Go name is the reason in CamelCase: QUOTA_EXCEEDED is QuotaExceeded.
    assert all(name == value.title().replace("_", "") for name, value in pairs), pairs
    assert {value for _, value in pairs} == set(python_reasons())


def test_the_docs_name_every_reason() -> None:
    """An operator looks a reason up in the docs (operations.md's tables, or the service
    doc that raises it); QA: BAD_PROPERTY_TYPE was in the clients but in no doc."""
    text = "".join(
        path.read_text(encoding="utf-8")
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    )
    assert [r for r in python_reasons() if f"`{r}`" not in text] == []
