"""docs/operations.md's INVALID_ARGUMENT table says where each reason comes from (its
`from` column), and every service whose code raises it is named there (or `all`).

An operator reading `OUT_OF_RANGE | gateway` looked for a gateway limit when retrieval,
memory or generation had refused a count past theirs (QA: the column named one service for
seven reasons raised by others too).
"""

from __future__ import annotations

import re
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parents[1]
SERVICES = ("memory", "retrieval", "generation", "gateway")
# The table under "### INVALID_ARGUMENT": reason | from | meaning.
TABLE = re.compile(r"^\| reason \| from \| meaning \|\n\|[-|]+\|\n((?:\|.*\n)+)", re.M)
ROW = re.compile(r"^\| `([A-Z][A-Z_]+)` \| ([^|]+) \|", re.M)


def _raised_by(packages: tuple[str, ...] = SERVICES) -> dict[str, set[str]]:
    """Reason -> the services (of ``packages``) whose own code raises it (`reason="X"`, or
    `reason=NAME` of a module constant `NAME = "X"`, as tests/client/test_client.py scans
    for them)."""
    files = {path: path.read_text(encoding="utf-8") for path in (ROOT / "services").rglob("*.py")}
    constants: dict[str, str] = {}
    for text in files.values():
        constants.update(re.findall(r'^([A-Z][A-Z_]+) = "([A-Z][A-Z_]+)"$', text, re.M))
    raised: dict[str, set[str]] = {}
    for path, text in files.items():
        service = path.relative_to(ROOT / "services").parts[0]
        if service not in packages:
            continue
        reasons = set(re.findall(r'reason\s*=\s*"([A-Z][A-Z_]+)"', text))
        reasons |= {constants.get(n, "") for n in re.findall(r"reason=([A-Z][A-Z_]+)\b", text)}
        for reason in reasons - {""}:
            raised.setdefault(reason, set()).add(service)
    return raised


def test_the_from_column_names_every_service_that_raises_the_reason() -> None:
    (table,) = TABLE.findall((ROOT / "docs" / "operations.md").read_text(encoding="utf-8"))
    rows = ROW.findall(table)
    assert len(rows) >= 30
    raised = _raised_by()
    unnamed = {}
    for reason, where in rows:
        if where.strip() == "all":
            continue
        missing = sorted(s for s in raised.get(reason, ()) if s not in where)
        if missing:
            unnamed[reason] = missing
    assert unnamed == {}, f"docs/operations.md's `from` leaves out: {unnamed}"


def test_every_reason_raised_has_a_row_under_error_reasons() -> None:
    """A client in another language looks a reason up in docs/operations.md's "Error
    reasons" tables; 19 reasons the services raise (INVALID_MODE, INVALID_STEP,
    SUMMARY_CHANGED, NO_CHUNKING, …) were only in a service's own page, or nowhere for
    gateway's inline TOO_LARGE. A code's generic reason is its own name (the section says
    so), so those need no row. Reasons raised by services/common's helpers count too
    (CONTROL_CHARACTER, INVALID_SCHEMA and DOWNSTREAM_ERROR had no row: no one service's
    own code names them)."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    start = text.index("\n## Error reasons")
    section = text[start : text.index("\n## ", start + 1)]
    rows = {
        reason
        for line in section.splitlines()
        if line.startswith("| `")
        for reason in re.findall(r"`([A-Z][A-Z_]+)`", line.split("|")[1])
    }
    generic = {code.name for code in grpc.StatusCode}
    missing = sorted(set(_raised_by((*SERVICES, "common"))) - rows - generic)
    assert missing == [], f"no row under docs/operations.md's Error reasons: {missing}"
