"""``gensearch import`` of more objects than the tenant may write in a window completes at
the quota's pace, saying so as it waits (real stack, a gateway with a small quota)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from tests.cli.conftest import QuotaGateway


def test_an_import_over_the_write_quota_waits_and_completes(
    cli: Any, tmp_path: Path, quota_gateway: QuotaGateway
) -> None:
    name = f"Quota_{uuid.uuid4().hex[:8]}"
    cli("collections", "create", "--name", name, "--property", "n:int",
        "--vectorizer", "none", "--dimensions", "2")  # fmt: skip
    rows: list[dict[str, Any]] = [
        {"properties": {"n": i}, "vector": [1, i / 100]} for i in range(25)
    ]
    rows[3]["properties"]["n"] = "three"  # rejected by the service: line 4
    rows[21]["properties"]["n"] = "twenty-one"  # line 22
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    quota_gateway.early_in_a_window(margin=6.0)
    result = cli(
        "import", str(path), "--collection", name, "--batch-size", "5",
        address=quota_gateway.address,
    )  # fmt: skip
    # Not an error part-way through: the import waited for the quota and finished.
    assert result.code == 2, result.err  # 2: some objects were rejected
    assert "QUOTA_EXCEEDED" not in result.err
    waiting = r"waiting \d+ s for the tenant's write quota \(10 objects a minute\)"
    assert re.search(waiting, result.err)
    summary = r"imported 23 objects into \S+ in [\d.]+s \([\d,]+ objects/s; \d+s of it waiting"
    assert re.search(summary, result.out)
    assert "2 failed" in result.out
    assert "line 4: " in result.err and "line 22: " in result.err
    shown = json.loads(cli("collections", "show", name, "--json").out)
    assert int(shown["object_count"]) == 23  # each object once
