"""docs/operations.md, the operator's page, names every metric the services export.

An operator builds dashboards and alerts from that page; a metric it leaves out is one
nobody watches (QA: the gateway's own metrics and half of generation's were only in the
code, or in a service doc's prose).
"""

from __future__ import annotations

import importlib
from pathlib import Path

from prometheus_client import REGISTRY

from services.generation.metrics import OUTCOMES

ROOT = Path(__file__).resolve().parents[1]
OPERATIONS = ROOT / "docs" / "operations.md"
# Metrics live in each service's metrics.py (and the chassis'): imported, they register.
for module in sorted((ROOT / "services").glob("*/metrics.py")):
    importlib.import_module(f"services.{module.parent.name}.metrics")


def _exported() -> set[str]:
    """Each metric as a scrape names it (a counter with its ``_total``)."""
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith(("gensearch_", "grpc_")):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_operations_names_every_exported_metric() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    exported = _exported()
    assert "gensearch_gateway_generation_waiting" in exported  # the scan sees them all
    missing = sorted(name for name in exported if f"`{name}`" not in text)
    assert missing == [], f"not in docs/operations.md's metric tables: {missing}"


def test_operations_lists_every_llm_outcome() -> None:
    """Each value ``gensearch_llm_requests_total{outcome}`` / ``_retries_total{cause}``
    can take (services/generation/metrics.py's fixed set) is on the operator's page."""
    text = OPERATIONS.read_text(encoding="utf-8")
    missing = sorted(value for value in OUTCOMES if f"`{value}`" not in text)
    assert missing == [], f"outcomes not in docs/operations.md: {missing}"
