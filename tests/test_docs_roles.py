"""docs/retrieval.md's role table names every RetrievalService RPC, each once.

An operator hands out keys by that table; an RPC missing from it (QA: GetChunks, and the
two semantic-cache methods only the gateway may call) leaves them guessing what a reader
may do. Enforcement itself is tested in tests/retrieval/test_tenancy.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from gensearch.retrieval.v1 import retrieval_service_pb2 as pb

RETRIEVAL_DOC = Path(__file__).resolve().parents[1] / "docs" / "retrieval.md"
# The table under "## Tenants": its header, then its rows.
TABLE = re.compile(r"^\| RPCs \| role needed \|\n\|[-|]+\|\n((?:\|.*\n)+)", re.M)


def test_the_role_table_names_every_rpc_once() -> None:
    (table,) = TABLE.findall(RETRIEVAL_DOC.read_text(encoding="utf-8"))
    named = [
        rpc
        for row in table.splitlines()
        for rpc in re.findall(r"\b([A-Z][A-Za-z]+)\b", row.split("|")[1])
        if rpc != "UpdateCollection"  # "any future UpdateCollection"
    ]
    service = pb.DESCRIPTOR.services_by_name["RetrievalService"]
    assert sorted(named) == sorted(m.name for m in service.methods)
