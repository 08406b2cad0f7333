"""No service imports another service's modules: they talk over gRPC, and what they
share (a pure rule, a client library) lives in ``services/common``."""

from __future__ import annotations

import ast
from pathlib import Path

SERVICES = Path(__file__).parents[2] / "services"
NAMES = {"gateway", "generation", "memory", "retrieval"}
# Known and recorded (docs/decisions.md, SearchInteractions): memory's search index uses
# retrieval's engine adapters, BM25 and embedder as libraries.
ALLOWED = {("memory", "retrieval")}


def _imported_services(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names = (
            [node.module or ""]
            if isinstance(node, ast.ImportFrom)
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        for name in names:
            parts = name.split(".")
            if len(parts) > 1 and parts[0] == "services" and parts[1] in NAMES:
                found.add(parts[1])
    return found


def test_no_service_imports_another_services_modules() -> None:
    crossings = sorted(
        f"{path.relative_to(SERVICES.parent)} imports services.{other}"
        for service in NAMES
        for path in (SERVICES / service).rglob("*.py")
        for other in _imported_services(path) - {service}
        if (service, other) not in ALLOWED
    )
    assert crossings == []
