"""Memory's embedded search index (``<data_dir>/memory-index``) whose schema file another
version (or other settings: a mode, a model) wrote: the index is derived data, rebuilt
empty at its first use with one WARNING line, no traceback, and search answers (turns
indexed before are no longer found: there is no full reindex). A guard: it held before;
docs/operations.md, Backups and restores, says so."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from gensearch.memory.v1 import memory_service_pb2 as pb

from services.common.auth import DEFAULT_TENANT
from services.memory.search_index import InteractionIndex, make_index
from services.memory.store import Owner

ALICE = Owner(DEFAULT_TENANT, "alice")


def _index(data_dir: Path) -> InteractionIndex:
    index = make_index(
        mode="keyword",
        data_dir=data_dir,
        qdrant_url="",
        qdrant_api_key="",
        collection="turns",
        model_path="",
        embed_threads=1,
    )
    assert index is not None
    return index


async def test_an_index_another_version_wrote_is_rebuilt_empty_with_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = _index(tmp_path)
    turn = pb.Interaction(
        interaction_id="t1", conversation_id="c1", input="puffins", response="seabirds"
    )
    await first.add(ALICE, turn)
    assert await first.count(ALICE) == 2
    found = await first.search(ALICE, "puffins", "", pb.SEARCH_MODE_KEYWORD, 5)
    assert [hit.interaction_id for hit in found] == ["t1"]
    await first.close()
    (schema_file,) = (tmp_path / "memory-index" / "collections").glob("*.json")
    stored = json.loads(schema_file.read_text(encoding="utf-8"))
    schema_file.write_text(json.dumps({**stored, "layout": 2}), encoding="utf-8")

    caplog.set_level(logging.INFO)
    again = _index(tmp_path)
    try:
        assert await again.search(ALICE, "puffins", "", pb.SEARCH_MODE_KEYWORD, 5) == []
        assert await again.count(ALICE) == 0
    finally:
        await again.close()
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.getMessage() for r in warned] == [
        "search index made with other settings: rebuilt empty"
    ]
    assert warned[0].exc_info is None
    assert json.loads(schema_file.read_text(encoding="utf-8")) == stored
